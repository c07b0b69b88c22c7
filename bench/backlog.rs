//! A tablet's backlog syncs, end to end (issue 10): real `crvs-server` and
//! `crvs` processes, HTTP on loopback, through a proxy that counts every
//! byte (and, for the slow link, holds the line to a given rate and
//! delay).
//!
//! * `backlog`: a tablet holding `BENCH_RECORDS` (default 10,000) approved
//!   births of `../shared/bench/births-10000.jsonl` (those dated after
//!   today are left out and counted) runs `crvs sync` once. Timed from the
//!   start of the command to its exit: by then the server has committed
//!   every record durably (it answers only after the commit is synced) and
//!   the tablet has stored every KIdC (checked after). Reports records per
//!   second and bytes per record each way.
//! * `slow_link`: 100 births over a link held to 100 kbit/s each way with
//!   300 ms of round-trip time (2G in a remote commune). Then an
//!   interrupted sync: the link is cut in the middle of the first answer,
//!   and the next `crvs sync` completes; reports the bytes each attempt
//!   sent up.
//!
//! Setup (not timed): the store is made and enrolled by the `crvs` CLI;
//! the births are registered, verified and approved in process
//! (`crvs_core::Registrar`), as a day of registrar work would have.
//!
//! `cargo bench -p crvs-bench --bench backlog` prints one JSON line per
//! case. `BENCH_CASES=backlog` or `slow_link` runs one. To profile the
//! backlog case, `BENCH_WRAP_SYNC` and `BENCH_WRAP_SERVER` name a command
//! that the timed `crvs sync` and the server run under, e.g.
//! `BENCH_WRAP_SYNC="perf record -g -o /tmp/tablet.data --"`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "cpu.rs"]
mod cpu;

const PASSPHRASE: &str = "correct horse battery staple";
const COMMUNE: &str = "171003";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The release binaries, built first.
fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "crvs-server",
                "-p",
                "crvs-core",
                "--bins",
            ])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the release binaries failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| workspace().join("target"), PathBuf::from);
    target.join("release").join(name)
}

/// How a proxied link behaves.
#[derive(Clone, Copy)]
struct Link {
    /// Bytes per second each way (0: unlimited).
    rate: u64,
    /// One-way delay.
    delay: Duration,
}

