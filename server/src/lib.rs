//! `crvs-server`: the central server of the civil registration system.
//!
//! Tablets enrol with a one-time token ([`admin`]), then push signed change
//! sets and pull the server's changes over `POST /v1/sync` ([`http`]). The
//! heart is [`ingest`]: it checks every change set (signature, revocation,
//! sequence, hash chain, office scope, server-owned fields), applies it to
//! the records' automerge documents, assigns a Khmer Identification Code
//! (KIdC) to every approved birth, and answers with acknowledgements and
//! the server's changes for that tablet. Everything is stored through the
//! [`storage::Storage`] trait ([`storage::sqlite`] is the embedded default).
//!
//! Institutions' systems send birth and death notifications over
//! `POST /v1/notifications` with an API key ([`api_keys`], [`notify`]);
//! the JSON API is described at `/v1/openapi.json` ([`openapi`]).
//!
//! [`Server`] ties the parts together and is usable without HTTP:
//! [`Server::handle_sync`] takes the request bytes and returns the sealed
//! answer, which is how the benchmark drives it.
//!
//! **Architecture invariant:** no personal data in logs, errors or panics:
//! only ids, counts, sequence numbers and codes.

pub mod admin;
pub mod api_keys;
pub mod backup;
pub mod error;
pub mod fault;
pub mod group_commit;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod ledger;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod registry;
pub mod staff;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::ActorId;
use ed25519_dalek::SigningKey;

use group_commit::{GroupCommit, GroupStats};

pub use error::ApiError;
use ledger::KidcLedger;
use storage::sqlite::SqliteStorage;
use storage::{Storage, StorageError};

/// The database file's name inside the data folder.
pub const DB_FILE: &str = "server.db";

/// A source of "now", in ms since the Unix epoch. Tests pass a fake one.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    })
}

/// A new UUIDv7 whose time is `now_ms` by the server's clock (never
/// `Uuid::now_v7`, which reads the system clock; a time before 1970 is
/// taken as 1970).
pub fn new_id(now_ms: i64) -> uuid::Uuid {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    uuid::Uuid::new_v7(ts)
}

/// A running server's state: storage, keys, clock.
pub struct Server {
    storage: Box<dyn Storage>,
    key: SigningKey,
    actor: ActorId,
    /// Every actor the server ever used, this one included.
    actors: std::collections::HashSet<ActorId>,
    ledger: KidcLedger,
    clock: Clock,
    dir: PathBuf,
    /// Sync requests that reach the writer together commit together.
    group: GroupCommit<ingest::Job, Result<ingest::Written, ApiError>>,
    /// A birth registered more than this many days after the day of birth
    /// is late (the legal period).
    late_birth_days: u32,
    /// The bearer token of `GET /metrics`; without one it answers 404.
    metrics_token: Option<metrics::MetricsToken>,
}

/// The legal period for registering a birth, in days, unless configured.
pub const DEFAULT_LATE_BIRTH_DAYS: u32 = 30;

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const ACTOR_META_KEY: &str = "server_actor_id";
const PUBLIC_KEY_META_KEY: &str = "server_public_key";

/// Creates the data folder readable by its owner only (0700 on unix), and
/// tightens an existing one: it holds names and ID numbers. The files in
/// it are created 0600 ([`private_file`]).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            tracing::warn!(
                mode = format!("{:o}", mode & 0o777),
                "the data folder was readable by others; it is now 0700"
            );
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    Ok(())
}

pub use crvs_sqlite::private_file;

impl Server {
    /// Opens the server whose data lives in `dir` (created on first use):
    /// the SQLite database, the signing key, the automerge actor id.
    pub fn open(dir: &Path) -> Result<Server, StorageError> {
        Self::open_with_clock(dir, system_clock())
    }

    /// Opens a server whose records live in the PostgreSQL database at
    /// `url`; `dir` holds its signing key and its KIdC ledger. The first
    /// server to use a database writes its public key there; a server
    /// with another key is refused (tablets pin the key: every instance
    /// that shares a database must share the key file).
    pub fn open_postgres(dir: &Path, url: &str, clock: Clock) -> Result<Server, StorageError> {
        private_dir(dir)?;
        let storage = storage::postgres::PostgresStorage::connect(url)?;
        let key = keys::load_or_create(dir)?;
        let public = hex::encode(key.verifying_key().as_bytes());
        let mut tx = storage.begin()?;
        match tx.meta(PUBLIC_KEY_META_KEY)? {
            Some(k) if k != public => {
                return Err(StorageError::Database(format!(
                    "this database belongs to a server whose signing key is {k}, and {} holds another: copy server.key from that server's folder (every instance on one database shares one key)",
                    dir.display()
                )));
            }
            Some(_) => {}
            None => tx.set_meta(PUBLIC_KEY_META_KEY, &public)?,
        }
        tx.commit()?;
        Self::with_storage(Box::new(storage), key, clock, dir.to_path_buf())
    }

    /// [`Server::open`] with a given clock.
    pub fn open_with_clock(dir: &Path, clock: Clock) -> Result<Server, StorageError> {
        private_dir(dir)?;
        let storage = SqliteStorage::open(&dir.join(DB_FILE))?;
        let key = keys::load_or_create(dir)?;
        Self::with_storage(Box::new(storage), key, clock, dir.to_path_buf())
    }

