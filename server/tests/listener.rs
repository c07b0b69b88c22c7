//! The connection layer's time limits on real sockets, with short limits
//! so that each runs in seconds: a stalled body, the lifetime cap, a TLS
//! handshake that never comes, and a client that does complete one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crvs_server::Server;
use crvs_server::listener::ListenerConfig;

struct Running {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

fn start(config: ListenerConfig) -> Running {
    let dir = tempfile::tempdir().expect("dir");
    let server = Arc::new(Server::open(dir.path()).expect("open"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(crvs_server::listener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(crvs_server::http::serve_with_config(
        listener,
        server,
        config,
        std::future::pending(),
    ));
    Running {
        _dir: dir,
        addr,
        _rt: rt,
    }
}

/// Reads until the server closes the connection; how long that took, or
/// `None` if it was still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
        if start.elapsed() > limit {
            return None;
        }
    }
}

const SYNC_HEAD: &[u8] = b"POST /v1/sync HTTP/1.1\r\nHost: x\r\nx-crvs-protocol: 2\r\n\
    Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n";

#[test]
fn a_body_that_stops_coming_is_cut_after_the_stall_timeout() {
    let server = start(ListenerConfig {
        stall_timeout: Duration::from_secs(1),
        ..ListenerConfig::default()
    });
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(SYNC_HEAD).unwrap();
    s.write_all(&[0u8; 10]).unwrap();
    let took = closed_within(&mut s, Duration::from_secs(8)).expect("never closed");
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[test]
fn a_connection_that_keeps_trickling_is_cut_at_the_lifetime_cap() {
    let server = start(ListenerConfig {
        stall_timeout: Duration::from_secs(1),
        max_connection_lifetime: Duration::from_secs(2),
        ..ListenerConfig::default()
    });
    let mut s = TcpStream::connect(server.addr).unwrap();
    let opened = Instant::now();
    s.write_all(SYNC_HEAD).unwrap();
    // One byte every 300 ms: never stalled, never done.
    let mut closed = false;
    while opened.elapsed() < Duration::from_secs(8) {
        if s.write_all(&[0u8]).is_err() {
            closed = true;
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            _ => {
                closed = true;
                break;
            }
        }
    }
    let lived = opened.elapsed();
    assert!(closed, "still open after {lived:?}");
    assert!(lived >= Duration::from_millis(1900), "{lived:?}");
    assert!(lived <= Duration::from_secs(4), "{lived:?}");
}

fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let crt = dir.path().join("s.crt");
    let keyf = dir.path().join("s.key");
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    (
        crvs_server::listener::tls_config(&crt, &keyf).expect("tls config"),
        cert.pem(),
    )
}

#[test]
fn a_tls_handshake_that_never_comes_is_cut_and_a_real_one_is_served() {
    let (tls, ca_pem) = tls_config();
    let server = start(ListenerConfig {
        tls: Some(tls),
        tls_handshake_timeout: Duration::from_secs(1),
        ..ListenerConfig::default()
    });
    let mut silent = TcpStream::connect(server.addr).unwrap();
    // A real client meanwhile: the silent one does not hold up the others.
    let ca = ureq::tls::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
                .build(),
        )
        .build()
        .into();
    let body = agent
        .get(format!("https://{}/v1/health", server.addr))
        .call()
        .expect("https health")
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(body.contains("ok"), "{body}");
    let took = closed_within(&mut silent, Duration::from_secs(8)).expect("never closed");
    assert!(took >= Duration::from_millis(500), "{took:?}");
}

#[test]
fn a_tls_key_file_that_is_not_a_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let crt = dir.path().join("s.crt");
    std::fs::write(&crt, "not a certificate").unwrap();
    let e = crvs_server::listener::tls_config(&crt, &crt).unwrap_err();
    assert!(e.contains("no PEM certificate"), "{e}");
}

/// A tablet never sends a request on a connection the server is about to
/// close as idle: its transport drops kept-alive connections well before
/// the server's idle timeout (the header read timeout). With ureq's
/// default (15 s against the server's 10 s), a crowd of tablets syncing at
/// once saw "connection reset by peer" (crvs-load, 1,633 tablets).
#[test]
fn tablets_drop_idle_connections_well_before_the_server_does() {
    let server_idle = ListenerConfig::default().header_read_timeout;
    assert!(
        crvs_core::transport::MAX_IDLE_AGE * 2 <= server_idle,
        "tablet {:?}, server {server_idle:?}",
        crvs_core::transport::MAX_IDLE_AGE
    );
}
