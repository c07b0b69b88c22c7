//! Support for the end-to-end tests: the real `crvs-server` and `crvs`
//! binaries, run as processes on real sockets with real files.
//!
//! The binaries are built once per test process with the same `cargo` that
//! runs the tests, so `cargo test -p crvs-e2e` works on its own.
//!
//! A test written with [`both_backends!`] runs twice: on SQLite, and on a
//! fresh database of a throwaway PostgreSQL cluster ([`crvs_testpg`]).
//! [`server_data`] prepares the server's data folder for the backend;
//! every helper that runs `crvs-server --data DIR` then passes the
//! folder's database along ([`data_args`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The passphrase every test tablet uses.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// The server's storage backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data folder (`server.db`): the default.
    Sqlite,
    /// A fresh database of the shared throwaway PostgreSQL cluster
    /// ([`crvs_testpg::shared`]), passed to every `crvs-server` command
    /// as `--database URL`.
    Postgres,
}

/// The file in a server's data folder naming its PostgreSQL database: when
/// it exists, every `crvs-server` command the support code runs with
/// `--data DIR` also gets `--database URL`.
pub const DATABASE_URL_FILE: &str = ".test-database-url";

/// Prepares the server data folder `dir` for `backend` and returns it: for
/// PostgreSQL, creates the folder (0700, as the server does), a fresh
/// database, and [`DATABASE_URL_FILE`] naming it.
pub fn server_data(backend: Backend, dir: &Path) -> PathBuf {
    if backend == Backend::Postgres {
        let cluster = crvs_testpg::shared().unwrap_or_else(|e| panic!("{e}"));
        let url = cluster.fresh_database();
        std::fs::create_dir_all(dir).expect("create the server data folder");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        }
        std::fs::write(dir.join(DATABASE_URL_FILE), &url).expect("write the database URL");
    }
    dir.to_path_buf()
}

/// The PostgreSQL database URL of the server data folder `data`, if it
/// uses one ([`server_data`]).
pub fn database_url(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join(DATABASE_URL_FILE))
        .ok()
        .map(|u| u.trim().to_string())
}

/// The arguments that select the server's database: `--data DIR`, and
/// `--database URL` when the folder names one.
pub fn data_args(data: &Path) -> Vec<std::ffi::OsString> {
    let mut args = vec!["--data".into(), data.as_os_str().to_owned()];
    if let Some(url) = database_url(data) {
        args.push("--database".into());
        args.push(url.into());
    }
    args
}

/// Whether a test may run on `backend`: always for SQLite; for
/// PostgreSQL, unless it is not installed (then the test is reported
/// `SKIPPED` on stderr, and fails with `CRVS_REQUIRE_POSTGRES=1`).
pub fn backend_available(backend: Backend, test: &str) -> bool {
    match backend {
        Backend::Sqlite => true,
        Backend::Postgres => crvs_testpg::require_or_skip(test).is_some(),
    }
}

