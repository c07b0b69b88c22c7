//! The tablet's pipelined sync (`Registrar::sync_pipelined`, what `crvs
//! sync` runs): the next request leaves while the last answer is stored.
//! Against the real server in process, through a transport that can be
//! used from two threads and that can fail a request, before or after the
//! server commits it.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::ThreadId;

use crvs_core::crypto::KdfParams;
use crvs_core::{Error, Registrar, SyncProgress, SyncState, Transport};
use crvs_schema::wire::{EnrollRequest, EnrollResponse, SignedChangeSet, SyncRequest, SyncResponse};
use crvs_server::{Server, admin};

const COMMUNE: &str = "171003";

fn fixture(name: &str) -> String {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// What one request carried and what its answer said.
#[derive(Debug, Clone)]
struct Exchange {
    thread: ThreadId,
    cursor: u64,
    seqs: Vec<u64>,
    /// The change sets it asked about (their answer was lost).
    resume: Option<(u64, u64)>,
    /// What the tablet reported waiting behind it: change sets, records.
    waiting: Option<(u64, u64)>,
    /// The answer's cursor, when one came back.
    answer_cursor: Option<u64>,
}

/// The real server behind a transport that two threads may use.
struct Piped {
    server: Server,
    log: Mutex<Vec<Exchange>>,
    /// Fail this request (1-based) before the server sees it.
    fail_before: AtomicU32,
    /// Drop the answer of this request (1-based) after the server
    /// committed it.
    lose_answer: AtomicU32,
}

impl Piped {
    fn open(dir: &Path) -> Piped {
        Piped {
            server: Server::open(dir).expect("server opens"),
            log: Mutex::default(),
            fail_before: AtomicU32::new(0),
            lose_answer: AtomicU32::new(0),
        }
    }

    fn log(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, dir: &Path, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
        conn.query_row(sql, [], |r| r.get(0)).expect("count")
    }
}

impl Transport for Piped {
    fn enroll(&self, request: &EnrollRequest) -> crvs_core::Result<EnrollResponse> {
        admin::enroll(&self.server, request).map_err(|e| Error::Protocol(e.to_string()))
    }

    fn sync(&self, bytes: &[u8]) -> crvs_core::Result<Vec<u8>> {
        let request = SyncRequest::decode_unverified(bytes).expect("a well-formed request");
        let seqs = request
            .change_sets
            .iter()
            .map(|c| {
                SignedChangeSet::from_bytes(c.clone())
                    .expect("a change set")
                    .seq()
            })
            .collect();
        let n = {
            let mut log = self.log.lock().unwrap();
            log.push(Exchange {
                thread: std::thread::current().id(),
                cursor: request.cursor,
                seqs,
                resume: request.resume.map(|r| (r.from, r.to)),
                waiting: request
                    .report
                    .as_ref()
                    .map(|r| (r.change_sets_waiting, r.records_waiting)),
                answer_cursor: None,
            });
            log.len() as u32
        };
        if self.fail_before.load(Ordering::SeqCst) == n {
            return Err(Error::Offline("connection refused".into()));
        }
        let answer = self
            .server
            .handle_sync(bytes)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if self.lose_answer.load(Ordering::SeqCst) == n {
            return Err(Error::Offline("connection reset while reading the answer".into()));
        }
        let opened =
            SyncResponse::open(&answer, &self.server.signing_key().verifying_key()).expect("a signed answer");
        self.log.lock().unwrap()[n as usize - 1].answer_cursor = Some(opened.cursor);
        Ok(answer)
    }
}

fn quiet() -> impl Fn(SyncProgress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}

/// An enrolled tablet holding 1,040 drafts (eleven change sets: two
/// requests) and, last, the first `approved` births of the sample set
/// that are not dated after today, approved (they come back with codes).
fn setup(dir: &Path, approved: usize) -> (Registrar, Piped) {
    let server = Piped::open(&dir.join("server"));
    let tablet = Registrar::init_with_kdf(
        dir.join("tablet"),
        &"correct horse battery staple".into(),
        COMMUNE,
        KdfParams::INSECURE_FOR_TESTS,
    )
    .expect("store");
    let token = admin::create_token(&server.server, COMMUNE, 3_600_000).expect("token");
    tablet
        .enroll_with(&server, "http://in-process", &token.token)
        .expect("enrols");
    let draft = fixture("birth-no-given-name.json");
    for _ in 0..1040 {
        tablet.register_birth(&draft, "clerk").unwrap();
    }
    let sample = fixture("births-sample.jsonl");
    // The sample's births dated after today are refused by the tablet.
    let ids: Vec<_> = sample
        .lines()
        .filter_map(|line| tablet.register_birth(line, "clerk").ok())
        .take(approved)
        .collect();
    assert_eq!(ids.len(), approved);
    for id in ids {
        tablet.verify(&id, "checker").unwrap();
        tablet.approve(&id, "registrar").unwrap();
    }
    (tablet, server)
}

fn codes_held(tablet: &Registrar) -> usize {
    tablet.list().unwrap().iter().filter(|r| r.kidc.is_some()).count()
}

#[test]
fn the_second_request_leaves_from_another_thread_with_the_first_answers_cursor_and_the_next_change_sets() {
    let dir = tempfile::tempdir().unwrap();
    let (tablet, server) = setup(dir.path(), 20);
    let report = tablet.sync_pipelined(&server, &quiet()).unwrap();
    assert_eq!((report.pushed, report.records_pushed), (11, 1060));
    assert_eq!(report.kidcs_received, 20);
    let log = server.log();
    assert_eq!(log.len(), 2, "ten change sets a request: {log:?}");
    assert_eq!(log[0].seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(log[1].seqs, vec![11]);
    // Sent ahead: from the thread that waits for it, while the caller's
    // thread stored the first answer.
    assert_eq!(log[0].thread, std::thread::current().id());
    assert_ne!(log[1].thread, log[0].thread);
    assert_eq!(
        Some(log[1].cursor),
        log[0].answer_cursor,
        "the first answer's cursor"
    );
    // Each request reports what waits behind it: change set 11 and its 60
    // records, then nothing.
    assert_eq!((log[0].waiting, log[1].waiting), (Some((1, 60)), Some((0, 0))));
    // Everything arrived once, and every code is on the tablet.
    let db = dir.path().join("server");
    assert_eq!(server.count(&db, "SELECT COUNT(*) FROM change_set_log"), 11);
    assert_eq!(server.count(&db, "SELECT COUNT(*) FROM records"), 1060);
    assert_eq!(server.count(&db, "SELECT COUNT(*) FROM kidc_issuance"), 20);
    assert_eq!(codes_held(&tablet), 20);
    assert!(
        tablet
            .list()
            .unwrap()
            .iter()
            .all(|r| r.sync_state == SyncState::Synced)
    );
    tablet.check().unwrap();
    // Nothing left: the next sync is one empty request.
    let again = tablet.sync_pipelined(&server, &quiet()).unwrap();
    assert_eq!((again.pushed, again.requests), (0, 1));
}

#[test]
fn a_request_sent_ahead_that_fails_leaves_the_answer_before_it_stored_and_the_next_sync_sends_only_the_rest()
{
    let dir = tempfile::tempdir().unwrap();
    let (tablet, server) = setup(dir.path(), 20);
    server.fail_before.store(2, Ordering::SeqCst);
    let err = tablet.sync_pipelined(&server, &quiet()).unwrap_err();
    assert!(matches!(err, Error::Offline(_)), "{err:?}");
    // The first answer was stored while the second request failed.
    let pending = tablet
        .list()
        .unwrap()
        .iter()
        .filter(|r| r.sync_state != SyncState::Synced)
        .count();
    assert_eq!(pending, 60, "the records of change set 11");
    server.fail_before.store(0, Ordering::SeqCst);
    let report = tablet.sync_pipelined(&server, &quiet()).unwrap();
    assert_eq!((report.pushed, report.kidcs_received), (1, 20));
    let log = server.log();
    // It asks whether change set 11 arrived (it did not), then sends it.
    assert_eq!((log[2].resume, log[2].seqs.len()), (Some((11, 11)), 0));
    assert_eq!(
        (log[3].resume, &log[3].seqs),
        (None, &vec![11]),
        "only what had not arrived"
    );
    assert_eq!(log.len(), 4);
    let db = dir.path().join("server");
    assert_eq!(server.count(&db, "SELECT COUNT(*) FROM change_set_log"), 11);
    assert_eq!(server.count(&db, "SELECT COUNT(*) FROM kidc_issuance"), 20);
    assert_eq!(codes_held(&tablet), 20);
    tablet.check().unwrap();
}

#[test]
fn an_answer_lost_after_the_server_applied_a_request_sent_ahead_is_asked_about_not_sent_again_and_no_code_is_issued_twice()
 {
    let dir = tempfile::tempdir().unwrap();
    let (tablet, server) = setup(dir.path(), 20);
    server.lose_answer.store(2, Ordering::SeqCst);
    assert!(matches!(
        tablet.sync_pipelined(&server, &quiet()),
        Err(Error::Offline(_))
    ));
    assert_eq!(codes_held(&tablet), 0, "the codes were in the lost answer");
    server.lose_answer.store(0, Ordering::SeqCst);
    let report = tablet.sync_pipelined(&server, &quiet()).unwrap();
    assert_eq!(report.kidcs_received, 20);
    // One request that asks what arrived, and sends nothing again: the
    // server acknowledges change set 11 from its log, and the codes come
    // with the answer.
    let log = server.log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!((log[2].resume, log[2].seqs.len()), (Some((11, 11)), 0));
    assert_eq!(report.pushed, 1, "acknowledged now");
    let again = tablet.sync_pipelined(&server, &quiet()).unwrap();
    assert_eq!((again.requests, again.pushed), (1, 0));
    assert_eq!(server.log()[3].resume, None, "nothing left to ask about");
    let db = dir.path().join("server");
    assert_eq!(server.count(&db, "SELECT COUNT(*) FROM change_set_log"), 11);
    assert_eq!(server.count(&db, "SELECT COUNT(*) FROM kidc_issuance"), 20);
    assert_eq!(
        server.count(&db, "SELECT COUNT(DISTINCT kidc) FROM kidc_issuance"),
        20
    );
    assert_eq!(codes_held(&tablet), 20);
    tablet.check().unwrap();
}
