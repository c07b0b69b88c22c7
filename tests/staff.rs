//! Staff who prove who they are, end to end: the roster is set on a real
//! `crvs-server` (its binary), reaches tablets with the enrolment and each
//! sync, and every acting `crvs` command checks the staff member, the
//! role and the PIN (`CRVS_PIN`). The server checks every step again
//! against its roster history, so a tablet that skips the check gains
//! nothing.
//!
//! Every test runs on SQLite and on PostgreSQL (`both_backends!`).

use std::path::Path;

use crvs_e2e::*;
use serde_json::Value;

const COMMUNE: &str = "171003";
const CLERK_PIN: &str = "204816";
const VERIFIER_PIN: &str = "731950";
const REGISTRAR_PIN: &str = "582013";

fn roster(data: &Path) {
    add_staff(data, COMMUNE, "clerk-1", "clerk", CLERK_PIN);
    add_staff(data, COMMUNE, "verifier-1", "verifier", VERIFIER_PIN);
    add_staff(data, COMMUNE, "registrar-1", "registrar", REGISTRAR_PIN);
}

fn birth() -> String {
    fixture("birth-sok-dara.json").to_str().unwrap().to_string()
}

fn staff_ids(list: &Value) -> Vec<String> {
    list["staff"]
        .as_array()
        .expect("staff")
        .iter()
        .map(|m| m["staff_id"].as_str().unwrap().to_string())
        .collect()
}

