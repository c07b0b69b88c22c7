//! Helpers shared by the integration tests: fixtures, stores with a fast
//! KDF, and an enrolment that needs no server.

#![allow(dead_code)]

use std::path::Path;

use crvs_core::crypto::KdfParams;
use crvs_core::{Error, Registrar, Transport};
use crvs_schema::wire::{EnrollRequest, EnrollResponse};

pub const COMMUNE: &str = "171003";
pub const PASSPHRASE: &str = "correct horse battery staple";

pub fn fixture(name: &str) -> String {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub fn sok_dara() -> String {
    fixture("birth-sok-dara.json")
}

pub fn no_given_name() -> String {
    fixture("birth-no-given-name.json")
}

pub fn new_store(dir: &Path) -> Registrar {
    Registrar::init_with_kdf(dir, &PASSPHRASE.into(), COMMUNE, KdfParams::INSECURE_FOR_TESTS).expect("init")
}

/// Answers an enrolment the way the server does (signed), for a given
/// office and server key; sync requests find no server.
pub struct EnrollOnly {
    pub office: String,
    pub server_key: ed25519_dalek::SigningKey,
}

impl EnrollOnly {
    /// A token this stand-in's key is named by.
    pub fn token(&self) -> String {
        crvs_schema::enrol::EnrolmentToken::generate(&self.server_key.verifying_key(), &mut rand::rng())
            .to_text()
    }
}

impl Transport for EnrollOnly {
    fn enroll(&self, request: &EnrollRequest) -> crvs_core::Result<EnrollResponse> {
        assert_eq!(request.version, crvs_schema::wire::FORMAT_VERSION);
        assert_eq!(hex::decode(&request.public_key).unwrap().len(), 32);
        let mut answer = EnrollResponse {
            device_id: uuid::Uuid::now_v7().to_string(),
            office: self.office.clone(),
            server_public_key: hex::encode(self.server_key.verifying_key().to_bytes()),
            signature: String::new(),
            directory: None,
        };
        answer.sign(&self.server_key, &request.public_key, &request.nonce);
        Ok(answer)
    }

    fn sync(&self, _: &[u8]) -> crvs_core::Result<Vec<u8>> {
        Err(Error::Offline("no server in this test".into()))
    }
}

/// Enrols `r` without a server; the stored URL points at a closed port.
pub fn enroll_offline(r: &Registrar) {
    let t = EnrollOnly {
        office: COMMUNE.into(),
        server_key: ed25519_dalek::SigningKey::from_bytes(&[42; 32]),
    };
    r.enroll_with(&t, "http://127.0.0.1:9", &t.token())
        .expect("enroll");
}

/// Every file in `dir` (recursively), with its bytes.
pub fn all_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
