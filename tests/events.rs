//! Every vital event end to end: the real `crvs-server` process on a real
//! socket, a tablet driven through the real `crvs` binary, the shared
//! fixtures as they are (the placeholder KIdC `1000000001` replaced by a
//! registered person's).
//!
//! Every test with a server runs on SQLite and on PostgreSQL
//! (`both_backends!`); the tablet-only one needs no server.

use std::path::{Path, PathBuf};

use crvs_e2e::*;
use crvs_schema::Kidc;
use crvs_schema::kidc::Category;
use serde_json::Value;

/// `crvs KIND register FILE --by clerk-1`, verified and approved by two
/// other staff members; returns the record id.
fn approved(t: &Tablet, kind: &str, file: &Path) -> String {
    let id = submitted(t, kind, file);
    t.run(&["verify", &id, "--by", "clerk-2"]).expect_ok();
    t.run(&["approve", &id, "--by", "registrar-1"]).expect_ok();
    id
}

fn submitted(t: &Tablet, kind: &str, file: &Path) -> String {
    let f = file.to_str().expect("utf-8 path");
    let out = t.run(&[kind, "register", f, "--by", "clerk-1"]).expect_ok();
    assert_eq!(out["status"], "submitted");
    out["record_id"].as_str().expect("record id").to_string()
}

/// The fixture with its placeholder KIdC replaced by `kidc`.
fn with_kidc(dir: &Path, name: &str, kidc: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture");
    assert!(text.contains("1000000001"), "{name} has the placeholder");
    let path = dir.join(format!("{kidc}-{name}"));
    std::fs::write(&path, text.replace("1000000001", kidc)).expect("write");
    path
}

fn registration_number(r: &Value) -> String {
    r["registration_number"]
        .as_str()
        .unwrap_or_else(|| panic!("no registration number: {r}"))
        .to_string()
}

