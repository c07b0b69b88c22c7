use super::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn body() -> ChangeSet {
    ChangeSet {
        prev_hash: [7; 32],
        device_clock_ms: 1_760_000_000_000,
        records: vec![RecordChanges {
            record_id: [1; 16],
            changes: vec![vec![1, 2, 3], vec![4, 5]],
        }],
    }
}

#[test]
fn a_sealed_change_set_opens_with_its_key_only() {
    let cs = SignedChangeSet::seal(&key(1), [9; 16], 3, &body()).unwrap();
    let again = SignedChangeSet::from_bytes(cs.as_bytes().to_vec()).unwrap();
    assert_eq!(again.device_id(), [9; 16]);
    assert_eq!(again.seq(), 3);
    assert_eq!(again.open(&key(1).verifying_key()).unwrap(), body());
    assert_eq!(again.open(&key(2).verifying_key()), Err(WireError::BadSignature));
}

#[test]
fn any_flipped_bit_breaks_the_signature() {
    let cs = SignedChangeSet::seal(&key(1), [9; 16], 3, &body()).unwrap();
    let bytes = cs.into_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        let result = SignedChangeSet::from_bytes(b).and_then(|c| c.verify(&key(1).verifying_key()));
        assert!(result.is_err(), "flip at {i} went unnoticed");
    }
}

#[test]
fn truncated_and_oversized_change_sets_are_refused() {
    let cs = SignedChangeSet::seal(&key(1), [9; 16], 3, &body()).unwrap();
    let bytes = cs.into_bytes();
    assert_eq!(
        SignedChangeSet::from_bytes(bytes[..50].to_vec()),
        Err(WireError::Truncated)
    );
    assert_eq!(SignedChangeSet::from_bytes(vec![]), Err(WireError::Truncated));
    assert_eq!(
        SignedChangeSet::from_bytes(vec![1; MAX_CHANGE_SET_BYTES + 1]),
        Err(WireError::TooLarge {
            limit: MAX_CHANGE_SET_BYTES
        })
    );
    assert_eq!(
        SignedChangeSet::from_bytes(vec![9; 200]),
        Err(WireError::UnsupportedVersion(9))
    );
    let cut = SignedChangeSet::from_bytes(bytes[..bytes.len() - 3].to_vec()).unwrap();
    assert!(cut.open(&key(1).verifying_key()).is_err());
}

#[test]
fn a_decompression_bomb_is_refused() {
    let huge = vec![0u8; MAX_CHANGE_SET_DECODED + 10];
    let z = zstd::bulk::compress(&huge, 3).unwrap();
    assert!(z.len() < MAX_CHANGE_SET_BYTES);
    assert_eq!(
        decompress_limited(&z, MAX_CHANGE_SET_DECODED),
        Err(WireError::TooLarge {
            limit: MAX_CHANGE_SET_DECODED
        })
    );
}

fn request() -> SyncRequest {
    SyncRequest {
        device_id: [9; 16],
        counter: 7,
        cursor: 12,
        device_clock_ms: 5,
        change_sets: vec![vec![1, 2, 3]],
        evidence: Vec::new(),
        lineage: [0; 16],
        adopted: None,
        resume: None,
        report: None,
    }
}

