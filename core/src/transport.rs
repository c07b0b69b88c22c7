//! Transports carry bytes between a tablet and the server; they make no
//! decisions. [`HttpTransport`] speaks the server's HTTP API (`/v1/enroll`,
//! `/v1/sync`); a relay tablet or a USB stick can implement [`Transport`]
//! later without touching the sync logic.
//!
//! HTTPS uses rustls (ring): the server's certificate must chain to one of
//! the bundled web roots (`webpki-root-certs`: tablets have no reliable
//! system store) or to the CA the operators handed over at enrolment.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crvs_schema::wire::{self, EnrollRequest, EnrollResponse, ErrorBody};

use crate::error::{Error, Result};

/// Carries enrolment and sync messages to the server and back.
pub trait Transport {
    /// Sends an enrolment request and returns the server's answer.
    fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse>;

    /// Sends a sealed sync request and returns the sealed response bytes.
    /// A refusal of the whole request is [`Error::ServerRefused`]; a
    /// transport failure (including a connection cut mid-answer) is
    /// [`Error::Offline`].
    fn sync(&self, sealed_request: &[u8]) -> Result<Vec<u8>>;
}

/// A kept-alive connection idle longer than this is not used again. The
/// server closes one idle for 10 s (its header read timeout); a request
/// sent on it just as the server closes it is cut ("connection reset by
/// peer"), which ureq's liveness probe cannot see coming. 5 s leaves the
/// server's close well clear of any request (ureq's default is 15 s).
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(5);

/// The blocking HTTP transport (ureq; no async runtime).
pub struct HttpTransport {
    base: String,
    agent: ureq::Agent,
}

impl HttpTransport {
    /// A transport to the server at `base_url` (`http://host:port` or
    /// `https://host:port`) that trusts the bundled web roots.
    pub fn new(base_url: &str) -> Result<HttpTransport> {
        HttpTransport::with_ca(base_url, None)
    }

    /// A transport that also trusts the CA certificate(s) in `ca_pem`
    /// (PEM) for the server's TLS certificate. A CA needs an `https://` URL.
    pub fn with_ca(base_url: &str, ca_pem: Option<&str>) -> Result<HttpTransport> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 9 {
            return Err(Error::InvalidInput(
                "the server URL must start with http:// or https://".into(),
            ));
        }
        let tls = tls_config(ca_pem)?;
        if ca_pem.is_some() && !base.starts_with("https://") {
            return Err(Error::InvalidInput(
                "a CA certificate is only used with an https:// server URL".into(),
            ));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(300)))
            .timeout_send_body(Some(Duration::from_secs(600)))
            .max_idle_age(MAX_IDLE_AGE)
            .tls_config(tls)
            .build();
        Ok(HttpTransport {
            base,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8], limit: u64) -> Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .post(&url)
            .header(wire::PROTOCOL_HEADER, wire::FORMAT_VERSION.to_string())
            .content_type(content_type)
            .send(body)
            .map_err(offline)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(offline)?;
        Ok((status, bytes))
    }
}

/// Parses the operators' CA file: one or more PEM `CERTIFICATE` blocks,
/// each a well-formed X.509 certificate usable as a trust anchor.
pub fn parse_ca_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bad = || Error::InvalidInput("the CA file is not a PEM certificate".into());
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    if certs.is_empty() {
        return Err(bad());
    }
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store.add(cert.clone()).map_err(|_| bad())?;
    }
    Ok(certs)
}

/// rustls with the ring provider; the web roots, plus the CA if given.
fn tls_config(ca_pem: Option<&str>) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if let Some(pem) = ca_pem {
        for cert in parse_ca_pem(pem)? {
            roots.push(Certificate::from_der(cert.as_ref()).to_owned());
        }
    }
    Ok(TlsConfig::builder()
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build())
}

