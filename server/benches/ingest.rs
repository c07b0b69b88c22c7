//! Ingest benchmark: signed change sets of births fed to the server over a
//! real SQLite file with `synchronous=FULL`: every answer leaves after its
//! commit.
//!
//! ```text
//! cargo bench -p crvs-server --bench ingest
//! BENCH_RECORDS=10000 BENCH_PER_CHANGE_SET=100 BENCH_CHANGE_SETS_PER_REQUEST=1 BENCH_DEVICES=2 ...
//! BENCH_HTTP=1 [BENCH_SYNC_WORKERS=8] ...   # only the HTTPS case
//! BENCH_LATER_APPROVAL=1 ...                # only the later-approval case
//! ```
//! Without settings it runs six cases, each on a fresh database, and
//! prints one JSON object per line:
//! * one tablet sending one change set per request (the slowest case);
//! * one tablet with a backlog, sending 10 change sets per request, as the
//!   sync client does (`MAX_CHANGE_SETS_PER_REQUEST`);
//! * four tablets syncing at once, each from its own thread;
//! * 100 tablets at once, each sending change sets of 1 to 5 records, one
//!   per request, as commune tablets do (`BENCH_PER_CHANGE_SET=0`);
//! * the same 100 tablets **over HTTPS** (`BENCH_HTTP=1`,
//!   `"transport":"https"`): the server's real listener and router on
//!   127.0.0.1:0 with a self-signed certificate (rcgen), on a tokio
//!   runtime (`Runtime::new()`, as `crvs-server serve`) in a background
//!   thread; each tablet is a client thread with its own
//!   `crvs_core::HttpTransport` (the tablets' ureq agent) trusting that
//!   certificate. Its connection is kept alive between requests, so the
//!   TCP and TLS handshakes are in each tablet's first request only. The
//!   limits are the defaults but for the waits that could turn a long
//!   queue into a 503 or a cut connection: `Limits::queue_timeout` (the
//!   wait for the body budget and for a sync worker), the listener's
//!   `stall_timeout` (a connection whose request waits for a worker moves
//!   no byte) and `max_connection_lifetime` are raised to 10 minutes, 10
//!   minutes and an hour. `Limits::sync_workers` stays at its default (8)
//!   unless `BENCH_SYNC_WORKERS` says otherwise; the line reports it;
//! * 100 tablets (in process) whose births are **approved later**
//!   (`BENCH_LATER_APPROVAL=1`, `"approval":"later"`): each registration
//!   first goes as submitted only (`Tablet::new_doc(office, data, &[])`) in
//!   change sets of 1 to 5 records; the verification (by "checker") and
//!   the approval (by "registrar") of those records follow as the changes
//!   since (`Tablet::changes_since`) in a change set of their own, one
//!   batch behind: register batch i, approve batch i-1, register batch
//!   i+1, ... One change set per request; the issuance then happens on
//!   the path of a record the server already stores. (The server makes no
//!   change to a valid submitted record, so the tablet has nothing to
//!   merge before it approves, and every change set can be sealed before
//!   the clock starts.) `BENCH_HTTP=1 BENCH_LATER_APPROVAL=1` runs it over
//!   HTTPS.
//!
//! The server's clock is fixed at 2027-01-31, after every bench birth, so
//! that none is held; the run asserts that every record was registered
//! with exactly one KIdC, and fails on the first refusal (or HTTP error):
//! every tablet then stops, and the panic carries the line. Each tablet
//! advances its pull cursor from each answer, as a real one does. Each
//! line reports the records registered and held (from the database) and
//! the change sets refused (from the answers), and the latency of the
//! requests (from sending the request to holding the answer's bytes, not
//! opening them). `cpu_seconds` is the whole process's: over HTTPS it
//! includes the 100 clients (their TLS and ureq).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The allocator the `crvs-server` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use automerge::AutoCommit;
use crvs_core::Transport as _;
use crvs_schema::record;
use crvs_schema::workflow::Action;
use crvs_server::Server;
use crvs_server::http::Limits;
use crvs_server::listener::ListenerConfig;
use serde_json::{Value, json};
use support::{Tablet, record_changes};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the variable is set to something other than empty or `0`.
fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    let records = env("BENCH_RECORDS", 10_000);
    let sync_workers = env("BENCH_SYNC_WORKERS", Limits::default().sync_workers).max(1);
    let set = |name| std::env::var(name).is_ok();
    let (http, later) = (flag("BENCH_HTTP"), flag("BENCH_LATER_APPROVAL"));
    // The commune workload: 100 tablets, 1 to 5 records per change set,
    // one change set per request.
    let commune = |transport, approval| Case {
        records,
        per_cs: SMALL,
        cs_per_req: 1,
        devices: 100,
        transport,
        approval,
        sync_workers,
    };
    if http || later {
        let transport = if http {
            Transport::Https
        } else {
            Transport::InProcess
        };
        let approval = if later {
            Approval::Later
        } else {
            Approval::OnTablet
        };
        run(Case {
            per_cs: env("BENCH_PER_CHANGE_SET", SMALL),
            cs_per_req: env("BENCH_CHANGE_SETS_PER_REQUEST", 1).max(1),
            devices: env("BENCH_DEVICES", 100).max(1),
            ..commune(transport, approval)
        });
    } else if set("BENCH_CHANGE_SETS_PER_REQUEST") || set("BENCH_DEVICES") {
        run(Case {
            per_cs: env("BENCH_PER_CHANGE_SET", 100),
            cs_per_req: env("BENCH_CHANGE_SETS_PER_REQUEST", 1).max(1),
            devices: env("BENCH_DEVICES", 1).max(1),
            ..commune(Transport::InProcess, Approval::OnTablet)
        });
    } else {
        let per_cs = env("BENCH_PER_CHANGE_SET", 100);
        for (cs_per_req, devices) in [(1, 1), (10, 1), (1, 4)] {
            run(Case {
                per_cs,
                cs_per_req,
                devices,
                ..commune(Transport::InProcess, Approval::OnTablet)
            });
        }
        // Commune tablets: 100 at once, each request 1 to 5 records.
        run(commune(Transport::InProcess, Approval::OnTablet));
        // The same through the real listener, over TLS.
        run(commune(Transport::Https, Approval::OnTablet));
        // Registrations approved in a later change set.
        run(commune(Transport::InProcess, Approval::Later));
    }
}

