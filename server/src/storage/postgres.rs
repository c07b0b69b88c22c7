//! The PostgreSQL backend, for the national service: a database that
//! survives the loss of a machine (a synchronous standby), shared by
//! several server processes behind a load balancer.
//!
//! [`PostgresStorage::connect`] is the only way in: it connects, runs the
//! numbered migrations of `server/migrations/postgres/` (tracked in
//! `schema_version`, under an advisory lock so that two processes starting
//! at once migrate once) and keeps a small pool of connections.
//!
//! Unlike SQLite, several write transactions can run at once (several
//! server processes, operator commands beside them). Every write
//! transaction runs at READ COMMITTED and takes, in this order, the locks
//! that make the single-writer logic of `crate::ingest` hold
//! (ARCHITECTURE.md, "PostgreSQL"):
//!
//! 1. **The registry lock**: a transaction-level advisory lock taken when
//!    the transaction begins, kept to the commit. The registry (persons,
//!    marriages, its event log) spans offices; its event log's order is the
//!    order its events were applied. Taken first, because a server's commit
//!    group writes for many offices: taken late, two servers' groups could
//!    each hold an office the other waits for.
//! 2. **The office lock**: the row of the office in `feed_counters`, locked
//!    by the first operation that touches the office (the device's read,
//!    a record's load, a feed append) and kept to the commit. The office's
//!    feed cursor is counted in that row, so feed entries of one office
//!    become visible in cursor order and a tablet never skips one. It also
//!    serializes the writes to the office's records and registration
//!    counters.
//! 3. **The chain lock**: [`WriteTx::device`] reads the device with
//!    `SELECT … FOR UPDATE`, so its chain advances only from the position
//!    this transaction read; a second request of the same device waits.
//!
//! Locks are taken in that order, so two transactions do not deadlock on
//! them; a deadlock or serialization failure the database reports anyway
//! is [`StorageError::Conflict`], and the caller retries the transaction.
//!
//! Commits are durable when they return (`synchronous_commit` as the
//! cluster sets it: `on`, and with a synchronous standby, on both
//! machines); [`Storage::sync_log`] has nothing to do.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Condvar, Mutex};

use crvs_schema::Kidc;
use crvs_schema::wire::Hash;
use crvs_schema::wire::TabletReport;
use postgres::Client;
use postgres::types::{ToSql, Type};
use sha2::{Digest, Sha256};
use tokio_postgres::{NoTls, Row, Statement};
use uuid::Uuid;

use super::{
    ApiKeyRow, Device, DeviceRefusal, FeedHead, FeedTo, HoldRow, Issuance, LogEntry, NewDevice,
    RegistrationStat, RegistryDump, RegistryEntry, RegistryEventRow, RegistryMaritalEntry, RegistryMarriage,
    RegistryPerson, RegistryPersonEvent, RegistryRelative, ReleaseAudit, Savepoint, ServerChange, StaffEvent,
    StaffHistoryEntry, StaffMember, StaffPut, StaffPutOutcome, StaffRemoval, Storage, StorageError,
    StoredNotification, StoredRecord, SyncSeen, TokenRow, UnblockAudit, WriteTx, plan_staff_put, staff_key,
};
use crate::staff::Roles;

/// The numbered migrations: the `n`th takes `schema_version` from `n - 1`
/// to `n`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/001_init.sql"),
    include_str!("../../migrations/postgres/002_tablet_report.sql"),
];

/// The advisory lock key of migrations.
const MIGRATION_LOCK: i64 = 0x6372_7673_0001;
/// The advisory lock key of the registry (see the module docs).
const REGISTRY_LOCK: i64 = 0x6372_7673_0002;

/// Connections a server process keeps at most.
pub const DEFAULT_POOL_SIZE: usize = 16;

impl From<postgres::Error> for StorageError {
    fn from(e: postgres::Error) -> Self {
        // The database's message and code only: a DETAIL line may quote
        // the values of a row (a name, a code).
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                if code == "40001" || code == "40P01" {
                    StorageError::Conflict(format!("{code} {}", db.message()))
                } else {
                    StorageError::Database(format!("postgresql {code}: {}", db.message()))
                }
            }
            None if e.is_closed() => StorageError::Database("the connection to PostgreSQL was lost".into()),
            None => StorageError::Database(format!("postgresql: {}", first_line(&e.to_string()))),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A parameter of a deferred statement (owned: it is sent later).
type Param = Box<dyn ToSql + Sync + Send>;

/// Boxes the parameters of a deferred statement ([`Conn::defer`]).
macro_rules! params {
    ($($p:expr),* $(,)?) => { vec![$(Box::new($p) as Param),*] };
}

/// A statement whose answer nobody waits for: sent with the next one that
/// needs an answer ([`Conn::defer`]).
enum Deferred {
    Simple(String),
    Exec {
        statement: Statement,
        params: Vec<Param>,
        /// The rows it must touch, and what is wrong if it touches others.
        rows: Option<(u64, &'static str)>,
    },
}

/// One pooled connection, its prepared statements, and the statements
/// deferred to the next round trip.
///
/// The client is `tokio-postgres` on a runtime of the connection's own,
/// driven only while a call blocks on it (as the synchronous `postgres`
/// client does), because it can *pipeline*: the writes whose answer the
/// ingest does not read (a link of the registry, a device's new chain
/// position) are queued by [`Conn::defer`] and sent together with the next
/// statement that needs an answer, in one round trip, not one each
/// (ARCHITECTURE.md, "PostgreSQL"). They run in the order they were
/// queued, before that statement, so every read sees every write before
/// it. A deferred write that fails reports its error from that call, which
/// is always in the same savepoint: releasing or rolling back a savepoint
/// and committing send the queue first.
struct Conn {
    client: tokio_postgres::Client,
    runtime: tokio::runtime::Runtime,
    statements: HashMap<String, Statement>,
    deferred: Vec<Deferred>,
}

impl Conn {
    fn connect(config: &tokio_postgres::Config) -> Result<Conn, StorageError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StorageError::Database(format!("start a runtime for PostgreSQL: {e}")))?;
        let (client, connection) = runtime.block_on(config.connect(NoTls))?;
        runtime.spawn(async move {
            // Its end (an error included) shows as the client being closed.
            let _ = connection.await;
        });
        Ok(Conn {
            client,
            runtime,
            statements: HashMap::new(),
            deferred: Vec::new(),
        })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn stmt(&mut self, sql: &str) -> Result<Statement, StorageError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.runtime.block_on(self.client.prepare(sql))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Queues a write whose answer is not needed (see the type's docs).
    fn defer(&mut self, sql: &str, params: Vec<Param>) -> Result<(), StorageError> {
        self.queue(sql, params, None)
    }

    /// [`Conn::defer`] a write that must touch exactly `rows` rows; if it
    /// touches another number, the call that sends it fails with
    /// [`StorageError::Corrupt`]`(what)`.
    fn defer_rows(
        &mut self,
        sql: &str,
        params: Vec<Param>,
        rows: u64,
        what: &'static str,
    ) -> Result<(), StorageError> {
        self.queue(sql, params, Some((rows, what)))
    }

    fn queue(
        &mut self,
        sql: &str,
        params: Vec<Param>,
        rows: Option<(u64, &'static str)>,
    ) -> Result<(), StorageError> {
        let statement = self.stmt(sql)?;
        self.deferred.push(Deferred::Exec {
            statement,
            params,
            rows,
        });
        Ok(())
    }

    /// Queues a statement without parameters ([`Conn::defer`]).
    fn defer_simple(&mut self, sql: String) {
        self.deferred.push(Deferred::Simple(sql));
    }

    /// Sends the deferred statements, and `then` behind them, in one round
    /// trip; the first error in order, if any, else `then`'s answer.
    fn send<T>(
        &mut self,
        then: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StorageError> {
        let deferred = std::mem::take(&mut self.deferred);
        let client = &self.client;
        let (earlier, result) = self.runtime.block_on(async {
            // Every future sends its request at its first poll, so the
            // connection writes them all before any answer is read.
            let earlier = futures_util::future::join_all(deferred.iter().map(|d| async move {
                match d {
                    Deferred::Simple(sql) => client.batch_execute(sql).await.map_err(StorageError::from),
                    Deferred::Exec {
                        statement,
                        params,
                        rows,
                    } => {
                        let params = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync));
                        match (client.execute_raw(statement, params).await, rows) {
                            (Err(e), _) => Err(StorageError::from(e)),
                            (Ok(n), Some((want, what))) if n != *want => Err(StorageError::Corrupt(what)),
                            (Ok(_), _) => Ok(()),
                        }
                    }
                }
            }));
            futures_util::future::join(earlier, then(client)).await
        });
        if let Some(e) = earlier.into_iter().find_map(Result::err) {
            return Err(e);
        }
        Ok(result?)
    }

    /// Sends what was deferred.
    fn flush(&mut self) -> Result<(), StorageError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        self.send(async |_| Ok(()))
    }

    /// Statements without parameters (after what was deferred).
    fn batch(&mut self, sql: &str) -> Result<(), StorageError> {
        self.send(async |c| c.batch_execute(sql).await)
    }

    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StorageError> {
        let st = self.stmt(sql)?;
        self.send(async |c| c.query(&st, params).await)
    }

    fn opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, StorageError> {
        let st = self.stmt(sql)?;
        self.send(async |c| c.query_opt(&st, params).await)
    }

    fn one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, StorageError> {
        let st = self.stmt(sql)?;
        self.send(async |c| c.query_one(&st, params).await)
    }

    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StorageError> {
        let st = self.stmt(sql)?;
        self.send(async |c| c.execute(&st, params).await)
    }
}

/// A fixed-size pool: a request waits for a free connection rather than
/// opening more than the database allows.
struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<(Vec<Conn>, usize)>,
    freed: Condvar,
    max: usize,
}

impl Pool {
    fn get(&self) -> Result<Pooled<'_>, StorageError> {
        let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = state.0.pop() {
                if conn.is_closed() {
                    state.1 -= 1;
                    continue;
                }
                return Ok(Pooled {
                    conn: Some(conn),
                    pool: self,
                });
            }
            if state.1 < self.max {
                state.1 += 1;
                drop(state);
                return match Conn::connect(&self.config) {
                    Ok(conn) => Ok(Pooled {
                        conn: Some(conn),
                        pool: self,
                    }),
                    Err(e) => {
                        self.release_slot();
                        Err(e)
                    }
                };
            }
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn release_slot(&self) {
        let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        state.1 -= 1;
        self.freed.notify_one();
    }
}

/// A connection out of the pool; back in when dropped (unless broken).
struct Pooled<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
}

