//! Transports carry bytes between a tablet and the server; they make no
//! decisions. [`HttpTransport`] speaks the server's HTTP API (`/v1/enroll`,
//! `/v1/sync`); a relay tablet or a USB stick can implement [`Transport`]
//! later without touching the sync logic.

use std::time::Duration;

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

/// The blocking HTTP transport (ureq; no async runtime).
pub struct HttpTransport {
    base: String,
    agent: ureq::Agent,
}

impl HttpTransport {
    /// A transport to the server at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> Result<HttpTransport> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 9 {
            return Err(Error::InvalidInput(
                "the server URL must start with http:// or https://".into(),
            ));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_recv_body(Some(Duration::from_secs(300)))
            .timeout_send_body(Some(Duration::from_secs(600)))
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

fn offline(e: ureq::Error) -> Error {
    // ureq's messages name hosts and I/O causes, never request contents.
    Error::Offline(e.to_string())
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
    fn an_unreachable_server_is_offline() {
        // Port 9 (discard) on localhost: nothing listens there in a test
        // sandbox, so the connection is refused at once.
        let t = HttpTransport::new("http://127.0.0.1:9").unwrap();
        assert!(matches!(t.sync(b"x"), Err(Error::Offline(_))));
    }
}