/// `BENCH_PER_CHANGE_SET=0`: change sets of 1, 2, 3, 4, 5, 1, ... records,
/// as commune tablets send them.
const SMALL: usize = 0;

/// How requests reach the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `Server::handle_sync`, called from the tablet's thread.
    InProcess,
    /// `POST /v1/sync` over TLS to the real listener.
    Https,
}

/// When a record's verification and approval reach the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Approval {
    /// In the record's first change set (approved on the tablet).
    OnTablet,
    /// In a later change set, after the record's registration.
    Later,
}

/// One run.
#[derive(Clone, Copy)]
struct Case {
    records: usize,
    /// Records per change set ([`SMALL`]: 1 to 5).
    per_cs: usize,
    cs_per_req: usize,
    devices: usize,
    transport: Transport,
    approval: Approval,
    /// `Limits::sync_workers` over HTTPS.
    sync_workers: usize,
}

/// `items` cut into change sets of `per_cs` records, or of 1 to 5 with
/// [`SMALL`].
fn change_sets_of<T>(items: &[T], per_cs: usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if per_cs == SMALL { 1 + i % 5 } else { per_cs }.min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// The change sets of one tablet's births, sealed in the order they are
/// sent.
fn sealed_change_sets(
    tablet: &mut Tablet,
    office: &str,
    births: &[Value],
    per_cs: usize,
    approval: Approval,
) -> Vec<Vec<u8>> {
    let mut sealed = Vec::new();
    match approval {
        Approval::OnTablet => {
            for batch in change_sets_of(births, per_cs) {
                let recs = batch
                    .iter()
                    .map(|b| {
                        let mut doc = tablet.new_doc(office, b, &[Action::Verify, Action::Approve]);
                        record_changes(support::new_record_id(), Tablet::document_chunk(&mut doc))
                    })
                    .collect();
                sealed.push(tablet.seal(recs));
            }
        }
        Approval::Later => {
            // Register batch i, then approve batch i - 1.
            let mut pending: Option<Vec<([u8; 16], AutoCommit)>> = None;
            for batch in change_sets_of(births, per_cs) {
                let mut docs: Vec<([u8; 16], AutoCommit)> = batch
                    .iter()
                    .map(|b| (support::new_record_id(), tablet.new_doc(office, b, &[])))
                    .collect();
                let recs = docs
                    .iter_mut()
                    .map(|(id, doc)| record_changes(*id, Tablet::document_chunk(doc)))
                    .collect();
                sealed.push(tablet.seal(recs));
                if let Some(before) = pending.replace(docs) {
                    sealed.push(approvals(tablet, before));
                }
            }
            if let Some(last) = pending {
                sealed.push(approvals(tablet, last));
            }
        }
    }
    sealed
}

/// The change set that verifies and approves `docs` (submitted earlier):
/// each record's changes since its registration.
fn approvals(tablet: &mut Tablet, docs: Vec<([u8; 16], AutoCommit)>) -> Vec<u8> {
    let recs = docs
        .into_iter()
        .map(|(id, mut doc)| {
            let heads = doc.get_heads();
            for (action, by) in [(Action::Verify, "checker"), (Action::Approve, "registrar")] {
                record::append_transition(&mut doc, &support::step(action, by)).expect("transition");
            }
            record_changes(id, Tablet::changes_since(&mut doc, &heads))
        })
        .collect();
    tablet.seal(recs)
}

/// The commune of the `i`th bench tablet: 171003 for the first, then
/// other communes of province 17.
fn commune(i: usize) -> String {
    if i == 0 {
        support::OFFICE.to_string()
    } else {
        format!("{:04}{:02}", 1710 + i / 90, 10 + i % 90)
    }
}

fn run(case: Case) {
    let Case {
        per_cs,
        cs_per_req,
        devices,
        ..
    } = case;
    let dir = tempfile::tempdir().expect("temp dir");
    // A fixed server clock, 2027-01-31 (UTC midnight): after every bench
    // birth, so that none is held for a date in the future (about 8% are
    // dated after the real today).
    let fixed: crvs_server::Clock = Arc::new(|| 1_801_353_600_000);
    let server = Arc::new(Server::open_with_clock(dir.path(), fixed).expect("server opens"));
    let births = support::bench_births(case.records);
    let records = births.len();

    // Build every request first (not timed).
    let prep = Instant::now();
    let per_device = records.div_ceil(devices);
    // Per device: its tablet and its change sets, grouped per request. The
    // requests are sealed while the clock runs, because each carries the
    // pull cursor of the answer before it, as a real tablet's does (a
    // request that never advances its cursor makes every answer resend
    // the whole feed).
    let mut plans: Vec<(Tablet, Vec<Vec<Vec<u8>>>)> = Vec::new();
    let mut change_sets = 0;
    let mut requests = 0;
    let mut wire_bytes = 0usize;
    for (i, chunk) in births.chunks(per_device).enumerate() {
        // Each tablet serves a commune of its own, as a commune office's
        // one or two tablets do: records belong to their office, and every
        // tablet of an office receives the office's records, so a hundred
        // tablets in one commune would each pull all the others' work.
        // The families live in the tablet's commune.
        let office = commune(i);
        let chunk: Vec<Value> = chunk
            .iter()
            .map(|b| {
                let mut b = b.clone();
                b["residence_village_code"] = Value::from(format!("{office}01"));
                b
            })
            .collect();
        let mut tablet = Tablet::enroll(&server, &office);
        let sealed = sealed_change_sets(&mut tablet, &office, &chunk, per_cs, case.approval);
        change_sets += sealed.len();
        wire_bytes += sealed.iter().map(Vec::len).sum::<usize>();
        let reqs: Vec<_> = sealed.chunks(cs_per_req).map(<[Vec<u8>]>::to_vec).collect();
        requests += reqs.len();
        plans.push((tablet, reqs));
    }
    let https =
        (case.transport == Transport::Https).then(|| HttpsServer::start(server.clone(), case.sync_workers));
    // One transport (one ureq agent, one connection) per tablet.
    let transports: Vec<Option<crvs_core::HttpTransport>> = plans
        .iter()
        .map(|_| {
            https
                .as_ref()
                .map(|h| crvs_core::HttpTransport::with_ca(&h.url, Some(&h.ca_pem)).expect("transport"))
        })
        .collect();
    let prep_s = prep.elapsed().as_secs_f64();

    // The first refusal or error stops every tablet.
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut refused = 0usize;
    let mut latencies: Vec<f64> = Vec::with_capacity(requests);
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter_mut()
            .zip(&transports)
            .map(|((tablet, plan), transport)| {
                let (server, stop, failures) = (&server, &stop, &failures);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(plan.len());
                    let mut refused = 0usize;
                    for change_sets in plan.drain(..) {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let req = tablet.request(change_sets);
                        let sent = Instant::now();
                        let answer = match transport {
                            None => server.handle_sync(&req).map_err(|e| format!("handle_sync: {e}")),
                            Some(t) => t.sync(&req).map_err(|e| format!("POST /v1/sync: {e}")),
                        };
                        lat.push(sent.elapsed().as_secs_f64() * 1e3);
                        let answer = match answer {
                            Ok(a) => a,
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                failures.lock().unwrap().push(e);
                                break;
                            }
                        };
                        let resp = support::open_response(server, &answer);
                        if let Some(r) = resp.refusal {
                            refused += 1;
                            stop.store(true, Ordering::Relaxed);
                            failures.lock().unwrap().push(format!("refused: {r:?}"));
                            break;
                        }
                        tablet.cursor = resp.cursor;
                    }
                    (lat, refused)
                })
            })
            .collect();
        for h in handles {
            let (lat, r) = h.join().expect("a tablet thread panicked");
            latencies.extend(lat);
            refused += r;
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let groups = server.commit_groups();
    let cpu = cpu_start.zip(cpu_seconds()).map(|(a, b)| b - a);
    drop(transports);
    let limits = https.map(HttpsServer::stop);

    let (kidcs, statuses) = tally(dir.path());
    let count = |name: &str| statuses.iter().find(|s| s.0 == name).map_or(0, |s| s.1);
    let (registered, held) = (count("registered"), count("held"));
    latencies.sort_by(f64::total_cmp);
    let mut line = json!({
        "transport": match case.transport { Transport::InProcess => "in_process", Transport::Https => "https" },
        "approval": match case.approval { Approval::OnTablet => "in_first_change_set", Approval::Later => "later" },
        "records": records,
        "requests": requests,
        "change_sets": change_sets,
        "records_per_change_set": if per_cs == SMALL { json!("1 to 5") } else { json!(per_cs) },
        "change_sets_per_request": cs_per_req,
        "devices": devices,
        "seconds": secs,
        "records_per_s": records as f64 / secs,
        "change_sets_per_s": change_sets as f64 / secs,
        "requests_per_s": requests as f64 / secs,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last(),
        },
        "cpu_seconds": cpu,
        "cpu_microseconds_per_record": cpu.map(|c| c * 1e6 / records as f64),
        "wire_bytes_per_record": wire_bytes as f64 / records as f64,
        "prepare_seconds": prep_s,
        "durability": "group commit: each answer after its group's commit and the sync of both logs",
        "registered": registered,
        "held": held,
        "refused": refused,
        "kidcs_issued": kidcs,
        "commit_groups": groups.groups,
        "requests_per_commit": groups.requests as f64 / groups.groups.max(1) as f64,
        "writer_busy_s": groups.busy.as_secs_f64(),
        "statuses": statuses.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(limits) = limits {
        line["limits"] = limits;
    }
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "the bench failed: {failures:?}\n{line}");
    assert_eq!(refused, 0, "{line}");
    assert_eq!(
        kidcs, registered,
        "every registered record has exactly one KIdC: {line}"
    );
    assert_eq!(registered, records, "every record registered: {line}");
    println!("{line}");
}

