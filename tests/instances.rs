//! Two server processes on one PostgreSQL database (issue 10), behind a
//! proxy that sends every connection to either of them at random, as a
//! load balancer would. Tablets of two offices (two tablets each) sync at
//! once, round after round. Each registration arrives once, each KIdC is
//! issued once, every tablet ends with every record of its office and its
//! code; and a server with another signing key is refused the database.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crvs_e2e::{
    Backend, DATABASE_URL_FILE, Server, Tablet, admin, bench_births, living_in, server_count, server_data,
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