/// Makes each named function `fn NAME(backend: Backend)` two tests,
/// `NAME::sqlite` and `NAME::postgres` (a module and a function may share
/// a name); the PostgreSQL one is skipped when PostgreSQL is not installed
/// ([`backend_available`]):
///
/// ```ignore
/// both_backends!(a_server_test);
/// fn a_server_test(backend: Backend) {
///     let server = Server::start(&server_data(backend, &dir.join("server")));
/// }
/// ```
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::Backend::Sqlite);
                }

                #[test]
                fn postgres() {
                    if $crate::backend_available($crate::Backend::Postgres, module_path!()) {
                        super::$name($crate::Backend::Postgres);
                    }
                }
            }
        )+
    };
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A file of `fixtures/` (verbatim copies of `../shared/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    workspace().join("fixtures").join(name)
}

/// Sample lines of the benchmark data set (synthetic births) whose date of
/// birth is not in the future.
pub fn bench_births() -> Vec<String> {
    let today = crvs_schema::Date::today_in_cambodia(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    );
    all_sample_births()
        .into_iter()
        .filter(|l| crvs_schema::BirthRegistration::from_json_str(l, today).is_ok())
        .collect()
}

/// A birth (one JSON line) of a family living in `commune` rather than in
/// the commune of its residence village (the sample's are all in 171003):
/// the residence becomes the village of `commune` with the same number, so
/// a tablet of `commune` accepts it.
pub fn living_in(line: &str, commune: &str) -> String {
    let mut doc: Value = serde_json::from_str(line).expect("a birth is JSON");
    let village = doc["residence_village_code"]
        .as_str()
        .expect("residence")
        .to_owned();
    doc["residence_village_code"] = format!("{commune}{}", &village[6..]).into();
    doc.to_string()
}

/// Every line of `fixtures/births-sample.jsonl`.
pub fn all_sample_births() -> Vec<String> {
    let path = workspace().join("fixtures/births-sample.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn target_dir() -> PathBuf {
    // The test binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf()
}

/// `cargo build --quiet ARGS` in the workspace, with the same `cargo` that
/// runs the tests.
fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--quiet"])
        .args(args)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build {} failed", args.join(" "));
}

/// Path to a workspace binary, built on first use.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&["-p", "crvs-server", "-p", "crvs-core", "--bins"]));
    let path = target_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The `crvs-mobile` shared library (`libcrvs_mobile.so` on Linux), built
/// on first use together with the bindings generator.
pub fn mobile_library() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&["-p", "crvs-mobile", "-p", "crvs-uniffi-bindgen"]));
    let name = format!(
        "{}crvs_mobile{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = target_dir().join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// Generates the `language` (`python`, `kotlin`, `swift`) bindings of
/// `crvs-mobile` into `out_dir`, in library mode, and returns the library
/// they load.
pub fn generate_bindings(language: &str, out_dir: &Path) -> PathBuf {
    let library = mobile_library();
    let bindgen = target_dir().join(format!("uniffi-bindgen{}", std::env::consts::EXE_SUFFIX));
    let out = Command::new(bindgen)
        .current_dir(workspace())
        .args(["generate", "--no-format", "--library"])
        .arg(&library)
        .args(["--language", language, "--out-dir"])
        .arg(out_dir)
        .output()
        .expect("run uniffi-bindgen");
    assert!(
        out.status.success(),
        "uniffi-bindgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    library
}

/// The outcome of one CLI command run with `--json`.
#[derive(Debug)]
pub struct Run {
    /// Exit status was success.
    pub ok: bool,
    /// The one JSON object printed on stdout.
    pub json: Value,
    /// What was printed on stderr.
    pub stderr: String,
}

impl Run {
    fn from_output(out: Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not exactly one JSON object ({e}): {stdout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Run {
            ok: out.status.success(),
            json,
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// The JSON of a successful run; panics with the error otherwise.
    pub fn expect_ok(self) -> Value {
        assert!(self.ok, "command failed: {} / {}", self.json, self.stderr);
        self.json
    }

    /// The error code of a failed run; panics if it succeeded.
    pub fn expect_err(self) -> String {
        assert!(!self.ok, "command unexpectedly succeeded: {}", self.json);
        assert!(
            !self.stderr.trim().is_empty(),
            "a failure must explain itself on stderr"
        );
        self.json["error"].as_str().expect("error code").to_string()
    }
}

/// How to start a `crvs-server serve` process.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The address to listen on (default `127.0.0.1:0`).
    pub listen: Option<String>,
    /// `--tls-cert`, `--tls-key`: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Further arguments (`--insecure-http`, `--max-connections N`).
    pub args: Vec<String>,
    /// Send the server's stderr (its logs) to this file instead of the
    /// test's stderr.
    pub log_file: Option<PathBuf>,
    /// Start it with this open-files limit (soft and hard, `ulimit -n`).
    pub open_files: Option<u64>,
    /// `RUST_LOG` (default `warn`).
    pub log_level: Option<String>,
    /// The CA (PEM) that issued the TLS certificate, for the health check.
    pub ca_pem: Option<String>,
    /// Extra environment variables (e.g. `LD_PRELOAD` of libfaketime).
    pub env: Vec<(String, String)>,
}

/// A running `crvs-server serve` process.
pub struct Server {
    child: Option<Child>,
    /// Its data directory.
    pub data: PathBuf,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Whether it serves HTTPS.
    pub tls: bool,
    /// The first line it printed on stdout (`--json`: one JSON object).
    pub listening_line: Value,
}

impl Server {
    /// Starts a server on a fresh port.
    pub fn start(data: &Path) -> Server {
        Server::start_on(data, "127.0.0.1:0")
    }

    /// Starts a server on the given address (to restart on the same port).
    pub fn start_on(data: &Path, listen: &str) -> Server {
        Server::start_with(
            data,
            &ServerOptions {
                listen: Some(listen.to_string()),
                ..ServerOptions::default()
            },
        )
    }

    /// Starts an HTTPS server on a fresh port of 127.0.0.1 with this
    /// certificate chain and key (PEM files) issued by `ca_pem`.
    pub fn start_tls(data: &Path, cert: &Path, key: &Path, ca_pem: &str) -> Server {
        Server::start_with(
            data,
            &ServerOptions {
                tls: Some((cert.to_path_buf(), key.to_path_buf())),
                ca_pem: Some(ca_pem.to_string()),
                ..ServerOptions::default()
            },
        )
    }

    /// The `Command` that runs `crvs-server serve --json` with `options`.
    pub fn command(data: &Path, options: &ServerOptions) -> Command {
        let listen = options.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cmd = match options.open_files {
            // `exec` keeps the pid: the child is the server itself.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin("crvs-server"));
                c
            }
            None => Command::new(bin("crvs-server")),
        };
        cmd.args(["serve", "--json"])
            .args(data_args(data))
            .args(["--listen", &listen]);
        if let Some((cert, key)) = &options.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        cmd.args(&options.args)
            .env("RUST_LOG", options.log_level.as_deref().unwrap_or("warn"))
            .stdout(Stdio::piped());
        match &options.log_file {
            Some(f) => cmd.stderr(std::fs::File::create(f).expect("create the server log")),
            None => cmd.stderr(Stdio::inherit()),
        };
        cmd
    }

    /// Starts a server with `options` and waits until it answers.
    pub fn start_with(data: &Path, options: &ServerOptions) -> Server {
        let mut child = Server::command(data, options).spawn().expect("spawn crvs-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let mut addr: SocketAddr = v["listening"]
            .as_str()
            .unwrap_or_else(|| panic!("the server did not start: {v}"))
            .parse()
            .expect("address");
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let server = Server {
            child: Some(child),
            data: data.to_path_buf(),
            addr,
            tls: options.tls.is_some(),
            listening_line: v,
        };
        match &options.ca_pem {
            Some(ca) if server.tls => {
                let deadline = Instant::now() + Duration::from_secs(20);
                while https_get(&format!("{}/v1/health", server.url()), ca).map(|r| r.0) != Ok(200) {
                    assert!(Instant::now() < deadline, "server never became healthy");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            _ if server.tls => {}
            _ => server.wait_healthy(),
        }
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The base URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(self.addr) {
                let _ = write!(
                    s,
                    "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server never became healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /v1/health` on a fresh plain-HTTP connection: the time it took,
    /// or `None` if no `200` came within `limit`.
    pub fn health_latency(&self, limit: Duration) -> Option<Duration> {
        health_latency(self.addr, limit)
    }

    /// The server's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("VmRSS")
    }

    /// Waits (at most `limit`) for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                panic!("the server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        c.wait().expect("wait")
    }

    /// Kills the process without warning (SIGKILL), as a power cut would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An operator command against this server's data directory.
    pub fn admin(&self, args: &[&str]) -> Run {
        admin(&self.data, args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET /v1/health` at `addr` on a fresh plain-HTTP connection: the time it
/// took, or `None` if no `200` came within `limit`. (A free function, so a
/// monitoring thread can call it without holding the `Server`.)
pub fn health_latency(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    write!(
        s,
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = start.elapsed();
    (buf.starts_with(b"HTTP/1.1 200") && took <= limit).then_some(took)
}

/// The resident memory (`VmRSS`) of process `pid`, in KiB, if it runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `crvs-server --json ARGS --data DIR` (and `--database URL` when the
/// folder names one, [`data_args`]).
pub fn admin(data: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin("crvs-server"))
        .args(args)
        .args(data_args(data))
        .arg("--json")
        .output()
        .expect("run crvs-server");
    Run::from_output(out)
}

/// `crvs-server --json ARGS --data DIR` with more environment variables
/// (a PIN in `CRVS_PIN` for `staff add`).
pub fn admin_env(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = Command::new(bin("crvs-server"))
        .args(args)
        .args(data_args(data))
        .arg("--json")
        .env_remove("CRVS_PIN")
        .envs(env.iter().copied())
        .output()
        .expect("run crvs-server");
    Run::from_output(out)
}

/// Puts `id` on `commune`'s roster with `roles` and the first PIN `pin`.
pub fn add_staff(data: &Path, commune: &str, id: &str, roles: &str, pin: &str) {
    admin_env(
        data,
        &[("CRVS_PIN", pin)],
        &["staff", "add", "--commune", commune, "--id", id, "--role", roles],
    )
    .expect_ok();
}

/// Creates an enrolment token for a commune.
pub fn token(data: &Path, commune: &str) -> String {
    admin(data, &["enroll-token", "--commune", commune]).expect_ok()["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// A tablet store driven through the `crvs` binary.
pub struct Tablet {
    /// The store directory.
    pub dir: PathBuf,
    passphrase: String,
}

impl Tablet {
    /// A tablet store at `dir` (not yet initialised).
    pub fn new(dir: PathBuf) -> Tablet {
        Tablet {
            dir,
            passphrase: PASSPHRASE.into(),
        }
    }

    /// `crvs --store DIR --json ARGS` with the tablet's passphrase.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_passphrase(&self.passphrase, args)
    }

    /// The same with another passphrase.
    pub fn run_with_passphrase(&self, passphrase: &str, args: &[&str]) -> Run {
        self.run_env(passphrase, &[], args)
    }

    /// `crvs --store DIR --json ARGS` as a staff member whose PIN is in
    /// `CRVS_PIN`.
    pub fn run_as(&self, pin: &str, args: &[&str]) -> Run {
        self.run_env(&self.passphrase, &[("CRVS_PIN", pin)], args)
    }

    /// `crvs --store DIR --json ARGS` with the passphrase and more
    /// environment variables.
    pub fn run_env(&self, passphrase: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
        let out = Command::new(bin("crvs"))
            .arg("--store")
            .arg(&self.dir)
            .args(args)
            .arg("--json")
            .env("CRVS_PASSPHRASE", passphrase)
            .env_remove("CRVS_PIN")
            .env_remove("CRVS_NEW_PIN")
            .envs(env.iter().copied())
            .output()
            .expect("run crvs");
        Run::from_output(out)
    }

    /// Initialises the store for a commune and enrols it.
    pub fn init_and_enroll(&self, commune: &str, server: &Server) -> String {
        self.init_and_enroll_via(commune, server, &server.url())
    }

    /// The same, reaching the server through `url` (a proxy).
    pub fn init_and_enroll_via(&self, commune: &str, server: &Server, url: &str) -> String {
        self.run(&["init", "--commune", commune]).expect_ok();
        let tok = token(&server.data, commune);
        self.run(&["enroll", "--server", url, "--token", &tok])
            .expect_ok()["device_id"]
            .as_str()
            .expect("device id")
            .to_string()
    }

    /// Registers a birth from a file and returns the record id.
    pub fn register(&self, file: &Path, by: &str) -> String {
        let f = file.to_str().expect("utf-8 path");
        self.run(&["birth", "register", f, "--by", by]).expect_ok()["record_id"]
            .as_str()
            .expect("record id")
            .to_string()
    }

    /// Registers, verifies and approves a birth with three staff ids.
    pub fn register_approved(&self, file: &Path) -> String {
        let id = self.register(file, "clerk-1");
        self.run(&["verify", &id, "--by", "clerk-2"]).expect_ok();
        self.run(&["approve", &id, "--by", "registrar-1"]).expect_ok();
        id
    }

    /// `crvs show ID`.
    pub fn show(&self, id: &str) -> Value {
        self.run(&["show", id]).expect_ok()
    }
}

/// Writes each line to its own file in `dir` and returns the paths.
pub fn write_births(dir: &Path, lines: &[String]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("mkdir");
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.join(format!("birth-{i}.json"));
            std::fs::write(&p, l).expect("write birth");
            p
        })
        .collect()
}

/// A TCP proxy in front of a server that can cut every answer after a
/// number of bytes: a server that vanishes in the middle of its answer, as
/// seen by the tablet. It forwards everything until [`CuttingProxy::cut_after`].
pub struct CuttingProxy {
    /// The address to connect to.
    pub addr: SocketAddr,
    limit: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    /// Starts a pass-through proxy on a fresh port.
    pub fn start(upstream: SocketAddr) -> CuttingProxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let limit = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let shared = limit.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let cut_after = shared.load(Ordering::SeqCst);
                let mut client_r = client.try_clone().expect("clone");
                let mut server_w = server.try_clone().expect("clone");
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_r, &mut server_w);
                });
                std::thread::spawn(move || {
                    let mut sent = 0usize;
                    let mut buf = [0u8; 4096];
                    while sent < cut_after {
                        let Ok(n) = server.read(&mut buf) else { break };
                        if n == 0 {
                            break;
                        }
                        let n = n.min(cut_after - sent);
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { addr, limit }
    }

    /// From the next connection on, cut each answer after `bytes` bytes.
    pub fn cut_after(&self, bytes: usize) {
        self.limit.store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// From the next connection on, forward everything.
    pub fn pass_through(&self) {
        self.limit.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A server in `root/server`, a [`CuttingProxy`] in front of it, and a
/// tablet in `root/tablet` made and enrolled (office 171003) through the
/// proxy: the tablet's every sync can lose its answer.
pub struct BehindProxy {
    /// The server's data folder.
    pub server_data: PathBuf,
    /// The server process.
    pub server: Server,
    /// The proxy the tablet syncs through.
    pub proxy: CuttingProxy,
    /// The tablet.
    pub tablet: Tablet,
}

impl BehindProxy {
    /// Starts the server (SQLite) and the proxy, and enrols the tablet.
    pub fn start(root: &Path) -> BehindProxy {
        BehindProxy::start_on(Backend::Sqlite, root)
    }

    /// The same with the server on `backend`.
    pub fn start_on(backend: Backend, root: &Path) -> BehindProxy {
        let server_data = server_data(backend, &root.join("server"));
        let server = Server::start(&server_data);
        let proxy = CuttingProxy::start(server.addr);
        let tablet = Tablet::new(root.join("tablet"));
        tablet.init_and_enroll_via("171003", &server, &proxy.url());
        BehindProxy {
            server_data,
            server,
            proxy,
            tablet,
        }
    }
}

/// The server's SQLite database in the data folder `server_data`,
/// read-only (SQLite only: a test that reads it runs on SQLite alone).
pub fn server_db(server_data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        server_data.join("server.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open server db")
}

/// The one number `sql` selects from the server database of the data
/// folder `server_data` (a `COUNT(*)`): SQLite's `server.db`, or its
/// PostgreSQL database (through `psql`) when the folder names one.
pub fn server_count(server_data: &Path, sql: &str) -> i64 {
    match database_url(server_data) {
        Some(url) => {
            let cluster = crvs_testpg::shared().unwrap_or_else(|e| panic!("{e}"));
            let out = cluster.psql(&url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            out.parse().unwrap_or_else(|e| panic!("{sql}: {e}: {out:?}"))
        }
        None => server_db(server_data)
            .query_row(sql, [], |r| r.get(0))
            .expect("count"),
    }
}

/// `GET url` over HTTPS trusting only `ca_pem`: the status and the body.
pub fn https_get(url: &str, ca_pem: &str) -> Result<(u16, String), String> {
    let mut resp = tls_agent(ca_pem).get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// A ureq agent (rustls, ring) that trusts only `ca_pem`.
pub fn tls_agent(ca_pem: &str) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    let tls = TlsConfig::builder()
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::Specific(std::sync::Arc::new(vec![ca])))
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(tls)
        .build();
    ureq::Agent::new_with_config(config)
}

/// A test PKI made with rcgen: a CA, and server certificates it issues.
pub struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl TestCa {
    /// A fresh CA.
    pub fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        TestCa { params, key, pem }
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.pem).expect("write ca.pem");
        p
    }

    /// Issues a server certificate for `names` (host names or IP
    /// addresses) and writes `NAME.crt` (the chain: certificate, CA) and
    /// `NAME.key` (PKCS#8) into `dir`; returns their paths.
    pub fn issue(&self, dir: &Path, file_name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
        let key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "crvs test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("issue");
        let crt = dir.join(format!("{file_name}.crt"));
        let keyf = dir.join(format!("{file_name}.key"));
        std::fs::write(&crt, format!("{}{}", cert.pem(), self.pem)).expect("write crt");
        std::fs::write(&keyf, key.serialize_pem()).expect("write key");
        (crt, keyf)
    }
}

/// A TCP proxy that forwards everything both ways and keeps a copy of
/// every byte it saw: what an eavesdropper on the network would see.
pub struct RecordingProxy {
    /// The address to connect to.
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    /// Starts a proxy to `upstream` on a fresh port.
    pub fn start(upstream: SocketAddr) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let seen = shared.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            seen.lock().expect("lock").extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        RecordingProxy { addr, seen }
    }

    /// Every byte seen so far, both directions.
    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The environment that runs a process with its clock moved by `offset`
/// (libfaketime syntax, e.g. `-3d`), or `None` when libfaketime is not
/// installed (`apt-get install faketime`). With `CRVS_REQUIRE_FAKETIME=1`
/// (set by `.ci/run`) its absence fails the test instead.
pub fn faketime_env(offset: &str) -> Option<Vec<(String, String)>> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    match lib {
        Some(lib) => Some(vec![
            ("LD_PRELOAD".into(), lib.into()),
            ("FAKETIME".into(), offset.into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
        ]),
        None => {
            assert!(
                std::env::var("CRVS_REQUIRE_FAKETIME").is_err(),
                "libfaketime is required here: apt-get install faketime"
            );
            eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
            None
        }
    }
}