impl Pooled<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }

    /// Drops the connection instead of returning it (its state is unknown).
    fn discard(&mut self) {
        if self.conn.take().is_some() {
            self.pool.release_slot();
        }
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Every transaction ends by sending or dropping its queue.
            debug_assert!(
                conn.deferred.is_empty(),
                "a pooled connection came back with deferred statements"
            );
            conn.deferred.clear();
            if conn.is_closed() {
                self.pool.release_slot();
            } else {
                let mut state = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                state.0.push(conn);
                self.pool.freed.notify_one();
            }
        }
    }
}

/// PostgreSQL storage: a pool of connections to one database.
pub struct PostgresStorage {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage").finish_non_exhaustive()
    }
}

/// `url` without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The connection settings of `url` (the messages of a bad one name it
/// without its password).
pub fn config(url: &str) -> Result<postgres::Config, StorageError> {
    async_config(url).map(postgres::Config::from)
}

/// [`config`], for `tokio-postgres` (the pool's connections).
fn async_config(url: &str) -> Result<tokio_postgres::Config, StorageError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: postgres::Error| {
        StorageError::Database(format!(
            "the database URL {} is not valid: {}",
            redact_url(url),
            first_line(&e.to_string())
        ))
    })?;
    if config.get_application_name().is_none() {
        config.application_name("crvs-server");
    }
    config.connect_timeout(std::time::Duration::from_secs(10));
    Ok(config)
}

/// One connection to the database at `url`, outside any pool (its
/// failures name the database without its password).
pub fn connect_one(url: &str) -> Result<Client, StorageError> {
    config(url)?.connect(NoTls).map_err(|e| {
        let e = StorageError::from(e);
        StorageError::Database(format!("cannot use the database at {}: {e}", redact_url(url)))
    })
}

/// The table in `public` that marks a restore under way: made in the
/// transaction that sets the replaced schema aside, dropped when the
/// restore has finished. While it exists, nothing opens the database but
/// `crvs-server restore` (ARCHITECTURE.md, "Recovery").
pub const RESTORE_PENDING: &str = "crvs_restore_pending";

/// Whether [`RESTORE_PENDING`] exists: a restore of this database has not
/// finished.
pub fn restore_pending(c: &mut impl postgres::GenericClient) -> Result<bool, StorageError> {
    Ok(c.query_one(
        &format!("SELECT to_regclass('public.{RESTORE_PENDING}') IS NOT NULL"),
        &[],
    )?
    .get(0))
}

/// The session advisory lock key that marks a database served: every
/// `crvs-server serve` holds it shared for as long as it runs, and
/// `crvs-server restore` takes it exclusively (ARCHITECTURE.md, "Recovery").
pub const SERVING_LOCK: i64 = 0x6372_7673_0003;

/// [`SERVING_LOCK`], held by a connection of its own until dropped (drop
/// it outside any async runtime: closing the connection blocks).
pub struct ServingLock {
    client: Client,
    exclusive: bool,
}

impl std::fmt::Debug for ServingLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingLock")
            .field("exclusive", &self.exclusive)
            .finish_non_exhaustive()
    }
}

/// The `application_name` of the connection that holds [`SERVING_LOCK`]
/// for a serving process (visible in `pg_stat_activity`).
pub const SERVING_LOCK_APPLICATION: &str = "crvs-server serving lock";

impl ServingLock {
    /// The lock of a serving process: shared (several servers share one
    /// database). Refused while a restore holds it.
    pub fn serve(url: &str) -> Result<ServingLock, StorageError> {
        Self::try_serve(url)?.ok_or_else(|| {
            StorageError::Database(
                "a restore of this database is under way (crvs-server restore holds it): start the server once it has finished"
                    .into(),
            )
        })
    }

    /// [`ServingLock::serve`]; `None` while a restore holds the lock.
    fn try_serve(url: &str) -> Result<Option<ServingLock>, StorageError> {
        let mut config = config(url)?;
        config.application_name(SERVING_LOCK_APPLICATION);
        let mut client = config.connect(NoTls).map_err(|e| {
            let e = StorageError::from(e);
            StorageError::Database(format!("cannot use the database at {}: {e}", redact_url(url)))
        })?;
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&SERVING_LOCK])?
            .get(0);
        Ok(taken.then_some(ServingLock {
            client,
            exclusive: false,
        }))
    }

    /// Keeps a serving process's lock for as long as the process runs, on
    /// a thread of its own: every `every`, the lock's connection is asked
    /// whether it is alive. A lost connection (the database restarted, the
    /// connection killed) no longer holds the lock, so it is taken again.
    /// If a restore took it in the meantime, the process exits: it must
    /// not write beside a restore (its pooled connections would write into
    /// the schema the restore set aside).
    pub fn keep(self, url: String, every: std::time::Duration) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("serving-lock".into())
            .spawn(move || {
                let mut lock = Some(self);
                loop {
                    std::thread::sleep(every);
                    let alive = lock.as_mut().is_some_and(|l| {
                        !l.client.is_closed() && l.client.simple_query("SELECT 1").is_ok()
                    });
                    if alive {
                        continue;
                    }
                    if lock.take().is_some() {
                        tracing::warn!(
                            "the database connection holding the serving lock was lost; taking the lock again"
                        );
                    }
                    match ServingLock::try_serve(&url) {
                        Ok(Some(l)) => {
                            tracing::info!("the serving lock is held again");
                            lock = Some(l);
                        }
                        Ok(None) => {
                            tracing::error!(
                                "a restore of the database began while this server's serving lock was lost: stopping, so that nothing is written beside the restore (start the server again once the restore has finished)"
                            );
                            std::process::exit(1);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot take the serving lock again; trying again")
                        }
                    }
                }
            })
            .expect("spawn the serving-lock thread")
    }

    /// The lock of a restore: exclusive; `None` while any process serves
    /// the database (or another restore runs).
    pub fn restore(url: &str) -> Result<Option<ServingLock>, StorageError> {
        let mut client = connect_one(url)?;
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SERVING_LOCK])?
            .get(0);
        Ok(taken.then_some(ServingLock {
            client,
            exclusive: true,
        }))
    }

    /// The connection that holds the lock.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl PostgresStorage {
    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// or key=value form), runs the migrations, and keeps up to
    /// [`DEFAULT_POOL_SIZE`] connections.
    pub fn connect(url: &str) -> Result<PostgresStorage, StorageError> {
        Self::connect_with_pool(url, DEFAULT_POOL_SIZE)
    }

    /// [`PostgresStorage::connect`] with a pool of `max` connections.
    pub fn connect_with_pool(url: &str, max: usize) -> Result<PostgresStorage, StorageError> {
        Self::open(url, max, false)
    }

    /// The storage `crvs-server restore` adjusts before it removes
    /// [`RESTORE_PENDING`]: the one connection allowed to open a database
    /// whose restore has not finished.
    pub(crate) fn connect_restoring(url: &str) -> Result<PostgresStorage, StorageError> {
        Self::open(url, 2, true)
    }

    fn open(url: &str, max: usize, restoring: bool) -> Result<PostgresStorage, StorageError> {
        let config = async_config(url)?;
        let storage = PostgresStorage {
            pool: Pool {
                config,
                idle: Mutex::new((Vec::new(), 0)),
                freed: Condvar::new(),
                max: max.max(1),
            },
        };
        storage.migrate(restoring).map_err(|e| match e {
            StorageError::Database(m) if m.contains("connection") || m.starts_with("postgresql:") => {
                StorageError::Database(format!("cannot use the database at {}: {m}", redact_url(url)))
            }
            other => other,
        })?;
        Ok(storage)
    }

    fn migrate(&self, restoring: bool) -> Result<(), StorageError> {
        // On a synchronous connection of its own (`restore_pending` is
        // shared with the restore's), closed when done.
        let mut client = postgres::Config::from(self.pool.config.clone()).connect(NoTls)?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        // A restore that stopped half-way (its process killed after the old
        // schema was set aside) leaves the marker in `public`; migrating
        // would make an empty registry and serve it.
        if !restoring && restore_pending(&mut tx)? {
            return Err(StorageError::RestoreInterrupted);
        }
        // No NOTICE that the version table exists, at every start.
        tx.batch_execute("SET LOCAL client_min_messages = warning")?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        let found: Option<i32> = tx
            .query_opt("SELECT max(version) FROM schema_version", &[])?
            .and_then(|r| r.get(0));
        let found = found.unwrap_or(0);
        let supported = MIGRATIONS.len() as i32;
        if found > supported {
            return Err(StorageError::TooNew {
                found: found.into(),
                supported: supported.into(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i32 + 1;
            tx.batch_execute(sql)?;
            tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version])?;
            tracing::info!(version, "applied PostgreSQL storage migration");
        }
        tx.commit()?;
        Ok(())
    }

    fn read(&self) -> Result<Pooled<'_>, StorageError> {
        self.pool.get()
    }

    fn begin_tx(&self) -> Result<PgTx<'_>, StorageError> {
        let mut conn = self.pool.get()?;
        conn.conn().batch("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        Ok(PgTx {
            conn,
            open: true,
            offices: HashSet::new(),
            registry_locked: false,
            issued: HashMap::new(),
            counters: HashMap::new(),
            absent: HashSet::new(),
            no_code: HashSet::new(),
        })
    }
}

fn to_i64(v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(|_| StorageError::Corrupt("number out of range"))
}

fn to_u64(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt("negative number where none can be"))
}

fn parse_uuid(s: &str) -> Result<Uuid, StorageError> {
    Uuid::parse_str(s).map_err(|_| StorageError::Corrupt("a stored id is not a UUID"))
}

fn opt_uuid(s: Option<String>) -> Result<Option<Uuid>, StorageError> {
    s.map(|s| parse_uuid(&s)).transpose()
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], StorageError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| StorageError::Corrupt("a stored key or hash is not hex"))?;
    Ok(out)
}

fn parse_kidc(s: &str) -> Result<Kidc, StorageError> {
    Kidc::parse(s).map_err(|_| StorageError::Corrupt("issued kidc does not parse"))
}

fn opt_kidc(s: Option<String>) -> Result<Option<Kidc>, StorageError> {
    s.map(|s| parse_kidc(&s)).transpose()
}

fn stored_roles(text: &str) -> Result<Roles, StorageError> {
    Roles::from_stored(text).ok_or(StorageError::Corrupt("unknown role in the stored roster"))
}

const DEVICE_COLUMNS: &str = "device_id, office, public_key, enrolled_at, revoked_at, last_seq, last_hash, \
     last_sync_at, last_device_clock_ms, clock_skew_ms, clock_flagged_at, refused_seq, refused_code, refused_at, last_request_counter, \
     lineage, clone_refusals, clone_refused_at, adoptions, unblock_seq, \
     outbox_change_sets, outbox_records, app_version, feed_sent_cursor";