/// The nearest-rank percentile `p` of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank - 1).copied()
}

/// The server's real listener and router, over TLS, on 127.0.0.1:0, on a
/// tokio runtime in a thread of its own.
struct HttpsServer {
    url: String,
    ca_pem: String,
    limits: Value,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl HttpsServer {
    fn start(server: Arc<Server>, sync_workers: usize) -> HttpsServer {
        // A self-signed certificate for 127.0.0.1, as the tests make.
        let certs = tempfile::tempdir().expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let (crt, keyf) = (certs.path().join("s.crt"), certs.path().join("s.key"));
        std::fs::write(&crt, cert.pem()).expect("write");
        std::fs::write(&keyf, key.serialize_pem()).expect("write");
        let tls = crvs_server::listener::tls_config(&crt, &keyf).expect("tls config");
        // The defaults, but for the waits that would turn a long queue
        // into a 503 (`queue_timeout`) or a cut connection (a request
        // waiting for a worker moves no byte: `stall_timeout`).
        let limits = Limits {
            queue_timeout: Duration::from_secs(600),
            sync_workers,
            ..Limits::default()
        };
        let config = ListenerConfig {
            tls: Some(tls),
            stall_timeout: Duration::from_secs(600),
            max_connection_lifetime: Duration::from_secs(3600),
            ..ListenerConfig::default()
        };
        let described = json!({
            "sync_workers": limits.sync_workers,
            "queue_timeout_s": limits.queue_timeout.as_secs(),
            "body_budget_bytes": limits.body_budget_bytes,
            "stall_timeout_s": config.stall_timeout.as_secs(),
            "max_connection_lifetime_s": config.max_connection_lifetime.as_secs(),
            "max_connections": config.max_connections,
            "runtime_worker_threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                // As `crvs-server serve` runs it.
                let rt = tokio::runtime::Runtime::new().expect("runtime");
                rt.block_on(async move {
                    let listener = crvs_server::listener::bind("127.0.0.1:0").await.expect("bind");
                    addr_tx
                        .send(listener.local_addr().expect("address"))
                        .expect("send");
                    let router = crvs_server::http::router_with(server, limits);
                    crvs_server::listener::serve(listener, router, config, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
                });
            })
            .expect("server thread");
        let addr = addr_rx.recv().expect("the server binds");
        HttpsServer {
            url: format!("https://{addr}"),
            ca_pem: cert.pem(),
            limits: described,
            stop,
            thread,
        }
    }

    /// Stops the listener (requests in flight finish) and waits for it;
    /// its limits, for the line.
    fn stop(self) -> Value {
        let _ = self.stop.send(());
        self.thread.join().expect("the server thread panicked");
        self.limits
    }
}

/// CPU time used by this process so far (user + system), where the
/// platform tells it (Linux). On a shared, noisy machine this moves less
/// than the wall clock does.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// (KIdCs issued, record count by status).
fn tally(dir: &std::path::Path) -> (usize, Vec<(String, usize)>) {
    let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM kidc_issuance", [], |r| r.get(0))
        .expect("count");
    let mut st = conn
        .prepare("SELECT status, COUNT(*) FROM records GROUP BY status ORDER BY status")
        .expect("prepare");
    let statuses = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    (n as usize, statuses)
}
