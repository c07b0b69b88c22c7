//! Crash tests that hit their mark: the real `crvs-server` and `crvs`
//! processes abort at a named fault point (`CRVS_FAULT=<point>[:<n>]`, see
//! `crvs_server::fault` and `crvs_core::fault`) while two tablets sync at
//! once. Each test checks that the process really died there (SIGABRT and
//! the marker line `fault point reached: <point>` on its stderr), brings
//! it back, syncs until done, and then holds the system to its promises:
//! every record is on the server exactly once, with exactly one KIdC; no
//! KIdC twice; every tablet holds every record registered with the code
//! the server has; `crvs check` passes; no device is blocked or a clone.
//!
//! `sampled_kills_at_random_points_lose_and_duplicate_nothing` kills 200
//! times at random points with a seeded RNG (`CRVS_FAULT_SEED` reproduces
//! a run). It runs when `CRVS_SAMPLED_FAULTS=1` (`.ci/run` sets it), so
//! `cargo test --workspace` stays quick.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crvs_e2e::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

const SIGABRT: i32 = 6;
const SERVER_POINTS: [&str; 3] = ["after_decode", "after_commit", "mid_answer"];
const TABLET_POINTS: [&str; 2] = ["before_outbox_commit", "after_answer"];

/// A server, two tablets of two communes, and the births they registered.
struct World {
    tmp: tempfile::TempDir,
    data: PathBuf,
    addr: SocketAddr,
    server: Option<Server>,
    tablets: Vec<Tablet>,
    /// Each tablet's record ids, in the order registered.
    ids: Vec<Vec<String>>,
    /// Each tablet's births to register, one file each.
    births: Vec<Vec<PathBuf>>,
    /// Each tablet's records registered but not yet approved, with the
    /// step they are at (1 registered, 2 verified).
    open: Vec<Vec<(String, u8)>>,
    server_starts: usize,
}

const COMMUNES: [&str; 2] = ["171003", "171004"];

