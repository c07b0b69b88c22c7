//! TLS on both ends, against the real `crvs-server` and `crvs` processes on
//! real sockets, with a CA and server certificates made by rcgen here.

use std::process::Stdio;
use std::time::Duration;

use crvs_e2e::{RecordingProxy, Server, ServerOptions, Tablet, TestCa, contains, fixture, https_get, token};

const COMMUNE: &str = "171003";

/// What must never cross the network in clear: the fixture's names in
/// Latin script, and HTTP framing that names the API.
const SECRETS: &[&str] = &["SOPHEA", "VICHET", "DARA", "170123456"];
const FRAMING: &[&str] = &["/v1/enroll", "/v1/sync", "x-crvs-protocol", "\"token_id\""];

#[test]
fn a_tablet_enrolled_with_the_operators_ca_syncs_over_https_and_nothing_readable_crosses_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("crvs test CA");
    let ca_file = ca.write(dir.path());
    let (crt, key) = ca.issue(dir.path(), "server", &["127.0.0.1", "localhost"]);
    let server = Server::start_tls(&dir.path().join("server"), &crt, &key, &ca.pem);
    assert_eq!(server.listening_line["tls"], true);
    let proxy = RecordingProxy::start(server.addr);
    let url = format!("https://{}", proxy.addr);

    let tablet = Tablet::new(dir.path().join("tablet"));
    tablet.run(&["init", "--commune", COMMUNE]).expect_ok();
    let tok = token(&server.data, COMMUNE);

    // Without the CA: a certificate error, not "offline", and the token
    // is not used up.
    let r = tablet.run(&["enroll", "--server", &url, "--token", &tok]);
    let message = r.json["message"].as_str().unwrap_or_default().to_string();
    assert_eq!(r.expect_err(), "certificate");
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("does not trust"), "{message}");
    assert!(!message.contains(&tok), "the token is in the message");

    // A CA file that is not a certificate: refused before anything is sent.
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, std::fs::read_to_string(&key).unwrap()).unwrap();
    let r = tablet.run(&[
        "enroll",
        "--server",
        &url,
        "--token",
        &tok,
        "--ca",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(
        r.json["message"],
        "invalid input: the CA file is not a PEM certificate"
    );
    assert_eq!(r.expect_err(), "invalid_input");
    assert_eq!(
        tablet.run(&["sync"]).expect_err(),
        "not_enrolled",
        "nothing was stored"
    );

    // With the CA: the same token enrols the tablet.
    let enrolled = tablet
        .run(&[
            "enroll",
            "--server",
            &url,
            "--token",
            &tok,
            "--ca",
            ca_file.to_str().unwrap(),
        ])
        .expect_ok();
    assert!(enrolled["device_id"].is_string());

    // A birth, registered offline, synced over HTTPS (the stored CA is used
    // without being given again): the KIdC comes back.
    let id = tablet.register_approved(&fixture("birth-sok-dara.json"));
    let report = tablet.run(&["sync"]).expect_ok();
    assert_eq!(report["kidcs_received"], 1, "{report}");
    let record = tablet.show(&id);
    assert_eq!(record["status"], "registered");
    let kidc = record["kidc"].as_str().expect("kidc").to_string();

    // The eavesdropper saw a real exchange, and nothing readable in it.
    let wire = proxy.seen();
    assert!(wire.len() > 2_000, "the proxy saw only {} bytes", wire.len());
    let lookup = hex::encode(
        crvs_schema::enrol::EnrolmentToken::parse(&tok)
            .expect("token")
            .lookup_id(),
    );
    for s in SECRETS
        .iter()
        .chain(FRAMING)
        .copied()
        .chain([tok.as_str(), kidc.as_str(), lookup.as_str()])
    {
        assert!(!contains(&wire, s.as_bytes()), "{s:?} crossed the wire in clear");
    }
    eprintln!("tls: {} bytes on the wire, none of them readable", wire.len());
}

#[test]
fn the_same_exchange_over_plain_http_is_readable_on_the_wire() {
    // The control for the test above: the same proxy does see the token and
    // the API's framing when there is no TLS, so the assertions there can fail.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"));
    let proxy = RecordingProxy::start(server.addr);
    let tablet = Tablet::new(dir.path().join("tablet"));
    tablet.run(&["init", "--commune", COMMUNE]).expect_ok();
    let tok = token(&server.data, COMMUNE);
    let url = format!("http://{}", proxy.addr);
    tablet
        .run(&["enroll", "--server", &url, "--token", &tok])
        .expect_ok();
    tablet.register_approved(&fixture("birth-sok-dara.json"));
    tablet.run(&["sync"]).expect_ok();
    let wire = proxy.seen();
    // The token itself never crosses the network, even in clear (the
    // tablet sends a hash of its secret and a MAC); its lookup id does.
    assert!(
        !contains(&wire, tok.as_bytes()),
        "the token's text must never be sent"
    );
    let lookup = hex::encode(
        crvs_schema::enrol::EnrolmentToken::parse(&tok)
            .expect("token")
            .lookup_id(),
    );
    assert!(
        contains(&wire, lookup.as_bytes()),
        "the token's lookup id should be visible without TLS"
    );
    for s in FRAMING {
        assert!(
            contains(&wire, s.as_bytes()),
            "{s:?} should be visible without TLS"
        );
    }
}

#[test]
fn a_certificate_for_another_host_name_is_refused_as_a_certificate_problem() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("crvs test CA");
    let ca_file = ca.write(dir.path());
    let (crt, key) = ca.issue(dir.path(), "other", &["sync.other.example"]);
    let server = Server::start_with(
        &dir.path().join("server"),
        &ServerOptions {
            tls: Some((crt, key)),
            ..ServerOptions::default()
        },
    );
    // The server is up (the handshake fails only on the name).
    let health = https_get(&format!("{}/v1/health", server.url()), &ca.pem);
    assert!(health.is_err(), "{health:?}");

    let tablet = Tablet::new(dir.path().join("tablet"));
    tablet.run(&["init", "--commune", COMMUNE]).expect_ok();
    let tok = token(&server.data, COMMUNE);
    let r = tablet.run(&[
        "enroll",
        "--server",
        &server.url(),
        "--token",
        &tok,
        "--ca",
        ca_file.to_str().unwrap(),
    ]);
    let message = r.json["message"].as_str().unwrap_or_default().to_string();
    assert_eq!(r.expect_err(), "certificate");
    assert!(message.contains("another host name"), "{message}");
    assert_eq!(tablet.run(&["sync"]).expect_err(), "not_enrolled");
    // The token was never presented: it is still unused.
    let unused = server.admin(&["devices"]).expect_ok();
    assert_eq!(unused["devices"].as_array().map(Vec::len), Some(0));
}