both_backends!(every_event_is_registered_with_its_number_and_the_registry_holds_what_it_cannot_register);
fn every_event_is_registered_with_its_number_and_the_registry_holds_what_it_cannot_register(
    backend: Backend,
) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll("171003", &server);
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();

    // A birth, registered: its KIdC and its registration number.
    let birth = t.register_approved(&fixture("birth-sok-dara.json"));
    t.run(&["sync"]).expect_ok();
    let b = t.show(&birth);
    assert_eq!(b["status"], "registered", "{b}");
    let kidc = b["kidc"].as_str().expect("a KIdC").to_string();
    let first = registration_number(&b);
    let parts: Vec<&str> = first.split('/').collect();
    assert_eq!(parts.len(), 3, "{first}");
    assert_eq!(parts[0], "171003");
    assert!(parts[1].len() == 4 && parts[1].parse::<u32>().is_ok(), "{first}");
    assert_eq!(
        parts[2], "000001",
        "the first registration of the office this year"
    );

    // An amendment: the given name chosen after the registration.
    let amend = t
        .run(&[
            "amend",
            &birth,
            fixture("amendment-add-given-name.json").to_str().unwrap(),
            "--by",
            "clerk-1",
        ])
        .expect_ok();
    assert_eq!(amend["record_id"], birth.as_str());
    let amendment = amend["amendment_id"].as_str().expect("amendment id").to_string();
    assert_ne!(amendment, birth);
    // It goes through the same double verification: the clerk cannot
    // verify it, and it is not registered before approval.
    assert_eq!(
        t.run(&["verify", &amendment, "--by", "clerk-1"]).expect_err(),
        "not_allowed"
    );
    t.run(&["verify", &amendment, "--by", "clerk-2"]).expect_ok();
    t.run(&["sync"]).expect_ok();
    let before = t.show(&birth)["data"]["child"].clone();
    assert_ne!(before["given_name_latin"], "SREYPOV");
    assert_eq!(
        t.show(&birth)["current"]["child"],
        before,
        "not amended before approval"
    );
    t.run(&["approve", &amendment, "--by", "registrar-1"]).expect_ok();
    // Events that name the child by KIdC.
    let adoption = approved(&t, "adoption", &with_kidc(&files, "adoption-by-kidc.json", &kidc));
    let marriage = approved(&t, "marriage", &fixture("marriage-heng-ly.json"));
    t.run(&["sync"]).expect_ok();
    t.run(&["sync"]).expect_ok();

    let a = t.show(&amendment);
    assert_eq!(a["status"], "registered", "{a}");
    assert_eq!(a["amends"], birth.as_str());
    let b = t.show(&birth);
    assert_eq!(b["kidc"], kidc.as_str(), "an amendment keeps the KIdC");
    assert_eq!(b["current"]["child"]["given_name_latin"], "SREYPOV");
    assert_eq!(b["current"]["child"]["given_name"], "ស្រីពៅ");
    assert_eq!(
        b["data"]["child"], before,
        "the registration as first made is kept"
    );
    let history = b["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "{b}");
    let h = &history[0];
    assert_eq!(h["amendment_id"], amendment.as_str());
    assert_eq!(h["registration_number"], registration_number(&a).as_str());
    assert_eq!(h["reason"], "given_name_added");
    let latin = h["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "child.given_name_latin")
        .expect("the Latin given name changed");
    assert_eq!(latin["from"], before["given_name_latin"]);
    assert_eq!(latin["to"], "SREYPOV");
    // Who made it is in the amendment's own steps.
    let steps: Vec<&str> = a["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["by"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["clerk-1", "clerk-2", "registrar-1"]);

    for id in [&adoption, &marriage] {
        let r = t.show(id);
        assert_eq!(r["status"], "registered", "{r}");
        assert!(r.get("kidc").is_none(), "only a birth gets a KIdC");
    }

    // A divorce of that marriage, then the death of the child.
    let divorce = approved(&t, "divorce", &fixture("divorce-heng-ly.json"));
    let death = approved(&t, "death", &with_kidc(&files, "death-by-kidc.json", &kidc));
    t.run(&["sync"]).expect_ok();
    for id in [&divorce, &death] {
        assert_eq!(t.show(id)["status"], "registered", "{}", t.show(id));
    }

    // Every registration has its own number, one sequence per office and year.
    let mut numbers: Vec<String> = [&birth, &amendment, &adoption, &marriage, &divorce, &death]
        .iter()
        .map(|id| registration_number(&t.show(id)))
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 6, "{numbers:?}");
    let seqs: Vec<u32> = numbers
        .iter()
        .map(|n| n.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

    // What the registry cannot register is held for review, not lost.
    let unknown = Kidc::generate(Category::CITIZEN, &mut rand::rng()).to_string();
    let held = [
        (
            "a second death of the same person",
            approved(&t, "death", &with_kidc(&files, "death-by-kidc.json", &kidc)),
            "already_deceased",
        ),
        (
            "the death of an unknown KIdC",
            approved(&t, "death", &with_kidc(&files, "death-by-kidc.json", &unknown)),
            "unknown_kidc",
        ),
        (
            "an adoption of a deceased child",
            approved(&t, "adoption", &with_kidc(&files, "adoption-by-kidc.json", &kidc)),
            "already_deceased",
        ),
        (
            "a divorce of a marriage that no longer stands",
            approved(&t, "divorce", &fixture("divorce-heng-ly.json")),
            "unknown_marriage",
        ),
    ];
    // A marriage of someone already married.
    let again = approved(&t, "marriage", &fixture("marriage-heng-ly.json"));
    t.run(&["sync"]).expect_ok();
    // They are divorced now, so marrying again is allowed: then a third
    // time is a marriage of someone already married.
    assert_eq!(t.show(&again)["status"], "registered", "{}", t.show(&again));
    let third = approved(&t, "marriage", &fixture("marriage-heng-ly.json"));
    t.run(&["sync"]).expect_ok();
    for (what, id, code) in held.iter().map(|(w, i, c)| (*w, i.as_str(), *c)).chain([(
        "a marriage of someone already married",
        third.as_str(),
        "already_married",
    )]) {
        let r = t.show(id);
        assert_eq!(r["status"], "held", "{what}: {r}");
        assert_eq!(r["hold"], code, "{what}");
        assert!(r.get("registration_number").is_none(), "{what}");
    }
    let holds = server.admin(&["holds"]).expect_ok();
    let reasons: Vec<&str> = holds["holds"]
        .as_array()
        .expect("holds")
        .iter()
        .map(|h| h["reason"].as_str().unwrap())
        .collect();
    for code in [
        "already_deceased",
        "unknown_kidc",
        "unknown_marriage",
        "already_married",
    ] {
        assert!(reasons.contains(&code), "{code} in {reasons:?}");
    }

    // The Population Registry: the child by KIdC, with the amended name,
    // both sets of parents told apart, deceased.
    let person = server.admin(&["person", &kidc]).expect_ok();
    assert_eq!(person["kidc"], kidc.as_str());
    assert_eq!(person["given_name_latin"], "SREYPOV", "{person}");
    assert_eq!(person["alive"], false);
    assert_eq!(person["date_of_death"], "2026-11-30");
    let parents: Vec<(&str, &str)> = person["parents"]
        .as_array()
        .expect("parents")
        .iter()
        .map(|p| (p["relation"].as_str().unwrap(), p["by"].as_str().unwrap()))
        .collect();
    for parent in [
        ("mother", "birth"),
        ("mother", "adoption"),
        ("father", "adoption"),
    ] {
        assert!(parents.contains(&parent), "{parent:?} in {parents:?}");
    }
    assert_eq!(
        server.admin(&["person", &unknown]).expect_err(),
        "not_found",
        "an unknown KIdC"
    );
    // Rebuilt from its event log, the registry is the same, byte for byte.
    let check = server.admin(&["registry", "rebuild", "--check"]).expect_ok();
    assert_eq!(check["identical"], true, "{check}");
    assert!(check["events"].as_u64().unwrap() >= 6, "{check}");

    // Vital statistics count the late registrations apart: the birth of
    // 2026-11-02 was registered more than 30 days later.
    assert_eq!(t.show(&birth)["late"], true);
    let stats = server.admin(&["registry", "stats"]).expect_ok();
    let line = |kind: &str| {
        stats["stats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["kind"] == kind && l["office"] == "171003")
            .cloned()
            .unwrap_or_else(|| panic!("{kind} in {stats}"))
    };
    assert_eq!(line("birth")["registered"], 1);
    assert_eq!(line("birth")["late"], 1);
    assert_eq!(line("marriage")["registered"], 2, "{stats}");
    assert_eq!(line("death")["late"], 0);
}

#[test]
fn bad_events_are_refused_on_the_tablet_with_every_problem_and_nothing_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Tablet::new(tmp.path().join("tablet"));
    t.run(&["init", "--commune", "171003"]).expect_ok();
    let path = |n: &str| fixture(n).to_str().unwrap().to_string();

    // An under-age marriage.
    let out = t
        .run(&[
            "marriage",
            "register",
            &path("marriage-underage.json"),
            "--by",
            "c",
        ])
        .expect_err();
    assert_eq!(out, "invalid_record");
    // A file of another event than the command names.
    assert_eq!(
        t.run(&["death", "register", &path("marriage-heng-ly.json"), "--by", "c"])
            .expect_err(),
        "invalid_record"
    );
    // Not JSON at all.
    let junk = tmp.path().join("junk.json");
    std::fs::write(&junk, "{ not json").unwrap();
    assert_eq!(
        t.run(&["death", "register", junk.to_str().unwrap(), "--by", "c"])
            .expect_err(),
        "invalid_record"
    );
    // A bad ICD-10 code.
    let text = std::fs::read_to_string(fixture("death-elderly.json")).unwrap();
    let mut bad: Value = serde_json::from_str(&text).unwrap();
    bad["cause_of_death"]["icd10"] = Value::from("not-a-code");
    let bad_path = tmp.path().join("bad-death.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    assert_eq!(
        t.run(&["death", "register", bad_path.to_str().unwrap(), "--by", "c"])
            .expect_err(),
        "invalid_record"
    );
    // An amendment goes through `amend`, and it needs a reason and a
    // registered record.
    let birth = t.register(&fixture("birth-sok-dara.json"), "clerk-1");
    assert_eq!(
        t.run(&[
            "amend",
            &birth,
            &path("amendment-add-given-name.json"),
            "--by",
            "c"
        ])
        .expect_err(),
        "not_allowed",
        "a record not yet approved is corrected, not amended"
    );
    t.run(&["verify", &birth, "--by", "clerk-2"]).expect_ok();
    t.run(&["approve", &birth, "--by", "registrar-1"]).expect_ok();
    assert_eq!(
        t.run(&["amend", &birth, &path("amendment-no-reason.json"), "--by", "c"])
            .expect_err(),
        "invalid_record"
    );
    assert_eq!(
        t.run(&[
            "death",
            "register",
            &path("amendment-add-given-name.json"),
            "--by",
            "c"
        ])
        .expect_err(),
        "invalid_record"
    );
    // Only the birth is stored.
    let list = t.run(&["list"]).expect_ok();
    assert_eq!(list["records"].as_array().unwrap().len(), 1, "{list}");
    // The elderly death, well formed, is accepted.
    let ok = t
        .run(&["death", "register", &path("death-elderly.json"), "--by", "c"])
        .expect_ok();
    assert_eq!(ok["status"], "submitted");
}

both_backends!(a_rejected_registration_is_corrected_resubmitted_and_registered_with_its_history);
fn a_rejected_registration_is_corrected_resubmitted_and_registered_with_its_history(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll("171003", &server);
    let death = fixture("death-elderly.json");
    let id = submitted(&t, "death", &death);
    t.run(&[
        "reject",
        &id,
        "--by",
        "registrar-1",
        "--reason",
        "the cause of death is not certified",
    ])
    .expect_ok();
    // Sent while rejected: the server keeps it, registers nothing.
    t.run(&["sync"]).expect_ok();
    assert_eq!(t.show(&id)["status"], "rejected");
    // Only a rejected record is corrected; a file of another event is not a correction.
    let other = submitted(&t, "death", &death);
    assert_eq!(
        t.run(&["correct", &other, death.to_str().unwrap(), "--by", "clerk-3"])
            .expect_err(),
        "not_allowed"
    );
    assert_eq!(
        t.run(&[
            "correct",
            &id,
            fixture("marriage-heng-ly.json").to_str().unwrap(),
            "--by",
            "clerk-3"
        ])
        .expect_err(),
        "invalid_record"
    );
    // The corrected file: a certified cause.
    let mut fixed: Value = serde_json::from_str(&std::fs::read_to_string(&death).unwrap()).unwrap();
    fixed["cause_of_death"]["certified_by"] = Value::from("physician");
    fixed["remarks"] = Value::from("certificate seen");
    let fixed_path = tmp.path().join("fixed.json");
    std::fs::write(&fixed_path, fixed.to_string()).unwrap();
    let out = t
        .run(&["correct", &id, fixed_path.to_str().unwrap(), "--by", "clerk-3"])
        .expect_ok();
    assert_eq!(out["status"], "submitted");
    // Neither the first clerk nor the one who corrected it may verify it.
    for clerk in ["clerk-1", "clerk-3"] {
        assert_eq!(
            t.run(&["verify", &id, "--by", clerk]).expect_err(),
            "not_allowed",
            "{clerk}"
        );
    }
    t.run(&["verify", &id, "--by", "clerk-2"]).expect_ok();
    t.run(&["approve", &id, "--by", "registrar-1"]).expect_ok();
    t.run(&["sync"]).expect_ok();
    let r = t.show(&id);
    assert_eq!(r["status"], "registered", "{r}");
    assert_eq!(r["data"]["remarks"], "certificate seen");
    let actions: Vec<&str> = r["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["submit", "reject", "resubmit", "verify", "approve"]);
    assert_eq!(
        r["transitions"][1]["reason"], "the cause of death is not certified",
        "the rejection and its reason stay in the history"
    );
}

both_backends!(a_second_tablet_continues_a_record_and_another_commune_never_sees_it);
/// Records belong to the office: a second tablet of the commune continues
/// a record the first started, a replacement tablet enrolled later receives
/// every record with its history, a tablet of another commune never sees
/// them, and steps taken concurrently on two tablets are all kept, the
/// record held until someone settles it.
fn a_second_tablet_continues_a_record_and_another_commune_never_sees_it(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let a = Tablet::new(tmp.path().join("a"));
    let b = Tablet::new(tmp.path().join("b"));
    let c = Tablet::new(tmp.path().join("c"));
    a.init_and_enroll("171003", &server);
    b.init_and_enroll("171003", &server);
    c.init_and_enroll("171004", &server);

    let id = t_register(&a, "birth", &fixture("birth-sok-dara.json"), "clerk-1");
    a.run(&["sync"]).expect_ok();
    let got = b.run(&["sync"]).expect_ok();
    assert_eq!(got["records_received"], 1, "{got}");
    assert_eq!(b.show(&id)["status"], "submitted");
    // The clerk is the clerk on every tablet.
    assert_eq!(
        b.run(&["verify", &id, "--by", "clerk-1"]).expect_err(),
        "not_allowed"
    );
    b.run(&["verify", &id, "--by", "clerk-2"]).expect_ok();
    b.run(&["approve", &id, "--by", "registrar-1"]).expect_ok();
    b.run(&["sync"]).expect_ok();
    let on_b = b.show(&id);
    assert_eq!(on_b["status"], "registered", "{on_b}");
    a.run(&["sync"]).expect_ok();
    let on_a = a.show(&id);
    assert_eq!(on_a["status"], "registered", "{on_a}");
    assert_eq!(on_a["kidc"], on_b["kidc"]);
    assert_eq!(on_a["registration_number"], on_b["registration_number"]);

    // Another commune's tablet receives nothing of it.
    let got = c.run(&["sync"]).expect_ok();
    assert_eq!(got["records_received"], 0, "{got}");
    assert_eq!(c.run(&["show", &id]).expect_err(), "not_found");
    assert!(
        c.run(&["list"]).expect_ok()["records"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A tablet that replaces a lost one picks up where the office left off.
    let d = Tablet::new(tmp.path().join("d"));
    d.init_and_enroll("171003", &server);
    let got = d.run(&["sync"]).expect_ok();
    assert_eq!(got["records_received"], 1, "{got}");
    let on_d = d.show(&id);
    assert_eq!(on_d["kidc"], on_a["kidc"]);
    assert_eq!(
        on_d["transitions"].as_array().unwrap().len(),
        3,
        "with its history"
    );
    // ... and continues the office's records: an amendment made on it.
    let amend = d
        .run(&[
            "amend",
            &id,
            fixture("amendment-add-given-name.json").to_str().unwrap(),
            "--by",
            "clerk-4",
        ])
        .expect_ok();
    let amendment = amend["amendment_id"].as_str().unwrap().to_string();
    d.run(&["verify", &amendment, "--by", "clerk-2"]).expect_ok();
    d.run(&["approve", &amendment, "--by", "registrar-1"]).expect_ok();
    d.run(&["sync"]).expect_ok();
    a.run(&["sync"]).expect_ok();
    assert_eq!(a.show(&id)["current"]["child"]["given_name_latin"], "SREYPOV");
    assert_eq!(a.show(&amendment)["status"], "registered");

    // Two tablets verify the same record at once, offline: both steps are
    // kept, and the record is held on the server and on every tablet.
    let death = t_register(&a, "death", &fixture("death-elderly.json"), "clerk-1");
    a.run(&["sync"]).expect_ok();
    b.run(&["sync"]).expect_ok();
    a.run(&["verify", &death, "--by", "clerk-2"]).expect_ok();
    b.run(&["verify", &death, "--by", "clerk-3"]).expect_ok();
    a.run(&["sync"]).expect_ok();
    b.run(&["sync"]).expect_ok();
    a.run(&["sync"]).expect_ok();
    for t in [&a, &b] {
        let r = t.show(&death);
        assert_eq!(r["status"], "held", "{r}");
        assert_eq!(r["hold"], "invalid_workflow");
        let by: Vec<&str> = r["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["by"].as_str().unwrap())
            .collect();
        assert!(by.contains(&"clerk-2") && by.contains(&"clerk-3"), "{by:?}");
    }
    assert!(
        c.run(&["list"]).expect_ok()["records"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

fn t_register(t: &Tablet, kind: &str, file: &Path, by: &str) -> String {
    let out = t
        .run(&[kind, "register", file.to_str().unwrap(), "--by", by])
        .expect_ok();
    out["record_id"].as_str().unwrap().to_string()
}

both_backends!(a_notified_birth_reaches_the_commune_and_is_registered_against_its_notification);
/// Notifications from a health facility reach the tablets of the commune
/// of residence, a registration answers one, and the server then reports
/// the time from the notification to the registration.
fn a_notified_birth_reaches_the_commune_and_is_registered_against_its_notification(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll("171003", &server);
    let other = Tablet::new(tmp.path().join("other"));
    other.init_and_enroll("171004", &server);
    let key = server
        .admin(&["api-key", "--name", "HMIS", "--scope", "notify"])
        .expect_ok()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let body = std::fs::read(fixture("notification-birth.json")).unwrap();
    let post = || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .post(format!("{}/v1/notifications", server.url()))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .send(&body[..])
            .expect("request");
        let text = resp.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v["notification_id"].as_str().unwrap().to_string()
    };
    let nid = post();
    assert_eq!(post(), nid, "a replayed notification is the same one");

    // The tablets of the commune of residence receive it; others do not.
    t.run(&["sync"]).expect_ok();
    other.run(&["sync"]).expect_ok();
    let listed = t.run(&["notifications"]).expect_ok();
    let list = listed["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{listed}");
    assert_eq!(list[0]["notification_id"], nid.as_str());
    assert_eq!(list[0]["kind"], "birth");
    assert_eq!(list[0]["notification"]["source"]["reference"], "HMIS-2026-000123");
    assert!(
        other.run(&["notifications"]).expect_ok()["notifications"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A death cannot answer a birth notification, nor an unknown id.
    let death = fixture("death-elderly.json");
    let death = death.to_str().unwrap();
    assert_eq!(
        t.run(&[
            "death",
            "register",
            death,
            "--by",
            "clerk-1",
            "--notification",
            &nid
        ])
        .expect_err(),
        "not_allowed"
    );
    assert_eq!(
        t.run(&[
            "birth",
            "register",
            fixture("birth-sok-dara.json").to_str().unwrap(),
            "--by",
            "clerk-1",
            "--notification",
            "01234567-89ab-7def-8123-456789abcdef",
        ])
        .expect_err(),
        "not_allowed"
    );
    let id = t
        .run(&[
            "birth",
            "register",
            fixture("birth-sok-dara.json").to_str().unwrap(),
            "--by",
            "clerk-1",
            "--notification",
            &nid,
        ])
        .expect_ok()["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.show(&id)["transitions"][0]["notification"], nid.as_str());
    // Answered here: no longer pending on this tablet, even before a sync.
    assert!(
        t.run(&["notifications"]).expect_ok()["notifications"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    t.run(&["verify", &id, "--by", "clerk-2"]).expect_ok();
    t.run(&["approve", &id, "--by", "registrar-1"]).expect_ok();
    t.run(&["sync"]).expect_ok();
    assert_eq!(t.show(&id)["status"], "registered");
    t.run(&["sync"]).expect_ok();
    assert!(
        t.run(&["notifications"]).expect_ok()["notifications"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let registered = server.admin(&["notifications", "--registered"]).expect_ok();
    let list = registered["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{registered}");
    assert_eq!(list[0]["notification_id"], nid.as_str());
    assert_eq!(list[0]["registered_record_id"], id.as_str());
    assert!(list[0]["hours_to_registration"].as_f64().unwrap() >= 0.0);
    assert!(registered["median_hours_to_registration"].is_number());
    let overdue = server
        .admin(&["notifications", "--overdue", "--days", "0"])
        .expect_ok();
    assert!(
        overdue["notifications"].as_array().unwrap().is_empty(),
        "{overdue}"
    );
}

both_backends!(two_tablets_correcting_one_record_at_once_show_the_conflict_until_a_registrar_settles_it);
fn two_tablets_correcting_one_record_at_once_show_the_conflict_until_a_registrar_settles_it(
    backend: Backend,
) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let a = Tablet::new(tmp.path().join("a"));
    a.init_and_enroll("171003", &server);
    let death = fixture("death-elderly.json");
    let id = submitted(&a, "death", &death);
    a.run(&[
        "reject",
        &id,
        "--by",
        "registrar-1",
        "--reason",
        "the cause is not certified",
    ])
    .expect_ok();
    a.run(&["sync"]).expect_ok();
    // A second tablet of the office receives the rejected record.
    let b = Tablet::new(tmp.path().join("b"));
    b.init_and_enroll("171003", &server);
    b.run(&["sync"]).expect_ok();
    assert_eq!(b.show(&id)["status"], "rejected");

    // Both correct it, offline, differently.
    let fixed = |remarks: &str| {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&death).unwrap()).unwrap();
        v["cause_of_death"]["certified_by"] = Value::from("physician");
        v["remarks"] = Value::from(remarks);
        let path = tmp.path().join(format!("{}.json", remarks.len()));
        std::fs::write(&path, v.to_string()).unwrap();
        path
    };
    let on_a = fixed("certificate seen at the health centre");
    let on_b = fixed("certificate seen");
    a.run(&["correct", &id, on_a.to_str().unwrap(), "--by", "clerk-3"])
        .expect_ok();
    b.run(&["correct", &id, on_b.to_str().unwrap(), "--by", "clerk-4"])
        .expect_ok();
    a.run(&["sync"]).expect_ok();
    b.run(&["sync"]).expect_ok();
    a.run(&["sync"]).expect_ok();

    // Nothing dropped: both values are there, the record is held.
    for t in [&a, &b] {
        let r = t.show(&id);
        assert_eq!(r["status"], "held", "{r}");
        assert_eq!(r["conflicts"], serde_json::json!(["data"]), "{r}");
        let values = r["conflicting_data"].as_array().expect("both values");
        let remarks: Vec<&str> = values.iter().map(|v| v["remarks"].as_str().unwrap()).collect();
        assert_eq!(remarks.len(), 2, "{r}");
        assert!(
            remarks.contains(&"certificate seen")
                && remarks.contains(&"certificate seen at the health centre")
        );
    }
    let r = a.show(&id);
    let chosen = r["conflicting_data"][1]["remarks"].as_str().unwrap().to_string();
    // A record without a conflict has nothing to settle; a value out of range is named.
    let other = submitted(&a, "death", &death);
    assert_eq!(
        a.run(&["settle", &other, "--take", "0", "--by", "registrar-1"])
            .expect_err(),
        "not_allowed"
    );
    assert_eq!(
        a.run(&["settle", &id, "--take", "2", "--by", "registrar-1"])
            .expect_err(),
        "invalid_input"
    );
    let settled = a
        .run(&["settle", &id, "--take", "1", "--by", "registrar-1"])
        .expect_ok();
    assert_eq!(settled["status"], "submitted");
    a.run(&["sync"]).expect_ok();
    let r = a.show(&id);
    assert!(r["hold"].is_null(), "the server lifted its hold: {r}");
    assert_eq!(r["conflicts"], serde_json::json!([]));
    assert_eq!(r["data"]["remarks"], chosen.as_str());
    // Verified and approved again; the registrar who settled it is its clerk.
    assert_eq!(
        a.run(&["verify", &id, "--by", "registrar-1"]).expect_err(),
        "not_allowed"
    );
    a.run(&["verify", &id, "--by", "clerk-2"]).expect_ok();
    a.run(&["approve", &id, "--by", "registrar-1"]).expect_ok();
    a.run(&["sync"]).expect_ok();
    b.run(&["sync"]).expect_ok();
    for t in [&a, &b] {
        let r = t.show(&id);
        assert_eq!(r["status"], "registered", "{r}");
        assert_eq!(r["data"]["remarks"], chosen.as_str());
        let actions: Vec<&str> = r["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions.iter().filter(|a| **a == "resubmit").count(),
            2,
            "both corrections stay in the history: {actions:?}"
        );
        assert!(actions.contains(&"settle"), "{actions:?}");
    }
    // The hold's lifting is audited as a release by the registrar.
    assert_eq!(
        server_count(
            &server.data,
            "SELECT COUNT(*) FROM hold_releases WHERE by_operator = 'registrar-1' AND outcome = 'released'"
        ),
        1
    );
}
