//! Ingest benchmark: signed change sets of 100 approved births each, fed to
//! `Server::handle_sync` (no HTTP) over a real SQLite file with
//! `synchronous=FULL`: every answer leaves after its commit.
//!
//! ```text
//! cargo bench -p crvs-server --bench ingest
//! BENCH_RECORDS=10000 BENCH_PER_CHANGE_SET=100 BENCH_CHANGE_SETS_PER_REQUEST=1 BENCH_DEVICES=2 ...
//! ```
//! Without settings it runs three cases, each on a fresh database, and
//! prints one JSON object per line:
//! * one tablet sending one change set per request (the slowest case);
//! * one tablet with a backlog, sending 10 change sets per request, as the
//!   sync client does (`MAX_CHANGE_SETS_PER_REQUEST`);
//! * four tablets syncing at once, each from its own thread;
//! * 100 tablets at once, each sending change sets of 1 to 5 records, one
//!   per request, as commune tablets do (`BENCH_PER_CHANGE_SET=0`).
//!
//! The server's clock is fixed at 2027-01-31, after every bench birth, so
//! that none is held; the run asserts that every record was registered
//! with exactly one KIdC. Each tablet advances its pull cursor from each
//! answer, as a real one does.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

// The allocator the `crvs-server` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crvs_schema::workflow::Action;
use crvs_server::Server;
use support::{Tablet, record_changes};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let records = env("BENCH_RECORDS", 10_000);
    let per_cs = env("BENCH_PER_CHANGE_SET", 100);
    let set = |name| std::env::var(name).is_ok();
    if set("BENCH_CHANGE_SETS_PER_REQUEST") || set("BENCH_DEVICES") {
        let cs_per_req = env("BENCH_CHANGE_SETS_PER_REQUEST", 1);
        run(records, per_cs, cs_per_req, env("BENCH_DEVICES", 1).max(1));
    } else {
        for (cs_per_req, devices) in [(1, 1), (10, 1), (1, 4)] {
            run(records, per_cs, cs_per_req, devices);
        }
        // Commune tablets: 100 at once, each request 1 to 5 records.
        run(records, SMALL, 1, 100);
    }
}

/// `BENCH_PER_CHANGE_SET=0`: change sets of 1, 2, 3, 4, 5, 1, ... records,
/// as commune tablets send them.
const SMALL: usize = 0;

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

fn run(records: usize, per_cs: usize, cs_per_req: usize, devices: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    // A fixed server clock, 2027-01-31 (UTC midnight): after every bench
    // birth, so that none is held for a date in the future (about 8% are
    // dated after the real today).
    let fixed: crvs_server::Clock = std::sync::Arc::new(|| 1_801_353_600_000);
    let server = Server::open_with_clock(dir.path(), fixed).expect("server opens");
    let births = support::bench_births(records);
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
    let mut wire_bytes = 0usize;
    for chunk in births.chunks(per_device) {
        let mut tablet = Tablet::enroll(&server, support::OFFICE);
        let mut sealed = Vec::new();
        for batch in change_sets_of(chunk, per_cs) {
            let recs = batch
                .iter()
                .map(|b| {
                    let mut doc = tablet.new_doc(support::OFFICE, b, &[Action::Verify, Action::Approve]);
                    record_changes(support::new_record_id(), Tablet::document_chunk(&mut doc))
                })
                .collect();
            let cs = tablet.seal(recs);
            wire_bytes += cs.len();
            sealed.push(cs);
            change_sets += 1;
        }
        let requests = sealed.chunks(cs_per_req).map(<[Vec<u8>]>::to_vec).collect();
        plans.push((tablet, requests));
    }
    let prep_s = prep.elapsed().as_secs_f64();

    let cpu_start = cpu_seconds();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (tablet, plan) in &mut plans {
            let server = &server;
            s.spawn(move || {
                for change_sets in plan.drain(..) {
                    let req = tablet.request(change_sets);
                    let answer = server.handle_sync(&req).expect("sync succeeds");
                    let resp = support::open_response(server, &answer);
                    assert!(resp.refusal.is_none(), "refused: {:?}", resp.refusal);
                    tablet.cursor = resp.cursor;
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let groups = server.commit_groups();
    let cpu = cpu_start.zip(cpu_seconds()).map(|(a, b)| b - a);

    let (kidcs, statuses) = tally(dir.path());
    let registered = statuses.iter().find(|s| s.0 == "registered").map_or(0, |s| s.1);
    assert_eq!(kidcs, registered, "every registered record has exactly one KIdC");
    assert_eq!(registered, records, "every record registered: {statuses:?}");
    println!(
        "{}",
        serde_json::json!({
            "records": records,
            "change_sets": change_sets,
            "records_per_change_set": if per_cs == SMALL { serde_json::json!("1 to 5") } else { serde_json::json!(per_cs) },
            "change_sets_per_request": cs_per_req,
            "devices": devices,
            "seconds": secs,
            "records_per_s": records as f64 / secs,
            "change_sets_per_s": change_sets as f64 / secs,
            "cpu_seconds": cpu,
            "cpu_microseconds_per_record": cpu.map(|c| c * 1e6 / records as f64),
            "wire_bytes_per_record": wire_bytes as f64 / records as f64,
            "prepare_seconds": prep_s,
            "durability": "synchronous=FULL, answers after their group's commit",
            "kidcs_issued": kidcs,
            "commit_groups": groups.groups,
            "requests_per_commit": groups.requests as f64 / groups.groups.max(1) as f64,
            "writer_busy_s": groups.busy.as_secs_f64(),
            "statuses": statuses.iter().map(|(s, n)| (s.clone(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    );
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