    /// Builds a server over any storage backend.
    pub fn with_storage(
        storage: Box<dyn Storage>,
        key: SigningKey,
        clock: Clock,
        dir: PathBuf,
    ) -> Result<Server, StorageError> {
        // A new automerge actor for every start: a database restored from
        // a backup (by `crvs-server restore` or by copying files) must
        // never make a change whose actor and sequence number a tablet
        // already holds from before the restore.
        let now = clock();
        let (actor, actors) = {
            let mut id = [0u8; 16];
            rand::Rng::fill_bytes(&mut rand::rng(), &mut id);
            let mut tx = storage.begin()?;
            tx.add_server_actor(&hex::encode(id), now)?;
            tx.set_meta(ACTOR_META_KEY, &hex::encode(id))?;
            let mut actors = std::collections::HashSet::new();
            for hex_id in tx.server_actors()? {
                let bytes = hex::decode(hex_id).map_err(|_| StorageError::Corrupt("server actor id"))?;
                actors.insert(ActorId::from(bytes));
            }
            tx.commit()?;
            (ActorId::from(id), actors)
        };
        let issued = storage.issuance_count()?;
        let (ledger, opened) = KidcLedger::open_lazy(
            &dir.join(ledger::LEDGER_FILE),
            issued,
            &|| storage.issuances(),
            now,
        )?;
        let devices: Vec<ledger::LedgerDevice> = storage
            .list_devices()?
            .into_iter()
            .map(|d| ledger::LedgerDevice {
                device_id: d.device_id,
                office: d.office,
                public_key: hex::encode(d.public_key),
                enrolled_at_ms: d.enrolled_at_ms,
                token_hash: String::new(),
                revoked_at_ms: d.revoked_at_ms,
            })
            .collect();
        let imported = ledger.import_devices(&devices)?;
        if imported > 0 {
            tracing::info!(imported, "enrolments the KIdC ledger lacked are now in it");
        }
        // Staff removals and API key revocations: the ledger takes those it
        // lacks, the database those it lacks (restored from an older
        // backup, or by copying files); nothing is written when neither
        // lacks any.
        let reconciled = ledger::reconcile(&ledger, &*storage)?;
        if reconciled.staff_removals_imported + reconciled.api_key_revocations_imported > 0 {
            tracing::info!(
                staff_removals = reconciled.staff_removals_imported,
                api_key_revocations = reconciled.api_key_revocations_imported,
                "removals and revocations the KIdC ledger lacked are now in it"
            );
        }
        if opened.created && issued > 0 {
            tracing::warn!(
                codes = issued,
                "the KIdC ledger was missing and is rebuilt from the issuance log: codes issued after it was lost are known only from the tablets' evidence"
            );
        }
        Ok(Server {
            storage,
            key,
            actor,
            actors,
            ledger,
            clock,
            dir,
            group: GroupCommit::default(),
            late_birth_days: DEFAULT_LATE_BIRTH_DAYS,
            metrics_token: None,
        })
    }

    /// Sets the legal period for registering a birth, in days (a birth
    /// registered later carries the late flag).
    pub fn with_late_birth_days(mut self, days: u32) -> Server {
        self.late_birth_days = days;
        self
    }

    /// Serves `GET /metrics` to scrapers that present `token` (see
    /// [`metrics`]), and installs the process's metrics recorder; `None`
    /// keeps `/metrics` answering 404 and records nothing.
    pub fn with_metrics_token(mut self, token: Option<metrics::MetricsToken>) -> Server {
        if token.is_some() {
            metrics::install();
        }
        self.metrics_token = token;
        self
    }

    /// The bearer token of `GET /metrics`, if one is configured.
    pub fn metrics_token(&self) -> Option<&metrics::MetricsToken> {
        self.metrics_token.as_ref()
    }

    /// The legal period for registering a birth, in days.
    pub fn late_birth_days(&self) -> u32 {
        self.late_birth_days
    }

    /// The storage backend.
    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    /// The server's signing key (tablets pin its public half).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The automerge actor id of every change this server process makes.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// Whether `actor` is one the server ever used (a tablet may not send
    /// a change made with it).
    pub fn is_server_actor(&self, actor: &ActorId) -> bool {
        self.actors.contains(actor)
    }

    /// The ledger of reserved KIdCs.
    pub fn ledger(&self) -> &KidcLedger {
        &self.ledger
    }

    /// Now, by the server's clock.
    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The commit group of sync requests (see [`group_commit`]).
    pub(crate) fn write_group(&self) -> &GroupCommit<ingest::Job, Result<ingest::Written, ApiError>> {
        &self.group
    }

    /// How many commit groups ran so far, and how many sync requests they
    /// held (requests per fsync).
    pub fn commit_groups(&self) -> GroupStats {
        self.group.stats()
    }

    /// Handles one sync request: the body of `POST /v1/sync` in, the sealed
    /// [`crvs_schema::wire::SyncResponse`] out. Blocking: call it from
    /// `spawn_blocking` in async code.
    pub fn handle_sync(&self, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        // A backend with concurrent writers may roll a transaction back
        // when it meets another (a deadlock, a serialization failure):
        // nothing of it was kept, so the request runs again from its
        // bytes, and the tablet never sees the conflict.
        let mut attempt = 0;
        loop {
            match ingest::handle_sync(self, body) {
                Err(ApiError::Storage(StorageError::Conflict(why))) if attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    crate::metrics::count_conflict();
                    tracing::info!(attempt, why = %why, "a sync request's transaction conflicted; running it again");
                    let jitter = rand::RngExt::random_range(&mut rand::rng(), 0..(5u64 << attempt));
                    std::thread::sleep(std::time::Duration::from_millis(jitter));
                }
                other => return other,
            }
        }
    }
}

/// How many times a sync request whose transaction conflicted runs again.
const MAX_CONFLICT_RETRIES: u32 = 8;
