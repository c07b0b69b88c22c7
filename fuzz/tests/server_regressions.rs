//! Crashes the fuzz targets found, as tests of the real server.

use std::sync::Arc;

use automerge::AutoCommit;
use crvs_schema::record;
use crvs_schema::wire::{
    ChangeSet, Hash, RecordChanges, RefusalCode, SignedChangeSet, SyncRequest, SyncResponse,
};
use crvs_schema::workflow::{Action, Transition};
use crvs_server::{Server, admin};
use ed25519_dalek::SigningKey;

struct Tablet {
    key: SigningKey,
    device_id: [u8; 16],
    next_seq: u64,
    last_hash: Hash,
    /// The last request counter used.
    counter: u64,
}

impl Tablet {
    fn sync(&mut self, server: &Server, records: Vec<RecordChanges>) -> SyncResponse {
        let body = ChangeSet {
            prev_hash: self.last_hash,
            device_clock_ms: crvs_fuzz::NOW_MS,
            records,
        };
        let cs = SignedChangeSet::seal(&self.key, self.device_id, self.next_seq, &body).expect("seal");
        let request = SyncRequest {
            device_id: self.device_id,
            cursor: 0,
            counter: {
                self.counter += 1;
                self.counter
            },
            device_clock_ms: crvs_fuzz::NOW_MS,
            change_sets: vec![cs.as_bytes().to_vec()],
            evidence: Vec::new(),
            lineage: [0; 16],
            adopted: None,
            resume: None,
            report: None,
        }
        .seal(&self.key)
        .expect("seal request");
        let answer = server.handle_sync(&request).expect("the request succeeds");
        let resp = SyncResponse::open(&answer, &server.signing_key().verifying_key()).expect("opens");
        if resp.refusal.is_none() {
            self.next_seq += 1;
            self.last_hash = cs.hash();
        }
        resp
    }
}

fn regression(name: &str) -> Vec<u8> {
    let path = format!("{}/regressions/record_chunk/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Found by `record_chunk` (`fuzz/regressions/record_chunk/`): change
/// chunks whose checksum does not match their content. Automerge 0.12's
/// `Change::from_bytes` does not check it, so the server applied them and
/// stored them verbatim, and loading the stored record then failed
/// (`BadChecksum`): every later sync of that record would have failed
/// with an internal error. Now each is refused as malformed, and the
/// stored record stays usable.
/// A server on a temporary folder, and an enrolled tablet.
fn enrolled() -> (tempfile::TempDir, Server, Tablet) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::open_with_clock(dir.path(), Arc::new(|| crvs_fuzz::NOW_MS)).expect("server");
    let token = admin::create_token(&server, crvs_fuzz::OFFICE, 3_600_000).expect("token");
    let key = SigningKey::from_bytes(&[3; 32]);
    let enrolled = admin::enroll(
        &server,
        &crvs_schema::enrol::enroll_request(
            &crvs_schema::enrol::EnrolmentToken::parse(&token.token).expect("a token"),
            &key.verifying_key().to_bytes(),
            Some(crvs_fuzz::OFFICE),
            [7; 16],
        ),
    )
    .expect("enrol");
    let device_id = *uuid::Uuid::parse_str(&enrolled.device_id)
        .expect("uuid")
        .as_bytes();
    let tablet = Tablet {
        key,
        device_id,
        next_seq: 1,
        last_hash: [0; 32],
        counter: 0,
    };
    (dir, server, tablet)
}

#[test]
fn a_change_whose_checksum_does_not_match_is_refused_and_the_record_stays_usable() {
    let (_dir, server, mut tablet) = enrolled();
    // The record the fuzzed changes were made against.
    let mut doc = crvs_fuzz::new_base_record();
    let id = uuid::Uuid::now_v7().into_bytes();
    let first = tablet.sync(
        &server,
        vec![RecordChanges {
            record_id: id,
            changes: vec![doc.save_nocompress()],
        }],
    );
    assert!(first.refusal.is_none(), "{:?}", first.refusal);

    for name in [
        "bad-checksum-change-stored-unloadable",
        "bad-checksum-empty-change-saves-unloadable",
    ] {
        let change = regression(name);
        assert!(
            automerge::Change::from_bytes(change.clone()).is_ok(),
            "automerge decodes {name}"
        );
        let mut stored = doc.save_nocompress();
        stored.extend_from_slice(&change);
        assert!(
            AutoCommit::load(&stored).is_err(),
            "stored verbatim, {name} would not load"
        );
        let refused = tablet.sync(
            &server,
            vec![RecordChanges {
                record_id: id,
                changes: vec![change],
            }],
        );
        assert_eq!(
            refused.refusal.map(|r| r.code),
            Some(RefusalCode::Malformed),
            "{name}"
        );
    }

    // The stored record still loads and takes a real change.
    let heads = doc.get_heads();
    record::append_transition(&mut doc, &step(Action::Verify, "checker")).expect("verify");
    let verify = doc
        .get_changes(&heads)
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let next = tablet.sync(
        &server,
        vec![RecordChanges {
            record_id: id,
            changes: verify,
        }],
    );
    assert!(next.refusal.is_none(), "{:?}", next.refusal);
}

fn step(action: Action, by: &str) -> Transition {
    Transition {
        action,
        by: by.into(),
        at_ms: crvs_fuzz::NOW_MS - 3_600_000,
        device: "tablet".into(),
        reason: None,
        notification: None,
        code: None,
    }
}

/// Found by `record_chunk` (`fuzz/regressions/record_chunk/`): 476 bytes
/// of automerge "bundle" chunk (type 3), which `Change::from_bytes`
/// accepts and whose run-length columns it expands without limit (over
/// 2 GiB and still growing when libFuzzer stopped it). Sent by an enrolled
/// device, it would have taken the server down. It is refused by its type
/// before automerge sees it.
#[test]
fn a_bundle_chunk_is_refused_before_automerge_expands_it() {
    let (_dir, server, mut tablet) = enrolled();
    let bomb = regression("automerge-bundle-chunk-allocates-gigabytes");
    assert_eq!(bomb.len(), 476);
    assert_eq!(bomb[8], 3, "a bundle chunk");
    // The same behind a document chunk (1,700 bytes): `AutoCommit::load`
    // reads every chunk that follows the first.
    let behind = regression("automerge-document-with-trailing-bundle-allocates-gigabytes");
    assert_eq!(behind[8], 0, "starts as a document chunk");
    for chunk in [bomb, behind] {
        let started = std::time::Instant::now();
        let resp = tablet.sync(
            &server,
            vec![RecordChanges {
                record_id: uuid::Uuid::now_v7().into_bytes(),
                changes: vec![chunk],
            }],
        );
        assert_eq!(resp.refusal.map(|r| r.code), Some(RefusalCode::Malformed));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "refused quickly"
        );
    }
}
