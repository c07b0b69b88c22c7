//! A tablet that lost its last commit, or runs from an old copy of its
//! store, is not stuck; a cloned store is recognised, and one copy is
//! refused by name. The real `crvs-server` process, tablets driven through
//! the real `crvs` binary, real SQLite files. Every test runs on SQLite
//! and on PostgreSQL (`both_backends!`).

use std::path::Path;

use crvs_e2e::*;
use serde_json::Value;

/// A copy of a store folder (the `crvs` process has exited, so its WAL
/// was checkpointed into the database file).
fn copy_store(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn device(server: &Server) -> Value {
    let devices = server.admin(&["devices"]).expect_ok();
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(1));
    devices["devices"][0].clone()
}

fn all_registered(t: &Tablet) -> usize {
    let list = t.run(&["list"]).expect_ok();
    let records = list["records"].as_array().expect("records");
    for r in records {
        assert_eq!(r["status"], "registered", "{r}");
        assert_eq!(r["sync_state"], "synced", "{r}");
    }
    records.len()
}

both_backends!(a_tablet_whose_answer_was_lost_and_whose_last_commit_was_lost_recovers);
fn a_tablet_whose_answer_was_lost_and_whose_last_commit_was_lost_recovers(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let BehindProxy {
        server_data,
        server,
        proxy,
        tablet: t,
    } = BehindProxy::start_on(backend, tmp.path());
    let files = write_births(&tmp.path().join("births"), &bench_births()[..24]);
    for f in &files[..4] {
        t.register_approved(f);
    }
    t.run(&["sync"]).expect_ok();

    // Twenty approved births. The sync reaches the server, which applies
    // it; the answer never arrives; the tablet then loses its last commit
    // (the store as it was before the sync comes back).
    for f in &files[4..24] {
        t.register_approved(f);
    }
    let before = tmp.path().join("before-sync");
    copy_store(&t.dir, &before);
    proxy.cut_after(1);
    assert_eq!(t.run(&["sync"]).expect_err(), "offline");
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM records"),
        24,
        "the server applied it"
    );
    copy_store(&before, &t.dir);
    proxy.pass_through();

    let report = t.run(&["sync"]).expect_ok();
    assert_eq!(
        report["adopted_server_seq"], 2,
        "adopted the server's position: {report}"
    );
    assert_eq!(all_registered(&t), 24, "every record registered, none pending");
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM records"),
        24,
        "nothing duplicated"
    );
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
        24
    );
    assert_eq!(
        server_count(
            &server_data,
            "SELECT COUNT(DISTINCT record_id) FROM kidc_issuance"
        ),
        24,
        "one code per record"
    );
    let d = device(&server);
    assert!(d["blocked"].is_null(), "not blocked: {d}");
    assert!(d["clone"].is_null(), "not a clone: {d}");
    assert_eq!(d["adoptions"], 1, "the operator sees the adoption: {d}");

    // And it keeps working: a new registration syncs, without adopting.
    let id = t.register_approved(&tmp.path().join("births/birth-0.json"));
    let report = t.run(&["sync"]).expect_ok();
    assert!(report.get("adopted_server_seq").is_none(), "{report}");
    assert_eq!(t.show(&id)["status"], "registered");
    assert_eq!(t.run(&["check"]).expect_ok()["ok"], true);
}

both_backends!(a_tablet_restored_from_an_old_copy_of_its_store_syncs_again);
fn a_tablet_restored_from_an_old_copy_of_its_store_syncs_again(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(backend, &tmp.path().join("server"));
    let server = Server::start(&server_data);
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll("171003", &server);
    let files = write_births(&tmp.path().join("births"), &bench_births()[..8]);
    for f in &files[..2] {
        t.register_approved(f);
    }
    t.run(&["sync"]).expect_ok();
    let old = tmp.path().join("old-copy");
    copy_store(&t.dir, &old);
    for f in &files[2..5] {
        t.register_approved(f);
    }
    t.run(&["sync"]).expect_ok();
    for f in &files[5..6] {
        t.register_approved(f);
    }
    t.run(&["sync"]).expect_ok();

    // The tablet's store is replaced by the old copy; work goes on.
    copy_store(&old, &t.dir);
    for f in &files[6..8] {
        t.register_approved(f);
    }
    let report = t.run(&["sync"]).expect_ok();
    assert_eq!(report["adopted_server_seq"], 3, "{report}");
    assert_eq!(all_registered(&t), 4, "the old copy's two and the two new ones");
    assert_eq!(server_count(&server_data, "SELECT COUNT(*) FROM records"), 8);
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
        8
    );
    assert!(device(&server)["blocked"].is_null());
}

both_backends!(a_cloned_store_is_recognised_and_one_copy_is_refused_by_name_for_good);
fn a_cloned_store_is_recognised_and_one_copy_is_refused_by_name_for_good(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(backend, &tmp.path().join("server"));
    let server = Server::start(&server_data);
    let a = Tablet::new(tmp.path().join("tablet-a"));
    a.init_and_enroll("171003", &server);
    let files = write_births(&tmp.path().join("births"), &bench_births()[..8]);
    a.register_approved(&files[0]);
    a.run(&["sync"]).expect_ok();
    // Someone copies the store.
    let b = Tablet::new(tmp.path().join("tablet-b"));
    copy_store(&a.dir, &b.dir);

    a.register_approved(&files[1]);
    a.run(&["sync"]).expect_ok();
    // The copy's chain forks from the original's: it adopts the server's
    // position and takes over the device's chain.
    b.register_approved(&files[2]);
    let report = b.run(&["sync"]).expect_ok();
    assert_eq!(report["adopted_server_seq"], 2, "{report}");

    // The original is now the other copy: refused, by name, every time.
    a.register_approved(&files[3]);
    for i in 0..3 {
        let run = a.run(&["sync"]);
        let json = run.json.clone();
        assert_eq!(run.expect_err(), "server_refused");
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("cloned_store")),
            "{json}"
        );
        // The copy that took over keeps syncing: no flipping back.
        b.register_approved(&files[4 + i]);
        b.run(&["sync"]).expect_ok();
    }
    let d = device(&server);
    assert!(d["blocked"].is_null(), "a clone is not a blocked device: {d}");
    assert_eq!(d["clone"]["refusals"], 3, "{d}");
    assert_eq!(d["adoptions"], 1, "the copy's adoption, once: {d}");
    let text = server.admin(&["devices"]);
    assert!(text.ok);
    // Nothing of the refused copy reached the server after the fork.
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM records"),
        3 + 3,
        "a's two before the refusals, b's fork record, and b's three later ones"
    );
}