fn serve_output(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Server::command(
        data,
        &ServerOptions {
            listen: Some("0.0.0.0:0".into()),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..ServerOptions::default()
        },
    );
    let child = cmd.stderr(Stdio::piped()).spawn().expect("spawn");
    let out = wait_with_timeout(child, Duration::from_secs(20));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let start = std::time::Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("crvs-server serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn plain_http_on_a_public_address_is_refused_unless_insecure_http_or_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");

    // No TLS flags on 0.0.0.0: exits non-zero and says what to do.
    let (ok, stdout, stderr) = serve_output(&data, &[]);
    assert!(!ok, "started: {stdout}");
    for needle in [
        "not a loopback address",
        "--tls-cert",
        "--tls-key",
        "--insecure-http",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["error"], "invalid_argument");
    assert!(json.get("listening").is_none());

    // --insecure-http (behind a TLS proxy): it serves plain HTTP.
    let server = Server::start_with(
        &data,
        &ServerOptions {
            listen: Some("0.0.0.0:0".into()),
            args: vec!["--insecure-http".into()],
            ..ServerOptions::default()
        },
    );
    assert!(
        server.listening_line["listening"]
            .as_str()
            .unwrap()
            .starts_with("0.0.0.0:")
    );
    assert!(server.health_latency(Duration::from_secs(5)).is_some());
    drop(server);

    // With a certificate: HTTPS on 0.0.0.0.
    let ca = TestCa::new("crvs test CA");
    let (crt, key) = ca.issue(dir.path(), "server", &["127.0.0.1"]);
    let server = Server::start_with(
        &data,
        &ServerOptions {
            listen: Some("0.0.0.0:0".into()),
            tls: Some((crt, key)),
            ca_pem: Some(ca.pem.clone()),
            ..ServerOptions::default()
        },
    );
    assert_eq!(server.listening_line["tls"], true);
    let (status, body) = https_get(&format!("{}/v1/health", server.url()), &ca.pem).expect("https health");
    assert_eq!((status, body.contains("ok")), (200, true));
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(server.health_latency(Duration::from_secs(2)).is_none());
    drop(server);

    // A key file that is not a key: a clear error, no start.
    let (ok, _, stderr) = serve_output(
        &data,
        &[
            "--tls-cert",
            ca.write(dir.path()).to_str().unwrap(),
            "--tls-key",
            "/dev/null",
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("private key"), "{stderr}");
}

#[test]
fn the_readme_command_serves_plain_http_on_loopback_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(crvs_e2e::bin("crvs-server"))
        .args(["serve", "--data"])
        .arg(dir.path().join("crvs-data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line:?}");
    assert!(!line.contains("https"), "{line:?}");
}
