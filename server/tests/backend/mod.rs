//! The storage backends a test runs on: SQLite in a temporary folder, or
//! a fresh database of the throwaway PostgreSQL cluster (`crvs-testpg`).
//! `both_backends!(name)` makes `fn name(backend: Backend)` two tests,
//! `name::sqlite` and `name::postgres`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crvs_server::storage::Storage;

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `SqliteStorage` on `server.db` in a temporary folder.
    Sqlite,
    /// `PostgresStorage` on a fresh database.
    Postgres,
}

/// An opened backend, with the means to reach its database around the
/// `Storage` trait (raw SQL, the CLI).
pub struct Opened {
    /// The storage.
    pub storage: Box<dyn Storage>,
    /// The server's data folder (SQLite's file; the key and the ledger).
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database, if that is the backend.
    pub url: Option<String>,
}

/// Opens a fresh, empty backend.
pub fn open(backend: Backend) -> Opened {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(cluster().fresh_database()),
    };
    let storage = open_storage(dir.path(), url.as_deref());
    Opened { storage, dir, url }
}

/// Opens the storage of the data folder `dir`, or of the PostgreSQL
/// database `url`.
pub fn open_storage(dir: &Path, url: Option<&str>) -> Box<dyn Storage> {
    match url {
        None => Box::new(
            crvs_server::storage::sqlite::SqliteStorage::open(&dir.join(crvs_server::DB_FILE))
                .expect("open SQLite storage"),
        ),
        Some(url) => open_postgres(url),
    }
}

fn open_postgres(url: &str) -> Box<dyn Storage> {
    Box::new(
        crvs_server::storage::postgres::PostgresStorage::connect(url).expect("connect PostgreSQL storage"),
    )
}

fn cluster() -> &'static crvs_testpg::Cluster {
    crvs_testpg::shared().unwrap_or_else(|e| panic!("{e}"))
}

impl Opened {
    /// The data folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The one number `sql` selects (a `COUNT(*)`), read around the
    /// storage.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.url {
            None => rusqlite::Connection::open(self.db_file())
                .expect("open server.db")
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Some(url) => {
                let out = cluster().psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                out.parse().unwrap_or_else(|e| panic!("{sql}: {e}: {out:?}"))
            }
        }
    }

    /// The one text value `sql` selects.
    pub fn text(&self, sql: &str) -> String {
        match &self.url {
            None => rusqlite::Connection::open(self.db_file())
                .expect("open server.db")
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Some(url) => cluster().psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// Runs `sql` (one statement) behind the storage's back: the error
    /// message when the database refuses it.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        match &self.url {
            None => rusqlite::Connection::open(self.db_file())
                .expect("open server.db")
                .execute(sql, [])
                .map(drop)
                .map_err(|e| e.to_string()),
            Some(url) => cluster().psql(url, sql).map(drop),
        }
    }

    /// `--data DIR`, and `--database URL` on PostgreSQL: for the CLI.
    pub fn cli_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--data".into(), self.path().as_os_str().to_owned()];
        if let Some(url) = &self.url {
            args.push("--database".into());
            args.push(url.into());
        }
        args
    }

    fn db_file(&self) -> PathBuf {
        self.path().join(crvs_server::DB_FILE)
    }
}

/// Whether a test may run on `backend`: PostgreSQL is skipped (saying so
/// on stderr) when it is not installed, unless `CRVS_REQUIRE_POSTGRES=1`.
pub fn available(backend: Backend, test: &str) -> bool {
    match backend {
        Backend::Sqlite => true,
        Backend::Postgres => crvs_testpg::require_or_skip(test).is_some(),
    }
}

/// Makes each `fn NAME(backend: Backend)` two tests, `NAME::sqlite` and
/// `NAME::postgres`.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(crate::backend::Backend::Sqlite);
                }

                #[test]
                fn postgres() {
                    if crate::backend::available(crate::backend::Backend::Postgres, module_path!()) {
                        super::$name(crate::backend::Backend::Postgres);
                    }
                }
            }
        )+
    };
}
pub(crate) use both_backends;
