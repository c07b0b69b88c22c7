//! `crvs-load`: N tablets sync at once, over HTTPS, against real server
//! processes (issue 10).
//!
//! Each simulated tablet is a real tablet store (`crvs_core::Registrar`,
//! with the fast key derivation of the tests), with its own key and its
//! own enrolment, in a commune of its own, holding a registration day's
//! births: the synthetic births of `../shared/bench/births-10000.jsonl`
//! dated up to today (the others are counted apart), spread over the
//! communes and moved to live there. Setup (not timed): the servers start
//! with a test certificate, every tablet enrols and registers, verifies
//! and approves its births. Timed: every tablet syncs at once (one thread
//! each, released together), until nothing is pending.
//!
//! Configurations (`--configs`, run one after the other in one process,
//! side by side): `sqlite` (one server, the embedded default), `postgres`
//! (one server on PostgreSQL), `postgres-2` (two servers on one PostgreSQL
//! database, the tablets split between them). PostgreSQL is a throwaway
//! cluster (`crvs-testpg`), durable (`fsync`, `synchronous_commit = on`),
//! unless `--database URL` names one (emptied first: give a scratch
//! database).
//!
//! It stays on loopback, and is bounded: `--tablets N` (default 1,633) and
//! `--timeout-s S` (default 600) for the timed part.
//!
//! Prints one JSON line per configuration: throughput (records per
//! second, from the release until the last tablet holds its codes),
//! p50/p99/max sync latency (one tablet's whole sync, its retries
//! included), errors (every failed sync attempt: a tablet that fails tries
//! again after half a second, as a tablet does, until `--timeout-s`), and
//! the final check: every record has exactly one KIdC (on the tablets, all
//! distinct; on the server, one registration per record).
//!
//! `cargo build --release -p crvs-server -p crvs-bench && target/release/crvs-load`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crvs_core::crypto::KdfParams;
use crvs_core::{HttpTransport, Registrar};
use serde_json::{Value, json};

struct Args {
    tablets: usize,
    configs: Vec<String>,
    timeout: Duration,
    database: Option<String>,
    /// Whether the tablet threads run at a lower priority than the
    /// servers (`--tablets-yield`).
    tablets_yield: bool,
}

