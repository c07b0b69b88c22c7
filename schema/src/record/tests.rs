use super::*;
use automerge::{Automerge, Prop};

use super::check::{scalar_json, snapshot_entry};

fn actor(n: u8) -> ActorId {
    ActorId::from([n; 16])
}

fn submit(by: &str) -> Transition {
    Transition {
        action: Action::Submit,
        by: by.into(),
        at_ms: 1_700_000_000_000,
        device: "dev".into(),
        reason: None,
        notification: None,
        code: None,
    }
}

fn sample() -> Json {
    serde_json::json!({
        "event": "birth",
        "child": { "family_name": "សុខ", "sex": "male", "date_of_birth": "2026-11-02" },
        "residence_village_code": "17100301"
    })
}

fn copy(doc: &mut AutoCommit) -> Automerge {
    Automerge::load(&doc.save()).unwrap()
}

#[test]
fn document_chunks_and_change_chunks_decode_to_the_same_changes() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    doc.commit();
    let mut v = submit("checker");
    v.action = Action::Verify;
    append_transition(&mut doc, &v).unwrap();
    doc.commit();
    let from_changes: Vec<_> = doc.get_changes(&[]).into_iter().map(|c| c.hash()).collect();
    let from_doc: Vec<_> = decode_changes(&doc.save_nocompress())
        .unwrap()
        .iter()
        .map(|c| c.hash())
        .collect();
    assert_eq!(from_changes, from_doc);
    let raw = doc.get_changes(&[])[0].raw_bytes().to_vec();
    assert_eq!(decode_changes(&raw).unwrap()[0].hash(), from_changes[0]);
    assert!(decode_changes(&[1, 2, 3]).is_err());
    let mut corrupt = doc.save_nocompress();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(decode_changes(&corrupt).is_err());
}

#[test]
fn a_new_record_reads_back_as_written() {
    let doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let view = read(&doc).unwrap();
    assert_eq!(view.kind, RecordKind::Birth);
    assert_eq!(view.office, "171003");
    assert_eq!(view.data, sample());
    assert_eq!(view.transitions, vec![submit("clerk")]);
    assert_eq!(view.status().unwrap(), Status::Submitted);
    assert!(view.conflicts.is_empty());
}

#[test]
fn tablet_changes_that_follow_the_rules_pass() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let before = copy(&mut doc);
    let mut v = submit("checker");
    v.action = Action::Verify;
    append_transition(&mut doc, &v).unwrap();
    let view = check_tablet_changes(Some(&before), &doc).unwrap();
    assert_eq!(view.status().unwrap(), Status::Verified);
    assert!(check_tablet_changes(None::<&Automerge>, &doc).is_ok());
}

#[test]
fn a_tablet_that_writes_a_kidc_is_refused() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let before = copy(&mut doc);
    let k = Kidc::parse("1000000019").ok();
    let s = doc.put_object(automerge::ROOT, SERVER, ObjType::Map).unwrap();
    doc.put(
        &s,
        "kidc",
        k.map(|k| k.to_string()).unwrap_or_else(|| "1234567890".into()),
    )
    .unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &doc).unwrap_err(),
        TabletChangeError::ServerOwnedField("server.kidc".into())
    );
    assert!(matches!(
        check_tablet_changes(None::<&Automerge>, &doc),
        Err(TabletChangeError::ServerOwnedField(_))
    ));
    // The same forgery in the server's own form, a JSON string.
    let mut forged = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let before = copy(&mut forged);
    forged
        .put(automerge::ROOT, SERVER, r#"{"kidc":"1000000019"}"#)
        .unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &forged).unwrap_err(),
        TabletChangeError::ServerOwnedField("server.kidc".into())
    );
}

