//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/`
//! (`seed-*` files), made by the real code: the committed fixtures, the
//! pinned bytes of `schema/tests/data/`, and real records, change sets,
//! requests and answers. Run it, then minimise each corpus
//! (`fuzz/README.md`):
//!
//! ```sh
//! cargo run -p crvs-fuzz --example write_seeds
//! ```

use std::path::{Path, PathBuf};

use automerge::{ActorId, AutoCommit};
use crvs_fuzz::{DEVICE_ID, NOW_MS, device_key, new_base_record, server_key};
use crvs_schema::Kidc;
use crvs_schema::record;
use crvs_schema::wire::{
    self, Ack, AckOutcome, ChangeSet, RecordChanges, RecordUpdate, Refusal, RefusalCode, SignedChangeSet,
    SyncRequest, SyncResponse,
};
use crvs_schema::workflow::{Action, Transition};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus folder");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

fn pinned(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(root().join("schema/tests/data").join(name)).expect("pinned file");
    hex::decode(text.trim()).expect("hex")
}

fn step(action: Action, by: &str) -> Transition {
    Transition {
        action,
        by: by.into(),
        at_ms: NOW_MS - 3_600_000,
        device: "tablet".into(),
        reason: (action == Action::Reject).then(|| "documents missing".into()),
        notification: None,
        code: None,
    }
}

/// The base record, then taken through `more` steps; returns the document
/// and the raw changes made after the base.
fn advanced(more: &[(Action, &str)]) -> (AutoCommit, Vec<Vec<u8>>) {
    let mut doc = new_base_record();
    let heads = doc.get_heads();
    for (a, by) in more {
        record::append_transition(&mut doc, &step(*a, by)).expect("transition");
    }
    let changes = doc
        .get_changes(&heads)
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    (doc, changes)
}