fn device_row(r: &Row) -> Result<Device, StorageError> {
    Ok(Device {
        device_id: parse_uuid(r.get(0))?,
        office: r.get(1),
        public_key: parse_hex(r.get(2))?,
        enrolled_at_ms: r.get(3),
        revoked_at_ms: r.get(4),
        last_seq: to_u64(r.get(5))?,
        last_hash: parse_hex(r.get(6))?,
        last_sync_at_ms: r.get(7),
        last_device_clock_ms: r.get(8),
        clock_skew_ms: r.get(9),
        clock_flagged_at_ms: r.get(10),
        refused: match (
            r.get::<_, Option<i64>>(11),
            r.get::<_, Option<String>>(12),
            r.get(13),
        ) {
            (Some(seq), Some(code), Some(at_ms)) => Some(DeviceRefusal {
                seq: to_u64(seq)?,
                code,
                at_ms,
            }),
            _ => None,
        },
        last_request_counter: to_u64(r.get(14))?,
        lineage: r.get::<_, Option<&str>>(15).map(parse_hex).transpose()?,
        clone_refusals: to_u64(r.get(16))?,
        clone_refused_at_ms: r.get(17),
        adoptions: to_u64(r.get(18))?,
        unblock_seq: r.get::<_, Option<i64>>(19).map(to_u64).transpose()?,
        report: match (
            r.get::<_, Option<i64>>(20),
            r.get::<_, Option<i64>>(21),
            r.get::<_, Option<String>>(22),
        ) {
            (Some(change_sets), Some(records), Some(app_version)) => Some(TabletReport {
                change_sets_waiting: to_u64(change_sets)?,
                records_waiting: to_u64(records)?,
                app_version,
            }),
            _ => None,
        },
        feed_sent_cursor: r.get::<_, Option<i64>>(23).map(to_u64).transpose()?,
    })
}

fn list_devices(c: &mut Conn) -> Result<Vec<Device>, StorageError> {
    c.query(
        &format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY enrolled_at, device_id"),
        &[],
    )?
    .iter()
    .map(device_row)
    .collect()
}

fn token(c: &mut Conn, token_hash: &str) -> Result<Option<TokenRow>, StorageError> {
    let Some(r) = c.opt(
        "SELECT office, created_at, expires_at, used_at, mac_key, device_id, public_key
         FROM enrollment_tokens WHERE token_hash = $1",
        &[&token_hash],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(TokenRow {
        office: r.get(0),
        created_at_ms: r.get(1),
        expires_at_ms: r.get(2),
        used_at_ms: r.get(3),
        mac_key: r.get::<_, Option<&str>>(4).map(parse_hex).transpose()?,
        used_by: match (r.get::<_, Option<&str>>(5), r.get::<_, Option<&str>>(6)) {
            (Some(d), Some(k)) => Some((parse_uuid(d)?, parse_hex(k)?)),
            _ => None,
        },
    }))
}

fn hold_row(r: &Row) -> Result<HoldRow, StorageError> {
    Ok(HoldRow {
        record_id: parse_uuid(r.get(0))?,
        office: r.get(1),
        reason: r.get(2),
        since: r.get(3),
    })
}

const API_KEY_COLUMNS: &str = "id, name, scope, key_hash, created_at, revoked_at";

fn api_key_row(r: &Row) -> Result<ApiKeyRow, StorageError> {
    Ok(ApiKeyRow {
        id: parse_uuid(r.get(0))?,
        name: r.get(1),
        scope: r.get(2),
        key_hash: r.get(3),
        created_at_ms: r.get(4),
        revoked_at_ms: r.get(5),
    })
}

const NOTIFICATION_COLUMNS: &str = "notification_id, kind, source_system, source_reference, commune, \
     payload, api_key_id, received_at, registered_record_id, registered_at";

fn notification_row(r: &Row) -> Result<StoredNotification, StorageError> {
    Ok(StoredNotification {
        notification_id: parse_uuid(r.get(0))?,
        kind: r.get(1),
        source_system: r.get(2),
        source_reference: r.get(3),
        commune: r.get(4),
        payload: r.get(5),
        api_key_id: parse_uuid(r.get(6))?,
        received_at_ms: r.get(7),
        registered_record_id: opt_uuid(r.get(8))?,
        registered_at_ms: r.get(9),
    })
}

const STAFF_COLUMNS: &str = "office, staff_id, staff_key, roles, pin_hash, added_at, updated_at, removed_at";

fn staff_row(r: &Row) -> Result<StaffMember, StorageError> {
    Ok(StaffMember {
        office: r.get(0),
        staff_id: r.get(1),
        staff_key: r.get(2),
        roles: stored_roles(r.get(3))?,
        pin_hash: r.get(4),
        added_at_ms: r.get(5),
        updated_at_ms: r.get(6),
        removed_at_ms: r.get(7),
    })
}

fn staff(c: &mut Conn, office: &str, staff: &str) -> Result<Option<StaffMember>, StorageError> {
    c.opt(
        &format!("SELECT {STAFF_COLUMNS} FROM staff WHERE office = $1 AND staff_key = $2"),
        &[&office, &staff_key(staff)],
    )?
    .as_ref()
    .map(staff_row)
    .transpose()
}

fn roster(c: &mut Conn, office: &str) -> Result<Vec<StaffMember>, StorageError> {
    c.query(
        &format!("SELECT {STAFF_COLUMNS} FROM staff WHERE office = $1 ORDER BY staff_key"),
        &[&office],
    )?
    .iter()
    .map(staff_row)
    .collect()
}

fn staff_role_at(c: &mut Conn, office: &str, staff: &str, at_ms: i64) -> Result<Option<Roles>, StorageError> {
    let Some(r) = c.opt(
        "SELECT event, roles FROM staff_history WHERE office = $1 AND staff_key = $2 AND at <= $3
         ORDER BY at DESC, id DESC LIMIT 1",
        &[&office, &staff_key(staff), &at_ms],
    )?
    else {
        return Ok(None);
    };
    match StaffEvent::parse(r.get(0)) {
        Some(StaffEvent::Removed) => Ok(None),
        Some(_) => Ok(Some(stored_roles(r.get(1))?)),
        None => Err(StorageError::Corrupt("unknown staff history event")),
    }
}

fn append_staff_event(
    c: &mut Conn,
    member: &StaffMember,
    event: StaffEvent,
    by: &str,
    at_ms: i64,
) -> Result<(), StorageError> {
    c.exec(
        "INSERT INTO staff_history (office, staff_key, staff_id, event, roles, at, by_operator)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &member.office,
            &member.staff_key,
            &member.staff_id,
            &event.as_str(),
            &member.roles.to_stored(),
            &at_ms,
            &by,
        ],
    )?;
    Ok(())
}

const PERSON_COLUMNS: &str = "p.person_id, p.kidc, p.family_name, p.given_name, p.family_name_latin, \
     p.given_name_latin, p.sex, p.date_of_birth, p.place_of_birth_kind, p.place_of_birth_facility, \
     p.place_of_birth_village, p.nationality, p.citizenship, p.marital_status, p.residence_village_code, \
     p.date_of_death, p.death_record_id, p.first_seq, p.last_seq";

fn person_row(r: &Row) -> Result<RegistryPerson, StorageError> {
    Ok(RegistryPerson {
        person_id: parse_uuid(r.get(0))?,
        kidc: opt_kidc(r.get(1))?,
        family_name: r.get(2),
        given_name: r.get(3),
        family_name_latin: r.get(4),
        given_name_latin: r.get(5),
        sex: r.get(6),
        date_of_birth: r.get(7),
        place_of_birth_kind: r.get(8),
        place_of_birth_facility: r.get(9),
        place_of_birth_village: r.get(10),
        nationality: r.get(11),
        citizenship: r.get(12),
        marital_status: r.get(13),
        residence_village_code: r.get(14),
        date_of_death: r.get(15),
        death_record_id: opt_uuid(r.get(16))?,
        first_seq: to_u64(r.get(17))?,
        last_seq: to_u64(r.get(18))?,
    })
}

/// A person by a unique column (`person_id` or `kidc`).
fn person_where(c: &mut Conn, column: &str, value: &str) -> Result<Option<RegistryPerson>, StorageError> {
    c.opt(
        &format!("SELECT {PERSON_COLUMNS} FROM registry_persons p WHERE p.{column} = $1"),
        &[&value],
    )?
    .as_ref()
    .map(person_row)
    .transpose()
}

const MARRIAGE_COLUMNS: &str =
    "marriage_id, spouse_a, spouse_b, date_of_marriage, place_village, ended_on, ended_by, end_record_id";

fn marriage_row(r: &Row) -> Result<RegistryMarriage, StorageError> {
    Ok(RegistryMarriage {
        marriage_id: parse_uuid(r.get(0))?,
        spouse_a: parse_uuid(r.get(1))?,
        spouse_b: parse_uuid(r.get(2))?,
        date_of_marriage: r.get(3),
        place_village: r.get(4),
        ended_on: r.get(5),
        ended_by: r.get(6),
        end_record_id: opt_uuid(r.get(7))?,
    })
}