/// A TCP proxy to `upstream` that counts bytes each way, shapes the link,
/// and can cut every connection once the answers reach a byte count.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    /// Cut when this many answer bytes went down (0: never); once.
    cut_down_at: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr, link: Link) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let p = Proxy {
            addr,
            up: Arc::default(),
            down: Arc::default(),
            cut_down_at: Arc::default(),
            stop: Arc::default(),
        };
        let (up, down, cut, stop) = (
            p.up.clone(),
            p.down.clone(),
            p.cut_down_at.clone(),
            p.stop.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let cut_flag = Arc::new(AtomicBool::new(false));
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    link,
                    up.clone(),
                    None,
                    cut_flag.clone(),
                );
                pipe(server, client, link, down.clone(), Some(cut.clone()), cut_flag);
            }
        });
        p
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn reset(&self) -> (u64, u64) {
        (
            self.up.swap(0, Ordering::SeqCst),
            self.down.swap(0, Ordering::SeqCst),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on two threads (a reader and a paced writer),
/// counting into `count`. With `cut`, both sockets are shut once `count`
/// reaches its value (then the value is cleared: one cut).
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    link: Link,
    count: Arc<AtomicU64>,
    cut: Option<Arc<AtomicU64>>,
    cut_flag: Arc<AtomicBool>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let shaped = link.rate > 0 || !link.delay.is_zero();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        // When the link is free again (the bytes before are on the wire).
        let mut free_at = Instant::now();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if shaped {
                let now = Instant::now();
                let start = free_at.max(now);
                let on_wire = if link.rate > 0 {
                    Duration::from_secs_f64(n as f64 / link.rate as f64)
                } else {
                    Duration::ZERO
                };
                free_at = start + on_wire;
                if tx.send((free_at + link.delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            } else if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    std::thread::spawn(move || {
        while let Ok((at, bytes)) = rx.recv() {
            if cut_flag.load(Ordering::SeqCst) {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let before = count.load(Ordering::SeqCst);
            let total = before + bytes.len() as u64;
            if let Some(cut) = &cut {
                let limit = cut.load(Ordering::SeqCst);
                if limit > 0 && total >= limit {
                    // Deliver up to the limit, then cut both ways.
                    cut.store(0, Ordering::SeqCst);
                    cut_flag.store(true, Ordering::SeqCst);
                    let _ = to.write_all(&bytes[..(limit - before) as usize]);
                    count.fetch_add(limit - before, Ordering::SeqCst);
                    let _ = to.shutdown(Shutdown::Both);
                    break;
                }
            }
            count.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

struct Server {
    child: Child,
    addr: SocketAddr,
    /// Run under a profiler, which must be let finish its file.
    wrapped: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.wrapped {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bin`, or `bin` under the command that `var` names (for profiling).
fn command(name: &str, var: &str) -> Command {
    let wrap = std::env::var(var).unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    match wrap.next() {
        None => Command::new(bin(name)),
        Some(first) => {
            let mut c = Command::new(first);
            c.args(wrap).arg(bin(name));
            c
        }
    }
}

fn start_server(data: &Path, wrap: &str) -> Server {
    use std::io::BufRead;
    let mut child = command("crvs-server", wrap)
        .args(["serve", "--json", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .env_remove("CRVS_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crvs-server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let v: Value = serde_json::from_str(&line).expect("JSON");
    Server {
        wrapped: std::env::var_os(wrap).is_some(),
        child,
        addr: v["listening"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("socket address"),
    }
}

fn crvs(store: &Path, args: &[&str]) -> (bool, Value, String) {
    crvs_under(store, args, "")
}

fn crvs_under(store: &Path, args: &[&str], wrap: &str) -> (bool, Value, String) {
    let out = command("crvs", wrap)
        .arg("--json")
        .arg("--store")
        .arg(store)
        .args(args)
        .env("CRVS_PASSPHRASE", PASSPHRASE)
        .output()
        .expect("run crvs");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn births(n: usize) -> (Vec<String>, usize) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("bench data (../shared/bench)");
    let today = crvs_schema::Date::today_in_cambodia(crvs_core::registrar::now_ms());
    let mut later = 0;
    let ok: Vec<String> = text
        .lines()
        .filter(|l| {
            let ok = crvs_schema::BirthRegistration::from_json_str(l, today).is_ok();
            later += usize::from(!ok);
            ok
        })
        .take(n)
        .map(str::to_owned)
        .collect();
    (ok, later)
}

/// A server, a proxy, and an enrolled tablet holding `lines` approved.
fn setup(dir: &Path, lines: &[String], link: Link, wrap: &str) -> (Server, Proxy, PathBuf) {
    let server = start_server(&dir.join("server"), wrap);
    let proxy = Proxy::start(server.addr, link);
    let out = Command::new(bin("crvs-server"))
        .args(["--json", "enroll-token", "--commune", COMMUNE, "--data"])
        .arg(dir.join("server"))
        .env_remove("CRVS_DATABASE_URL")
        .output()
        .expect("token");
    let token: Value = serde_json::from_slice(&out.stdout).expect("token JSON");
    let token = token["token"].as_str().expect("token").to_owned();
    let store = dir.join("tablet");
    let (ok, _, err) = crvs(&store, &["init", "--commune", COMMUNE]);
    assert!(ok, "init: {err}");
    let (ok, _, err) = crvs(&store, &["enroll", "--server", &proxy.url(), "--token", &token]);
    assert!(ok, "enroll: {err}");
    let tablet = crvs_core::Registrar::open(&store, &PASSPHRASE.into()).expect("open the store");
    for line in lines {
        let id = tablet.register_birth(line, "clerk-01").expect("register");
        tablet.verify(&id, "clerk-02").expect("verify");
        tablet.approve(&id, "registrar-01").expect("approve");
    }
    drop(tablet);
    proxy.reset();
    (server, proxy, store)
}

fn codes_held(store: &Path) -> usize {
    let tablet = crvs_core::Registrar::open(store, &PASSPHRASE.into()).expect("open the store");
    tablet
        .list()
        .expect("list")
        .iter()
        .filter(|r| r.status == "registered" && r.kidc.is_some())
        .count()
}

fn backlog() -> Value {
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (lines, later) = births(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, proxy, store) = setup(
        dir.path(),
        &lines,
        Link {
            rate: 0,
            delay: Duration::ZERO,
        },
        "BENCH_WRAP_SERVER",
    );
    let (server_0, tablet_0, (busy_0, idle_0)) =
        (cpu::process(server.child.id()), cpu::children(), cpu::machine());
    let started = Instant::now();
    let (ok, v, err) = crvs_under(&store, &["sync"], "BENCH_WRAP_SYNC");
    let seconds = started.elapsed().as_secs_f64();
    let (server_1, tablet_1, (busy_1, idle_1)) =
        (cpu::process(server.child.id()), cpu::children(), cpu::machine());
    let round = |x: f64| (x * 100.0).round() / 100.0;
    assert!(ok, "sync: {err}");
    let (up, down) = proxy.reset();
    let held = codes_held(&store);
    assert_eq!(
        held,
        lines.len(),
        "every record registered, with its KIdC on the tablet"
    );
    json!({
        "bench": "backlog",
        "records": lines.len(),
        "births_dated_after_today_left_out": later,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "records_per_second": (lines.len() as f64 / seconds).round(),
        "bytes_up_per_record": (up as f64 / lines.len() as f64 * 10.0).round() / 10.0,
        "bytes_down_per_record": (down as f64 / lines.len() as f64 * 10.0).round() / 10.0,
        "requests": v["requests"],
        // Where the machine's time went during the sync (the proxy runs in
        // this process).
        "cpu_seconds": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "tablet_crvs_sync": round(tablet_1 - tablet_0),
            "server": round(server_1 - server_0),
            "machine_busy": round(busy_1 - busy_0),
            "machine_idle": round(idle_1 - idle_0),
        },
    })
}

fn slow_link() -> Value {
    let link = Link {
        rate: 100_000 / 8,
        delay: Duration::from_millis(150),
    };
    let (lines, _) = births(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, proxy, store) = setup(dir.path(), &lines, link, "");
    let started = Instant::now();
    let (ok, _, err) = crvs(&store, &["sync"]);
    let seconds = started.elapsed().as_secs_f64();
    assert!(ok, "sync: {err}");
    let (up, down) = proxy.reset();
    assert_eq!(codes_held(&store), lines.len(), "every KIdC back");

    // Interrupted: a second tablet's 100 births; the link is cut in the
    // middle of the first answer (the server has committed), and the
    // next sync completes.
    let (more, _) = births(200);
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (_server2, proxy2, store2) = setup(dir2.path(), &more[100..], link, "");
    proxy2.cut_down_at.store(200, Ordering::SeqCst);
    let first_started = Instant::now();
    let (first_ok, _, _) = crvs(&store2, &["sync"]);
    let first_s = first_started.elapsed().as_secs_f64();
    let (first_up, first_down) = proxy2.reset();
    let again = Instant::now();
    let (ok, _, err) = crvs(&store2, &["sync"]);
    let again_s = again.elapsed().as_secs_f64();
    assert!(ok, "the sync after the cut completes: {err}");
    let (again_up, again_down) = proxy2.reset();
    assert_eq!(codes_held(&store2), 100, "every KIdC back after the cut");
    json!({
        "bench": "slow_link",
        "link": {"kbit_per_s": 100, "rtt_ms": 300},
        "records": lines.len(),
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "bytes_up": up,
        "bytes_down": down,
        "interrupted": {
            "first_attempt_completed": first_ok,
            "first_attempt_seconds": (first_s * 1000.0).round() / 1000.0,
            "first_attempt_bytes_up": first_up,
            "first_attempt_bytes_down": first_down,
            "resumed_seconds": (again_s * 1000.0).round() / 1000.0,
            "resumed_bytes_up": again_up,
            "resumed_bytes_down": again_down,
        },
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let cases = std::env::var("BENCH_CASES").unwrap_or_else(|_| "backlog,slow_link".into());
    for case in cases.split(',') {
        let line = match case {
            "backlog" => backlog(),
            "slow_link" => slow_link(),
            other => panic!("unknown case {other}"),
        };
        println!("{line}");
    }
}