fn args() -> Args {
    let mut a = Args {
        tablets: 1633,
        configs: vec!["sqlite".into(), "postgres".into(), "postgres-2".into()],
        timeout: Duration::from_secs(600),
        database: None,
        tablets_yield: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--tablets" => a.tablets = value().parse().unwrap_or_else(|_| fail("--tablets N")),
            "--configs" => a.configs = value().split(',').map(str::to_owned).collect(),
            "--timeout-s" => {
                a.timeout = Duration::from_secs(value().parse().unwrap_or_else(|_| fail("--timeout-s S")))
            }
            "--database" => a.database = Some(value()),
            "--tablets-yield" => a.tablets_yield = true,
            "--help" | "-h" => {
                println!(
                    "crvs-load [--tablets N] [--configs sqlite,postgres,postgres-2] [--timeout-s S] [--database URL] [--tablets-yield]"
                );
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    if a.tablets == 0 || a.tablets > 2475 {
        fail("--tablets must be between 1 and 2475 (one synthetic commune each)");
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("crvs-load: {msg}");
    std::process::exit(2)
}

/// The `i`th synthetic commune: province 01–25, district 01–99, commune 01.
fn commune(i: usize) -> String {
    format!("{:02}{:02}01", 1 + i % 25, 1 + i / 25)
}

/// A birth moved to live in `commune` (its residence village keeps its
/// number).
fn living_in(line: &str, commune: &str) -> String {
    let mut doc: Value = serde_json::from_str(line).expect("a birth is JSON");
    let village = doc["residence_village_code"]
        .as_str()
        .expect("residence")
        .to_owned();
    doc["residence_village_code"] = format!("{commune}{}", &village[6..]).into();
    doc.to_string()
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe.parent().expect("target dir").join(name);
    if !path.exists() {
        fail(&format!(
            "{} is missing: cargo build --release -p crvs-server",
            path.display()
        ));
    }
    path
}

/// A CA and a server certificate for 127.0.0.1, made with rcgen.
fn certificates(dir: &Path) -> (String, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "crvs-load CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "crvs-load server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .expect("issue");
    let crt = dir.join("server.crt");
    let keyf = dir.join("server.tls.key");
    std::fs::write(&crt, format!("{}{}", cert.pem(), ca_pem)).expect("write crt");
    std::fs::write(&keyf, key.serialize_pem()).expect("write key");
    (ca_pem, crt, keyf)
}

/// A running `crvs-server serve`; killed when dropped.
struct ServerProcess {
    child: Child,
    url: String,
}

/// The scrape token every server of a run is started with.
const METRICS_TOKEN: &str = "crvs-load-metrics-scrape-token-0123456789";

/// The writer's figures from a server's `/metrics`: commit groups,
/// requests in them, seconds busy.
fn writer_figures(url: &str, ca_pem: &str) -> (f64, f64, f64) {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let roots: Vec<Certificate<'static>> = crvs_core::transport::parse_ca_pem(ca_pem)
        .expect("the CA")
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let tls = TlsConfig::builder()
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build();
    let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().tls_config(tls).build());
    let text = agent
        .get(format!("{url}/metrics"))
        .header("Authorization", format!("Bearer {METRICS_TOKEN}"))
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_else(|e| fail(&format!("scraping {url}/metrics: {e}")));
    let sample = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        sample("crvs_commit_groups_total"),
        sample("crvs_commit_group_requests_total"),
        sample("crvs_writer_busy_seconds"),
    )
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_command(database: Option<&str>) -> Command {
    let mut cmd = Command::new(bin("crvs-server"));
    if let Some(url) = database {
        cmd.env("CRVS_DATABASE_URL", url);
    } else {
        cmd.env_remove("CRVS_DATABASE_URL");
    }
    cmd
}

fn start_server(data: &Path, database: Option<&str>, crt: &Path, key: &Path) -> ServerProcess {
    use std::io::BufRead;
    let mut child = server_command(database)
        .args(["serve", "--json", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--tls-cert")
        .arg(crt)
        .arg("--tls-key")
        .arg(key)
        .env("RUST_LOG", "warn")
        .env("CRVS_METRICS_TOKEN", METRICS_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crvs-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the server's first line");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| fail(&format!("server said: {line}")));
    let addr = v["listening"].as_str().expect("listening address").to_owned();
    ServerProcess {
        child,
        url: format!("https://{addr}"),
    }
}

#[path = "cpu.rs"]
mod cpu;

fn admin(data: &Path, database: Option<&str>, args: &[&str]) -> Value {
    let out = server_command(database)
        .arg("--json")
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run crvs-server");
    if !out.status.success() {
        fail(&format!(
            "crvs-server {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).expect("JSON answer")
}

/// A tablet's records after its sync: (record id, its KIdC if it has one).
type Held = Vec<(String, Option<String>)>;

/// A counting semaphore.
struct Gate {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            free: std::sync::Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self) {
        let mut free = self.free.lock().expect("gate");
        while *free == 0 {
            free = self.freed.wait(free).expect("gate");
        }
        *free -= 1;
    }

    fn release(&self) {
        *self.free.lock().expect("gate") += 1;
        self.freed.notify_one();
    }
}

/// Empties a database given with `--database` (a scratch one).
fn empty_database(url: &str) {
    let mut client =
        postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| fail(&format!("--database: {e}")));
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .unwrap_or_else(|e| fail(&format!("emptying --database: {e}")));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(s: f64) -> f64 {
    (s * 10_000.0).round() / 10.0
}

/// Runs one configuration; returns its JSON line.
fn run(config: &str, a: &Args, births: &[String], postgres_url: Option<&str>) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, crt, key) = certificates(dir.path());
    let instances = if config == "postgres-2" { 2 } else { 1 };
    let database = match config {
        "sqlite" => None,
        "postgres" | "postgres-2" => Some(postgres_url.expect("a PostgreSQL database").to_owned()),
        other => fail(&format!("unknown configuration {other}")),
    };
    let db = database.as_deref();
    let first_data = dir.path().join("server-1");
    // The first server makes its key; the second shares it (tablets pin it).
    let mut servers = vec![start_server(&first_data, db, &crt, &key)];
    for i in 2..=instances {
        let data = dir.path().join(format!("server-{i}"));
        std::fs::create_dir_all(&data).expect("second server folder");
        std::fs::copy(first_data.join("server.key"), data.join("server.key")).expect("share the key");
        servers.push(start_server(&data, db, &crt, &key));
    }

    // Setup: tokens, tablets, births.
    let setup = Instant::now();
    let communes: Vec<String> = (0..a.tablets).map(commune).collect();
    let tokens: Vec<String> = admin(
        &first_data,
        db,
        &["enroll-token", "--commune", &communes.join(",")],
    )["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["token"].as_str().expect("token").to_owned())
        .collect();
    assert_eq!(tokens.len(), a.tablets);
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let per_tablet: Vec<Vec<String>> = (0..a.tablets)
        .map(|t| {
            births
                .iter()
                .enumerate()
                .filter(|(i, _)| i % a.tablets == t)
                .map(|(_, l)| living_in(l, &communes[t]))
                .collect()
        })
        .collect();
    let records: usize = per_tablet.iter().map(Vec::len).sum();
    let barrier = Arc::new(Barrier::new(a.tablets + 1));
    let deadline_s = a.timeout.as_secs_f64();
    let mut threads = Vec::with_capacity(a.tablets);
    let ca = Arc::new(ca_pem);
    // At most this many tablets set up at once (the work is CPU-bound).
    let setup_gate = Arc::new(Gate::new(16));
    for t in 0..a.tablets {
        let store = dir.path().join(format!("tablet-{t}"));
        let url = urls[t % urls.len()].clone();
        let token = tokens[t].clone();
        let office = communes[t].clone();
        let mine = per_tablet[t].clone();
        let barrier = Arc::clone(&barrier);
        let ca = Arc::clone(&ca);
        let gate = Arc::clone(&setup_gate);
        let yield_cpu = a.tablets_yield;
        threads.push(
            std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || -> Result<(f64, Held, Vec<String>), String> {
                    gate.acquire();
                    let transport = HttpTransport::with_ca(&url, Some(&ca)).map_err(|e| e.to_string())?;
                    let tablet = Registrar::init_with_kdf(
                        store,
                        &"a long passphrase the registrar chose".into(),
                        &office,
                        KdfParams::INSECURE_FOR_TESTS,
                    )
                    .map_err(|e| e.to_string())?;
                    tablet
                        .enroll_with(&transport, &url, &token)
                        .map_err(|e| format!("enrol: {e}"))?;
                    for line in &mine {
                        let id = tablet
                            .register_birth(line, "clerk-01")
                            .map_err(|e| e.to_string())?;
                        tablet.verify(&id, "clerk-02").map_err(|e| e.to_string())?;
                        tablet.approve(&id, "registrar-01").map_err(|e| e.to_string())?;
                    }
                    gate.release();
                    if yield_cpu {
                        // The tablets are devices of their own; here they
                        // share two cores with the servers, so they yield
                        // (nice 10, this thread only).
                        // SAFETY: setpriority has no memory effects; 0 is
                        // the calling thread on Linux.
                        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                    }
                    barrier.wait();
                    let started = Instant::now();
                    // As a tablet does: a failed sync (offline, busy) is
                    // tried again; every failure counts as an error.
                    let mut failures = Vec::new();
                    loop {
                        match tablet.sync_with(&transport, &crvs_core::Quiet) {
                            Ok(report) => {
                                if report.pending == 0 && report.records_pending == 0 {
                                    break;
                                }
                            }
                            Err(e) => {
                                failures.push(format!("sync: {e}"));
                                std::thread::sleep(Duration::from_millis(500));
                            }
                        }
                        if started.elapsed().as_secs_f64() > deadline_s {
                            failures.push("timed out".into());
                            break;
                        }
                    }
                    let latency = started.elapsed().as_secs_f64();
                    let held = tablet
                        .list()
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|r| (r.id.to_string(), r.kidc))
                        .collect();
                    Ok((latency, held, failures))
                })
                .expect("spawn a tablet"),
        );
    }
    barrier.wait();
    let setup_s = setup.elapsed().as_secs_f64();
    let started = Instant::now();
    let server_pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let cpu_servers = |pids: &[u32]| pids.iter().map(|p| cpu::process(*p)).sum::<f64>();
    let (busy_0, idle_0) = cpu::machine();
    let servers_0 = cpu_servers(&server_pids);
    let me_0 = cpu::process(std::process::id());
    let writers_0: Vec<(f64, f64, f64)> = urls.iter().map(|u| writer_figures(u, &ca)).collect();
    let mut latencies = Vec::new();
    let mut retried_latencies = Vec::new();
    let mut failed_tablets = 0usize;
    let mut errors = Vec::new();
    let mut held: Vec<(String, Option<String>)> = Vec::new();
    for th in threads {
        match th.join() {
            Ok(Ok((l, h, failures))) => {
                if failures.is_empty() {
                    latencies.push(l);
                } else {
                    failed_tablets += 1;
                    retried_latencies.push(l);
                }
                held.extend(h);
                errors.extend(failures);
            }
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a tablet thread panicked".into()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Where the machine's time went while the tablets synced (the tablet
    // threads' last `list` included).
    let (busy_1, idle_1) = cpu::machine();
    let servers_s = cpu_servers(&server_pids) - servers_0;
    let me_s = cpu::process(std::process::id()) - me_0;
    let busy_s = busy_1 - busy_0;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let writers: Vec<Value> = urls
        .iter()
        .zip(&writers_0)
        .map(|(u, (g0, r0, b0))| {
            let (g1, r1, b1) = writer_figures(u, &ca);
            let (groups, requests, busy) = (g1 - g0, r1 - r0, b1 - b0);
            json!({
                "commit_groups": groups,
                "requests_per_group": round(requests / groups.max(1.0)),
                "busy_seconds": round(busy),
                "busy_ms_per_record": round(busy * 1000.0 / records as f64 * urls.len() as f64),
            })
        })
        .collect();
    // Latency of every tablet's whole sync, retries included.
    latencies.extend(retried_latencies);
    latencies.sort_by(f64::total_cmp);

    // The final check: every record exactly one KIdC.
    let with_code: Vec<&String> = held.iter().filter_map(|(_, k)| k.as_ref()).collect();
    let distinct: std::collections::HashSet<&String> = with_code.iter().copied().collect();
    let registered: u64 = admin(&first_data, db, &["registry", "stats"])["stats"]
        .as_array()
        .expect("stats")
        .iter()
        .map(|s| s["registered"].as_u64().unwrap_or(0))
        .sum();
    let ok = held.len() == records
        && with_code.len() == records
        && distinct.len() == records
        && registered == records as u64;
    let mut first_errors: Vec<String> = errors.clone();
    first_errors.sort();
    first_errors.dedup();
    first_errors.truncate(3);
    json!({
        "bench": "crvs-load",
        "config": config,
        "servers": instances,
        "tablets_yield": a.tablets_yield,
        "tablets": a.tablets,
        "records": records,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "records_per_second": (records as f64 / seconds).round(),
        "sync_latency_ms": {
            "p50": ms(percentile(&latencies, 0.50)),
            "p99": ms(percentile(&latencies, 0.99)),
            "max": ms(latencies.last().copied().unwrap_or(0.0)),
        },
        "errors": errors.len(),
        "tablets_that_had_to_retry": failed_tablets,
        "first_errors": first_errors,
        "records_on_tablets": held.len(),
        "records_with_a_kidc": with_code.len(),
        "distinct_kidcs": distinct.len(),
        "registered_on_server": registered,
        "every_record_exactly_one_kidc": ok,
        "setup_seconds": setup_s.round(),
        // Each server's writer over the timed part (busy_ms_per_record: as
        // if each server had written an equal share).
        "writers": writers,
        "cpu_seconds": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "machine_busy": round(busy_s),
            "machine_idle": round(idle_1 - idle_0),
            "load_generator": round(me_s),
            "servers": round(servers_s),
            "other_postgresql_and_kernel": round((busy_s - me_s - servers_s).max(0.0)),
        },
    })
}

fn main() {
    let a = args();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/bench/births-10000.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    let today = crvs_schema::Date::today_in_cambodia(crvs_core::registrar::now_ms());
    let (births, future): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| crvs_schema::BirthRegistration::from_json_str(l, today).is_ok());
    let births: Vec<String> = births.into_iter().map(str::to_owned).collect();
    eprintln!(
        "crvs-load: {} births dated up to today, {} dated later left out",
        births.len(),
        future.len()
    );
    let mut cluster = None;
    let mut fresh_database = |name: &str| -> String {
        if let Some(url) = &a.database {
            empty_database(url);
            return url.clone();
        }
        let c = cluster.get_or_insert_with(|| {
            crvs_testpg::Cluster::start().unwrap_or_else(|e| fail(&format!("PostgreSQL: {e}")))
        });
        c.create_database(name)
    };
    for (i, config) in a.configs.iter().enumerate() {
        let url = if config.starts_with("postgres") {
            Some(fresh_database(&format!("crvs_load_{i}")))
        } else {
            None
        };
        let line = run(config, &a, &births, url.as_deref());
        println!("{line}");
    }
}