fn registry_entry(c: &mut Conn, person: RegistryPerson) -> Result<RegistryEntry, StorageError> {
    let id = person.person_id.to_string();
    let documents = c
        .query(
            "SELECT kind, number FROM registry_documents WHERE person_id = $1 ORDER BY seq, kind, number",
            &[&id],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut relatives = |sql: &str| -> Result<Vec<RegistryRelative>, StorageError> {
        c.query(sql, &[&id])?
            .iter()
            .map(|r| {
                Ok(RegistryRelative {
                    person: person_row(r)?,
                    relation: r.get(19),
                })
            })
            .collect()
    };
    let parents = relatives(&format!(
        "SELECT {PERSON_COLUMNS}, l.relation FROM registry_parents l
         JOIN registry_persons p ON p.person_id = l.parent_id
         WHERE l.child_id = $1 ORDER BY l.seq, l.ord"
    ))?;
    let children = relatives(&format!(
        "SELECT {PERSON_COLUMNS}, l.relation FROM registry_parents l
         JOIN registry_persons p ON p.person_id = l.child_id
         WHERE l.parent_id = $1 ORDER BY l.seq, l.ord"
    ))?;
    let marriages = c
        .query(
            &format!(
                "SELECT {MARRIAGE_COLUMNS} FROM registry_marriages WHERE spouse_a = $1 OR spouse_b = $1
                 ORDER BY date_of_marriage, marriage_id"
            ),
            &[&id],
        )?
        .iter()
        .map(marriage_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut spouses = Vec::with_capacity(marriages.len());
    for m in &marriages {
        let other = if m.spouse_a == person.person_id {
            m.spouse_b
        } else {
            m.spouse_a
        };
        spouses.push(
            person_where(c, "person_id", &other.to_string())?.ok_or(StorageError::Corrupt(
                "a spouse of a registry marriage is missing",
            ))?,
        );
    }
    let marital_history = c
        .query(
            "SELECT seq, status, since FROM registry_marital_history WHERE person_id = $1 ORDER BY seq",
            &[&id],
        )?
        .iter()
        .map(|r| {
            Ok(RegistryMaritalEntry {
                seq: to_u64(r.get(0))?,
                status: r.get(1),
                since: r.get(2),
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let events = c
        .query(
            "SELECT e.seq, e.record_id, e.kind, e.registration_number, e.registered_at, l.role
             FROM registry_person_events l JOIN registry_events e ON e.seq = l.seq
             WHERE l.person_id = $1 ORDER BY l.seq, l.role",
            &[&id],
        )?
        .iter()
        .map(|r| {
            Ok(RegistryPersonEvent {
                seq: to_u64(r.get(0))?,
                record_id: parse_uuid(r.get(1))?,
                kind: r.get(2),
                registration_number: r.get(3),
                registered_at_ms: r.get(4),
                role: r.get(5),
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    Ok(RegistryEntry {
        person,
        documents,
        parents,
        children,
        marriages,
        spouses,
        marital_history,
        events,
    })
}

/// One row as canonical text, as the SQLite backend writes it: a JSON
/// array of its values (integers as numbers, text as strings).
fn canonical_row(r: &Row) -> Result<String, StorageError> {
    let mut values = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let t = column.type_();
        values.push(if *t == Type::INT8 {
            r.get::<_, Option<i64>>(i)
                .map_or(serde_json::Value::Null, serde_json::Value::from)
        } else if *t == Type::INT4 {
            r.get::<_, Option<i32>>(i)
                .map_or(serde_json::Value::Null, serde_json::Value::from)
        } else if *t == Type::INT2 {
            r.get::<_, Option<i16>>(i)
                .map_or(serde_json::Value::Null, serde_json::Value::from)
        } else if *t == Type::TEXT {
            r.get::<_, Option<String>>(i)
                .map_or(serde_json::Value::Null, serde_json::Value::from)
        } else {
            return Err(StorageError::Corrupt("a registry column of an unexpected type"));
        });
    }
    Ok(serde_json::Value::Array(values).to_string())
}

fn registry_dump(c: &mut Conn) -> Result<RegistryDump, StorageError> {
    let mut persons_hash: BTreeMap<String, Sha256> = BTreeMap::new();
    for (table, columns, persons, order) in super::REGISTRY_DUMP_TABLES {
        let rows = c.query(&format!("SELECT {columns} FROM {table} ORDER BY {order}"), &[])?;
        for r in &rows {
            let line = format!("{table} {}\n", canonical_row(r)?);
            for &i in *persons {
                let id: String = r.get(i);
                persons_hash.entry(id).or_default().update(line.as_bytes());
            }
        }
    }
    let mut dump = RegistryDump {
        persons: persons_hash
            .into_iter()
            .map(|(id, h)| (id, h.finalize().into()))
            .collect(),
        ..RegistryDump::default()
    };
    let rows = c.query(
        "SELECT seq, record_id, kind, registration_number, registered_at, office, event, kidc,
             amends_record_id, amends_kidc, late FROM registry_events ORDER BY seq",
        &[],
    )?;
    for r in &rows {
        let row = canonical_row(r)?;
        dump.events
            .insert(to_u64(r.get(0))?, Sha256::digest(row.as_bytes()).into());
    }
    Ok(dump)
}

fn registry_events_after(
    c: &mut Conn,
    seq: u64,
    limit: usize,
) -> Result<Vec<RegistryEventRow>, StorageError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    c.query(
        "SELECT seq, record_id, kind, registration_number, registered_at, office, event, kidc,
             amends_record_id, amends_kidc, late
         FROM registry_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&to_i64(seq)?, &limit],
    )?
    .iter()
    .map(|r| {
        Ok(RegistryEventRow {
            seq: to_u64(r.get(0))?,
            record_id: parse_uuid(r.get(1))?,
            kind: r.get(2),
            registration_number: r.get(3),
            registered_at_ms: r.get(4),
            office: r.get(5),
            event: r.get(6),
            kidc: opt_kidc(r.get(7))?,
            amends_record_id: opt_uuid(r.get(8))?,
            amends_kidc: opt_kidc(r.get(9))?,
            late: r.get::<_, i16>(10) != 0,
        })
    })
    .collect()
}

impl Storage for PostgresStorage {
    fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StorageError> {
        let mut tx = self.begin_tx()?;
        // The registry lock first (module docs): a sync group writes for
        // many offices, and one holding offices while waiting for the
        // registry would deadlock with another server's group holding the
        // registry while waiting for one of those offices.
        tx.lock_registry()?;
        Ok(Box::new(tx))
    }

    fn concurrent_writers(&self) -> bool {
        true
    }

    fn list_devices(&self) -> Result<Vec<Device>, StorageError> {
        list_devices(self.read()?.conn())
    }

    fn device(&self, device_id: Uuid) -> Result<Option<Device>, StorageError> {
        self.read()?
            .conn()
            .opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"),
                &[&device_id.to_string()],
            )?
            .as_ref()
            .map(device_row)
            .transpose()
    }

    fn feed_waiting_since(&self, device_id: Uuid, cursor: u64) -> Result<Option<i64>, StorageError> {
        // `server_changes_since`'s rows, the first only.
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        Ok(self
            .read()?
            .conn()
            .opt(
                "SELECT s.created_at
                 FROM devices d JOIN server_changes s ON s.feed_office = d.office
                 WHERE d.device_id = $1 AND s.cursor > $2
                   AND ((s.office IS NULL AND s.device_id = $1)
                        OR (s.office IS NOT NULL AND s.cursor > d.feed_floor
                            AND (s.kind = 'server' OR s.device_id <> $1)))
                 ORDER BY s.cursor LIMIT 1",
                &[&device_id.to_string(), &cursor],
            )?
            .map(|r| r.get(0)))
    }

    fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, StorageError> {
        token(self.read()?.conn(), token_hash)
    }

    fn issuances(&self) -> Result<Vec<(Kidc, Uuid)>, StorageError> {
        let mut pooled = self.read()?;
        let rows = pooled
            .conn()
            .query("SELECT kidc, record_id FROM kidc_issuance", &[])?;
        rows.iter()
            .map(|r| Ok((parse_kidc(r.get(0))?, parse_uuid(r.get(1))?)))
            .collect()
    }

    fn issuance_count(&self) -> Result<u64, StorageError> {
        let n: i64 = self
            .read()?
            .conn()
            .one("SELECT count(*) FROM kidc_issuance", &[])?
            .get(0);
        to_u64(n)
    }

    fn registration_numbers(&self) -> Result<Vec<(String, Uuid, i64)>, StorageError> {
        let mut pooled = self.read()?;
        let rows = pooled.conn().query(
            "SELECT registration_number, record_id, registered_at FROM registry_events ORDER BY seq",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.get(0), parse_uuid(r.get(1))?, r.get(2))))
            .collect()
    }

    fn registration_number_count(&self) -> Result<u64, StorageError> {
        let n: i64 = self
            .read()?
            .conn()
            .one("SELECT count(*) FROM registry_events", &[])?
            .get(0);
        to_u64(n)
    }

    fn holds(&self) -> Result<Vec<HoldRow>, StorageError> {
        self.read()?
            .conn()
            .query(
                "SELECT record_id, office, reason, since FROM holds WHERE released_at IS NULL
                 ORDER BY since, record_id",
                &[],
            )?
            .iter()
            .map(hold_row)
            .collect()
    }

    fn roster(&self, office: &str) -> Result<Vec<StaffMember>, StorageError> {
        roster(self.read()?.conn(), office)
    }

    fn staff_role_at(&self, office: &str, staff: &str, at_ms: i64) -> Result<Option<Roles>, StorageError> {
        staff_role_at(self.read()?.conn(), office, staff, at_ms)
    }

    fn staff_history(&self, office: &str) -> Result<Vec<StaffHistoryEntry>, StorageError> {
        self.read()?
            .conn()
            .query(
                "SELECT staff_key, event, roles, at FROM staff_history WHERE office = $1 ORDER BY at, id",
                &[&office],
            )?
            .iter()
            .map(|r| {
                Ok(StaffHistoryEntry {
                    staff_key: r.get(0),
                    event: StaffEvent::parse(r.get(1))
                        .ok_or(StorageError::Corrupt("unknown staff history event"))?,
                    roles: stored_roles(r.get(2))?,
                    at_ms: r.get(3),
                })
            })
            .collect()
    }

    fn api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StorageError> {
        self.read()?
            .conn()
            .opt(
                &format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"),
                &[&key_hash],
            )?
            .as_ref()
            .map(api_key_row)
            .transpose()
    }

    fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StorageError> {
        self.read()?
            .conn()
            .query(
                &format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"),
                &[],
            )?
            .iter()
            .map(api_key_row)
            .collect()
    }

    fn staff_removals(&self) -> Result<Vec<StaffRemoval>, StorageError> {
        Ok(self
            .read()?
            .conn()
            .query(
                "SELECT office, staff_key, at, by_operator FROM staff_history WHERE event = 'removed'
                 ORDER BY at, id",
                &[],
            )?
            .iter()
            .map(|r| StaffRemoval {
                office: r.get(0),
                staff_key: r.get(1),
                removed_at_ms: r.get(2),
                by: r.get(3),
            })
            .collect())
    }

    fn pending_notifications(&self, commune: &str) -> Result<Vec<StoredNotification>, StorageError> {
        self.read()?
            .conn()
            .query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                     WHERE commune = $1 AND registered_record_id IS NULL
                     ORDER BY received_at, notification_id"
                ),
                &[&commune],
            )?
            .iter()
            .map(notification_row)
            .collect()
    }

    fn registered_notifications(&self, since_ms: i64) -> Result<Vec<StoredNotification>, StorageError> {
        self.read()?
            .conn()
            .query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                     WHERE registered_at >= $1 ORDER BY registered_at, notification_id"
                ),
                &[&since_ms],
            )?
            .iter()
            .map(notification_row)
            .collect()
    }

    fn unregistered_notifications(
        &self,
        received_before_ms: Option<i64>,
    ) -> Result<Vec<StoredNotification>, StorageError> {
        self.read()?
            .conn()
            .query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                     WHERE registered_record_id IS NULL AND received_at < $1
                     ORDER BY received_at, notification_id"
                ),
                &[&received_before_ms.unwrap_or(i64::MAX)],
            )?
            .iter()
            .map(notification_row)
            .collect()
    }

    fn sync_log(&self) -> Result<(), StorageError> {
        // A commit is durable when it returns.
        Ok(())
    }

    fn registry_entry(&self, kidc: &Kidc) -> Result<Option<RegistryEntry>, StorageError> {
        let mut pooled = self.read()?;
        let c = pooled.conn();
        // One snapshot for the person and their relations.
        c.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let read = (|| match person_where(c, "kidc", kidc.as_str())? {
            Some(p) => Ok(Some(registry_entry(c, p)?)),
            None => Ok(None),
        })();
        end_read(&mut pooled, read)
    }

    fn registry_dump(&self) -> Result<RegistryDump, StorageError> {
        let mut pooled = self.read()?;
        pooled
            .conn()
            .batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let read = registry_dump(pooled.conn());
        end_read(&mut pooled, read)
    }

    fn registration_stats(&self, year: Option<i32>) -> Result<Vec<RegistrationStat>, StorageError> {
        self.read()?
            .conn()
            .query(
                "SELECT office, kind, count(*), sum(late)::BIGINT FROM registry_events
                 WHERE $1::INTEGER IS NULL OR substr(registration_number, 8, 4) = lpad($1::INTEGER::TEXT, 4, '0')
                 GROUP BY office, kind ORDER BY office, kind",
                &[&year],
            )?
            .iter()
            .map(|r| {
                Ok(RegistrationStat {
                    office: r.get(0),
                    kind: r.get(1),
                    registered: to_u64(r.get(2))?,
                    late: to_u64(r.get(3))?,
                })
            })
            .collect()
    }

    fn registry_snapshot(
        &self,
        each: &mut dyn FnMut(&[RegistryEventRow]) -> Result<(), StorageError>,
    ) -> Result<RegistryDump, StorageError> {
        let mut pooled = self.read()?;
        pooled
            .conn()
            .batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let read = (|| {
            let c = pooled.conn();
            let dump = registry_dump(c)?;
            let mut after = 0;
            loop {
                let rows = registry_events_after(c, after, 1000)?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                each(&rows)?;
            }
            Ok(dump)
        })();
        end_read(&mut pooled, read)
    }
}

