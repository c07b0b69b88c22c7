//! A throwaway PostgreSQL cluster for tests.
//!
//! [`Cluster::start`] runs `initdb` in a fresh temporary folder (trust
//! authentication, superuser `crvs`, UTF-8) and `pg_ctl start` on a free
//! TCP port of 127.0.0.1, with its Unix socket and its log in that folder.
//! `fsync` stays on, as in production. Dropping the cluster stops it
//! (`pg_ctl stop -m fast`) and removes the folder.
//!
//! Most tests use [`shared`] (or [`require_or_skip`]): one cluster per test
//! process, started on first use, in which each test makes its own database
//! ([`Cluster::fresh_database`]). A static is never dropped, so every
//! cluster has a watchdog: a `sh` process that reads from a pipe whose
//! write end only the test process holds. When the test process exits (or
//! is killed), the pipe closes and the watchdog stops the cluster
//! (`-m immediate`) and removes its folder. No `postgres` process outlives
//! the tests.
//!
//! Finding PostgreSQL: `pg_config --bindir`, else the highest
//! `/usr/lib/postgresql/*/bin`, else `initdb` on `PATH`. When none is found
//! the tests that need it print
//! `SKIPPED <test>: PostgreSQL is not installed (apt-get install postgresql)`
//! and return; with `CRVS_REQUIRE_POSTGRES=1` (set by `.ci/run`) they fail
//! instead. A PostgreSQL that is installed but does not start always fails.
//!
//! Running as root (CI containers): `initdb` and `postgres` refuse root, so
//! every PostgreSQL binary runs as the `postgres` user through
//! `runuser -u postgres --`, and the temporary folder belongs to that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The install command named when PostgreSQL is missing.
pub const INSTALL: &str = "apt-get install postgresql";

/// The environment variable that turns a skip into a failure.
pub const REQUIRE_ENV: &str = "CRVS_REQUIRE_POSTGRES";

/// The superuser `initdb` creates.
pub const USER: &str = "crvs";

/// Why no cluster could be started.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// PostgreSQL is not installed (as opposed to: installed, but it
    /// failed to start).
    pub not_installed: bool,
    /// What went wrong, and what to do.
    pub message: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Unavailable {}

impl Unavailable {
    fn not_installed() -> Unavailable {
        Unavailable {
            not_installed: true,
            message: format!("PostgreSQL is not installed ({INSTALL})"),
        }
    }

    fn failed(message: String) -> Unavailable {
        Unavailable {
            not_installed: false,
            message,
        }
    }
}

/// A running PostgreSQL cluster in a temporary folder.
#[derive(Debug)]
pub struct Cluster {
    bindir: PathBuf,
    root: PathBuf,
    port: u16,
    as_postgres: bool,
    // Closing its stdin (drop, or the test process's exit) wakes it.
    watchdog: Mutex<Option<Child>>,
    stopped: Mutex<bool>,
    databases: AtomicU64,
}