#[test]
fn a_sync_request_round_trips_and_is_bound_to_its_key() {
    let req = request();
    let bytes = req.seal(&key(1)).unwrap();
    assert_eq!(SyncRequest::decode_unverified(&bytes).unwrap(), req);
    assert_eq!(SyncRequest::open(&bytes, &key(1).verifying_key()).unwrap(), req);
    assert_eq!(
        SyncRequest::open(&bytes, &key(2).verifying_key()),
        Err(WireError::BadSignature)
    );
    assert!(SyncRequest::decode_unverified(&[2, 2, 3]).is_err());
    assert!(SyncRequest::decode_unverified(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn the_header_alone_names_the_device_counter_and_length_and_verifies() {
    let req = request();
    let bytes = req.seal(&key(1)).unwrap();
    let header = RequestHeader::parse(&bytes[..REQUEST_HEADER_LEN]).unwrap();
    assert_eq!((header.device_id(), header.counter()), ([9; 16], 7));
    assert_eq!(header.body_len() as usize, bytes.len() - REQUEST_HEADER_LEN);
    header.verify(&key(1).verifying_key()).unwrap();
    assert_eq!(
        header.verify(&key(2).verifying_key()),
        Err(WireError::BadSignature)
    );
    assert_eq!(
        RequestHeader::parse(&bytes[..REQUEST_HEADER_LEN - 1]),
        Err(WireError::Truncated)
    );
    // Every bit of the header is covered by the signature.
    for i in 0..REQUEST_HEADER_LEN {
        let mut b = bytes.clone();
        b[i] ^= 0x04;
        let verified = RequestHeader::parse(&b).and_then(|h| h.verify(&key(1).verifying_key()));
        assert!(verified.is_err(), "flip at {i} went unnoticed");
    }
}

#[test]
fn a_body_swapped_under_a_valid_header_is_refused() {
    let bytes = request().seal(&key(1)).unwrap();
    let mut other = request();
    other.cursor = 99;
    let other = other.seal(&key(1)).unwrap();
    let mut spliced = bytes[..REQUEST_HEADER_LEN].to_vec();
    spliced.extend_from_slice(&other[REQUEST_HEADER_LEN..]);
    assert_eq!(
        SyncRequest::open(&spliced, &key(1).verifying_key()),
        Err(WireError::BadSignature)
    );
    // A body whose own ids differ from the header's is refused too.
    let mut liar = request();
    liar.counter = 8;
    let body = bincode::encode_to_vec(&liar, bincode::config::standard()).unwrap();
    let header = RequestHeader::parse(&bytes).unwrap();
    assert!(header.open_body(&body).is_err());
}

#[test]
fn a_request_with_too_many_change_sets_is_refused() {
    let mut req = request();
    req.change_sets = vec![vec![1]; MAX_CHANGE_SETS_PER_REQUEST + 1];
    let bytes = req.seal(&key(1)).unwrap();
    assert!(matches!(
        SyncRequest::open(&bytes, &key(1).verifying_key()),
        Err(WireError::TooMany { .. })
    ));
    req.change_sets.pop();
    assert!(SyncRequest::open(&req.seal(&key(1)).unwrap(), &key(1).verifying_key()).is_ok());
}

#[test]
fn many_small_bombs_share_one_decompression_budget() {
    // Each change set decompresses to 3 MiB of zeros (a few hundred
    // bytes on the wire); a budget of 8 MiB admits two of them.
    let bomb = ChangeSet {
        prev_hash: [0; 32],
        device_clock_ms: 0,
        records: vec![RecordChanges {
            record_id: [1; 16],
            changes: vec![vec![0; 3 << 20]],
        }],
    };
    let cs = SignedChangeSet::seal(&key(1), [9; 16], 1, &bomb).unwrap();
    assert!(cs.as_bytes().len() < 4096, "{} bytes", cs.as_bytes().len());
    let mut budget = 8 << 20;
    assert!(cs.open_within(&key(1).verifying_key(), &mut budget).is_ok());
    assert!(cs.open_within(&key(1).verifying_key(), &mut budget).is_ok());
    assert!(matches!(
        cs.open_within(&key(1).verifying_key(), &mut budget),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn a_sync_response_opens_only_with_the_pinned_server_key() {
    let resp = SyncResponse {
        request_hash: [1; 32],
        server_time_ms: 9,
        acks: vec![Ack {
            seq: 1,
            hash: [2; 32],
            outcome: AckOutcome::Applied,
        }],
        refusal: Some(Refusal {
            seq: 2,
            code: RefusalCode::SequenceGap,
            expected_seq: Some(2),
            message: "gap".into(),
        }),
        next_seq: 2,
        updates: vec![RecordUpdate {
            record_id: [4; 16],
            changes: vec![vec![5]],
        }],
        cursor: 77,
        more: false,
        issuances: Vec::new(),
        chain: ChainPosition::default(),
        notifications: Vec::new(),
        directory: None,
    };
    let bytes = resp.seal(&key(5)).unwrap();
    assert_eq!(SyncResponse::open(&bytes, &key(5).verifying_key()).unwrap(), resp);
    assert_eq!(
        SyncResponse::open(&bytes, &key(1).verifying_key()),
        Err(WireError::BadSignature)
    );
}

fn pinned(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    hex::decode(text.trim()).unwrap()
}

/// Version-1 bytes of a fixed change set and sync request, committed
/// in `schema/tests/data/`, as sealed before the dictionary existed.
/// Tablets may hold such change sets in their outboxes: they must keep
/// decoding, and the body's encoding must not change without a new
/// version byte.
#[test]
fn version_1_bytes_are_pinned() {
    // The signed change set decodes, verifies and opens to the body.
    let cs = SignedChangeSet::from_bytes(pinned("change-set-v1.hex")).unwrap();
    assert_eq!((cs.device_id(), cs.seq()), ([9; 16], 1));
    assert_eq!(cs.open(&key(1).verifying_key()).unwrap(), body());
    // What is signed and compressed is this exact bincode encoding.
    let encoded = bincode::encode_to_vec(body(), bincode::config::standard()).unwrap();
    assert_eq!(encoded, pinned("change-set-body-v1.hex"));
    // A version-1 sync request (an unchecked nonce, no counter: it
    // could be replayed) is refused by its version byte, while the
    // change set it carried travels on in a version-2 request.
    let req_bytes = pinned("sync-request-v1.hex");
    assert_eq!(
        SyncRequest::decode_unverified(&req_bytes),
        Err(WireError::UnsupportedVersion(1))
    );
    assert!(req_bytes.windows(cs.as_bytes().len()).any(|w| w == cs.as_bytes()));
    let v2 = SyncRequest {
        device_id: [9; 16],
        counter: 1,
        cursor: 41,
        device_clock_ms: 0,
        change_sets: vec![cs.as_bytes().to_vec()],
        evidence: Vec::new(),
        lineage: [0; 16],
        adopted: None,
        resume: None,
        report: None,
    }
    .seal(&key(1))
    .unwrap();
    let opened = SyncRequest::open(&v2, &key(1).verifying_key()).unwrap();
    let carried = SignedChangeSet::from_bytes(opened.change_sets[0].clone()).unwrap();
    assert_eq!(carried.open(&key(1).verifying_key()).unwrap(), body());
}

/// Version-2 bytes (compressed with the dictionary) of the same change
/// set: `change-set-v2.hex` as sealed at zstd level 19 (until December
/// 2026), `change-set-v2-level9.hex` as sealed since. Both must open: a
/// dictionary retrained under the same version byte would fail here, and
/// change sets sealed at either level wait in outboxes. Sealing is
/// deterministic: it gives the level-9 bytes again.
#[test]
fn version_2_bytes_are_pinned_and_sealing_gives_them_again() {
    let level_19 = pinned("change-set-v2.hex");
    let level_9 = pinned("change-set-v2-level9.hex");
    for bytes in [&level_19, &level_9] {
        assert_eq!(bytes[0], CHANGE_SET_VERSION);
        let cs = SignedChangeSet::from_bytes(bytes.clone()).unwrap();
        assert_eq!(cs.open(&key(1).verifying_key()).unwrap(), body());
        // Without the dictionary the payload does not decompress.
        assert!(decompress_limited(&bytes[HEADER + SIG..], MAX_CHANGE_SET_DECODED).is_err());
    }
    assert_eq!(CHANGE_SET_ZSTD_LEVEL, 9, "a new level needs a new pinned file");
    let again = SignedChangeSet::seal(&key(1), [9; 16], 1, &body()).unwrap();
    assert_eq!(again.as_bytes(), level_9);
}

#[test]
fn an_unknown_change_set_version_is_refused() {
    let mut bytes = pinned("change-set-v2.hex");
    bytes[0] = 3;
    assert_eq!(
        SignedChangeSet::from_bytes(bytes).unwrap_err(),
        WireError::UnsupportedVersion(3)
    );
}

/// A version-2 sync request, pinned: tablets of that version sealed
/// exactly these bytes, and servers must keep reading them.
#[test]
fn version_2_sync_request_bytes_are_pinned_and_still_read() {
    let bytes = pinned("sync-request-v2.hex");
    assert_eq!(bytes[0], 2);
    let req = SyncRequest::open(&bytes, &key(1).verifying_key()).unwrap();
    assert_eq!(req, request(), "read with no evidence");
    assert_eq!(req.seal_version_2(&key(1)).unwrap(), bytes);
    let header = RequestHeader::parse(&bytes).unwrap();
    assert_eq!(header.version(), 2, "its answer goes out in version 2");
}

/// A version-3 sync request, pinned: tablets of that version sealed
/// exactly these bytes, and servers must keep reading them (and answer in
/// version 3, without the notifications).
#[test]
fn version_3_sync_request_bytes_are_pinned_and_still_read() {
    let bytes = pinned("sync-request-v3.hex");
    assert_eq!(bytes[0], 3);
    let req = SyncRequest::open(&bytes, &key(1).verifying_key()).unwrap();
    assert_eq!(req, request());
    assert_eq!(RequestHeader::parse(&bytes).unwrap().version(), 3);
    // The body is version 5's: only the version byte (and the signature
    // over it) differ.
    let v5 = req.seal_version_5(&key(1)).unwrap();
    assert_eq!(v5[0], 5);
    assert_eq!(v5.len(), bytes.len());
    assert_eq!(v5[REQUEST_HEADER_LEN..], bytes[REQUEST_HEADER_LEN..]);
}

/// A version-4 sync request, pinned: tablets of that version sealed
/// exactly these bytes, and servers must keep reading them (and answer in
/// version 4, without the office directory).
#[test]
fn version_4_sync_request_bytes_are_pinned_and_still_read() {
    let bytes = pinned("sync-request-v4.hex");
    assert_eq!(bytes[0], 4);
    let req = SyncRequest::open(&bytes, &key(1).verifying_key()).unwrap();
    assert_eq!(req, request());
    assert_eq!(RequestHeader::parse(&bytes).unwrap().version(), 4);
    assert_eq!(req.seal_version_5(&key(1)).unwrap().len(), bytes.len());
}

/// A version-5 sync request, pinned: tablets of that version sealed
/// exactly these bytes (`seal_version_5` gives them again), and servers
/// must keep reading them.
#[test]
fn version_5_sync_request_bytes_are_pinned_and_still_read() {
    let bytes = pinned("sync-request-v5.hex");
    assert_eq!(bytes[0], 5);
    let req = SyncRequest::open(&bytes, &key(1).verifying_key()).unwrap();
    assert_eq!(req, request());
    assert_eq!(
        req.seal_version_5(&key(1)).unwrap(),
        bytes,
        "sealing gives the same bytes"
    );
}

/// A version-6 sync request, pinned: this build seals exactly these
/// bytes, and servers must keep reading them. Its `resume` range reads
/// back; an empty or oversized one is refused.
#[test]
fn version_6_sync_request_bytes_are_pinned_and_a_resume_range_is_bounded() {
    let bytes = pinned("sync-request-v6.hex");
    assert_eq!(bytes[0], SYNC_VERSION);
    let req = SyncRequest::open(&bytes, &key(1).verifying_key()).unwrap();
    let mut expected = request();
    expected.resume = Some(SeqRange { from: 11, to: 12 });
    assert_eq!(req, expected);
    assert_eq!(req.seal(&key(1)).unwrap(), bytes, "sealing gives the same bytes");
    for (from, to) in [(0, 3), (5, 4), (1, MAX_RESUME_SEQS + 1)] {
        let mut bad = request();
        bad.resume = Some(SeqRange { from, to });
        let sealed = bad.seal(&key(1)).unwrap();
        assert!(
            matches!(
                SyncRequest::open(&sealed, &key(1).verifying_key()),
                Err(WireError::TooMany { .. })
            ),
            "{from}..={to}"
        );
    }
    // What a tablet reports reads back, a malformed app version too: the
    // server drops such a report (see `version_is_well_formed`), it never
    // refuses the request.
    let mut reporting = request();
    reporting.report = Some(TabletReport {
        change_sets_waiting: 3,
        records_waiting: 250,
        app_version: "0.1.0+build.7".into(),
    });
    assert!(reporting.report.as_ref().unwrap().version_is_well_formed());
    let sealed = reporting.seal(&key(1)).unwrap();
    assert_eq!(
        SyncRequest::open(&sealed, &key(1).verifying_key()).unwrap(),
        reporting
    );
    for version in [
        String::new(),
        "x".repeat(MAX_APP_VERSION_LEN + 1),
        "0.1 beta".into(),
        "០.១".into(),
        "0.1\n".into(),
    ] {
        let mut bad = reporting.clone();
        bad.report.as_mut().unwrap().app_version = version.clone();
        assert!(
            !bad.report.as_ref().unwrap().version_is_well_formed(),
            "{version:?}"
        );
        let sealed = bad.seal(&key(1)).unwrap();
        assert_eq!(SyncRequest::open(&sealed, &key(1).verifying_key()).unwrap(), bad);
    }
    let mut most = request();
    most.resume = Some(SeqRange {
        from: 1,
        to: MAX_RESUME_SEQS,
    });
    let sealed = most.seal(&key(1)).unwrap();
    assert_eq!(SyncRequest::open(&sealed, &key(1).verifying_key()).unwrap(), most);
}

#[test]
fn an_answer_goes_out_in_the_version_of_its_request_and_reads_back() {
    let mut resp = SyncResponse {
        request_hash: [1; 32],
        server_time_ms: 5,
        acks: Vec::new(),
        refusal: None,
        next_seq: 1,
        updates: Vec::new(),
        cursor: 0,
        more: false,
        issuances: Vec::new(),
        chain: ChainPosition::default(),
        notifications: Vec::new(),
        directory: None,
    };
    resp.issuances.push(IssuanceProof::sign(
        &key(2),
        [7; 16],
        &crate::Kidc::parse("1000000001").unwrap(),
    ));
    resp.notifications.push(PendingNotification {
        notification_id: [3; 16],
        kind: "birth".into(),
        received_at_ms: 9,
        payload: "{}".into(),
    });
    resp.directory = Some(directory());
    let v6 = resp.seal(&key(2)).unwrap();
    assert_eq!(v6[0], 6);
    assert_eq!(SyncResponse::open(&v6, &key(2).verifying_key()).unwrap(), resp);
    // Version 6 changed the request only: a version-5 answer is the same
    // body under another version byte.
    let v5 = resp.seal_for(5, &key(2)).unwrap();
    assert_eq!(v5[0], 5);
    assert_eq!(SyncResponse::open(&v5, &key(2).verifying_key()).unwrap(), resp);
    assert_eq!(v5.len(), v6.len());
    let v4 = resp.seal_for(4, &key(2)).unwrap();
    assert_eq!(v4[0], 4);
    let read = SyncResponse::open(&v4, &key(2).verifying_key()).unwrap();
    assert_eq!(read.directory, None, "version 4 carries no directory");
    assert_eq!(read.notifications, resp.notifications);
    let v3 = resp.seal_for(3, &key(2)).unwrap();
    assert_eq!(v3[0], 3);
    let read = SyncResponse::open(&v3, &key(2).verifying_key()).unwrap();
    assert!(
        read.notifications.is_empty(),
        "version 3 carries no notifications"
    );
    assert_eq!(read.issuances, resp.issuances);
    let v2 = resp.seal_for(2, &key(2)).unwrap();
    assert_eq!(v2[0], 2);
    let read = SyncResponse::open(&v2, &key(2).verifying_key()).unwrap();
    assert!(read.issuances.is_empty(), "version 2 carries no proofs");
    assert_eq!(read.request_hash, resp.request_hash);
    assert!(resp.seal_for(1, &key(2)).is_err());
    // A frame's version byte is signed: changing it breaks the signature.
    let mut relabelled = v3.clone();
    relabelled[0] = 2;
    assert_eq!(
        SyncResponse::open(&relabelled, &key(2).verifying_key()).unwrap_err(),
        WireError::BadSignature
    );
}

#[test]
#[ignore = "writes the pinned sync request of the current version; run once per version"]
fn write_pinned_sync_request_bytes() {
    let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
    let bytes = request().seal(&key(1)).unwrap();
    std::fs::write(
        format!("{dir}/sync-request-v{SYNC_VERSION}.hex"),
        hex::encode(bytes) + "\n",
    )
    .unwrap();
}

#[test]
#[ignore = "writes the pinned file of the current change-set version; run once per version"]
fn write_pinned_change_set_bytes() {
    let dir = format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"));
    let cs = SignedChangeSet::seal(&key(1), [9; 16], 1, &body()).unwrap();
    let name = format!("{dir}/change-set-v{CHANGE_SET_VERSION}.hex");
    std::fs::write(name, hex::encode(cs.as_bytes()) + "\n").unwrap();
}

fn directory() -> crate::staff::OfficeDirectory {
    crate::staff::OfficeDirectory {
        office: "171003".into(),
        issued_at_ms: 42,
        enforced: true,
        staff: vec![crate::staff::RosterMember {
            staff_id: "clerk-01".into(),
            roles: 1,
            pin_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        }],
        rejection_codes: crate::staff::default_rejection_codes(),
    }
}

#[test]
fn an_office_directory_opens_only_with_the_pinned_server_key_and_within_limits() {
    let d = directory();
    let sealed = seal_directory(&d, &key(2)).unwrap();
    assert_eq!(open_directory(&sealed, &key(2).verifying_key()), Ok(d.clone()));
    assert_eq!(
        open_directory(&sealed, &key(3).verifying_key()).unwrap_err(),
        WireError::BadSignature
    );
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(open_directory(&flipped, &key(2).verifying_key()).is_err());
    // A role bit that names no role, and a roster beyond the limit.
    let mut bad = d.clone();
    bad.staff[0].roles = 8;
    let sealed = seal_directory(&bad, &key(2)).unwrap();
    assert!(matches!(
        open_directory(&sealed, &key(2).verifying_key()),
        Err(WireError::Decode(_))
    ));
    let mut big = d;
    big.staff = vec![big.staff[0].clone(); crate::staff::MAX_ROSTER_MEMBERS + 1];
    let sealed = seal_directory(&big, &key(2)).unwrap();
    assert!(matches!(
        open_directory(&sealed, &key(2).verifying_key()),
        Err(WireError::TooMany { .. })
    ));
}
