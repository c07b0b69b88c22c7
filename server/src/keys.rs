//! The server's signing key, `DIR/server.key`.
//!
//! Generated from the operating system's CSPRNG on first use and stored as
//! hex with mode 0600. Every command loads the same file; two processes
//! creating it at the same moment agree on one key (the file appears
//! atomically through a hard link, which fails if it already exists).

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::storage::StorageError;

/// The key file's name inside the data folder.
pub const KEY_FILE: &str = "server.key";

/// Loads the server key from `dir`, creating it first if needed.
pub fn load_or_create(dir: &Path) -> Result<SigningKey, StorageError> {
    let path = dir.join(KEY_FILE);
    if let Some(key) = load(&path)? {
        return Ok(key);
    }
    let key = SigningKey::generate(&mut rand::rng());
    let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(hex::encode(key.to_bytes()).as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    std::fs::remove_file(&tmp)?;
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            tracing::info!("generated a new server signing key");
            Ok(key)
        }
        // Another process won the race: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            load(&path)?.ok_or(StorageError::Corrupt("server key vanished"))
        }
        Err(e) => Err(e.into()),
    }
}

fn load(path: &Path) -> Result<Option<SigningKey>, StorageError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut bytes)
                .map_err(|_| StorageError::Corrupt("server.key is not 64 hex digits"))?;
            Ok(Some(SigningKey::from_bytes(&bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_and_loaded_after() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