#[test]
fn the_server_part_is_one_value_that_keeps_earlier_edits() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    doc.set_actor(actor(9));
    set_hold(&mut doc, "invalid_on_receipt").unwrap();
    let kidc = Kidc::generate(crate::kidc::Category::CITIZEN, &mut rand::rng());
    set_registration(&mut doc, &reg(kidc)).unwrap();
    let view = read(&doc).unwrap();
    assert_eq!(
        view.server,
        ServerPart {
            kidc: Some(kidc),
            registered_at_ms: Some(5),
            registration_number: Some("171003/2026/000001".into()),
            hold: Some("invalid_on_receipt".into()),
            ..ServerPart::default()
        }
    );
    // Every part of the record is a whole value: a handful of
    // operations, not one per field.
    doc.commit();
    let ops: usize = doc.get_changes(&[]).iter().map(|c| c.len()).sum();
    assert!(ops <= 8, "{ops} operations");
}

#[test]
fn a_tablet_that_rewrites_an_existing_kidc_is_refused() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    // The server writes its part with its own actor.
    let mut server = doc.fork().with_actor(actor(9));
    let kidc = Kidc::generate(crate::kidc::Category::CITIZEN, &mut rand::rng());
    set_registration(&mut server, &reg(kidc)).unwrap();
    doc.merge(&mut server).unwrap();
    let before = copy(&mut doc);
    doc.put(automerge::ROOT, SERVER, r#"{"kidc":"1111111111"}"#)
        .unwrap();
    assert!(matches!(
        check_tablet_changes(Some(&before), &doc),
        Err(TabletChangeError::ServerOwnedField(_))
    ));
}

#[test]
fn rewriting_office_or_history_is_refused() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let before = copy(&mut doc);
    let mut moved = doc.fork();
    moved.put(automerge::ROOT, OFFICE, "120101").unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &moved).unwrap_err(),
        TabletChangeError::Immutable(OFFICE)
    );
    let mut rewritten = doc.fork();
    let list = rewritten.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
    let step = serde_json::to_string(&submit("someone-else")).unwrap();
    rewritten.put(&list, 0, step).unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &rewritten).unwrap_err(),
        TabletChangeError::TransitionsRewritten
    );
    let mut extra = doc.fork();
    extra.put(automerge::ROOT, "status", "registered").unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &extra).unwrap_err(),
        TabletChangeError::UnknownRootField
    );
}

#[test]
fn a_self_verified_record_is_refused() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let before = copy(&mut doc);
    let mut v = submit("clerk");
    v.action = Action::Verify;
    append_transition(&mut doc, &v).unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &doc).unwrap_err(),
        TabletChangeError::Workflow(WorkflowError::VerifierIsClerk)
    );
}

#[test]
fn a_new_step_with_a_bad_staff_id_is_refused_but_an_old_one_stays_readable() {
    // A record written before staff ids had a charset.
    let mut doc = new_record(
        actor(1),
        RecordKind::Birth,
        "171003",
        &sample(),
        &submit("Clerk One"),
    )
    .unwrap();
    assert!(check_tablet_changes(None::<&Automerge>, &doc).is_err());
    let before = copy(&mut doc);
    let mut v = submit("checker");
    v.action = Action::Verify;
    append_transition(&mut doc, &v).unwrap();
    assert!(check_tablet_changes(Some(&before), &doc).is_ok());
    let before = copy(&mut doc);
    for by in ["a".repeat(10_000), "registrar\nclerk".to_owned()] {
        let mut forged = AutoCommit::load(&doc.save()).unwrap();
        let mut a = submit(&by);
        a.action = Action::Approve;
        append_transition(&mut forged, &a).unwrap();
        assert!(matches!(
            check_tablet_changes(Some(&before), &forged).unwrap_err(),
            TabletChangeError::Workflow(WorkflowError::StaffIdTooLong | WorkflowError::StaffIdCharacters)
        ));
    }
}

#[test]
fn concurrent_writes_of_the_data_stay_visible_as_a_conflict() {
    let mut a = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let before = copy(&mut a);
    let mut b = a.fork().with_actor(actor(2));
    let mut data = sample();
    data["child"]["family_name"] = "A".into();
    a.put(automerge::ROOT, DATA, data.to_string()).unwrap();
    data["child"]["family_name"] = "B".into();
    b.put(automerge::ROOT, DATA, data.to_string()).unwrap();
    a.merge(&mut b).unwrap();
    let view = read(&a).unwrap();
    assert_eq!(view.conflicts, vec![DATA.to_string()]);
    // Nothing merged silently: the winner is one whole write.
    assert!(["A", "B"].contains(&view.data["child"]["family_name"].as_str().unwrap()));
    // Two tablets of the office can produce this (records belong to the
    // office): the server takes it, and the view shows the conflict.
    let checked = check_tablet_changes(Some(&before), &a).expect("a data conflict is kept, not refused");
    assert_eq!(checked.conflicts, vec![DATA.to_string()]);
}

