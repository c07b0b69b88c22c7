//! `crvs init` and `crvs passphrase change` through the real binary, with
//! the production key derivation: weak passphrases are refused without
//! being repeated, and after a change only the new passphrase opens.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const NEW: &str = "rice fields after the monsoon rains";

fn crvs(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crvs"));
    c.arg("--store")
        .arg(dir)
        .arg("--json")
        .args(args)
        .env_remove("CRVS_PASSPHRASE")
        .env_remove("CRVS_NEW_PASSPHRASE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn shows(out: &Output, secret: &str) -> bool {
    String::from_utf8_lossy(&out.stdout).contains(secret)
        || String::from_utf8_lossy(&out.stderr).contains(secret)
}

#[test]
fn crvs_init_refuses_a_weak_passphrase_without_repeating_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = crvs(
        &store,
        &[("CRVS_PASSPHRASE", "letmein123")],
        &["init", "--commune", COMMUNE],
    );
    assert!(!out.status.success());
    let j = json(&out);
    assert_eq!(j["error"], "weak_passphrase", "{j}");
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .starts_with("the passphrase is too weak")
    );
    assert!(!shows(&out, "letmein123"), "the passphrase was echoed");
    assert!(!store.join("crvs.db").exists());
}

#[test]
fn crvs_passphrase_change_rewraps_the_key_under_the_new_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let old = [("CRVS_PASSPHRASE", PASSPHRASE)];
    let out = crvs(&store, &old, &["init", "--commune", COMMUNE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fixture = dir.path().join("birth.json");
    std::fs::write(&fixture, sok_dara()).unwrap();
    let out = crvs(
        &store,
        &old,
        &["birth", "register", fixture.to_str().unwrap(), "--by", "clerk"],
    );
    assert!(out.status.success());
    let id = json(&out)["record_id"].as_str().unwrap().to_string();

    // No new passphrase, a weak one, a wrong old one: refused, nothing changes.
    let out = crvs(&store, &old, &["passphrase", "change"]);
    assert_eq!(json(&out)["error"], "passphrase_missing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CRVS_NEW_PASSPHRASE"));
    let out = crvs(
        &store,
        &[
            ("CRVS_PASSPHRASE", PASSPHRASE),
            ("CRVS_NEW_PASSPHRASE", "letmein123"),
        ],
        &["passphrase", "change"],
    );
    assert_eq!(json(&out)["error"], "weak_passphrase");
    assert!(!shows(&out, "letmein123") && !shows(&out, PASSPHRASE));
    let out = crvs(
        &store,
        &[
            ("CRVS_PASSPHRASE", "not the passphrase"),
            ("CRVS_NEW_PASSPHRASE", NEW),
        ],
        &["passphrase", "change"],
    );
    assert_eq!(json(&out)["error"], "wrong_passphrase");
    assert!(crvs(&store, &old, &["list"]).status.success());

    // The change.
    let out = crvs(
        &store,
        &[("CRVS_PASSPHRASE", PASSPHRASE), ("CRVS_NEW_PASSPHRASE", NEW)],
        &["passphrase", "change"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j = json(&out);
    assert_eq!(j["changed"], true);
    assert_eq!(j["kdf"], "argon2id;m=65536;t=2;p=1");
    assert!(!shows(&out, NEW) && !shows(&out, PASSPHRASE));

    // The old passphrase no longer opens the store; the new one does, and
    // the records are all there.
    let out = crvs(&store, &old, &["list"]);
    assert!(!out.status.success());
    assert_eq!(json(&out)["error"], "wrong_passphrase");
    let out = crvs(&store, &[("CRVS_PASSPHRASE", NEW)], &["show", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["record_id"], id.as_str());
}
