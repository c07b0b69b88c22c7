//! The HTTP interface on a real socket (`serve` on 127.0.0.1:0), and the
//! `crvs-server` binary's operator commands.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crvs_schema::wire::{self, AckOutcome, SyncResponse};
use crvs_schema::workflow::Action;
use crvs_server::Server;
use support::{OFFICE, Tablet, birth, enroll_request, new_record_id, record_changes};

struct Running {
    _dir: tempfile::TempDir,
    server: Arc<Server>,
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn start() -> Running {
    let dir = tempfile::tempdir().expect("dir");
    let server = Arc::new(Server::open(dir.path()).expect("open"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(crvs_server::http::serve(listener, server.clone()));
    Running {
        _dir: dir,
        server,
        url,
        _rt: rt,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs a sync body; returns the status and the body.
fn post_sync(url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut resp = agent()
        .post(format!("{url}/v1/sync"))
        .header(wire::PROTOCOL_HEADER, wire::FORMAT_VERSION.to_string())
        .header("content-type", "application/octet-stream")
        .send(body)
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_vec().expect("body"))
}

fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    v["error"].as_str().expect("error code").to_string()
}

fn count(dir: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join(crvs_server::DB_FILE)).expect("db");
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

fn enroll_http(url: &str, token: &str) -> Tablet {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let body = serde_json::to_vec(&enroll_request(token, &key, None)).expect("json");
    let mut resp = agent()
        .post(format!("{url}/v1/enroll"))
        .header("content-type", "application/json")
        .send(&body[..])
        .expect("enrol");
    assert_eq!(resp.status().as_u16(), 200);
    let r: wire::EnrollResponse =
        serde_json::from_slice(&resp.body_mut().read_to_vec().expect("body")).expect("json");
    Tablet::from_enrolment(key, &r.device_id, &r.office)
}

#[test]
fn health_answers_ok() {
    let s = start();
    let mut resp = agent().get(format!("{}/v1/health", s.url)).call().expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: serde_json::Value =
        serde_json::from_slice(&resp.body_mut().read_to_vec().expect("body")).expect("json");
    assert_eq!(v["status"], "ok");
}

#[test]
fn a_tablet_enrols_syncs_and_gets_its_kidc_over_http() {
    let s = start();
    let token = crvs_server::admin::create_token(&s.server, OFFICE, 60_000).expect("token");
    let mut tablet = enroll_http(&s.url, &token.token);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let req = tablet.request(vec![cs]);
    let (status, body) = post_sync(&s.url, &req);
    assert_eq!(status, 200);
    let resp = SyncResponse::open(&body, &s.server.signing_key().verifying_key()).expect("signed answer");
    assert_eq!(resp.request_hash, wire::request_hash(&req));
    assert_eq!(resp.acks[0].outcome, AckOutcome::Applied);
    assert_eq!(resp.updates.len(), 1);
    // The same token again, for another key, is refused.
    let other = ed25519_dalek::SigningKey::generate(&mut rand::rng());
    let again = agent()
        .post(format!("{}/v1/enroll", s.url))
        .header("content-type", "application/json")
        .send(&serde_json::to_vec(&enroll_request(&token.token, &other, None)).expect("json")[..])
        .expect("request");
    assert_eq!(again.status().as_u16(), 409);
}

#[test]
fn random_truncated_and_oversized_bodies_get_clear_json_errors_and_store_nothing() {
    let s = start();
    let mut tablet = Tablet::enroll(&s.server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let req = tablet.request(vec![cs]);

    let mut random = vec![0u8; 10_000];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut random);
    // Not version byte 1, which is told to update instead.
    random[0] = 0xee;
    let (status, body) = post_sync(&s.url, &random);
    assert_eq!((status, error_code(&body).as_str()), (400, "malformed"));

    let (status, body) = post_sync(&s.url, &req[..req.len() - 7]);
    assert_eq!((status, error_code(&body).as_str()), (400, "malformed"));

    let oversized = vec![1u8; wire::MAX_SYNC_REQUEST_BYTES + 1];
    match agent()
        .post(format!("{}/v1/sync", s.url))
        .header(wire::PROTOCOL_HEADER, wire::FORMAT_VERSION.to_string())
        .send(&oversized[..])
    {
        Ok(mut resp) => {
            assert_eq!(resp.status().as_u16(), 413);
            assert_eq!(
                error_code(&resp.body_mut().read_to_vec().expect("body")),
                "too_large"
            );
        }
        // The server may close the connection after answering 413 before
        // the client has finished sending; that is a refusal too.
        Err(e) => assert!(matches!(e, ureq::Error::Io(_)), "{e}"),
    }

    let mut resp = agent()
        .post(format!("{}/v1/sync", s.url))
        .send(&req[..])
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        error_code(&resp.body_mut().read_to_vec().expect("body")),
        "unsupported_protocol"
    );

    let mut resp = agent()
        .get(format!("{}/v1/nowhere", s.url))
        .call()
        .expect("request");
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        error_code(&resp.body_mut().read_to_vec().expect("body")),
        "not_found"
    );

    assert_eq!(count(s._dir.path(), "change_set_log"), 0);
    assert_eq!(count(s._dir.path(), "records"), 0);
}

#[test]
fn a_revoked_device_gets_403_from_its_next_request() {
    let s = start();
    let mut tablet = Tablet::enroll(&s.server, OFFICE);
    let (status, _) = post_sync(&s.url, &tablet.request(vec![]));
    assert_eq!(status, 200);
    // Revoke through the CLI, as an operator would, while the server runs.
    let out = Command::new(env!("CARGO_BIN_EXE_crvs-server"))
        .args(["revoke", "--json", "--data"])
        .arg(s._dir.path())
        .arg(uuid::Uuid::from_bytes(tablet.device_id).to_string())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["revoked"], true);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let (status, body) = post_sync(&s.url, &tablet.request(vec![cs]));
    assert_eq!((status, error_code(&body).as_str()), (403, "device_revoked"));
    assert_eq!(count(s._dir.path(), "records"), 0);
}