#[test]
fn a_record_that_does_not_have_the_layout_is_malformed() {
    let base = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    type Damage = fn(&mut AutoCommit);
    let cases: [(&str, Damage); 4] = [
        ("data is a map", |d| {
            d.put_object(automerge::ROOT, DATA, ObjType::Map).unwrap();
        }),
        ("data is not JSON", |d| {
            d.put(automerge::ROOT, DATA, "{not json").unwrap();
        }),
        ("a step is not JSON", |d| {
            let list = d.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
            d.insert(&list, 1, "verify").unwrap();
        }),
        ("a step is a map", |d| {
            let list = d.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
            d.insert_object(&list, 1, ObjType::Map).unwrap();
        }),
    ];
    for (what, damage) in cases {
        let mut d = base.clone();
        damage(&mut d);
        assert!(matches!(read(&d), Err(RecordError::Malformed(_))), "{what}");
        assert!(
            matches!(
                check_tablet_changes(None::<&Automerge>, &d),
                Err(TabletChangeError::Malformed(_))
            ),
            "{what}"
        );
    }
}

/// The earlier, per-key implementation of [`snapshot`], as a reference.
fn snapshot_by_key<R: ReadDoc>(doc: &R, obj: &ObjId, prop: Prop) -> Json {
    let mut values = Vec::new();
    for (v, id) in doc.get_all(obj, prop).unwrap() {
        values.push(match v {
            Value::Scalar(s) => scalar_json(&s),
            Value::Object(t) => {
                let mut m = serde_json::Map::new();
                m.insert("$id".into(), Json::String(id.to_string()));
                match t {
                    ObjType::Map | ObjType::Table => {
                        for k in doc.keys(&id) {
                            let inner = snapshot_by_key(doc, &id, k.as_str().into());
                            m.insert(k, inner);
                        }
                    }
                    ObjType::List => {
                        let items = (0..doc.length(&id))
                            .map(|i| snapshot_by_key(doc, &id, Prop::Seq(i)))
                            .collect();
                        m.insert("$items".into(), Json::Array(items));
                    }
                    ObjType::Text => {
                        m.insert("$text".into(), Json::String(doc.text(&id).unwrap()));
                    }
                }
                Json::Object(m)
            }
        });
    }
    Json::Array(values)
}

#[test]
fn the_range_walks_match_the_per_key_reads_with_conflicts_everywhere() {
    let mut a = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let mut b = a.fork().with_actor(actor(2));
    let mut c = a.fork().with_actor(actor(3));
    for (doc, tag) in [(&mut a, "A"), (&mut b, "B"), (&mut c, "C")] {
        // Forgeries of every shape, in conflict: scalars, maps with
        // lists and text inside, list elements rewritten and added.
        doc.put(automerge::ROOT, OFFICE, tag).unwrap();
        doc.put(automerge::ROOT, DATA, format!("{{\"tag\":\"{tag}\"}}"))
            .unwrap();
        let s = doc.put_object(automerge::ROOT, SERVER, ObjType::Map).unwrap();
        doc.put(&s, "hold", tag).unwrap();
        let l = doc.put_object(&s, "list", ObjType::List).unwrap();
        doc.insert(&l, 0, tag).unwrap();
        let note = doc.put_object(&s, "note", ObjType::Text).unwrap();
        doc.splice_text(&note, 0, 0, tag).unwrap();
        let t = doc.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
        doc.put(&t, 0, tag).unwrap();
        let m = doc.insert_object(&t, 1, ObjType::Map).unwrap();
        doc.put(&m, "by", tag).unwrap();
    }
    a.merge(&mut b).unwrap();
    a.merge(&mut c).unwrap();
    let root = root_entries(&a);
    for key in [KIND, OFFICE, DATA, TRANSITIONS, SERVER, "absent"] {
        assert_eq!(
            snapshot_entry(&a, &automerge::ROOT, key.into(), root.get(key)).unwrap(),
            snapshot_by_key(&a, &automerge::ROOT, key.into()),
            "{key}"
        );
    }
    assert!(root.get(DATA).unwrap().conflict);
}