/// Ends a read transaction; a connection whose transaction cannot be
/// ended is not reused.
fn end_read<T>(pooled: &mut Pooled<'_>, read: Result<T, StorageError>) -> Result<T, StorageError> {
    if pooled.conn().batch("ROLLBACK").is_err() {
        pooled.discard();
    }
    read
}

/// A write transaction on one pooled connection.
struct PgTx<'a> {
    conn: Pooled<'a>,
    open: bool,
    /// Offices whose lock this transaction holds.
    offices: HashSet<String>,
    registry_locked: bool,
    /// Codes of the issuance log this transaction read or wrote, by
    /// record: the log never changes a row, so only a rollback to a
    /// savepoint makes one stale (one round trip less per record).
    issued: HashMap<Uuid, Kidc>,
    /// Registration counters this transaction read or wrote, by office
    /// and year: under the registry lock no other transaction writes one,
    /// so the next number is counted here and its write deferred (stale
    /// only after a rollback to a savepoint, which clears it).
    counters: HashMap<(String, i32), i64>,
    /// Records known not to be stored, and records known to have no code
    /// in the issuance log, as [`WriteTx::set_aside_among`] found them
    /// for a change set (one query instead of two per record): under the
    /// registry lock only this transaction writes either table, and its
    /// own writes update the sets; a rollback to a savepoint clears them.
    absent: HashSet<Uuid>,
    no_code: HashSet<Uuid>,
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if self.open && self.conn.conn.is_some() && {
            // Nothing deferred is worth sending before a rollback.
            self.conn.conn().deferred.clear();
            self.conn.conn().batch("ROLLBACK").is_err()
        } {
            tracing::error!("rollback failed; the connection is closed");
            self.conn.discard();
        }
    }
}

impl PgTx<'_> {
    fn c(&mut self) -> &mut Conn {
        self.conn.conn()
    }

    /// Takes the office lock (module docs, 2) unless already held.
    fn lock_office(&mut self, office: &str) -> Result<(), StorageError> {
        if self.offices.contains(office) {
            return Ok(());
        }
        let c = self.c();
        c.defer(
            "INSERT INTO feed_counters (office, last) VALUES ($1, 0) ON CONFLICT (office) DO NOTHING",
            params![office.to_owned()],
        )?;
        c.one(
            "SELECT last FROM feed_counters WHERE office = $1 FOR UPDATE",
            &[&office],
        )?;
        self.offices.insert(office.to_owned());
        Ok(())
    }

    /// Takes the registry lock (module docs, 1) unless already held.
    fn lock_registry(&mut self) -> Result<(), StorageError> {
        if !self.registry_locked {
            self.c()
                .one("SELECT pg_advisory_xact_lock($1)::TEXT", &[&REGISTRY_LOCK])?;
            self.registry_locked = true;
        }
        Ok(())
    }
}