fn main() {
    // ---- records
    let mut base = new_base_record();
    let (mut approved, approve_changes) =
        advanced(&[(Action::Verify, "checker"), (Action::Approve, "registrar")]);
    let (_, reject_changes) = advanced(&[(Action::Reject, "registrar")]);
    let mut chunks: Vec<(String, Vec<u8>)> = vec![
        ("base-document".into(), base.save_nocompress()),
        ("base-document-compressed".into(), base.save()),
        ("approved-document".into(), approved.save_nocompress()),
    ];
    for (i, c) in approve_changes.iter().enumerate() {
        chunks.push((format!("approve-change-{i}"), c.clone()));
    }
    chunks.push(("reject-change".into(), reject_changes[0].clone()));
    for (i, c) in approved.get_changes(&[]).iter().enumerate() {
        chunks.push((format!("approved-all-changes-{i}"), c.raw_bytes().to_vec()));
    }
    // The server's edit of the approved record.
    let mut served = approved.fork();
    served.set_actor(ActorId::from([0x5e; 16]));
    let kidc = Kidc::parse("1234567897").or_else(|_| Kidc::parse("1000000001"));
    if let Ok(k) = &kidc {
        record::set_registration(
            &mut served,
            &record::Registration {
                kidc: Some(*k),
                number: "171003/2026/000001".into(),
                at_ms: NOW_MS,
                late: false,
            },
        )
        .expect("registration");
    } else {
        record::set_hold(&mut served, "invalid_on_receipt").expect("hold");
    }
    served.commit();
    let server_change = served
        .get_last_local_change()
        .expect("server change")
        .raw_bytes()
        .to_vec();
    chunks.push(("server-change".into(), server_change.clone()));
    for (name, bytes) in &chunks {
        write("record_chunk", name, bytes);
    }

    // ---- server ingest: bit 0 picks the stored base record, bit 1 puts
    // the base document chunk first.
    write(
        "server_ingest",
        "new-approved-document",
        &with_mode(0, &approved.save_nocompress()),
    );
    write(
        "server_ingest",
        "new-base-document",
        &with_mode(0, &base.save_nocompress()),
    );
    for (i, c) in approve_changes.iter().enumerate() {
        write("server_ingest", &format!("base-approve-{i}"), &with_mode(1, c));
        write(
            "server_ingest",
            &format!("new-with-base-approve-{i}"),
            &with_mode(2, c),
        );
    }
    write("server_ingest", "base-reject", &with_mode(1, &reject_changes[0]));
    write("server_ingest", "server-change", &with_mode(1, &server_change));

    // ---- change sets
    let key = device_key();
    let body = ChangeSet {
        prev_hash: [3; 32],
        device_clock_ms: NOW_MS,
        records: vec![
            RecordChanges {
                record_id: [1; 16],
                changes: vec![approved.save_nocompress()],
            },
            RecordChanges {
                record_id: [2; 16],
                changes: approve_changes.clone(),
            },
        ],
    };
    let sealed = SignedChangeSet::seal(&key, DEVICE_ID, 1, &body).expect("seal");
    let bytes = sealed.as_bytes();
    write("change_set", "frame-real-v2", &with_mode(0, bytes));
    write(
        "change_set",
        "frame-pinned-v1",
        &with_mode(0, &pinned("change-set-v1.hex")),
    );
    write(
        "change_set",
        "frame-pinned-v2",
        &with_mode(0, &pinned("change-set-v2.hex")),
    );
    write("change_set", "payload-v2", &with_mode(2, &bytes[89..]));
    let encoded = bincode::encode_to_vec(&body, bincode::config::standard()).expect("encode");
    write(
        "change_set",
        "payload-v1",
        &with_mode(1, &zstd::bulk::compress(&encoded, 19).expect("zstd")),
    );
    write("change_set", "body-real", &with_mode(3, &encoded));
    write(
        "change_set",
        "body-pinned",
        &with_mode(3, &pinned("change-set-body-v1.hex")),
    );

    // ---- sync requests
    let req = SyncRequest {
        device_id: DEVICE_ID,
        cursor: 12,
        counter: 4,
        device_clock_ms: NOW_MS,
        change_sets: vec![bytes.to_vec(), pinned("change-set-v1.hex")],
        evidence: Vec::new(),
        lineage: [0; 16],
        adopted: None,
        resume: None,
        report: None,
    };
    let req_bytes = req.seal(&key).expect("seal request");
    write("sync_request", "frame-real", &with_mode(0, &req_bytes));
    write(
        "sync_request",
        "frame-pinned-v1",
        &with_mode(0, &pinned("sync-request-v1.hex")),
    );
    write(
        "sync_request",
        "frame-pinned-v2",
        &with_mode(0, &pinned("sync-request-v2.hex")),
    );
    write(
        "sync_request",
        "frame-pinned-v3",
        &with_mode(0, &pinned("sync-request-v3.hex")),
    );
    write(
        "sync_request",
        "body-real",
        &with_mode(1, &req_bytes[wire::REQUEST_HEADER_LEN..]),
    );

    // ---- sync answers
    let resp = SyncResponse {
        request_hash: wire::request_hash(&req_bytes),
        server_time_ms: NOW_MS,
        acks: vec![Ack {
            seq: 4,
            hash: [0x44; 32],
            outcome: AckOutcome::Applied,
        }],
        refusal: Some(Refusal {
            seq: 5,
            code: RefusalCode::SequenceGap,
            expected_seq: Some(3),
            message: "change set 5 arrived but 3 is expected next".into(),
        }),
        next_seq: 5,
        updates: vec![RecordUpdate {
            record_id: [1; 16],
            changes: vec![server_change.clone()],
        }],
        cursor: 40,
        more: true,
        issuances: Vec::new(),
        chain: wire::ChainPosition::default(),
        notifications: vec![wire::PendingNotification {
            notification_id: [2; 16],
            kind: "birth".into(),
            received_at_ms: NOW_MS,
            payload: "{}".into(),
        }],
        directory: Some(crvs_schema::staff::OfficeDirectory {
            office: "171003".into(),
            issued_at_ms: NOW_MS,
            enforced: true,
            staff: vec![crvs_schema::staff::RosterMember {
                staff_id: "clerk-01".into(),
                roles: 1,
                pin_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            }],
            rejection_codes: crvs_schema::staff::default_rejection_codes(),
        }),
    };
    let resp_bytes = resp.seal(&server_key()).expect("seal answer");
    write("sync_response", "frame-real", &with_mode(0, &resp_bytes));
    write(
        "sync_response",
        "compressed-real",
        &with_mode(1, &resp_bytes[65..]),
    );
    let resp_body = bincode::encode_to_vec(&resp, bincode::config::standard()).expect("encode");
    write("sync_response", "body-real", &with_mode(2, &resp_body));

    // ---- JSON
    for entry in std::fs::read_dir(root().join("fixtures")).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("fixture");
        if name.ends_with(".json") {
            write("json_inputs", &name, text.as_bytes());
        } else if name.ends_with(".jsonl") {
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                write("json_inputs", &format!("{name}-{i:03}"), line.as_bytes());
            }
        }
    }
    let enroll = wire::EnrollRequest {
        version: wire::FORMAT_VERSION,
        token_id: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
        public_key: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a".into(),
        office: Some("171003".into()),
        nonce: "000102030405060708090a0b0c0d0e0f".into(),
        mac: "aa".repeat(32),
    };
    write(
        "json_inputs",
        "enroll-request",
        serde_json::to_string(&enroll).expect("json").as_bytes(),
    );
    write(
        "json_inputs",
        "transition",
        serde_json::to_string(&step(Action::Reject, "registrar"))
            .expect("json")
            .as_bytes(),
    );
    write(
        "json_inputs",
        "server-part",
        br#"{"kidc":"1234567897","registered_at_ms":1796083200000,"hold":"invalid_on_receipt"}"#,
    );
    println!("seeds written under {}", root().join("fuzz/corpus").display());
}