#[test]
fn concurrent_rewrites_hidden_behind_the_winner_are_still_refused() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    doc.commit();
    // Two tablets, from the same state, write the same KIdC; the server
    // has seen one of them.
    let mut one = doc.fork().with_actor(actor(2));
    let mut two = doc.fork().with_actor(actor(3));
    for t in [&mut one, &mut two] {
        let s = t.put_object(automerge::ROOT, SERVER, ObjType::Map).unwrap();
        t.put(&s, "kidc", "1000000019").unwrap();
    }
    let mut seen = doc.fork();
    seen.merge(&mut one).unwrap();
    let before = copy(&mut seen);
    seen.merge(&mut two).unwrap();
    assert!(matches!(
        check_tablet_changes(Some(&before), &seen),
        Err(TabletChangeError::ServerOwnedField(_))
    ));

    // A concurrent rewrite of the first step that loses to the value
    // the server has seen: the winner is unchanged, the conflict is new.
    let mut one = doc.fork().with_actor(actor(3));
    let mut two = doc.fork().with_actor(actor(2));
    for (t, by) in [(&mut one, "clerk-1"), (&mut two, "clerk-2")] {
        let list = t.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
        t.put(&list, 0, serde_json::to_string(&submit(by)).unwrap())
            .unwrap();
    }
    let mut seen = doc.fork();
    seen.merge(&mut one).unwrap();
    let before = copy(&mut seen);
    seen.merge(&mut two).unwrap();
    let list = seen.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
    assert_eq!(seen.get_all(&list, 0).unwrap().len(), 2);
    assert_eq!(
        read(&seen).unwrap().transitions,
        read(&before).unwrap().transitions
    );
    assert_eq!(
        check_tablet_changes(Some(&before), &seen).unwrap_err(),
        TabletChangeError::TransitionsRewritten
    );

    let mut one = doc.fork().with_actor(actor(2));
    let mut two = doc.fork().with_actor(actor(3));
    one.put(automerge::ROOT, KIND, "death").unwrap();
    two.put(automerge::ROOT, KIND, "marriage").unwrap();
    let mut seen = doc.fork();
    seen.merge(&mut one).unwrap();
    let before = copy(&mut seen);
    seen.merge(&mut two).unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &seen).unwrap_err(),
        TabletChangeError::Malformed("root field 'kind' is missing or in conflict".into())
    );
}

fn reg(kidc: Kidc) -> Registration {
    Registration {
        kidc: Some(kidc),
        number: "171003/2026/000001".into(),
        at_ms: 5,
        late: false,
    }
}

#[test]
fn an_approved_records_data_changes_only_through_an_amendment() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    for (action, by) in [
        (crate::workflow::Action::Verify, "verifier"),
        (crate::workflow::Action::Approve, "registrar"),
    ] {
        append_transition(
            &mut doc,
            &Transition {
                action,
                by: by.into(),
                at_ms: 2,
                device: "d".into(),
                reason: None,
                notification: None,
                code: None,
            },
        )
        .unwrap();
    }
    let before = copy(&mut doc);
    let mut changed = sample();
    changed["child"]["given_name"] = serde_json::json!("x");
    doc.put(automerge::ROOT, DATA, changed.to_string()).unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &doc).unwrap_err(),
        TabletChangeError::RegisteredDataChanged
    );
}

#[test]
fn current_data_makes_each_registered_amendment_in_order() {
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    doc.set_actor(actor(9));
    for (i, name) in ["A", "B"].iter().enumerate() {
        add_amendment(
            &mut doc,
            AppliedAmendment {
                amendment_id: format!("id-{i}"),
                registration_number: format!("171003/2026/00000{i}"),
                registered_at_ms: i as i64,
                reason: "clerical_error".into(),
                changes: vec![FieldChange {
                    field: "child.given_name_latin".into(),
                    from: serde_json::Value::Null,
                    to: serde_json::json!(name),
                }],
            },
        )
        .unwrap();
    }
    let view = read(&doc).unwrap();
    assert_eq!(view.server.amendments.len(), 2);
    assert_eq!(view.current_data()["child"]["given_name_latin"], "B");
    assert_ne!(view.data, view.current_data(), "the registration itself is kept");
}

