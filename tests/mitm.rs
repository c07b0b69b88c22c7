//! A machine in the middle of the enrolment, as a real HTTP proxy between
//! the real `crvs` CLI and the real `crvs-server` process: it forwards the
//! enrolment to the server, then swaps the server key in the answer for its
//! own (and signs the answer with it), so that the tablet would pin its key
//! and accept its forged answers, KIdCs included. The tablet refuses, pins
//! nothing, and the same token then enrols it with the real server.
//! And an eavesdropper who captured a sync request sends it again: refused,
//! and nothing changes on the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crvs_e2e::{Server, Tablet, fixture, token};
use crvs_schema::wire::EnrollResponse;
use ed25519_dalek::SigningKey;

const COMMUNE: &str = "171003";

type Captured = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Forwards one request at a time to `upstream`, keeping a copy of each
/// request (head, body); if `swap`, answers of `/v1/enroll` get Mallory's
/// key and signature.
fn start_mallory(upstream: SocketAddr, swap: bool) -> (SocketAddr, Captured) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let captured: Captured = Arc::default();
    let keep = captured.clone();
    std::thread::spawn(move || {
        let mallory = SigningKey::from_bytes(&[66; 32]);
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let _ = relay(&mut client, upstream, swap.then_some(&mallory), &keep);
        }
    });
    (addr, captured)
}

fn relay(
    client: &mut TcpStream,
    upstream: SocketAddr,
    mallory: Option<&SigningKey>,
    captured: &Captured,
) -> std::io::Result<()> {
    // The request: its head, then Content-Length bytes.
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        let end = line == "\r\n";
        if !line.to_ascii_lowercase().starts_with("connection:") {
            head.push_str(&line);
        }
        if end {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    captured.lock().expect("lock").push((head.clone(), body.clone()));
    let enroll = head.starts_with("POST /v1/enroll");
    let request: Option<serde_json::Value> = enroll.then(|| serde_json::from_slice(&body).ok()).flatten();
    // Forward, one request per connection.
    let mut server = TcpStream::connect(upstream)?;
    let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    server.write_all(head.as_bytes())?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |p| p + 4);
    let (answer_head, answer_body) = answer.split_at(split);
    let mut out_body = answer_body.to_vec();
    if let (Some(mallory), Some(req), Ok(mut resp)) = (
        mallory,
        request,
        serde_json::from_slice::<EnrollResponse>(answer_body),
    ) {
        // Swap the key, and sign as the key now claims.
        resp.server_public_key = hex::encode(mallory.verifying_key().to_bytes());
        resp.sign(
            mallory,
            req["public_key"].as_str().unwrap_or_default(),
            req["nonce"].as_str().unwrap_or_default(),
        );
        out_body = serde_json::to_vec(&resp).expect("json");
    }
    let mut out_head = String::new();
    for line in String::from_utf8_lossy(answer_head).split("\r\n") {
        if line.is_empty() {
            continue;
        }
        if line.to_ascii_lowercase().starts_with("content-length:") {
            out_head.push_str(&format!("content-length: {}\r\n", out_body.len()));
        } else if !line.to_ascii_lowercase().starts_with("connection:") {
            out_head.push_str(line);
            out_head.push_str("\r\n");
        }
    }
    out_head.push_str("connection: close\r\n\r\n");
    client.write_all(out_head.as_bytes())?;
    client.write_all(&out_body)?;
    Ok(())
}

#[test]
fn an_enrolment_answer_with_a_swapped_key_is_refused_and_the_token_still_enrols_with_the_real_server() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("server"));
    let (mallory, _) = start_mallory(server.addr, true);
    let tablet = Tablet::new(dir.path().join("tablet"));
    tablet.run(&["init", "--commune", COMMUNE]).expect_ok();
    let tok = token(&server.data, COMMUNE);

    let refused = tablet.run(&[
        "enroll",
        "--server",
        &format!("http://{mallory}"),
        "--token",
        &tok,
    ]);
    assert!(!refused.ok);
    assert_eq!(refused.json["error"], "protocol", "{}", refused.json);
    let message = refused.json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("does not match the enrolment token"),
        "{message}"
    );
    // Nothing pinned: the tablet is not enrolled.
    assert_eq!(tablet.run(&["sync"]).expect_err(), "not_enrolled");

    // Straight to the real server, the same token enrols the same tablet,
    // and a birth gets its KIdC.
    let enrolled = tablet
        .run(&["enroll", "--server", &server.url(), "--token", &tok])
        .expect_ok();
    let devices = server.admin(&["devices"]).expect_ok();
    let listed = devices["devices"].as_array().expect("devices");
    assert_eq!(listed.len(), 1, "one device for the token: {devices}");
    assert_eq!(listed[0]["device_id"], enrolled["device_id"]);
    let id = tablet.register_approved(&fixture("birth-sok-dara.json"));
    let report = tablet.run(&["sync"]).expect_ok();
    assert_eq!(report["kidcs_received"], 1, "{report}");
    assert!(tablet.show(&id)["kidc"].as_str().is_some());
}

#[test]
fn a_captured_sync_request_sent_again_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("server"));
    let (eavesdropper, captured) = start_mallory(server.addr, false);
    let tablet = Tablet::new(dir.path().join("tablet"));
    tablet.init_and_enroll_via(COMMUNE, &server, &format!("http://{eavesdropper}"));
    tablet.register_approved(&fixture("birth-sok-dara.json"));
    let report = tablet.run(&["sync"]).expect_ok();
    assert_eq!(report["kidcs_received"], 1, "{report}");
    let (head, body) = captured
        .lock()
        .expect("lock")
        .iter()
        .find(|(h, _)| h.starts_with("POST /v1/sync"))
        .cloned()
        .expect("a captured sync request");
    let before = server.admin(&["devices"]).expect_ok();

    // The same bytes again, straight to the server, a second later.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut s = TcpStream::connect(server.addr).expect("connect");
    let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&body).expect("body");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("answer");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 409"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("replayed_request"));
    assert!(
        !text.contains("application/octet-stream"),
        "no signed answer, no feed"
    );
    let after = server.admin(&["devices"]).expect_ok();
    assert_eq!(before, after, "not even last_sync moved");
    // The tablet itself syncs on.
    tablet.run(&["sync"]).expect_ok();
}