fn offline(e: ureq::Error) -> Error {
    let tls = match &e {
        ureq::Error::Rustls(t) => Some(t),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match tls {
        Some(rustls::Error::InvalidCertificate(c)) => Error::Certificate(certificate_problem(c)),
        // ureq's and rustls's messages name hosts and TLS causes, never
        // request contents.
        Some(other) => Error::Offline(format!("the TLS connection to the server failed: {other}")),
        None => Error::Offline(e.to_string()),
    }
}

/// What is wrong with the server's certificate, in words a registrar can
/// pass on to the operators.
fn certificate_problem(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match c {
        C::UnknownIssuer => "it is issued by an authority this tablet does not trust \
             (enrol with the CA file from the sync operators)"
            .into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is for another host name than the server URL's".into()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired (or the tablet's clock is wrong)".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "it is not valid yet (or the tablet's clock is wrong)".into()
        }
        C::Revoked => "it has been revoked".into(),
        other => format!("it was refused ({other:?})"),
    }
}

/// Maps a non-200 answer to an error, from its JSON [`ErrorBody`].
fn refused(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error,
            last_counter: Some(n),
            ..
        }) if error == "replayed_request" => Error::CounterBehind(n),
        // Busy or rate-limited: nothing was applied; a later sync succeeds.
        Ok(b) if status == 429 || status == 503 => Error::Offline(b.message),
        Ok(b) => Error::ServerRefused {
            code: b.error,
            message: b.message,
        },
        Err(_) if status >= 500 => Error::Offline(format!("the server answered with status {status}")),
        Err(_) => Error::ServerRefused {
            code: format!("http_{status}"),
            message: format!("the server answered with status {status}"),
        },
    }
}

impl Transport for HttpTransport {
    fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse> {
        let body = serde_json::to_vec(request).map_err(|e| Error::Storage(e.to_string()))?;
        let (status, bytes) = self.post("/v1/enroll", "application/json", &body, 1 << 20)?;
        if status != 200 {
            return Err(refused(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|_| Error::Protocol("the enrolment answer is not the expected JSON".into()))
    }

    fn sync(&self, sealed_request: &[u8]) -> Result<Vec<u8>> {
        let (status, bytes) = self.post(
            "/v1/sync",
            "application/octet-stream",
            sealed_request,
            wire::MAX_SYNC_RESPONSE_DECODED as u64,
        )?;
        if status != 200 {
            return Err(refused(status, &bytes));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_becomes_a_server_refusal_with_its_code() {
        let e = refused(
            403,
            br#"{"error":"device_revoked","message":"this device was revoked"}"#,
        );
        assert!(matches!(e, Error::ServerRefused { ref code, .. } if code == "device_revoked"));
        assert!(matches!(refused(502, b"<html>"), Error::Offline(_)));
        assert!(matches!(refused(413, b""), Error::ServerRefused { ref code, .. } if code == "http_413"));
    }

    #[test]
    fn a_server_url_without_a_scheme_is_refused() {
        assert!(matches!(
            HttpTransport::new("example.org"),
            Err(Error::InvalidInput(_))
        ));
        assert!(HttpTransport::new("http://127.0.0.1:8080/").is_ok());
    }

    #[test]
    fn a_ca_that_is_not_a_pem_certificate_is_refused() {
        for bad in [
            "",
            "not a certificate",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let e = HttpTransport::with_ca("https://127.0.0.1:8443", Some(bad));
            assert!(
                matches!(e, Err(Error::InvalidInput(ref m)) if m == "the CA file is not a PEM certificate"),
                "{bad:?}"
            );
        }
        let root = webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref();
        let pem = pem_of(root);
        assert_eq!(parse_ca_pem(&pem).unwrap().len(), 1);
        assert!(HttpTransport::with_ca("https://127.0.0.1:8443", Some(&pem)).is_ok());
        assert!(matches!(
            HttpTransport::with_ca("http://127.0.0.1:8080", Some(&pem)),
            Err(Error::InvalidInput(_))
        ));
    }

    fn pem_of(der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn an_unreachable_server_is_offline() {
        // Port 9 (discard) on localhost: nothing listens there in a test
        // sandbox, so the connection is refused at once.
        let t = HttpTransport::new("http://127.0.0.1:9").unwrap();
        assert!(matches!(t.sync(b"x"), Err(Error::Offline(_))));
    }
}