#[test]
fn steps_appended_concurrently_on_two_tablets_are_kept_in_any_order() {
    let mut a = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let before = copy(&mut a);
    let mut b = a.fork().with_actor(actor(2));
    let step = |by: &str| Transition {
        action: crate::workflow::Action::Verify,
        by: by.into(),
        at_ms: 2,
        device: "d".into(),
        reason: None,
        notification: None,
        code: None,
    };
    append_transition(&mut a, &step("checker-a")).unwrap();
    append_transition(&mut b, &step("checker-b")).unwrap();
    // Whichever order automerge puts them in, the earlier steps are kept,
    // so the change is taken; the workflow they make is not valid (two
    // verifications), which the server holds, not refuses.
    a.merge(&mut b).unwrap();
    assert_eq!(read(&a).unwrap().transitions.len(), 3);
    assert!(matches!(
        check_tablet_changes(Some(&before), &a),
        Err(TabletChangeError::Workflow(_))
    ));
    // A step removed is still a rewrite.
    let after_first = copy(&mut a);
    let mut c = a.fork();
    let list = match automerge::ReadDoc::get(&c, automerge::ROOT, TRANSITIONS).unwrap() {
        Some((_, id)) => id,
        None => panic!("list"),
    };
    c.delete(&list, 0).unwrap();
    assert_eq!(
        check_tablet_changes(Some(&after_first), &c).unwrap_err(),
        TabletChangeError::TransitionsRewritten
    );
}

#[test]
fn keeping_one_of_two_concurrent_values_passes_and_deleting_the_data_is_refused() {
    let mut a = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    let mut b = a.fork().with_actor(actor(2));
    let mut data = sample();
    data["child"]["family_name"] = "A".into();
    a.put(automerge::ROOT, DATA, data.to_string()).unwrap();
    data["child"]["family_name"] = "B".into();
    b.put(automerge::ROOT, DATA, data.to_string()).unwrap();
    a.merge(&mut b).unwrap();
    assert_eq!(data_values(&a).unwrap().len(), 2);
    let conflicted = copy(&mut a);
    // Keeping B's value as it is: automerge writes the deletion of A's.
    let before_ops = a.get_heads();
    a.put(automerge::ROOT, DATA, data.to_string()).unwrap();
    let ops: Vec<_> = a
        .get_changes(&before_ops)
        .iter()
        .flat_map(|c| c.decode().operations)
        .collect();
    assert!(ops.iter().any(|o| o.action == automerge::legacy::OpType::Delete));
    let view = check_tablet_changes(Some(&conflicted), &a).expect("a settlement by keeping one value");
    assert!(view.conflicts.is_empty());
    assert_eq!(view.data["child"]["family_name"], "B");
    assert_eq!(data_values(&a).unwrap(), vec![data.clone()]);
    // Deleting the data itself leaves the record without it: refused.
    let before = copy(&mut a);
    a.delete(automerge::ROOT, DATA).unwrap();
    assert!(matches!(
        check_tablet_changes(Some(&before), &a),
        Err(TabletChangeError::Malformed(_))
    ));
}