both_backends!(staff_act_with_their_own_pin_and_role_and_the_roster_comes_from_the_server);
fn staff_act_with_their_own_pin_and_role_and_the_roster_comes_from_the_server(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    roster(&server.data);
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll(COMMUNE, &server);

    // The roster came with the enrolment: no sync yet.
    let list = t.run(&["staff", "list"]).expect_ok();
    assert_eq!(list["enforced"], true, "{list}");
    assert_eq!(staff_ids(&list), ["clerk-1", "registrar-1", "verifier-1"]);
    let text = list.to_string();
    assert!(!text.contains("argon2"), "no PIN hash is shown: {text}");
    assert!(
        list["rejection_codes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["code"] == "documents_missing"),
        "{list}"
    );

    // No PIN, a wrong PIN, someone not on the roster: nothing is stored.
    let f = birth();
    let register = ["birth", "register", f.as_str(), "--by", "clerk-1"];
    assert_eq!(t.run(&register).expect_err(), "pin_required");
    let wrong = t.run_as("999999", &register);
    assert!(wrong.stderr.contains("4 tries left"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("999999"), "the PIN is never repeated");
    assert_eq!(wrong.expect_err(), "wrong_pin");
    assert_eq!(
        t.run_as(CLERK_PIN, &["birth", "register", &f, "--by", "clerk-9"])
            .expect_err(),
        "not_on_roster"
    );
    assert_eq!(
        t.run(&["list"]).expect_ok()["records"].as_array().map(Vec::len),
        Some(0),
        "nothing stored"
    );

    // The right PIN: the clerk registers (and a right PIN clears the count).
    let id = t.run_as(CLERK_PIN, &register).expect_ok()["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    let roles = t.run(&["staff", "list"]).expect_ok();
    assert_eq!(roles["staff"][0]["wrong_pins"], 0, "{roles}");

    // Roles: the clerk cannot verify, the verifier cannot approve.
    assert_eq!(
        t.run_as(CLERK_PIN, &["verify", &id, "--by", "clerk-1"])
            .expect_err(),
        "role_missing"
    );
    t.run_as(VERIFIER_PIN, &["verify", &id, "--by", "verifier-1"])
        .expect_ok();
    assert_eq!(
        t.run_as(VERIFIER_PIN, &["approve", &id, "--by", "verifier-1"])
            .expect_err(),
        "role_missing"
    );
    // Someone else's PIN does not prove who you are.
    assert_eq!(
        t.run_as(VERIFIER_PIN, &["approve", &id, "--by", "registrar-1"])
            .expect_err(),
        "wrong_pin"
    );
    let approved = t
        .run_as(REGISTRAR_PIN, &["approve", &id, "--by", "registrar-1"])
        .expect_ok();
    assert_eq!(approved["status"], "approved");

    // The server registers it: every step is by someone on its roster.
    t.run(&["sync"]).expect_ok();
    let shown = t.show(&id);
    assert_eq!(shown["status"], "registered", "{shown}");
    assert!(shown["kidc"].is_string());
    let by: Vec<&str> = shown["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["clerk-1", "verifier-1", "registrar-1"]);

    // A rejection carries a code from the server's list, and free text.
    let second = t
        .run_as(CLERK_PIN, &["birth", "register", &f, "--by", "clerk-1"])
        .expect_ok()["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    let reject = |code: &str| {
        t.run_as(
            REGISTRAR_PIN,
            &[
                "reject",
                &second,
                "--by",
                "registrar-1",
                "--code",
                code,
                "--reason",
                "registered already",
            ],
        )
    };
    assert_eq!(reject("no_such_code").expect_err(), "invalid_input");
    assert_eq!(reject("duplicate_application").expect_ok()["status"], "rejected");
    let steps = t.show(&second)["transitions"].clone();
    assert_eq!(steps[1]["code"], "duplicate_application", "{steps}");
    assert_eq!(steps[1]["reason"], "registered already");
    t.run(&["sync"]).expect_ok();
    assert_eq!(
        t.show(&second)["status"],
        "rejected",
        "not held: the code is the server's"
    );
}

both_backends!(five_wrong_pins_lock_a_person_until_a_registrar_unlocks_them_and_a_pin_changes_on_the_tablet);
fn five_wrong_pins_lock_a_person_until_a_registrar_unlocks_them_and_a_pin_changes_on_the_tablet(
    backend: Backend,
) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    roster(&server.data);
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll(COMMUNE, &server);
    let f = birth();
    let id = t
        .run_as(CLERK_PIN, &["birth", "register", &f, "--by", "clerk-1"])
        .expect_ok()["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    let verify = ["verify", id.as_str(), "--by", "verifier-1"];
    for left in (1..=4).rev() {
        let run = t.run_as("111112", &verify);
        assert!(
            run.stderr.contains(&format!("{left} tries left")),
            "{}",
            run.stderr
        );
        assert_eq!(run.expect_err(), "wrong_pin");
    }
    assert_eq!(t.run_as("111112", &verify).expect_err(), "staff_locked");
    // Locked: even the right PIN no longer works, on this tablet.
    assert_eq!(t.run_as(VERIFIER_PIN, &verify).expect_err(), "staff_locked");
    let list = t.run(&["staff", "list"]).expect_ok();
    assert_eq!(list["staff"][2]["staff_id"], "verifier-1");
    assert_eq!(list["staff"][2]["locked"], true, "{list}");
    // The lock is kept across processes (it is in the store), and is the
    // store's: a copy of an older row does not undo it (integrity).
    // Only a registrar unlocks, with their own PIN.
    assert_eq!(
        t.run_as(CLERK_PIN, &["staff", "unlock", "verifier-1", "--by", "clerk-1"])
            .expect_err(),
        "role_missing"
    );
    assert_eq!(
        t.run_as(
            "000001",
            &["staff", "unlock", "verifier-1", "--by", "registrar-1"]
        )
        .expect_err(),
        "wrong_pin"
    );
    t.run_as(
        REGISTRAR_PIN,
        &["staff", "unlock", "verifier-1", "--by", "registrar-1"],
    )
    .expect_ok();
    t.run_as(VERIFIER_PIN, &verify).expect_ok();

    // A PIN changed on the tablet: the old one from CRVS_PIN, the new one
    // from CRVS_NEW_PIN, checked against the policy.
    let set = |old: &str, new: &str| {
        t.run_env(
            "correct horse battery staple",
            &[("CRVS_PIN", old), ("CRVS_NEW_PIN", new)],
            &["staff", "set-pin", "clerk-1"],
        )
    };
    assert_eq!(set(CLERK_PIN, "123456").expect_err(), "weak_pin");
    assert_eq!(set("555551", "860421").expect_err(), "wrong_pin");
    set(CLERK_PIN, "860421").expect_ok();
    let register = ["birth", "register", f.as_str(), "--by", "clerk-1"];
    assert_eq!(t.run_as(CLERK_PIN, &register).expect_err(), "wrong_pin");
    t.run_as("860421", &register).expect_ok();
    let store = std::fs::read(t.dir.join("crvs.db")).expect("the store's file");
    assert!(
        !store.windows(6).any(|w| w == b"860421"),
        "the PIN is not stored in plain form"
    );

    // A new PIN set centrally wins over the tablet's, and clears a lock.
    add_staff(&server.data, COMMUNE, "clerk-1", "clerk", "497305");
    t.run(&["sync"]).expect_ok();
    assert_eq!(t.run_as("860421", &register).expect_err(), "wrong_pin");
    t.run_as("497305", &register).expect_ok();
}

both_backends!(a_person_added_centrally_acts_after_the_next_sync_and_a_removed_one_no_longer_can);
fn a_person_added_centrally_acts_after_the_next_sync_and_a_removed_one_no_longer_can(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    roster(&server.data);
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll(COMMUNE, &server);
    let f = birth();

    add_staff(&server.data, COMMUNE, "clerk-2", "clerk,verifier", "318274");
    let by_new = ["birth", "register", f.as_str(), "--by", "clerk-2"];
    assert_eq!(t.run_as("318274", &by_new).expect_err(), "not_on_roster");
    t.run(&["sync"]).expect_ok();
    t.run_as("318274", &by_new).expect_ok();

    server
        .admin(&["staff", "remove", "--commune", COMMUNE, "--id", "clerk-1"])
        .expect_ok();
    t.run(&["sync"]).expect_ok();
    assert_eq!(
        t.run_as(CLERK_PIN, &["birth", "register", &f, "--by", "clerk-1"])
            .expect_err(),
        "not_on_roster"
    );
    let list = t.run(&["staff", "list"]).expect_ok();
    assert_eq!(staff_ids(&list), ["clerk-2", "registrar-1", "verifier-1"]);
    assert_eq!(
        list["enforced"], true,
        "removing someone keeps the roster in force"
    );
}

both_backends!(the_server_holds_a_record_whose_steps_its_roster_does_not_allow);
fn the_server_holds_a_record_whose_steps_its_roster_does_not_allow(backend: Backend) {
    // A tablet enrolled before its office had a roster, offline while the
    // operators added staff: it still runs as a pilot, with staff ids as
    // names and no PIN. (A forged tablet that skips the checks sends the
    // same steps.) The server checks each step against its own roster.
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll(COMMUNE, &server);
    assert_eq!(t.run(&["staff", "list"]).expect_ok()["enforced"], false);
    roster(&server.data);

    let f = birth();
    let step = |args: &[&str]| t.run(args).expect_ok();
    // Steps by strangers to the roster.
    let strangers = step(&["birth", "register", &f, "--by", "someone"])["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    step(&["verify", &strangers, "--by", "someone-else"]);
    step(&["approve", &strangers, "--by", "the-boss"]);
    // Roster members, but the verification by one without the role.
    let wrong_role = step(&["birth", "register", &f, "--by", "clerk-1"])["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    step(&["verify", &wrong_role, "--by", "registrar-1"]);
    step(&["approve", &wrong_role, "--by", "registrar-1"]);
    // Roster members with their roles: the server registers it (it cannot
    // see PINs; it sees who, which role, and when).
    let good = step(&["birth", "register", &f, "--by", "clerk-1"])["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    step(&["verify", &good, "--by", "verifier-1"]);
    step(&["approve", &good, "--by", "registrar-1"]);

    t.run(&["sync"]).expect_ok();
    for id in [&strangers, &wrong_role] {
        let r = t.show(id);
        assert_eq!(r["status"], "held", "{r}");
        assert_eq!(r["hold"], "staff_not_authorized", "{r}");
        assert!(r["kidc"].is_null(), "no code for a held record: {r}");
    }
    let r = t.show(&good);
    assert_eq!(r["status"], "registered", "{r}");

    // The sync brought the roster: from now on the tablet checks too.
    assert_eq!(t.run(&["staff", "list"]).expect_ok()["enforced"], true);
    assert_eq!(
        t.run(&["birth", "register", &f, "--by", "someone"]).expect_err(),
        "not_on_roster"
    );
}

both_backends!(every_event_checks_the_staff_member_the_role_and_the_pin);
fn every_event_checks_the_staff_member_the_role_and_the_pin(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    roster(&server.data);
    // Someone removed from the roster before this tablet came.
    add_staff(&server.data, COMMUNE, "clerk-9", "clerk", "662013");
    server
        .admin(&["staff", "remove", "--commune", COMMUNE, "--id", "clerk-9"])
        .expect_ok();
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll(COMMUNE, &server);
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();

    let approve = |id: &str| {
        t.run_as(VERIFIER_PIN, &["verify", id, "--by", "verifier-1"])
            .expect_ok();
        t.run_as(REGISTRAR_PIN, &["approve", id, "--by", "registrar-1"])
            .expect_ok();
    };
    let f = birth();
    let birth_id = t
        .run_as(CLERK_PIN, &["birth", "register", &f, "--by", "clerk-1"])
        .expect_ok()["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    approve(&birth_id);
    t.run(&["sync"]).expect_ok();
    let kidc = t.show(&birth_id)["kidc"].as_str().expect("a KIdC").to_string();
    let with_kidc = |name: &str| {
        let text = std::fs::read_to_string(fixture(name))
            .unwrap()
            .replace("1000000001", &kidc);
        let path = files.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "death".into(),
                "register".into(),
                fixture("death-elderly.json").to_str().unwrap().into(),
            ],
            "death",
        ),
        (
            vec![
                "marriage".into(),
                "register".into(),
                fixture("marriage-heng-ly.json").to_str().unwrap().into(),
            ],
            "marriage",
        ),
        (
            vec![
                "adoption".into(),
                "register".into(),
                with_kidc("adoption-by-kidc.json"),
            ],
            "adoption",
        ),
        (
            vec![
                "amend".into(),
                birth_id.clone(),
                fixture("amendment-add-given-name.json").to_str().unwrap().into(),
            ],
            "amendment",
        ),
    ];
    let mut ids = Vec::new();
    for (args, what) in &cases {
        let as_ = |by: &str, pin: &str| {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(["--by", by]);
            t.run_as(pin, &a)
        };
        assert_eq!(
            as_("verifier-1", VERIFIER_PIN).expect_err(),
            "role_missing",
            "{what}"
        );
        assert_eq!(as_("clerk-1", "999999").expect_err(), "wrong_pin", "{what}");
        assert_eq!(as_("clerk-9", "662013").expect_err(), "not_on_roster", "{what}");
        let out = as_("clerk-1", CLERK_PIN).expect_ok();
        let id = out
            .get("amendment_id")
            .or(out.get("record_id"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string();
        assert_eq!(
            t.run_as(CLERK_PIN, &["verify", &id, "--by", "clerk-1"])
                .expect_err(),
            "role_missing",
            "{what}"
        );
        approve(&id);
        ids.push((id, *what));
    }
    // The divorce ends the marriage once it is registered.
    t.run(&["sync"]).expect_ok();
    let divorce = fixture("divorce-heng-ly.json");
    let d = [
        "divorce",
        "register",
        divorce.to_str().unwrap(),
        "--by",
        "clerk-1",
    ];
    assert_eq!(t.run(&d).expect_err(), "pin_required");
    let id = t.run_as(CLERK_PIN, &d).expect_ok()["record_id"]
        .as_str()
        .unwrap()
        .to_string();
    approve(&id);
    ids.push((id, "divorce"));
    t.run(&["sync"]).expect_ok();
    t.run(&["sync"]).expect_ok();
    for (id, what) in ids {
        let r = t.show(&id);
        assert_eq!(r["status"], "registered", "{what}: {r}");
        assert!(r["registration_number"].is_string(), "{what}: {r}");
    }
    // Nothing was ever held for the roster: every step was checked twice.
    assert_eq!(server_count(&server.data, "SELECT COUNT(*) FROM holds"), 0);
}
