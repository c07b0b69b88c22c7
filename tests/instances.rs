//! Two server processes on one PostgreSQL database (issue 10), behind a
//! proxy that sends every connection to either of them at random, as a
//! load balancer would. Tablets of two offices (two tablets each) sync at
//! once, round after round. Each registration arrives once, each KIdC is
//! issued once, every tablet ends with every record of its office and its
//! code; and a server with another signing key is refused the database.
//!
//! And a deadlock: PostgreSQL rolls a sync's transaction back, the server
//! runs it again, and the tablet never sees it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crvs_e2e::{
    Backend, DATABASE_URL_FILE, Server, ServerOptions, Tablet, admin, bench_births, database_url, living_in,
    server_count, server_data,
};
use rand::RngExt;

/// Forwards each connection to one of `upstreams`, chosen at random.
struct Balancer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 2]>,
}

impl Balancer {
    fn start(upstreams: [SocketAddr; 2]) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let (s, c) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let which = rand::rng().random_range(0..2usize);
                c[which].fetch_add(1, Ordering::Relaxed);
                let Ok(server) = TcpStream::connect(upstreams[which]) else {
                    continue;
                };
                copy(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                copy(server, client);
            }
        });
        Balancer { addr, stop, counts }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn kidcs(tablet: &Tablet) -> Vec<(String, Option<String>, String)> {
    tablet.run(&["list"]).expect_ok()["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["record_id"].as_str().expect("id").to_owned(),
                r["kidc"].as_str().map(str::to_owned),
                r["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

#[test]
fn two_servers_on_one_database_issue_each_code_once_and_lose_no_registration() {
    let Some(_) = crvs_testpg::require_or_skip("two_servers_on_one_database") else {
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let first = server_data(Backend::Postgres, &root.path().join("server-1"));
    let a = Server::start(&first);
    // The second instance: its own folder, the same database and key.
    let second = root.path().join("server-2");
    std::fs::create_dir_all(&second).expect("folder");
    std::fs::copy(first.join(DATABASE_URL_FILE), second.join(DATABASE_URL_FILE)).expect("url");
    std::fs::copy(first.join("server.key"), second.join("server.key")).expect("key");
    let b = Server::start(&second);

    // A server with a key of its own is refused the database.
    let stranger = root.path().join("server-3");
    std::fs::create_dir_all(&stranger).expect("folder");
    std::fs::copy(first.join(DATABASE_URL_FILE), stranger.join(DATABASE_URL_FILE)).expect("url");
    let refused = admin(&stranger, &["enroll-token", "--commune", "171003"]);
    assert!(!refused.ok, "a server with another key enrolled a tablet");
    let message = refused.json["message"].as_str().unwrap_or_default();
    assert!(message.contains("signing key"), "{}", refused.json);

    let balancer = Balancer::start([a.addr, b.addr]);
    let offices = ["171003", "171004"];
    let mut tablets = Vec::new();
    for (i, office) in offices.iter().enumerate() {
        for j in 0..2 {
            let t = Tablet::new(root.path().join(format!("tablet-{i}-{j}")));
            let token = crvs_e2e::token(&first, office);
            t.run(&["init", "--commune", office]).expect_ok();
            t.run(&["enroll", "--server", &balancer.url(), "--token", &token])
                .expect_ok();
            tablets.push((*office, t));
        }
    }
    let births = bench_births();
    let mut next = 0;
    let dir = root.path().join("births");
    std::fs::create_dir_all(&dir).expect("births folder");
    let rounds = 3;
    let per_round = 3;
    for _ in 0..rounds {
        for (office, t) in &tablets {
            for _ in 0..per_round {
                let file = dir.join(format!("{next}.json"));
                std::fs::write(&file, living_in(&births[next], office)).expect("write");
                next += 1;
                t.register_approved(&file);
            }
        }
        // Every tablet syncs at once, each connection to either server.
        std::thread::scope(|s| {
            for (_, t) in &tablets {
                s.spawn(move || t.run(&["sync"]).expect_ok());
            }
        });
    }
    // Once more, so that each tablet pulls what the others sent last.
    for (_, t) in &tablets {
        t.run(&["sync"]).expect_ok();
    }
    let total = rounds * per_round * tablets.len();
    assert!(
        balancer.counts.iter().all(|c| c.load(Ordering::Relaxed) > 0),
        "both servers took connections"
    );

    // On the tablets: every record of the office, registered, one code;
    // no code twice anywhere.
    let mut all = std::collections::HashMap::new();
    for (office, t) in &tablets {
        let held = kidcs(t);
        assert_eq!(
            held.len(),
            total / offices.len(),
            "office {office}: every record of the office"
        );
        for (id, kidc, status) in held {
            assert_eq!(status, "registered", "record {id}");
            let kidc = kidc.unwrap_or_else(|| panic!("record {id} has no KIdC"));
            if let Some(other) = all.insert(id.clone(), kidc.clone()) {
                assert_eq!(
                    other, kidc,
                    "two tablets of an office hold one code for record {id}"
                );
            }
        }
    }
    assert_eq!(all.len(), total, "every registration once");
    let distinct: std::collections::HashSet<&String> = all.values().collect();
    assert_eq!(distinct.len(), total, "each KIdC once");

    // On the database: one record, one code and one registry event each.
    let count = |sql: &str| server_count(&first, sql);
    assert_eq!(count("SELECT count(*) FROM records"), total as i64);
    assert_eq!(count("SELECT count(*) FROM kidc_issuance"), total as i64);
    assert_eq!(
        count("SELECT count(DISTINCT kidc) FROM kidc_issuance"),
        total as i64
    );
    assert_eq!(count("SELECT count(*) FROM registry_events"), total as i64);
    assert_eq!(
        count("SELECT count(DISTINCT registration_number) FROM registry_events"),
        total as i64,
        "each registration number once"
    );
    // Every device's chain without a gap.
    assert_eq!(
        count(
            "SELECT count(*) FROM devices d WHERE d.last_seq <> \
             (SELECT count(*) FROM change_set_log l WHERE l.device_id = d.device_id)"
        ),
        0
    );
    for (id, kidc) in &all {
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM kidc_issuance WHERE record_id = '{id}' AND kidc = '{kidc}'"
            )),
            1,
            "the log gives record {id} the code its tablets hold"
        );
    }
}

/// `GET /metrics` with the bearer token: the body.
fn metrics(addr: SocketAddr, token: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw
}

/// The value of the counter `name` (no labels) in a scrape, 0 if absent.
fn counter(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_deadlock_rolls_a_sync_back_and_the_server_runs_it_again_unseen_by_the_tablet() {
    let Some(_) = crvs_testpg::require_or_skip("a_deadlock_rolls_a_sync_back") else {
        return;
    };
    const TOKEN: &str = "a-scrape-token-of-at-least-32-characters";
    let root = tempfile::tempdir().expect("tempdir");
    let data = server_data(Backend::Postgres, &root.path().join("server"));
    let server = Server::start_with(
        &data,
        &ServerOptions {
            env: vec![("CRVS_METRICS_TOKEN".into(), TOKEN.into())],
            ..ServerOptions::default()
        },
    );
    let office = "171003";
    let tablet = Tablet::new(root.path().join("tablet"));
    tablet.init_and_enroll(office, &server);
    let births = bench_births();
    let dir = root.path().join("births");
    std::fs::create_dir_all(&dir).expect("births folder");
    let total = 3;
    for (i, birth) in births.iter().take(total).enumerate() {
        let file = dir.join(format!("{i}.json"));
        std::fs::write(&file, living_in(birth, office)).expect("write");
        tablet.register_approved(&file);
    }
    assert_eq!(
        counter(&metrics(server.addr, TOKEN), "crvs_sync_conflicts_total"),
        0.0
    );

    // Another session holds the device's row (the chain lock, taken last
    // by a sync) and never looks for deadlocks itself, so that the sync's
    // transaction is the one PostgreSQL rolls back.
    let url = database_url(&data).expect("a PostgreSQL server");
    let mut other = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    other
        .batch_execute("SET deadlock_timeout = '60s'; BEGIN; SELECT 1 FROM devices FOR UPDATE")
        .expect("lock the device");
    let mut watcher = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    std::thread::scope(|s| {
        let sync = s.spawn(|| tablet.run(&["sync"]));
        // The sync's transaction holds the office's row and waits for the
        // device's.
        let started = Instant::now();
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
                    &[],
                )
                .expect("pg_locks")
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the sync never waited for the device"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Now this session waits for the office's row: a deadlock, which
        // PostgreSQL breaks by rolling the sync's transaction back (its
        // own check runs after 1 s). This session then holds both rows
        // until it lets go.
        other
            .query_one(
                "SELECT last FROM feed_counters WHERE office = $1 FOR UPDATE",
                &[&office],
            )
            .expect("the office's row, once the deadlock is broken");
        std::thread::sleep(Duration::from_millis(300));
        other.batch_execute("ROLLBACK").expect("let go");
        let run = sync.join().expect("the sync thread");
        assert!(run.ok, "the tablet saw the conflict: {}", run.json);
    });
    assert_eq!(
        counter(&metrics(server.addr, TOKEN), "crvs_sync_conflicts_total"),
        1.0,
        "one transaction rolled back and run again"
    );
    // Everything arrived once, with one code each.
    let held = kidcs(&tablet);
    assert_eq!(held.len(), total);
    for (id, kidc, status) in &held {
        assert_eq!(status, "registered", "record {id}");
        assert!(kidc.is_some(), "record {id} has its KIdC");
    }
    let count = |sql: &str| server_count(&data, sql);
    assert_eq!(count("SELECT count(*) FROM records"), total as i64);
    assert_eq!(
        count("SELECT count(DISTINCT kidc) FROM kidc_issuance"),
        total as i64
    );
    assert_eq!(count("SELECT count(*) FROM kidc_issuance"), total as i64);
    assert_eq!(count("SELECT count(*) FROM change_set_log"), 1);
    for (id, kidc, _) in &held {
        let kidc = kidc.as_deref().unwrap_or_default();
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM kidc_issuance WHERE record_id = '{id}' AND kidc = '{kidc}'"
            )),
            1,
            "the log gives record {id} the code the tablet holds"
        );
    }
}