#[test]
fn a_settlement_changes_an_approved_records_data_only_before_its_registration() {
    let step = |action, by: &str| Transition {
        action,
        by: by.into(),
        at_ms: 2,
        device: "d".into(),
        reason: None,
        notification: None,
        code: None,
    };
    use crate::workflow::Action;
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    append_transition(&mut doc, &step(Action::Verify, "verifier")).unwrap();
    append_transition(&mut doc, &step(Action::Approve, "registrar")).unwrap();
    let approved = copy(&mut doc);
    let mut changed = sample();
    changed["child"]["given_name"] = serde_json::json!("x");
    let mut settled = doc.fork();
    settled.put(automerge::ROOT, DATA, changed.to_string()).unwrap();
    append_transition(&mut settled, &step(Action::Settle, "registrar")).unwrap();
    let view = check_tablet_changes(Some(&approved), &settled).expect("settled before registration");
    assert_eq!(view.status().unwrap(), crate::workflow::Status::Submitted);
    // Once registered, not even a settlement changes the data.
    let mut registered = doc.fork().with_actor(actor(9));
    set_registration(&mut registered, &reg(Kidc::parse("1000000001").unwrap())).unwrap();
    let before = copy(&mut registered);
    registered
        .put(automerge::ROOT, DATA, changed.to_string())
        .unwrap();
    append_transition(&mut registered, &step(Action::Settle, "registrar")).unwrap();
    assert_eq!(
        check_tablet_changes(Some(&before), &registered).unwrap_err(),
        TabletChangeError::RegisteredDataChanged
    );
}

#[test]
fn only_a_first_write_of_the_server_part_and_nothing_else_is_recognised() {
    let registration = Registration {
        kidc: None,
        number: "171003/2026/000001".into(),
        at_ms: 1_700_000_000_000,
        late: false,
    };
    let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
    doc.commit();
    let mut server = doc.fork().with_actor(actor(9));
    set_registration(&mut server, &registration).unwrap();
    server.commit();
    let first = server.get_last_local_change().unwrap();
    let part = first_server_part(&first).expect("the first write of the server part");
    assert_eq!(part.registration_number.as_deref(), Some("171003/2026/000001"));
    // What it gives is what applying the change gives.
    let mut applied = doc.fork();
    applied.apply_changes([first.clone()]).unwrap();
    let view = read(&applied).unwrap();
    assert_eq!(view.server, part);
    assert_eq!(view.status().unwrap(), part.status_over(Status::Submitted));

    // A second write has the first as its predecessor.
    set_hold(&mut server, "probable_duplicate").unwrap();
    server.commit();
    assert_eq!(first_server_part(&server.get_last_local_change().unwrap()), None);
    // Two operations.
    let mut two = doc.fork().with_actor(actor(9));
    two.put(automerge::ROOT, SERVER, "{}").unwrap();
    two.put(automerge::ROOT, OFFICE, "171004").unwrap();
    two.commit();
    assert_eq!(first_server_part(&two.get_last_local_change().unwrap()), None);
    // Another key, another value type, a server part that does not parse.
    for (key, value) in [
        (DATA, ScalarValue::Str("{}".into())),
        (SERVER, ScalarValue::Int(1)),
        (SERVER, ScalarValue::Str("not json".into())),
    ] {
        let mut other = doc.fork().with_actor(actor(9));
        other.put(automerge::ROOT, key, value).unwrap();
        other.commit();
        assert_eq!(
            first_server_part(&other.get_last_local_change().unwrap()),
            None,
            "{key}"
        );
    }
    // A workflow step (an insert into the list).
    let mut v = submit("checker");
    v.action = Action::Verify;
    let mut step = doc.fork();
    append_transition(&mut step, &v).unwrap();
    step.commit();
    assert_eq!(first_server_part(&step.get_last_local_change().unwrap()), None);
}

#[test]
fn the_status_over_a_server_part_is_the_views_status() {
    let kidc = Some(Kidc::generate(crate::kidc::Category::CITIZEN, &mut rand::rng()));
    for (part, tablet, expected) in [
        (ServerPart::default(), Status::Approved, Status::Approved),
        (
            ServerPart {
                registration_number: Some("x".into()),
                ..ServerPart::default()
            },
            Status::Approved,
            Status::Registered,
        ),
        (
            ServerPart {
                kidc,
                ..ServerPart::default()
            },
            Status::Approved,
            Status::Registered,
        ),
        (
            ServerPart {
                hold: Some("invalid_on_receipt".into()),
                ..ServerPart::default()
            },
            Status::Approved,
            Status::Held,
        ),
        (
            ServerPart {
                hold: Some("invalid_on_receipt".into()),
                ..ServerPart::default()
            },
            Status::Rejected,
            Status::Rejected,
        ),
    ] {
        assert_eq!(part.status_over(tablet), expected, "{part:?} over {tablet:?}");
    }
}