#[test]
fn two_racing_http_requests_apply_once_and_issue_one_kidc() {
    let s = start();
    let mut tablet = Tablet::enroll(&s.server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    // Two requests (counters 1 and 2) carrying the same change set, as a
    // tablet that retried while its first request was still in flight.
    let requests = [tablet.request(vec![cs.clone()]), tablet.request(vec![cs])];
    let results: Vec<(u16, Vec<u8>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = requests
            .iter()
            .map(|r| sc.spawn(|| post_sync(&s.url, r)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut applied = 0;
    for (status, body) in &results {
        match status {
            200 => {
                let resp = SyncResponse::open(body, &s.server.signing_key().verifying_key()).expect("answer");
                applied += resp
                    .acks
                    .iter()
                    .filter(|a| a.outcome == AckOutcome::Applied)
                    .count();
            }
            // The later counter went first (the earlier one is then a
            // reordered request), or the other was still in flight.
            409 => assert_eq!(error_code(body), "replayed_request"),
            429 => assert_eq!(error_code(body), "sync_in_progress"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(results.iter().any(|(st, _)| *st == 200));
    assert_eq!(applied, 1);
    assert_eq!(count(s._dir.path(), "change_set_log"), 1);
    assert_eq!(count(s._dir.path(), "kidc_issuance"), 1);
}

#[test]
fn a_captured_request_sent_again_is_refused_and_changes_nothing() {
    let s = start();
    let mut tablet = Tablet::enroll(&s.server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    let captured = tablet.request(vec![cs]);
    let (status, _) = post_sync(&s.url, &captured);
    assert_eq!(status, 200);
    let device = |s: &Running| {
        s.server
            .storage()
            .device(uuid::Uuid::from_bytes(tablet.device_id))
            .expect("read")
            .expect("device")
    };
    let before = device(&s);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (status, body) = post_sync(&s.url, &captured);
    assert_eq!((status, error_code(&body).as_str()), (409, "replayed_request"));
    // No update feed (KIdCs) in the refusal, and not even last_sync moved.
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["last_counter"], 1);
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(3),
        "error, message, last_counter only: {v}"
    );
    assert_eq!(device(&s), before);
}

fn cli(dir: &Path, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_crvs-server"))
        .args(args)
        .arg("--data")
        .arg(dir)
        .output()
        .expect("run");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "exactly one line on stdout: {stdout}");
    (
        out.status.success(),
        serde_json::from_str(&stdout).expect("one JSON object"),
    )
}

#[test]
fn the_operator_commands_print_one_json_object() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, v) = cli(dir.path(), &["--json", "enroll-token", "--commune", OFFICE]);
    assert!(ok);
    assert_eq!(v["commune"], OFFICE);
    let token = v["token"].as_str().expect("token");
    assert_eq!(token.len(), 40, "33 symbols in groups of four: {token}");
    assert!(crvs_schema::enrol::EnrolmentToken::parse(token).is_ok());
    let (ok, v) = cli(dir.path(), &["enroll-token", "--commune", "99", "--json"]);
    assert!(!ok);
    assert_eq!(v["error"], "invalid_argument");
    let (ok, v) = cli(dir.path(), &["devices", "--json"]);
    assert!(ok);
    assert_eq!(v["devices"], serde_json::json!([]));
    let (ok, v) = cli(
        dir.path(),
        &["revoke", "0190a000-0000-7000-8000-000000000000", "--json"],
    );
    assert!(!ok);
    assert_eq!(v["error"], "unknown_device");
}

#[test]
fn serve_prints_the_address_it_bound_and_answers_health() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_crvs-server"))
        .args(["--json", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("new-folder"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let addr = v["listening"].as_str().expect("address").to_string();
    let resp = agent()
        .get(format!("http://{addr}/v1/health"))
        .call()
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    child.kill().expect("kill");
    let _ = child.wait();
}

#[test]
fn a_client_request_id_is_kept_only_when_short_and_plain() {
    use std::io::{Read, Write};
    let s = start();
    let addr = s.url.trim_start_matches("http://").to_string();
    // A raw request: an HTTP library would refuse to send some of these.
    let id_of = |sent: &[u8]| {
        let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
        let mut req = b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-request-id: ".to_vec();
        req.extend_from_slice(sent);
        req.extend_from_slice(b"\r\n\r\n");
        conn.write_all(&req).expect("send");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read");
        if answer.starts_with("HTTP/1.1 400") {
            // The HTTP parser refused the header itself: the request never
            // reached a handler or a log line.
            return None;
        }
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{}",
            &answer[..answer.len().min(80)]
        );
        let id = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("an x-request-id")
            .to_string();
        Some(id)
    };
    assert_eq!(id_of(b"tablet-42.sync:7").as_deref(), Some("tablet-42.sync:7"));
    let mut replaced = 0;
    for forged in [
        b"a\" level=ERROR msg=\"forged".to_vec(),
        vec![b'x'; 8 * 1024],
        b"\x1b[31mred".to_vec(),
        b"has space".to_vec(),
    ] {
        if let Some(got) = id_of(&forged) {
            assert_ne!(got.as_bytes(), forged.as_slice());
            assert!(
                uuid::Uuid::parse_str(&got).is_ok(),
                "replaced by a fresh UUID, got {got:?}"
            );
            replaced += 1;
        }
    }
    assert!(
        replaced >= 3,
        "the quote, the 8 KB and the space ids reach the server and are replaced"
    );
}

#[cfg(unix)]
#[test]
fn the_data_folder_and_its_files_are_private_to_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    // A folder an operator made world-readable is tightened.
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = Server::open(&data).expect("open");
    let mut tablet = Tablet::enroll(&server, OFFICE);
    let id = new_record_id();
    let mut doc = tablet.new_doc(OFFICE, &birth(), &[Action::Verify, Action::Approve]);
    let cs = tablet.seal(vec![record_changes(id, Tablet::all_changes(&mut doc))]);
    server.handle_sync(&tablet.request(vec![cs])).expect("sync");
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&data).expect("read_dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{} is {:o}", path.display(), mode(&path));
        files += 1;
    }
    assert!(
        files >= 3,
        "server.db, its WAL and the key at least ({files} files)"
    );
}

#[test]
fn enroll_token_writes_a_qr_code_that_scans_back_to_the_token() {
    let dir = tempfile::tempdir().expect("dir");
    let png_path = dir.path().join("token.png");
    let (ok, v) = cli(
        dir.path(),
        &[
            "--json",
            "enroll-token",
            "--commune",
            OFFICE,
            "--qr",
            png_path.to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    // Decode the PNG and scan it as a phone would.
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).expect("png"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut pixels).expect("png frame");
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, scanned) = grids[0].decode().expect("decodes");
    assert_eq!(scanned, token);
    assert!(crvs_schema::enrol::EnrolmentToken::parse(&scanned).is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&png_path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the QR code enrols a tablet: owner only");
    }
}