impl WriteTx for PgTx<'_> {
    fn savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError> {
        // Sent with the next statement that needs an answer.
        self.c().defer_simple(format!("SAVEPOINT {}", sp.name()));
        Ok(())
    }

    fn release_savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError> {
        self.c().batch(&format!("RELEASE SAVEPOINT {}", sp.name()))?;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError> {
        let name = sp.name();
        // What was deferred since the savepoint goes with it: an error of
        // one of those is moot once the rollback succeeds. (Those deferred
        // before it were sent when the savepoint before was released.)
        let deferred = self.c().flush();
        if let Err(e) = self
            .c()
            .batch(&format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"))
        {
            return Err(deferred.err().unwrap_or(e));
        }
        // Locks taken since the savepoint may have gone with it: take them
        // again when needed (taking a lock already held is harmless).
        self.offices.clear();
        self.registry_locked = false;
        self.issued.clear();
        self.counters.clear();
        self.absent.clear();
        self.no_code.clear();
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StorageError> {
        self.commit_unsynced()
    }

    fn commit_unsynced(mut self: Box<Self>) -> Result<(), StorageError> {
        // A statement that failed outside a savepoint aborted the
        // transaction, and PostgreSQL answers its COMMIT with a rollback,
        // not an error: ask first, so that a lost write is never reported
        // as committed.
        self.c().batch("SELECT 1")?;
        let result = self.c().batch("COMMIT");
        self.open = false;
        if let Err(e) = result {
            // The outcome of a COMMIT whose answer was lost is unknown;
            // the connection is not reused.
            self.conn.discard();
            return Err(e);
        }
        Ok(())
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .c()
            .opt("SELECT value FROM server_meta WHERE key = $1", &[&key])?
            .map(|r| r.get(0)))
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StorageError> {
        self.c().exec(
            "INSERT INTO server_meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }

    fn delete_meta(&mut self, key: &str) -> Result<(), StorageError> {
        self.c().exec("DELETE FROM server_meta WHERE key = $1", &[&key])?;
        Ok(())
    }

    fn feed_heads(&mut self) -> Result<Vec<FeedHead>, StorageError> {
        self.c()
            .query("SELECT office, last FROM feed_counters ORDER BY office", &[])?
            .iter()
            .map(|r| {
                Ok(FeedHead {
                    office: Some(r.get(0)),
                    last: to_u64(r.get(1))?,
                })
            })
            .collect()
    }

    fn raise_feed_heads(&mut self, heads: &[FeedHead]) -> Result<(), StorageError> {
        for h in heads {
            let Some(office) = &h.office else {
                return Err(StorageError::Database(
                    "a feed head without an office: PostgreSQL counts each office's feed apart".into(),
                ));
            };
            self.c().exec(
                "INSERT INTO feed_counters (office, last) VALUES ($1, $2)
                 ON CONFLICT (office) DO UPDATE SET last = GREATEST(feed_counters.last, excluded.last)",
                &[office, &to_i64(h.last)?],
            )?;
        }
        Ok(())
    }

    fn jump_request_counters(&mut self, by: u64) -> Result<u64, StorageError> {
        self.c().exec(
            "UPDATE devices SET last_request_counter = last_request_counter + $1",
            &[&to_i64(by)?],
        )
    }

    fn expire_unused_tokens(&mut self, now_ms: i64) -> Result<u64, StorageError> {
        self.c().exec(
            "UPDATE enrollment_tokens SET expires_at = $1 WHERE used_at IS NULL AND expires_at > $1",
            &[&now_ms],
        )
    }

    fn insert_token(&mut self, token_hash: &str, row: &TokenRow) -> Result<(), StorageError> {
        self.c().exec(
            "INSERT INTO enrollment_tokens (token_hash, office, created_at, expires_at, mac_key)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &token_hash,
                &row.office,
                &row.created_at_ms,
                &row.expires_at_ms,
                &row.mac_key.map(hex::encode),
            ],
        )?;
        Ok(())
    }

    fn token(&mut self, token_hash: &str) -> Result<Option<TokenRow>, StorageError> {
        // FOR UPDATE: two enrolments with one token serialize on it.
        let c = self.c();
        c.opt(
            "SELECT 1 FROM enrollment_tokens WHERE token_hash = $1 FOR UPDATE",
            &[&token_hash],
        )?;
        token(c, token_hash)
    }

    fn use_token(
        &mut self,
        token_hash: &str,
        device_id: Uuid,
        public_key: &[u8; 32],
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        Ok(self.c().exec(
            "UPDATE enrollment_tokens SET used_at = $2, device_id = $3, public_key = $4
             WHERE token_hash = $1 AND used_at IS NULL",
            &[
                &token_hash,
                &at_ms,
                &device_id.to_string(),
                &hex::encode(public_key),
            ],
        )? == 1)
    }

    fn insert_device(&mut self, d: &NewDevice) -> Result<(), StorageError> {
        self.lock_office(&d.office)?;
        self.c().exec(
            "INSERT INTO devices (device_id, office, public_key, enrolled_at, last_seq, last_hash)
             VALUES ($1, $2, $3, $4, 0, $5)",
            &[
                &d.device_id.to_string(),
                &d.office,
                &hex::encode(d.public_key),
                &d.enrolled_at_ms,
                &hex::encode([0u8; 32]),
            ],
        )?;
        Ok(())
    }

    fn device(&mut self, device_id: Uuid) -> Result<Option<Device>, StorageError> {
        // The office lock first, then the chain lock (module docs): the
        // office is read without a lock (a device never changes office).
        let office: Option<String> = self
            .c()
            .opt(
                "SELECT office FROM devices WHERE device_id = $1",
                &[&device_id.to_string()],
            )?
            .map(|r| r.get(0));
        let Some(office) = office else { return Ok(None) };
        self.lock_office(&office)?;
        self.c()
            .opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1 FOR UPDATE"),
                &[&device_id.to_string()],
            )?
            .as_ref()
            .map(device_row)
            .transpose()
    }

    fn revoke_device(&mut self, device_id: Uuid, at_ms: i64) -> Result<bool, StorageError> {
        Ok(self.c().exec(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, $2) WHERE device_id = $1",
            &[&device_id.to_string(), &at_ms],
        )? == 1)
    }

    fn record_sync(&mut self, device_id: Uuid, seen: &SyncSeen) -> Result<bool, StorageError> {
        let report = seen.report.as_ref();
        let n = self.c().exec(
            "UPDATE devices SET last_sync_at = $2, last_device_clock_ms = $3, clock_skew_ms = $4,
                 clock_flagged_at = CASE WHEN $5 THEN $2 ELSE clock_flagged_at END,
                 last_request_counter = $6,
                 outbox_change_sets = $7, outbox_records = $8, app_version = $9
             WHERE device_id = $1 AND last_request_counter < $6",
            &[
                &device_id.to_string(),
                &seen.at_ms,
                &seen.device_clock_ms,
                &seen.skew_ms,
                &seen.flagged,
                &to_i64(seen.counter)?,
                &report.map(|r| to_i64(r.change_sets_waiting)).transpose()?,
                &report.map(|r| to_i64(r.records_waiting)).transpose()?,
                &report.map(|r| r.app_version.as_str()),
            ],
        )?;
        Ok(n == 1)
    }

    fn set_feed_sent(&mut self, device_id: Uuid, cursor: u64) -> Result<(), StorageError> {
        self.c().defer(
            "UPDATE devices SET feed_sent_cursor = $2 WHERE device_id = $1",
            params![device_id.to_string(), to_i64(cursor)?],
        )?;
        Ok(())
    }

    fn advance_device(&mut self, device_id: Uuid, seq: u64, hash: &Hash) -> Result<(), StorageError> {
        self.c().defer(
            "UPDATE devices SET last_seq = $2, last_hash = $3,
                 refused_seq = NULL, refused_code = NULL, refused_at = NULL
             WHERE device_id = $1",
            params![device_id.to_string(), to_i64(seq)?, hex::encode(hash)],
        )?;
        Ok(())
    }

    fn set_lineage(
        &mut self,
        device_id: Uuid,
        lineage: &[u8; 16],
        adopted: bool,
    ) -> Result<(), StorageError> {
        self.c().defer(
            "UPDATE devices SET lineage = $2, adoptions = adoptions + $3 WHERE device_id = $1",
            params![device_id.to_string(), hex::encode(lineage), i64::from(adopted)],
        )?;
        Ok(())
    }

    fn record_clone_refusal(&mut self, device_id: Uuid, at_ms: i64) -> Result<(), StorageError> {
        self.c().exec(
            "UPDATE devices SET clone_refusals = clone_refusals + 1, clone_refused_at = $2 WHERE device_id = $1",
            &[&device_id.to_string(), &at_ms],
        )?;
        Ok(())
    }

    fn record_refusal(&mut self, device_id: Uuid, refusal: &DeviceRefusal) -> Result<(), StorageError> {
        self.c().exec(
            "UPDATE devices SET refused_seq = $2, refused_code = $3, refused_at = $4 WHERE device_id = $1",
            &[
                &device_id.to_string(),
                &to_i64(refusal.seq)?,
                &refusal.code,
                &refusal.at_ms,
            ],
        )?;
        Ok(())
    }

    fn logged_hash(&mut self, device_id: Uuid, seq: u64) -> Result<Option<Hash>, StorageError> {
        self.c()
            .opt(
                "SELECT hash FROM change_set_log WHERE device_id = $1 AND seq = $2",
                &[&device_id.to_string(), &to_i64(seq)?],
            )?
            .map(|r| parse_hex(r.get(0)))
            .transpose()
    }

    fn append_change_set(&mut self, e: &LogEntry<'_>) -> Result<(), StorageError> {
        self.c().defer(
            "INSERT INTO change_set_log (device_id, seq, hash, signed, received_at) VALUES ($1, $2, $3, $4, $5)",
            params![
                e.device_id.to_string(),
                to_i64(e.seq)?,
                hex::encode(e.hash),
                e.signed.to_vec(),
                e.received_at_ms,
            ],
        )?;
        Ok(())
    }

    fn load_record(&mut self, record_id: Uuid) -> Result<Option<StoredRecord>, StorageError> {
        if self.absent.contains(&record_id) {
            return Ok(None);
        }
        let id = record_id.to_string();
        let office: Option<String> = self
            .c()
            .opt("SELECT office FROM records WHERE record_id = $1", &[&id])?
            .map(|r| r.get(0));
        let Some(office) = office else { return Ok(None) };
        self.lock_office(&office)?;
        let Some(r) = self.c().opt(
            "SELECT office, origin_device, kind, status, doc, updated_at FROM records WHERE record_id = $1 FOR UPDATE",
            &[&id],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(StoredRecord {
            record_id,
            office: r.get(0),
            origin_device: parse_uuid(r.get(1))?,
            kind: r.get(2),
            status: r.get(3),
            doc: r.get(4),
            updated_at_ms: r.get(5),
        }))
    }

    fn insert_record(&mut self, rec: &StoredRecord) -> Result<(), StorageError> {
        self.absent.remove(&rec.record_id);
        self.lock_office(&rec.office)?;
        self.c().defer(
            "INSERT INTO records (record_id, office, origin_device, kind, status, doc, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            params![
                rec.record_id.to_string(),
                rec.office.clone(),
                rec.origin_device.to_string(),
                rec.kind.clone(),
                rec.status.clone(),
                rec.doc.clone(),
                rec.updated_at_ms,
            ],
        )?;
        Ok(())
    }

    fn update_record(&mut self, rec: &StoredRecord) -> Result<(), StorageError> {
        self.c().defer_rows(
            "UPDATE records SET status = $2, doc = $3, updated_at = $4 WHERE record_id = $1",
            params![
                rec.record_id.to_string(),
                rec.status.clone(),
                rec.doc.clone(),
                rec.updated_at_ms,
            ],
            1,
            "updated record does not exist",
        )
    }

    fn issued_kidc(&mut self, record_id: Uuid) -> Result<Option<Kidc>, StorageError> {
        if let Some(k) = self.issued.get(&record_id) {
            return Ok(Some(*k));
        }
        if self.no_code.contains(&record_id) {
            return Ok(None);
        }
        let found = self
            .c()
            .opt(
                "SELECT kidc FROM kidc_issuance WHERE record_id = $1",
                &[&record_id.to_string()],
            )?
            .map(|r| parse_kidc(r.get(0)))
            .transpose()?;
        if let Some(k) = &found {
            self.issued.insert(record_id, *k);
        }
        Ok(found)
    }

    fn insert_issuance(&mut self, i: &Issuance<'_>) -> Result<bool, StorageError> {
        self.no_code.remove(&i.record_id);
        // Both unique keys (the code, the record): a concurrent insert of
        // the same code waits for the other transaction, then does nothing.
        let inserted = self.c().exec(
            "INSERT INTO kidc_issuance (kidc, record_id, category, issued_at, device_id, seq, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &i.kidc.as_str(),
                &i.record_id.to_string(),
                &i32::from(i.category),
                &i.issued_at_ms,
                &i.device_id.to_string(),
                &to_i64(i.seq)?,
                &i.reason,
            ],
        )? == 1;
        if inserted {
            self.issued.insert(i.record_id, *i.kidc);
        }
        Ok(inserted)
    }

    fn append_feed(
        &mut self,
        to: FeedTo<'_>,
        record_id: Uuid,
        change: &[u8],
        at_ms: i64,
    ) -> Result<(), StorageError> {
        // One round trip: the office's next cursor (under its lock, taken
        // first) and the row, in one statement.
        let record = record_id.to_string();
        match to {
            FeedTo::Office(office) => {
                self.lock_office(office)?;
                // The counter's step is rolled back with the transaction
                // if the record is not there.
                self.c().defer_rows(
                    "WITH c AS (UPDATE feed_counters SET last = last + 1 WHERE office = $1 RETURNING last)
                     INSERT INTO server_changes (feed_office, cursor, device_id, record_id, change, created_at, office, kind)
                     SELECT $1, c.last, r.origin_device, $2, $3, $4, $1, 'server'
                     FROM c, records r WHERE r.record_id = $2",
                    params![office.to_owned(), record, change.to_vec(), at_ms],
                    1,
                    "a feed row for a record not stored",
                )?;
            }
            FeedTo::OfficeExcept { office, from } => {
                // Only if another device of the office is there to read it
                // (no number is taken otherwise).
                self.lock_office(office)?;
                self.c().defer(
                    "WITH c AS (UPDATE feed_counters SET last = last + 1
                                WHERE office = $1
                                  AND EXISTS (SELECT 1 FROM devices
                                              WHERE office = $1 AND device_id <> $2 AND revoked_at IS NULL)
                                RETURNING last)
                     INSERT INTO server_changes (feed_office, cursor, device_id, record_id, change, created_at, office, kind)
                     SELECT $1, c.last, $2, $3, $4, $5, $1, 'tablet' FROM c",
                    params![office.to_owned(), from.to_string(), record, change.to_vec(), at_ms],
                )?;
            }
        }
        Ok(())
    }

    fn seed_office_feed(&mut self, device_id: Uuid, office: &str, at_ms: i64) -> Result<u64, StorageError> {
        self.lock_office(office)?;
        let c = self.c();
        let floor: i64 = c
            .one("SELECT last FROM feed_counters WHERE office = $1", &[&office])?
            .get(0);
        let device = device_id.to_string();
        c.exec(
            "UPDATE devices SET feed_floor = $2 WHERE device_id = $1",
            &[&device, &floor],
        )?;
        let n = c.exec(
            "INSERT INTO server_changes (feed_office, cursor, device_id, record_id, change, created_at, kind)
             SELECT $2, $4 + row_number() OVER (ORDER BY created_at, record_id),
                    $1, record_id, doc, $3, 'snapshot'
             FROM records WHERE office = $2",
            &[&device, &office, &at_ms, &floor],
        )?;
        c.exec(
            "UPDATE feed_counters SET last = $2 WHERE office = $1",
            &[&office, &(floor + to_i64(n)?)],
        )?;
        Ok(n)
    }

    fn server_changes_since(
        &mut self,
        device_id: Uuid,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<ServerChange>, StorageError> {
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.c()
            .query(
                "SELECT s.cursor, s.record_id, s.change
                 FROM devices d JOIN server_changes s ON s.feed_office = d.office
                 WHERE d.device_id = $1 AND s.cursor > $2
                   AND ((s.office IS NULL AND s.device_id = $1)
                        OR (s.office IS NOT NULL AND s.cursor > d.feed_floor
                            AND (s.kind = 'server' OR s.device_id <> $1)))
                 ORDER BY s.cursor LIMIT $3",
                &[&device_id.to_string(), &cursor, &limit],
            )?
            .iter()
            .map(|r| {
                Ok(ServerChange {
                    cursor: to_u64(r.get(0))?,
                    record_id: parse_uuid(r.get(1))?,
                    change: r.get(2),
                })
            })
            .collect()
    }

    fn list_devices(&mut self) -> Result<Vec<Device>, StorageError> {
        list_devices(self.c())
    }

    fn insert_hold(
        &mut self,
        record_id: Uuid,
        office: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        self.c().exec(
            "INSERT INTO holds (record_id, office, reason, since) VALUES ($1, $2, $3, $4)
             ON CONFLICT (record_id) DO UPDATE SET reason = excluded.reason, since = excluded.since, released_at = NULL",
            &[&record_id.to_string(), &office, &reason, &at_ms],
        )?;
        Ok(())
    }

    fn hold(&mut self, record_id: Uuid) -> Result<Option<HoldRow>, StorageError> {
        self.c()
            .opt(
                "SELECT record_id, office, reason, since FROM holds WHERE record_id = $1 AND released_at IS NULL",
                &[&record_id.to_string()],
            )?
            .as_ref()
            .map(hold_row)
            .transpose()
    }

    fn next_registration_seq(&mut self, office: &str, year: i32, above: u64) -> Result<u64, StorageError> {
        let above = i64::try_from(above).map_err(|_| StorageError::Corrupt("registration counter"))?;
        let key = (office.to_owned(), year);
        if self.registry_locked
            && let Some(last) = self.counters.get(&key).copied()
        {
            let next = last.max(above) + 1;
            self.c().defer_rows(
                "UPDATE registration_counters SET last = $3 WHERE office = $1 AND year = $2",
                params![key.0.clone(), year, next],
                1,
                "a registration counter went missing",
            )?;
            self.counters.insert(key, next);
            return to_u64(next);
        }
        let next: i64 = self
            .c()
            .one(
                "INSERT INTO registration_counters (office, year, last) VALUES ($1, $2, $3::BIGINT + 1)
                 ON CONFLICT (office, year) DO UPDATE
                     SET last = GREATEST(registration_counters.last, $3::BIGINT) + 1
                 RETURNING last",
                &[&office, &year, &above],
            )?
            .get(0);
        self.counters.insert(key, next);
        to_u64(next)
    }

    fn raise_registration_counter(&mut self, office: &str, year: i32, seq: u64) -> Result<(), StorageError> {
        let seq = i64::try_from(seq).map_err(|_| StorageError::Corrupt("registration counter"))?;
        self.counters.remove(&(office.to_owned(), year));
        self.c().exec(
            "INSERT INTO registration_counters (office, year, last) VALUES ($1, $2, $3)
             ON CONFLICT (office, year) DO UPDATE SET last = GREATEST(registration_counters.last, excluded.last)",
            &[&office, &year, &seq],
        )?;
        Ok(())
    }

    fn audit_release(&mut self, a: &ReleaseAudit<'_>) -> Result<(), StorageError> {
        let c = self.c();
        c.exec(
            "INSERT INTO hold_releases (record_id, hold_reason, by_operator, why, at, outcome)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &a.record_id.to_string(),
                &a.hold_reason,
                &a.by,
                &a.why,
                &a.at_ms,
                &a.outcome,
            ],
        )?;
        if a.outcome == "released" {
            c.exec(
                "UPDATE holds SET released_at = $2 WHERE record_id = $1",
                &[&a.record_id.to_string(), &a.at_ms],
            )?;
        }
        Ok(())
    }

    fn request_unblock(&mut self, a: &UnblockAudit<'_>) -> Result<(), StorageError> {
        let c = self.c();
        c.exec(
            "INSERT INTO unblocks (device_id, seq, code, by_operator, why, at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&a.device_id.to_string(), &to_i64(a.seq)?, &a.code, &a.by, &a.why, &a.at_ms],
        )?;
        c.exec(
            "UPDATE devices SET unblock_seq = $2 WHERE device_id = $1",
            &[&a.device_id.to_string(), &to_i64(a.seq)?],
        )?;
        Ok(())
    }

    fn set_aside(&mut self, e: &LogEntry<'_>, records: &[Uuid]) -> Result<(), StorageError> {
        let device = e.device_id.to_string();
        let seq = to_i64(e.seq)?;
        let c = self.c();
        c.exec(
            "INSERT INTO set_aside (device_id, seq, hash, signed, at) VALUES ($1, $2, $3, $4, $5)",
            &[&device, &seq, &hex::encode(e.hash), &e.signed, &e.received_at_ms],
        )?;
        for r in records {
            c.exec(
                "INSERT INTO set_aside_records (record_id, device_id, seq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&r.to_string(), &device, &seq],
            )?;
        }
        c.exec(
            "UPDATE devices SET last_seq = $2, last_hash = $3, unblock_seq = NULL,
                 refused_seq = NULL, refused_code = NULL, refused_at = NULL
             WHERE device_id = $1",
            &[&device, &seq, &hex::encode(e.hash)],
        )?;
        Ok(())
    }

    fn set_aside_hash(&mut self, device_id: Uuid, seq: u64) -> Result<Option<Hash>, StorageError> {
        self.c()
            .opt(
                "SELECT hash FROM set_aside WHERE device_id = $1 AND seq = $2",
                &[&device_id.to_string(), &to_i64(seq)?],
            )?
            .map(|r| parse_hex(r.get(0)))
            .transpose()
    }

    fn is_set_aside(&mut self, record_id: Uuid) -> Result<bool, StorageError> {
        Ok(self
            .c()
            .opt(
                "SELECT 1 FROM set_aside_records WHERE record_id = $1",
                &[&record_id.to_string()],
            )?
            .is_some())
    }

    fn set_aside_among(&mut self, records: &[Uuid]) -> Result<HashSet<Uuid>, StorageError> {
        // With what `load_record` and `issued_kidc` would ask of each
        // record next (see `PgTx::absent`).
        let ids: Vec<String> = records.iter().map(Uuid::to_string).collect();
        let rows = self.c().query(
            "SELECT i.id, s.record_id IS NOT NULL, r.record_id IS NOT NULL, k.kidc
             FROM unnest($1::TEXT[]) AS i(id)
             LEFT JOIN set_aside_records s ON s.record_id = i.id
             LEFT JOIN records r ON r.record_id = i.id
             LEFT JOIN kidc_issuance k ON k.record_id = i.id",
            &[&ids],
        )?;
        let mut set_aside = HashSet::new();
        for r in &rows {
            let id = parse_uuid(r.get(0))?;
            if r.get::<_, bool>(1) {
                set_aside.insert(id);
            }
            if !r.get::<_, bool>(2) {
                self.absent.insert(id);
            }
            match r.get::<_, Option<String>>(3) {
                Some(k) => {
                    self.issued.insert(id, parse_kidc(&k)?);
                }
                None => {
                    self.no_code.insert(id);
                }
            }
        }
        Ok(set_aside)
    }

    fn staff(&mut self, office: &str, staff_id: &str) -> Result<Option<StaffMember>, StorageError> {
        staff(self.c(), office, staff_id)
    }

    fn put_staff(&mut self, put: &StaffPut<'_>) -> Result<StaffPutOutcome, StorageError> {
        let c = self.c();
        // The person's row, locked if it exists: two operators changing one
        // person serialize.
        c.opt(
            "SELECT 1 FROM staff WHERE office = $1 AND staff_key = $2 FOR UPDATE",
            &[&put.office, &staff_key(put.staff_id)],
        )?;
        let existing = staff(c, put.office, put.staff_id)?;
        let Some((member, events)) = plan_staff_put(existing.as_ref(), put) else {
            return Ok(StaffPutOutcome::PinNeeded);
        };
        if events.is_empty() {
            return Ok(StaffPutOutcome::Done { member, events });
        }
        c.exec(
            "INSERT INTO staff (office, staff_key, staff_id, roles, pin_hash, added_at, updated_at, removed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (office, staff_key) DO UPDATE SET staff_id = excluded.staff_id,
                 roles = excluded.roles, pin_hash = excluded.pin_hash, added_at = excluded.added_at,
                 updated_at = excluded.updated_at, removed_at = excluded.removed_at",
            &[
                &member.office,
                &member.staff_key,
                &member.staff_id,
                &member.roles.to_stored(),
                &member.pin_hash,
                &member.added_at_ms,
                &member.updated_at_ms,
                &member.removed_at_ms,
            ],
        )?;
        for event in &events {
            append_staff_event(c, &member, *event, put.by, member.updated_at_ms)?;
        }
        Ok(StaffPutOutcome::Done { member, events })
    }

    fn remove_staff(
        &mut self,
        office: &str,
        staff_id: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<Option<StaffMember>, StorageError> {
        let c = self.c();
        c.opt(
            "SELECT 1 FROM staff WHERE office = $1 AND staff_key = $2 FOR UPDATE",
            &[&office, &staff_key(staff_id)],
        )?;
        let Some(mut member) = staff(c, office, staff_id)?.filter(StaffMember::is_active) else {
            return Ok(None);
        };
        let at = at_ms.max(member.updated_at_ms);
        c.exec(
            "UPDATE staff SET roles = '', pin_hash = NULL, updated_at = $3, removed_at = $3
             WHERE office = $1 AND staff_key = $2",
            &[&office, &member.staff_key, &at],
        )?;
        member.roles = Roles::NONE;
        member.pin_hash = None;
        member.updated_at_ms = at;
        member.removed_at_ms = Some(at);
        append_staff_event(c, &member, StaffEvent::Removed, by, at)?;
        Ok(Some(member))
    }

    fn roster(&mut self, office: &str) -> Result<Vec<StaffMember>, StorageError> {
        roster(self.c(), office)
    }

    fn staff_role_at(
        &mut self,
        office: &str,
        staff_id: &str,
        at_ms: i64,
    ) -> Result<Option<Roles>, StorageError> {
        staff_role_at(self.c(), office, staff_id, at_ms)
    }

    fn insert_api_key(&mut self, k: &ApiKeyRow) -> Result<(), StorageError> {
        self.c().exec(
            "INSERT INTO api_keys (id, name, scope, key_hash, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &k.id.to_string(),
                &k.name,
                &k.scope,
                &k.key_hash,
                &k.created_at_ms,
                &k.revoked_at_ms,
            ],
        )?;
        Ok(())
    }

    fn revoke_api_key(&mut self, id: Uuid, at_ms: i64) -> Result<bool, StorageError> {
        Ok(self.c().exec(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
            &[&id.to_string(), &at_ms],
        )? == 1)
    }

    fn insert_notification(&mut self, n: &StoredNotification) -> Result<bool, StorageError> {
        Ok(self.c().exec(
            "INSERT INTO notifications (notification_id, kind, source_system, source_reference, commune,
                 payload, api_key_id, received_at, registered_record_id, registered_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            &[
                &n.notification_id.to_string(),
                &n.kind,
                &n.source_system,
                &n.source_reference,
                &n.commune,
                &n.payload,
                &n.api_key_id.to_string(),
                &n.received_at_ms,
                &n.registered_record_id.map(|r| r.to_string()),
                &n.registered_at_ms,
            ],
        )? == 1)
    }

    fn register_notification(
        &mut self,
        notification_id: Uuid,
        record_id: Uuid,
        office: &str,
        kind: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        Ok(self.c().exec(
            "UPDATE notifications SET registered_record_id = $2, registered_at = $5
             WHERE notification_id = $1 AND commune = $3 AND kind = $4 AND registered_record_id IS NULL",
            &[
                &notification_id.to_string(),
                &record_id.to_string(),
                &office,
                &kind,
                &at_ms,
            ],
        )? == 1)
    }

    fn notification_by_source(
        &mut self,
        system: &str,
        reference: &str,
    ) -> Result<Option<StoredNotification>, StorageError> {
        self.c()
            .opt(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                     WHERE source_system = $1 AND source_reference = $2"
                ),
                &[&system, &reference],
            )?
            .as_ref()
            .map(notification_row)
            .transpose()
    }

    fn add_server_actor(&mut self, actor_hex: &str, at_ms: i64) -> Result<(), StorageError> {
        self.c().exec(
            "INSERT INTO server_actors (actor_id, first_used) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&actor_hex, &at_ms],
        )?;
        Ok(())
    }

    fn server_actors(&mut self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .c()
            .query("SELECT actor_id FROM server_actors", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn registry_append_event(&mut self, e: &RegistryEventRow) -> Result<Option<u64>, StorageError> {
        self.lock_registry()?;
        // The next number and the row in one round trip (numbered under
        // the registry lock, so no two transactions take one number).
        let seq: Option<i64> = self
            .c()
            .opt(
                "INSERT INTO registry_events (seq, record_id, kind, registration_number, registered_at, office,
                     event, kidc, amends_record_id, amends_kidc, late)
                 SELECT COALESCE(max(seq), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM registry_events
                 ON CONFLICT (record_id) DO NOTHING
                 RETURNING seq",
                &[
                &e.record_id.to_string(),
                &e.kind,
                &e.registration_number,
                &e.registered_at_ms,
                &e.office,
                &e.event,
                &e.kidc.as_ref().map(Kidc::as_str),
                &e.amends_record_id.map(|u| u.to_string()),
                &e.amends_kidc.as_ref().map(Kidc::as_str),
                &i16::from(e.late),
            ],
        )?
            .map(|r| r.get(0));
        seq.map(to_u64).transpose()
    }

    fn registry_events_after(
        &mut self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<RegistryEventRow>, StorageError> {
        registry_events_after(self.c(), seq, limit)
    }

    fn registry_person(&mut self, person_id: Uuid) -> Result<Option<RegistryPerson>, StorageError> {
        self.lock_registry()?;
        person_where(self.c(), "person_id", &person_id.to_string())
    }

    fn registry_person_by_kidc(&mut self, kidc: &Kidc) -> Result<Option<RegistryPerson>, StorageError> {
        self.lock_registry()?;
        person_where(self.c(), "kidc", kidc.as_str())
    }

    fn registry_person_by_document(
        &mut self,
        kind: &str,
        number: &str,
    ) -> Result<Option<RegistryPerson>, StorageError> {
        self.lock_registry()?;
        self.c()
            .opt(
                &format!(
                    "SELECT {PERSON_COLUMNS} FROM registry_documents d JOIN registry_persons p USING (person_id)
                     WHERE d.kind = $1 AND d.number = $2"
                ),
                &[&kind, &number],
            )?
            .as_ref()
            .map(person_row)
            .transpose()
    }

    fn registry_put_person(&mut self, p: &RegistryPerson) -> Result<(), StorageError> {
        self.lock_registry()?;
        self.c().defer(
            "INSERT INTO registry_persons (person_id, kidc, family_name, given_name, family_name_latin,
                 given_name_latin, sex, date_of_birth, place_of_birth_kind, place_of_birth_facility,
                 place_of_birth_village, nationality, citizenship, marital_status, residence_village_code,
                 date_of_death, death_record_id, first_seq, last_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
             ON CONFLICT (person_id) DO UPDATE SET kidc = excluded.kidc, family_name = excluded.family_name,
                 given_name = excluded.given_name, family_name_latin = excluded.family_name_latin,
                 given_name_latin = excluded.given_name_latin, sex = excluded.sex,
                 date_of_birth = excluded.date_of_birth, place_of_birth_kind = excluded.place_of_birth_kind,
                 place_of_birth_facility = excluded.place_of_birth_facility,
                 place_of_birth_village = excluded.place_of_birth_village, nationality = excluded.nationality,
                 citizenship = excluded.citizenship, marital_status = excluded.marital_status,
                 residence_village_code = excluded.residence_village_code,
                 date_of_death = excluded.date_of_death, death_record_id = excluded.death_record_id,
                 first_seq = excluded.first_seq, last_seq = excluded.last_seq",
            params![
                p.person_id.to_string(),
                p.kidc.as_ref().map(|k| k.as_str().to_owned()),
                p.family_name.clone(),
                p.given_name.clone(),
                p.family_name_latin.clone(),
                p.given_name_latin.clone(),
                p.sex.clone(),
                p.date_of_birth.clone(),
                p.place_of_birth_kind.clone(),
                p.place_of_birth_facility.clone(),
                p.place_of_birth_village.clone(),
                p.nationality.clone(),
                p.citizenship.clone(),
                p.marital_status.clone(),
                p.residence_village_code.clone(),
                p.date_of_death.clone(),
                p.death_record_id.map(|u| u.to_string()),
                to_i64(p.first_seq)?,
                to_i64(p.last_seq)?,
            ],
        )?;
        Ok(())
    }

    fn registry_add_document(
        &mut self,
        person_id: Uuid,
        kind: &str,
        number: &str,
        seq: u64,
    ) -> Result<bool, StorageError> {
        self.lock_registry()?;
        Ok(self.c().exec(
            "INSERT INTO registry_documents (kind, number, person_id, seq) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&kind, &number, &person_id.to_string(), &to_i64(seq)?],
        )? == 1)
    }

    fn registry_add_parent(
        &mut self,
        child_id: Uuid,
        parent_id: Uuid,
        relation: &str,
        seq: u64,
    ) -> Result<(), StorageError> {
        self.lock_registry()?;
        self.c().defer(
            "INSERT INTO registry_parents (child_id, parent_id, relation, seq) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            params![
                child_id.to_string(),
                parent_id.to_string(),
                relation.to_owned(),
                to_i64(seq)?,
            ],
        )?;
        Ok(())
    }

    fn registry_add_marital(
        &mut self,
        person_id: Uuid,
        seq: u64,
        status: &str,
        since: Option<&str>,
    ) -> Result<(), StorageError> {
        self.lock_registry()?;
        self.c().defer(
            "INSERT INTO registry_marital_history (person_id, seq, status, since) VALUES ($1, $2, $3, $4)
             ON CONFLICT (person_id, seq) DO UPDATE SET status = excluded.status, since = excluded.since",
            params![
                person_id.to_string(),
                to_i64(seq)?,
                status.to_owned(),
                since.map(str::to_owned)
            ],
        )?;
        Ok(())
    }

    fn registry_link_event(&mut self, person_id: Uuid, seq: u64, role: &str) -> Result<(), StorageError> {
        self.lock_registry()?;
        self.c().defer(
            "INSERT INTO registry_person_events (person_id, seq, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            params![person_id.to_string(), to_i64(seq)?, role.to_owned()],
        )?;
        Ok(())
    }

    fn registry_put_marriage(&mut self, m: &RegistryMarriage) -> Result<(), StorageError> {
        self.lock_registry()?;
        self.c().exec(
            "INSERT INTO registry_marriages (marriage_id, spouse_a, spouse_b, date_of_marriage, place_village,
                 ended_on, ended_by, end_record_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (marriage_id) DO UPDATE SET spouse_a = excluded.spouse_a, spouse_b = excluded.spouse_b,
                 date_of_marriage = excluded.date_of_marriage, place_village = excluded.place_village,
                 ended_on = excluded.ended_on, ended_by = excluded.ended_by,
                 end_record_id = excluded.end_record_id",
            &[
                &m.marriage_id.to_string(),
                &m.spouse_a.to_string(),
                &m.spouse_b.to_string(),
                &m.date_of_marriage,
                &m.place_village,
                &m.ended_on,
                &m.ended_by,
                &m.end_record_id.map(|u| u.to_string()),
            ],
        )?;
        Ok(())
    }

    fn registry_current_marriage(
        &mut self,
        person_id: Uuid,
    ) -> Result<Option<RegistryMarriage>, StorageError> {
        self.lock_registry()?;
        self.c()
            .opt(
                &format!(
                    "SELECT * FROM (
                         SELECT {MARRIAGE_COLUMNS} FROM registry_marriages WHERE spouse_a = $1 AND ended_on IS NULL
                         UNION ALL
                         SELECT {MARRIAGE_COLUMNS} FROM registry_marriages WHERE spouse_b = $1 AND ended_on IS NULL
                     ) m ORDER BY date_of_marriage DESC, marriage_id LIMIT 1"
                ),
                &[&person_id.to_string()],
            )?
            .as_ref()
            .map(marriage_row)
            .transpose()
    }

    fn registry_clear(&mut self) -> Result<(), StorageError> {
        self.lock_registry()?;
        self.c().batch(
            "DELETE FROM registry_person_events; DELETE FROM registry_marital_history;
             DELETE FROM registry_marriages; DELETE FROM registry_parents;
             DELETE FROM registry_documents; DELETE FROM registry_persons;",
        )?;
        Ok(())
    }

    fn registry_dump(&mut self) -> Result<RegistryDump, StorageError> {
        registry_dump(self.c())
    }
}
