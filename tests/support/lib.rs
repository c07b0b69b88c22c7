//! Support for the end-to-end tests: the real `crvs-server` and `crvs`
//! binaries, run as processes on real sockets with real files.
//!
//! The binaries are built once per test process with the same `cargo` that
//! runs the tests, so `cargo test -p crvs-e2e` works on its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The passphrase every test tablet uses.
pub const PASSPHRASE: &str = "correct horse battery staple";

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

/// A running `crvs-server serve` process.
pub struct Server {
    child: Option<Child>,
    /// Its data directory.
    pub data: PathBuf,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server on a fresh port.
    pub fn start(data: &Path) -> Server {
        Server::start_on(data, "127.0.0.1:0")
    }

    /// Starts a server on the given address (to restart on the same port).
    pub fn start_on(data: &Path, listen: &str) -> Server {
        let mut child = Command::new(bin("crvs-server"))
            .args(["serve", "--json", "--data"])
            .arg(data)
            .args(["--listen", listen])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crvs-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let addr: SocketAddr = v["listening"]
            .as_str()
            .expect("listening")
            .parse()
            .expect("address");
        let server = Server {
            child: Some(child),
            data: data.to_path_buf(),
            addr,
        };
        server.wait_healthy();
        server
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

/// `crvs-server --json ARGS --data DIR`.
pub fn admin(data: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin("crvs-server"))
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .output()
        .expect("run crvs-server");
    Run::from_output(out)
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
        let out = Command::new(bin("crvs"))
            .arg("--store")
            .arg(&self.dir)
            .args(args)
            .arg("--json")
            .env("CRVS_PASSPHRASE", passphrase)
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
