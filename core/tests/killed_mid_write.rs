//! The tablet process killed in the middle of a write: the real `crvs`
//! binary registers births and fills the outbox, and is SIGKILLed at
//! varied moments. The store must reopen consistent every time.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use crvs_core::Registrar;
use crvs_core::crypto::KdfParams;

fn crvs(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crvs"));
    c.arg("--store")
        .arg(dir)
        .arg("--json")
        .args(args)
        .env("CRVS_PASSPHRASE", PASSPHRASE)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Reopens the store and checks everything: it opens, lists, every record
/// decrypts and reads, the outbox's sequence and hash chain hold.
fn assert_consistent(dir: &std::path::Path) -> usize {
    let r = Registrar::open(dir, &PASSPHRASE.into()).expect("the store reopens after a kill");
    let list = r.list().expect("list works");
    for s in &list {
        let rec = r.record(&s.id).expect("every record decrypts and reads");
        assert_eq!(rec.view.status().unwrap().as_str(), s.status);
    }
    assert_eq!(r.check().expect("the outbox is consistent"), list.len());
    list.len()
}

#[test]
fn a_store_killed_mid_write_reopens_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let fixture_path = dir.path().join("birth.json");
    std::fs::write(&fixture_path, sok_dara()).unwrap();
    let store = dir.path().join("store");
    {
        // A fast KDF keeps each child's open quick; enrolment points at a
        // closed port so that `crvs sync` fills the outbox, then fails.
        let r = new_store(&store);
        enroll_offline(&r);
    }
    let file = fixture_path.to_str().unwrap();
    let mut registered = 0;
    for round in 0..24u64 {
        let args: &[&str] = if round % 3 == 2 {
            &["sync"]
        } else {
            &["birth", "register", file, "--by", "clerk"]
        };
        let mut child = crvs(&store, args).spawn().unwrap();
        // Kill at varied points: before the store opens, during the KDF,
        // during the write, or after it finished.
        std::thread::sleep(Duration::from_millis((round * 37) % 160));
        let _ = child.kill(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        if status.success() && round % 3 != 2 {
            registered += 1;
        }
        let n = assert_consistent(&store);
        assert!(n >= registered, "a registration that reported success is missing");
    }
    // Writes still work afterwards, and the outbox takes every record.
    let status = crvs(&store, &["birth", "register", file, "--by", "clerk"])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = crvs(&store, &["sync"]).status().unwrap();
    let r = Registrar::open(&store, &PASSPHRASE.into()).unwrap();
    let n = r.check().unwrap();
    assert!(n >= 1);
    assert!(r.list().unwrap().iter().all(|s| s.status == "submitted"));
}

#[test]
fn a_child_registering_many_records_killed_at_varied_points_leaves_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let fixture_path = dir.path().join("birth.json");
    std::fs::write(&fixture_path, no_given_name()).unwrap();
    let store = dir.path().join("store");
    drop(new_store(&store));
    let file = fixture_path.to_str().unwrap();
    // A shell loop of registrations, killed at varied moments.
    for (round, delay) in [150u64, 320, 75, 500, 260].into_iter().enumerate() {
        let script = format!(
            "for i in $(seq 1 50); do \"{}\" --store \"{}\" --json birth register \"{}\" --by clerk-{round} >/dev/null 2>&1 || exit 1; done",
            env!("CARGO_BIN_EXE_crvs"),
            store.display(),
            file
        );
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("CRVS_PASSPHRASE", PASSPHRASE)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        // Freeze the loop so it starts no new `crvs`, SIGKILL the `crvs`
        // it is running (mid-write), then the loop itself. Only processes
        // this test started are signalled, by their ids.
        let pid = shell.id().to_string();
        let _ = Command::new("kill").args(["-STOP", &pid]).status();
        let children = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
        for child in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", child]).status();
        }
        let _ = shell.kill();
        let _ = shell.wait();
        // Give the killed `crvs` a moment to be reaped by init.
        std::thread::sleep(Duration::from_millis(50));
        assert_consistent(&store);
    }
}

#[test]
fn a_rewrap_killed_at_varied_points_leaves_a_store_the_passphrase_opens() {
    // A store made with a cheap setting: the `crvs` child (production
    // setting) re-wraps its key on unlock, and is killed before, during or
    // after the derivation and the one-transaction replacement.
    let dir = tempfile::tempdir().unwrap();
    let mut raised = 0;
    for round in 0..10u64 {
        let store = dir.path().join(format!("store-{round}"));
        drop(new_store(&store));
        let mut child = crvs(&store, &["list"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(round * 45));
        let _ = child.kill();
        let _ = child.wait().unwrap();
        // The test's own open keeps whatever setting it finds.
        let r = Registrar::open_with_kdf(&store, &PASSPHRASE.into(), KdfParams::INSECURE_FOR_TESTS)
            .expect("the passphrase opens the store after a kill mid-rewrap");
        let params = r.kdf_params().unwrap();
        assert!(
            params == KdfParams::INSECURE_FOR_TESTS || params == KdfParams::PRODUCTION,
            "{params:?}"
        );
        raised += usize::from(params == KdfParams::PRODUCTION);
        assert!(matches!(
            Registrar::open_with_kdf(
                &store,
                &"not the passphrase".into(),
                KdfParams::INSECURE_FOR_TESTS
            ),
            Err(crvs_core::Error::WrongPassphrase)
        ));
    }
    // A child left alone finishes the re-wrap.
    let store = dir.path().join("store-unkilled");
    drop(new_store(&store));
    assert!(crvs(&store, &["list"]).status().unwrap().success());
    let r = Registrar::open_with_kdf(&store, &PASSPHRASE.into(), KdfParams::INSECURE_FOR_TESTS).unwrap();
    assert_eq!(r.kdf_params().unwrap(), KdfParams::PRODUCTION);
    eprintln!("{raised} of 10 killed children had finished the re-wrap");
}