/// The folder holding `initdb`, `pg_ctl`, `psql`, ..., if PostgreSQL is
/// installed.
pub fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| has_initdb(d))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Starts a fresh cluster.
    pub fn start() -> Result<Cluster, Unavailable> {
        let bindir = find_bindir().ok_or_else(Unavailable::not_installed)?;
        let as_postgres = is_root();
        let unique = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!("crvs-testpg-{}-{unique}", std::process::id()));
        std::fs::create_dir(&root)
            .map_err(|e| Unavailable::failed(format!("create {}: {e}", root.display())))?;
        let mut cluster = Cluster {
            bindir,
            root,
            port: 0,
            as_postgres,
            watchdog: Mutex::new(None),
            stopped: Mutex::new(false),
            databases: AtomicU64::new(0),
        };
        // From here on, dropping `cluster` removes the folder.
        cluster.start_watchdog()?;
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres:")
                .arg(&cluster.root)
                .output()
                .map_err(|e| Unavailable::failed(format!("chown: {e}")))?;
            if !out.status.success() {
                return Err(Unavailable::failed(describe(
                    "chown of the cluster folder to the postgres user",
                    &out,
                )));
            }
        }
        let out = cluster
            .bin("initdb")
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-instructions", "-D"])
            .arg(cluster.data_dir())
            .output()
            .map_err(|e| Unavailable::failed(format!("run initdb: {e}")))?;
        if !out.status.success() {
            return Err(Unavailable::failed(describe("initdb", &out)));
        }
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| Unavailable::failed(format!("pick a port: {e}")))?;
            match cluster.pg_ctl_start(port) {
                Ok(()) => {
                    cluster.port = port;
                    return Ok(cluster);
                }
                // Another process took the port in between: try another.
                Err(e) if e.contains("already in use") || e.contains("could not bind") => last = e,
                Err(e) => return Err(Unavailable::failed(e)),
            }
        }
        Err(Unavailable::failed(last))
    }

    fn pg_ctl_start(&self, port: u16) -> Result<(), String> {
        let log = self.log_file();
        let _ = std::fs::remove_file(&log);
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            self.root.display()
        );
        let status = self
            .bin("pg_ctl")
            .args(["start", "-w", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        if status.success() {
            return Ok(());
        }
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        Err(format!("pg_ctl start failed ({status}); its log:\n{log_text}"))
    }

    /// A `sh` that waits for end of file on its stdin, then stops the
    /// cluster and removes the folder. Signals are ignored, so a Ctrl-C of
    /// the tests does not skip the clean-up.
    fn start_watchdog(&self) -> Result<(), Unavailable> {
        let pg_ctl = self.command_line("pg_ctl");
        let script = format!(
            "trap '' INT TERM HUP; while read -r _; do :; done; \
             {pg_ctl} stop -D '{data}' -m immediate >/dev/null 2>&1; rm -rf '{root}'",
            data = self.data_dir().display(),
            root = self.root.display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Unavailable::failed(format!("start the watchdog: {e}")))?;
        *self.watchdog.lock().expect("lock") = Some(child);
        Ok(())
    }

    /// The shell words that run the binary `name` (through `runuser` as
    /// root).
    fn command_line(&self, name: &str) -> String {
        let bin = self.bindir.join(name);
        if self.as_postgres {
            format!("runuser -u postgres -- '{}'", bin.display())
        } else {
            format!("'{}'", bin.display())
        }
    }

    /// A `Command` running the PostgreSQL binary `name` (`psql`,
    /// `pg_ctl`, ...), as the `postgres` user when the tests run as root.
    pub fn bin(&self, name: &str) -> Command {
        let path = self.bindir.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The postgres user may not enter the test's working directory.
        cmd.current_dir(&self.root);
        cmd
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server log.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The URL of database `db` (`postgres://crvs@127.0.0.1:PORT/db`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let out = self
            .bin("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, name])
            .output()
            .expect("run createdb");
        assert!(out.status.success(), "{}", describe("createdb", &out));
        self.url(name)
    }

    /// Creates a database with a name no other test of this process uses,
    /// and returns its URL.
    pub fn fresh_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        self.create_database(&format!("t{}_{n}", std::process::id()))
    }

    /// Runs `sql` with `psql` on the database at `url`: its output
    /// (unaligned, tuples only), or its error message.
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let out = self
            .bin("psql")
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Stops the cluster at once, as a power cut would
    /// (`pg_ctl stop -m immediate`: no checkpoint; the next start
    /// recovers from the WAL).
    pub fn stop_immediate(&self) {
        self.stop("immediate");
    }

    /// Starts a stopped cluster again, on the same port.
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl_start(self.port)?;
        *self.stopped.lock().expect("lock") = false;
        Ok(())
    }

    fn stop(&self, mode: &str) {
        let mut stopped = self.stopped.lock().expect("lock");
        if *stopped {
            return;
        }
        let _ = self
            .bin("pg_ctl")
            .args(["stop", "-w", "-m", mode, "-D"])
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        *stopped = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop("fast");
        let _ = std::fs::remove_dir_all(&self.root);
        // Closing the pipe lets the watchdog exit (it finds nothing left).
        if let Ok(mut w) = self.watchdog.lock()
            && let Some(mut child) = w.take()
        {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// The cluster shared by every test of this process, started on first
/// use; its databases are made with [`Cluster::fresh_database`].
pub fn shared() -> Result<&'static Cluster, Unavailable> {
    static SHARED: OnceLock<Result<Cluster, Unavailable>> = OnceLock::new();
    SHARED.get_or_init(Cluster::start).as_ref().map_err(Clone::clone)
}

/// The shared cluster, or `None` (after printing `SKIPPED <test>: ...`)
/// when PostgreSQL is not installed. Panics when it is required
/// (`CRVS_REQUIRE_POSTGRES=1`) and missing, or when it is installed and
/// does not start.
pub fn require_or_skip(test: &str) -> Option<&'static Cluster> {
    match shared() {
        Ok(c) => Some(c),
        Err(e) if e.not_installed && std::env::var_os(REQUIRE_ENV).is_none_or(|v| v != "1") => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) if e.not_installed => panic!("{test}: {e}; {REQUIRE_ENV}=1 requires it"),
        Err(e) => panic!("{test}: PostgreSQL did not start: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_makes_a_database_and_answers() {
        let Some(cluster) = require_or_skip("a_cluster_starts_makes_a_database_and_answers") else {
            return;
        };
        let url = cluster.fresh_database();
        assert!(url.starts_with(&format!("postgres://crvs@127.0.0.1:{}/t", cluster.port())));
        assert_eq!(cluster.psql(&url, "SELECT 1").as_deref(), Ok("1"));
        assert_eq!(cluster.psql(&url, "SHOW fsync").as_deref(), Ok("on"));
        assert!(cluster.psql(&url, "SELECT * FROM nowhere").is_err());
        let other = cluster.fresh_database();
        assert_ne!(url, other);
    }

    #[test]
    fn an_own_cluster_survives_an_immediate_stop_and_drop_removes_it() {
        let Some(_) = require_or_skip("an_own_cluster_survives_an_immediate_stop_and_drop_removes_it") else {
            return;
        };
        let cluster = Cluster::start().expect("start");
        let url = cluster.create_database("kept");
        cluster
            .psql(&url, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
            .expect("write");
        cluster.stop_immediate();
        assert!(cluster.psql(&url, "SELECT 1").is_err(), "stopped");
        cluster.restart().expect("restart");
        assert_eq!(cluster.psql(&url, "SELECT v FROM t").as_deref(), Ok("7"));
        let root = cluster.data_dir().parent().expect("root").to_path_buf();
        drop(cluster);
        assert!(!root.exists(), "the folder is removed");
    }
}