impl World {
    /// A fresh world whose tablets reach the server at `url(addr)` (the
    /// server's own address unless a proxy stands between).
    fn new(proxy: Option<&dyn Fn(SocketAddr) -> String>) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("server");
        let server = Server::start(&data);
        let addr = server.addr;
        let url = proxy.map_or_else(|| server.url(), |p| p(addr));
        let all = bench_births();
        let mut tablets = Vec::new();
        let mut births = Vec::new();
        for (i, commune) in COMMUNES.iter().enumerate() {
            let t = Tablet::new(tmp.path().join(format!("tablet-{i}")));
            t.init_and_enroll_via(commune, &server, &url);
            let lines: Vec<String> = all.iter().map(|l| living_in(l, commune)).collect();
            births.push(write_births(&tmp.path().join(format!("births-{i}")), &lines));
            tablets.push(t);
        }
        World {
            tmp,
            data,
            addr,
            server: Some(server),
            tablets,
            ids: vec![Vec::new(), Vec::new()],
            births,
            open: vec![Vec::new(), Vec::new()],
            server_starts: 1,
        }
    }

    /// Registers, verifies and approves `n` births on every tablet.
    fn register_approved(&mut self, n: usize) {
        for t in 0..self.tablets.len() {
            for _ in 0..n {
                let file = self.next_birth(t);
                let id = self.tablets[t].register_approved(&file);
                self.ids[t].push(id);
            }
        }
    }

    fn next_birth(&self, t: usize) -> PathBuf {
        let used = self.ids[t].len() + self.open[t].len();
        let files = &self.births[t];
        assert!(used < files.len(), "the sample has too few births for this run");
        files[used].clone()
    }

    /// One workflow step on tablet `t`: verifies or approves the oldest
    /// open record, or registers a new birth. Every step leaves a change
    /// to push.
    fn one_step(&mut self, t: usize) {
        let tablet = &self.tablets[t];
        match self.open[t].first().cloned() {
            Some((id, 1)) => {
                tablet.run(&["verify", &id, "--by", "clerk-2"]).expect_ok();
                self.open[t][0].1 = 2;
            }
            Some((id, _)) => {
                tablet.run(&["approve", &id, "--by", "registrar-1"]).expect_ok();
                self.open[t].remove(0);
                self.ids[t].push(id);
            }
            None => {
                let file = self.next_birth(t);
                let id = tablet.register(&file, "clerk-1");
                self.open[t].push((id, 1));
            }
        }
    }

    fn server_log(&self) -> PathBuf {
        self.tmp.path().join(format!("server-{}.log", self.server_starts))
    }

    /// (Re)starts the server on its address, armed with `fault` if given.
    fn start_server(&mut self, fault: Option<&str>) {
        assert!(self.server.is_none(), "the server still runs");
        self.server_starts += 1;
        let options = ServerOptions {
            listen: Some(self.addr.to_string()),
            log_file: Some(self.server_log()),
            env: fault
                .map(|f| vec![("CRVS_FAULT".to_string(), f.to_string())])
                .unwrap_or_default(),
            ..ServerOptions::default()
        };
        self.server = Some(Server::start_with(&self.data, &options));
    }

    /// Whether the server process is still running (given half a second
    /// to finish dying: its sockets close a moment before it is a zombie).
    fn server_alive(&mut self) -> bool {
        let pid = self.server.as_ref().expect("a server").pid();
        // A zombie counts as dead: it aborted and waits to be reaped.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_millis(500);
        while running() {
            if Instant::now() > deadline {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Asserts that the server aborted at `point`, and reaps it.
    fn expect_server_aborted_at(&mut self, point: &str) {
        let mut server = self.server.take().expect("a server");
        let status = server.wait_exit(Duration::from_secs(20));
        let log = std::fs::read_to_string(self.server_log()).unwrap_or_default();
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "the server should have aborted at {point}: {status:?}; log: {log}"
        );
        assert!(
            log.contains(&format!("fault point reached: {point}\n")),
            "the server aborted, but not at {point}: {log}"
        );
    }

    /// Kills a running server (SIGKILL), if there is one.
    fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// Stops a server that is still running (its fault never fired).
    fn stop_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.terminate();
        }
    }

    /// Runs `crvs sync` on every tablet at once; `faults[t]` arms tablet t.
    fn sync_all(&self, faults: &[Option<&str>]) -> Vec<Synced> {
        let children: Vec<Child> = self
            .tablets
            .iter()
            .zip(faults)
            .map(|(t, f)| spawn_sync(t, *f))
            .collect();
        children.into_iter().map(wait_sync).collect()
    }

    /// Syncs every tablet (unarmed) until a sync pushes and pulls nothing.
    fn sync_until_done(&self) {
        for (i, t) in self.tablets.iter().enumerate() {
            let mut rounds = 0;
            loop {
                let r = t.run(&["sync"]).expect_ok();
                if r["pushed"] == 0 && r["pulled"] == 0 && r["pending"] == 0 {
                    break;
                }
                rounds += 1;
                assert!(rounds < 5, "tablet {i} does not settle: {r}");
            }
        }
    }

    /// How many of tablet `t`'s approved records the server holds, and
    /// how many of those have a KIdC (read-only, while nobody writes).
    fn on_server(&self, t: usize) -> (usize, usize) {
        let db = rusqlite::Connection::open_with_flags(
            self.data.join("server.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the server's database");
        let mut stored = 0;
        let mut coded = 0;
        for id in &self.ids[t] {
            let n: i64 = db
                .query_row("SELECT COUNT(*) FROM records WHERE record_id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            let k: i64 = db
                .query_row(
                    "SELECT COUNT(*) FROM kidc_issuance WHERE record_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap();
            stored += n as usize;
            coded += k as usize;
        }
        (stored, coded)
    }

    /// How many of tablet `t`'s records carry a KIdC on the tablet.
    fn coded_on_tablet(&self, t: usize) -> usize {
        let list = self.tablets[t].run(&["list"]).expect_ok();
        list["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["kidc"].is_string())
            .count()
    }

    /// The promises, checked against the server's database (read-only),
    /// `crvs-server devices`, and every tablet's `crvs list` and `check`.
    fn assert_converged(&self) {
        let db = rusqlite::Connection::open_with_flags(
            self.data.join("server.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the server's database");
        let server_records: Vec<String> = db
            .prepare("SELECT record_id FROM records")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let issued: Vec<(String, String)> = db
            .prepare("SELECT record_id, kidc FROM kidc_issuance")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let approved: HashSet<&String> = self.ids.iter().flatten().collect();
        let open: HashSet<&String> = self.open.iter().flatten().map(|(id, _)| id).collect();

        // Every record on the server exactly once, and nothing else.
        let mut on_server = HashSet::new();
        for id in &server_records {
            assert!(on_server.insert(id), "record {id} is on the server twice");
        }
        let expected: HashSet<&String> = approved.union(&open).copied().collect();
        assert_eq!(on_server, expected, "the server's records are not the tablets'");

        // One KIdC per approved record, none for the others, none twice.
        let mut by_record: HashMap<&String, &String> = HashMap::new();
        let mut codes = HashSet::new();
        for (record, kidc) in &issued {
            assert!(
                by_record.insert(record, kidc).is_none(),
                "record {record} has two KIdCs"
            );
            assert!(codes.insert(kidc), "a KIdC was issued twice");
        }
        assert_eq!(
            by_record.keys().copied().collect::<HashSet<_>>(),
            approved,
            "every approved record, and only those, has a KIdC"
        );

        // Every tablet holds its records registered, with the server's code.
        for (t, tablet) in self.tablets.iter().enumerate() {
            let list = tablet.run(&["list"]).expect_ok();
            let listed: HashMap<String, &Value> = list["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| (r["record_id"].as_str().unwrap().to_string(), r))
                .collect();
            assert_eq!(listed.len(), self.ids[t].len() + self.open[t].len());
            for id in &self.ids[t] {
                let r = listed.get(id).unwrap_or_else(|| panic!("tablet {t} lost {id}"));
                assert_eq!(r["status"], "registered", "tablet {t}: {r}");
                assert_eq!(r["sync_state"], "synced", "tablet {t}: {r}");
                assert_eq!(
                    r["kidc"].as_str(),
                    by_record.get(id).map(|k| k.as_str()),
                    "tablet {t} holds another code than the server for {id}"
                );
            }
            for (id, _) in &self.open[t] {
                assert!(listed[id].get("kidc").is_none_or(Value::is_null));
            }
            assert_eq!(tablet.run(&["check"]).expect_ok()["ok"], true);
        }

        // No device blocked, cloned or adopted; every change set logged once.
        let devices = admin(&self.data, &["devices"]).expect_ok();
        for d in devices["devices"].as_array().expect("devices") {
            assert!(d["blocked"].is_null(), "{d}");
            assert!(d["clone"].is_null(), "{d}");
            let logged: i64 = db
                .query_row(
                    "SELECT COUNT(*) FROM change_set_log WHERE device_id = ?1",
                    [d["device_id"].as_str().unwrap()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(Some(logged as u64), d["last_seq"].as_u64(), "{d}");
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// A `crvs sync --json` process, armed with `fault` if given.
fn spawn_sync(t: &Tablet, fault: Option<&str>) -> Child {
    let mut cmd = Command::new(bin("crvs"));
    cmd.arg("--store")
        .arg(&t.dir)
        .args(["sync", "--json"])
        .env("CRVS_PASSPHRASE", PASSPHRASE)
        .env_remove("CRVS_FAULT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = fault {
        cmd.env("CRVS_FAULT", f);
    }
    cmd.spawn().expect("spawn crvs sync")
}

/// How one `crvs sync` ended.
#[derive(Debug)]
enum Synced {
    Ok,
    /// Failed with this error code (e.g. `offline`: the server died).
    Failed(String),
    /// Aborted; its stderr.
    Aborted(String),
}

fn wait_sync(child: Child) -> Synced {
    let out = child.wait_with_output().expect("wait for crvs sync");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.signal() == Some(SIGABRT) {
        return Synced::Aborted(stderr);
    }
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("crvs sync printed no JSON ({e}): {:?}; {stderr}", out.status));
    if out.status.success() {
        Synced::Ok
    } else {
        Synced::Failed(json["error"].as_str().unwrap_or("").to_string())
    }
}

fn assert_aborted_at(s: &Synced, point: &str) {
    match s {
        Synced::Aborted(stderr) => assert!(
            stderr.contains(&format!("fault point reached: {point}\n")),
            "the tablet aborted, but not at {point}: {stderr}"
        ),
        other => panic!("the tablet should have aborted at {point}: {other:?}"),
    }
}

/// A sync that did not abort either completed or found the server gone.
fn assert_ok_or_offline(s: &Synced) {
    match s {
        Synced::Ok => {}
        Synced::Failed(code) => assert_eq!(code, "offline", "a sync failed for another reason"),
        Synced::Aborted(e) => panic!("an unarmed tablet aborted: {e}"),
    }
}

/// Two tablets with three approved births each sync at once against a
/// server armed at `point`; it aborts there; they sync again until done.
fn server_point_survived(point: &str) -> World {
    let mut w = World::new(None);
    w.register_approved(3);
    w.stop_server();
    w.start_server(Some(point));
    let first = w.sync_all(&[None, None]);
    w.expect_server_aborted_at(point);
    first.iter().for_each(assert_ok_or_offline);
    // The tablet whose request hit the point failed, and the server holds
    // exactly what the point promises of that request: nothing of it
    // before the writer; all of it, with codes the tablet never heard of,
    // after the commit.
    let n = w.ids[0].len();
    let hit = (0..w.tablets.len()).any(|t| {
        matches!(first[t], Synced::Failed(_))
            && w.coded_on_tablet(t) == 0
            && match point {
                "after_decode" => w.on_server(t) == (0, 0),
                _ => w.on_server(t) == (n, n),
            }
    });
    assert!(hit, "no tablet's request stopped where {point} is: {first:?}");
    w.start_server(None);
    w.sync_until_done();
    w.assert_converged();
    w
}

/// The same with both tablets armed at `point` and the server whole.
fn tablet_point_survived(point: &str) {
    let mut w = World::new(None);
    w.register_approved(3);
    let first = w.sync_all(&[Some(point), Some(point)]);
    for s in &first {
        assert_aborted_at(s, point);
    }
    assert!(w.server_alive());
    // Before the outbox commits, nothing left the tablets; after the
    // answer, the server holds every record with its code, and the
    // tablets hold none of the codes.
    let n = w.ids[0].len();
    for t in 0..w.tablets.len() {
        assert_eq!(w.coded_on_tablet(t), 0);
        let expected = match point {
            "before_outbox_commit" => (0, 0),
            _ => (n, n),
        };
        assert_eq!(w.on_server(t), expected, "tablet {t} at {point}");
    }
    w.sync_until_done();
    w.assert_converged();
}

#[test]
fn a_server_aborted_after_decoding_loses_and_duplicates_nothing() {
    let w = server_point_survived("after_decode");
    // Nothing of the cut-off request was stored before the abort; all came
    // with the syncs after it.
    assert_eq!(w.ids.iter().flatten().count(), 6);
}

#[test]
fn a_server_aborted_after_its_commit_before_answering_loses_and_duplicates_nothing() {
    server_point_survived("after_commit");
}

#[test]
fn a_server_aborted_in_the_middle_of_its_answer_loses_and_duplicates_nothing() {
    server_point_survived("mid_answer");
}

#[test]
fn a_tablet_aborted_before_its_outbox_commits_loses_and_duplicates_nothing() {
    tablet_point_survived("before_outbox_commit");
}

#[test]
fn a_tablet_aborted_after_the_answer_before_storing_it_loses_and_duplicates_nothing() {
    tablet_point_survived("after_answer");
}

/// The bytes a server sent on one connection, as a proxy saw them.
type Tap = Arc<Mutex<Vec<u8>>>;

/// A proxy that keeps, for every connection, the bytes the server sent.
struct TapProxy {
    addr: SocketAddr,
    answers: Arc<Mutex<Vec<Tap>>>,
}

impl TapProxy {
    fn start(upstream: SocketAddr) -> TapProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let answers: Arc<Mutex<Vec<Tap>>> = Arc::default();
        let shared = answers.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let seen = Arc::new(Mutex::new(Vec::new()));
                shared.lock().unwrap().push(seen.clone());
                let (mut c_r, mut s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_r, &mut s_w);
                    let _ = s_w.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        TapProxy { addr, answers }
    }

    /// For every answer with a `Content-Length`: (declared, body bytes seen).
    fn bodies(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for a in self.answers.lock().unwrap().iter() {
            let bytes = a.lock().unwrap().clone();
            let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
            {
                out.push((len, bytes.len() - end - 4));
            }
        }
        out
    }
}

#[test]
fn mid_answer_really_cuts_the_answer_after_part_of_its_body() {
    let proxy = Arc::new(Mutex::new(None::<TapProxy>));
    let p = proxy.clone();
    let mut w = World::new(Some(&move |addr| {
        let tap = TapProxy::start(addr);
        let url = format!("http://{}", tap.addr);
        *p.lock().unwrap() = Some(tap);
        url
    }));
    w.register_approved(2);
    w.stop_server();
    w.start_server(Some("mid_answer"));
    let first = w.sync_all(&[None, None]);
    w.expect_server_aborted_at("mid_answer");
    first.iter().for_each(assert_ok_or_offline);
    let bodies = proxy.lock().unwrap().as_ref().unwrap().bodies();
    assert!(
        bodies.iter().any(|&(declared, seen)| seen > 0 && seen < declared),
        "no answer was cut in the middle of its body: {bodies:?}"
    );
    w.start_server(None);
    w.sync_until_done();
    w.assert_converged();
}

#[test]
fn an_unknown_fault_point_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Tablet::new(tmp.path().join("tablet"));
    let out = Command::new(bin("crvs"))
        .arg("--store")
        .arg(&t.dir)
        .args(["list", "--json"])
        .env("CRVS_PASSPHRASE", PASSPHRASE)
        .env("CRVS_FAULT", "after_anwser")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin("crvs-server"))
        .args(["devices", "--json", "--data"])
        .arg(tmp.path().join("server"))
        .env("CRVS_FAULT", "after_comit")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// One kill at a random point: which process, which point, which hit.
#[derive(Debug, Clone, Copy)]
struct Kill {
    point: &'static str,
    nth: u32,
    /// The tablet armed (tablet points), or `None` (server points).
    tablet: Option<usize>,
}

#[test]
fn sampled_kills_at_random_points_lose_and_duplicate_nothing() {
    if std::env::var("CRVS_SAMPLED_FAULTS").is_err() {
        eprintln!("SKIPPED: set CRVS_SAMPLED_FAULTS=1 to run the 200 sampled kills (.ci/run does)");
        return;
    }
    let kills_wanted: usize = std::env::var("CRVS_SAMPLED_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("CRVS_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("sampled kills: seed {seed} (CRVS_FAULT_SEED={seed} reproduces this run)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut w = World::new(None);
    let mut kills = 0usize;
    let mut by_point: HashMap<&str, usize> = HashMap::new();
    let mut iteration = 0usize;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while kills < kills_wanted {
            iteration += 1;
            assert!(
                iteration <= kills_wanted * 2,
                "{kills} kills in {iteration} iterations: the faults do not fire"
            );
            // Work for the sync to carry: one workflow step on each tablet.
            for t in 0..w.tablets.len() {
                w.one_step(t);
            }
            let all: Vec<&'static str> = SERVER_POINTS.iter().chain(&TABLET_POINTS).copied().collect();
            let point = all[rng.random_range(0..all.len())];
            let kill = if SERVER_POINTS.contains(&point) {
                // Each tablet's sync makes at least one request.
                Kill {
                    point,
                    nth: rng.random_range(1..=2),
                    tablet: None,
                }
            } else {
                Kill {
                    point,
                    nth: 1,
                    tablet: Some(rng.random_range(0..w.tablets.len())),
                }
            };
            let spec = format!("{}:{}", kill.point, kill.nth);
            let died = match kill.tablet {
                None => {
                    // An idle server, so SIGKILL is as good as SIGTERM and
                    // quicker; a dead one (the last kill) just starts.
                    w.kill_server();
                    w.start_server(Some(&spec));
                    let synced = w.sync_all(&[None, None]);
                    synced.iter().for_each(assert_ok_or_offline);
                    if w.server_alive() {
                        // Fewer requests than the armed hit: no kill.
                        w.kill_server();
                        false
                    } else {
                        w.expect_server_aborted_at(kill.point);
                        true
                    }
                }
                Some(t) => {
                    if w.server.is_none() {
                        w.start_server(None);
                    }
                    let mut faults = [None, None];
                    faults[t] = Some(spec.as_str());
                    let synced = w.sync_all(&faults);
                    assert_aborted_at(&synced[t], kill.point);
                    synced[1 - t..2 - t].iter().for_each(assert_ok_or_offline);
                    true
                }
            };
            if died {
                kills += 1;
                *by_point.entry(kill.point).or_default() += 1;
            }
            if iteration.is_multiple_of(50) {
                w.kill_server();
                w.start_server(None);
                w.sync_until_done();
                w.assert_converged();
            }
        }
        w.kill_server();
        w.start_server(None);
        w.sync_until_done();
        w.assert_converged();
    }));
    if let Err(e) = result {
        eprintln!(
            "sampled kills failed at iteration {iteration} after {kills} kills: seed {seed} (CRVS_FAULT_SEED={seed})"
        );
        std::panic::resume_unwind(e);
    }
    eprintln!(
        "sampled kills: {kills} kills in {iteration} iterations, {:?}, {} records, {:.1?}",
        by_point,
        w.ids.iter().flatten().count(),
        started.elapsed()
    );
    assert_eq!(kills, kills_wanted);
    for p in SERVER_POINTS.iter().chain(&TABLET_POINTS) {
        assert!(by_point.get(p).copied().unwrap_or(0) > 0, "no kill at {p}");
    }
}
