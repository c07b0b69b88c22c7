//! Input that makes sense (issue 8, section 5), through the real `crvs`
//! binary on a real store: what a clerk types that no registration should
//! hold is refused with an error naming the field, and a broken clock is
//! an error, never a panic.
//!
//! No test here starts a server, so none runs per storage backend.

use std::path::Path;
use std::process::Command;

use crvs_e2e::*;
use serde_json::Value;

const COMMUNE: &str = "171003";

fn sok_dara() -> Value {
    let text = std::fs::read_to_string(fixture("birth-sok-dara.json")).expect("fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A tablet store of commune 171003, and a folder for birth files.
fn tablet(tmp: &tempfile::TempDir) -> Tablet {
    let t = Tablet::new(tmp.path().join("tablet"));
    t.run(&["init", "--commune", COMMUNE]).expect_ok();
    t
}

fn write(tmp: &tempfile::TempDir, name: &str, doc: &Value) -> String {
    let path = tmp.path().join(name);
    std::fs::write(&path, doc.to_string()).expect("write birth");
    path.to_str().expect("utf-8 path").to_owned()
}

fn record_count(t: &Tablet) -> usize {
    t.run(&["list"]).expect_ok()["records"]
        .as_array()
        .expect("records")
        .len()
}

#[test]
fn a_name_with_a_right_to_left_override_is_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tablet(&tmp);
    let mut doc = sok_dara();
    doc["child"]["given_name_latin"] = "ARAD\u{202E}".into();
    let file = write(&tmp, "rlo.json", &doc);
    let run = t.run(&["birth", "register", &file, "--by", "clerk-01"]);
    let stderr = run.stderr.clone();
    let json = run.json.clone();
    assert_eq!(run.expect_err(), "invalid_record");
    assert_eq!(json["problems"][0]["field"], "child.given_name_latin", "{json}");
    assert_eq!(json["problems"].as_array().map(Vec::len), Some(1), "{json}");
    assert!(
        stderr.contains("child.given_name_latin: must not contain bidirectional control characters"),
        "{stderr}"
    );
    assert!(!stderr.contains("ARAD") && !json.to_string().contains("ARAD"));
    assert_eq!(record_count(&t), 0);
}

#[test]
fn a_residence_outside_the_commune_is_refused_unless_registered_away() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tablet(&tmp);
    let mut doc = sok_dara();
    doc["residence_village_code"] = "12010101".into();
    let file = write(&tmp, "away.json", &doc);
    let run = t.run(&["birth", "register", &file, "--by", "clerk-01"]);
    let json = run.json.clone();
    assert_eq!(run.expect_err(), "invalid_record");
    assert_eq!(json["problems"][0]["field"], "residence_village_code", "{json}");
    assert_eq!(record_count(&t), 0);

    doc["registered_away_from_residence"] = true.into();
    let file = write(&tmp, "away-said.json", &doc);
    let id = t.register(Path::new(&file), "clerk-01");
    assert_eq!(t.show(&id)["data"]["registered_away_from_residence"], true);
}

#[test]
fn implausible_dates_are_refused_and_a_late_adult_registration_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tablet(&tmp);
    for (pointer, value, field) in [
        ("/child/date_of_birth", "0001-01-01", "child.date_of_birth"),
        ("/child/date_of_birth", "1900-01-01", "child.date_of_birth"),
        // A mother aged 5, and one born the same day as the child.
        ("/mother/date_of_birth", "2021-11-02", "mother.date_of_birth"),
        ("/mother/date_of_birth", "2026-11-02", "mother.date_of_birth"),
    ] {
        let mut doc = sok_dara();
        *doc.pointer_mut(pointer).expect("field") = value.into();
        if field == "child.date_of_birth" {
            doc["mother"].as_object_mut().unwrap().remove("date_of_birth");
            doc.as_object_mut().unwrap().remove("father");
        }
        let file = write(&tmp, "dates.json", &doc);
        let run = t.run(&["birth", "register", &file, "--by", "clerk-01"]);
        let json = run.json.clone();
        assert_eq!(run.expect_err(), "invalid_record", "{value}");
        assert_eq!(json["problems"][0]["field"], field, "{json}");
    }
    assert_eq!(record_count(&t), 0);
    // An adult never registered: late, and accepted.
    let mut doc = sok_dara();
    doc["child"]["date_of_birth"] = "1970-05-01".into();
    doc["mother"].as_object_mut().unwrap().remove("date_of_birth");
    doc.as_object_mut().unwrap().remove("father");
    let file = write(&tmp, "adult.json", &doc);
    t.register(Path::new(&file), "clerk-01");
    assert_eq!(record_count(&t), 1);
}

#[test]
fn staff_ids_too_long_with_a_line_break_or_disguised_as_the_clerk_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tablet(&tmp);
    let file = fixture("birth-sok-dara.json");
    let file = file.to_str().unwrap();
    let long = "c".repeat(10_000);
    for by in [long.as_str(), "clerk-01\nregistrar-01"] {
        let run = t.run(&["birth", "register", file, "--by", by]);
        let message = run.json["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(run.expect_err(), "invalid_input");
        assert!(message.contains("staff id"), "{message}");
    }
    assert_eq!(record_count(&t), 0);
    let id = t.register(Path::new(file), "clerk-01");
    assert_eq!(
        t.run(&["verify", &id, "--by", "CLERK-01"]).expect_err(),
        "not_allowed"
    );
    assert_eq!(
        t.run(&["verify", &id, "--by", "clerk-01\u{200B}"]).expect_err(),
        "invalid_input"
    );
    assert_eq!(t.show(&id)["status"], "submitted");
    t.run(&["verify", &id, "--by", "clerk-02"]).expect_ok();
}

/// `faketime` (libfaketime) runs a real `crvs` with its clock set to 1969.
/// Skipped, saying so, where it is not installed (`apt-get install
/// faketime`).
#[test]
fn a_clock_before_1970_is_a_clear_error_not_a_panic() {
    if Command::new("faketime").arg("--version").output().is_err() {
        assert!(
            std::env::var("CRVS_REQUIRE_FAKETIME").is_err(),
            "faketime is required here: apt-get install faketime"
        );
        println!("skipping: faketime is not installed (apt-get install faketime)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let crvs = |store: &str, args: &[&str]| {
        Command::new("faketime")
            .arg("1969-12-01 12:00:00")
            .arg(bin("crvs"))
            .arg("--store")
            .arg(tmp.path().join(store))
            .args(args)
            .arg("--json")
            .env("CRVS_PASSPHRASE", PASSPHRASE)
            .output()
            .expect("run faketime crvs")
    };
    // The wrapper really sets the clock before 1970 (`date +%Y` under it).
    let year = Command::new("faketime")
        .args(["1969-12-01 12:00:00", "date", "-u", "+%Y"])
        .output()
        .expect("faketime date");
    assert_eq!(String::from_utf8_lossy(&year.stdout).trim(), "1969");

    let out = crvs("new", &["init", "--commune", COMMUNE]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["error"], "clock", "{json}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the device clock is wrong"));
    assert!(!tmp.path().join("new").exists(), "nothing was created");

    // A store made with a good clock; then the clock goes back to 1969.
    let t = tablet(&tmp);
    let file = fixture("birth-sok-dara.json");
    let out = crvs(
        "tablet",
        &["birth", "register", file.to_str().unwrap(), "--by", "clerk-01"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["error"], "clock", "{json}");
    assert_eq!(record_count(&t), 0);
}
