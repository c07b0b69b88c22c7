//! End to end: the real `crvs-server` process on a real socket, tablets
//! driven through the real `crvs` binary, real SQLite files. Every test
//! with a server runs on SQLite and on PostgreSQL (`both_backends!`).

use std::collections::HashSet;

use crvs_e2e::*;
use crvs_schema::Kidc;
use serde_json::Value;

fn kidc_of(record: &Value) -> Option<Kidc> {
    record["kidc"]
        .as_str()
        .map(|k| Kidc::parse(k).expect("a valid KIdC"))
}

both_backends!(two_offline_tablets_get_distinct_valid_kidcs_for_every_approved_birth);
fn two_offline_tablets_get_distinct_valid_kidcs_for_every_approved_birth(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(backend, &tmp.path().join("server"));
    let mut server = Server::start(&server_data);
    let addr = server.addr;
    let a = Tablet::new(tmp.path().join("tablet-a"));
    let b = Tablet::new(tmp.path().join("tablet-b"));
    a.init_and_enroll("171003", &server);
    b.init_and_enroll("171004", &server);

    // The connection goes away: a registration day in the villages.
    server.kill();
    let mut births = bench_births()[..10].to_vec();
    // Tablet b's families live in its commune.
    for line in &mut births[6..] {
        *line = living_in(line, "171004");
    }
    let files = write_births(&tmp.path().join("births"), &births);
    let mut approved = Vec::new();
    let mut others = Vec::new();
    for f in &files[..5] {
        approved.push((&a, a.register_approved(f)));
    }
    approved.push((&a, a.register_approved(&fixture("birth-sok-dara.json"))));
    let rejected = a.register(&files[5], "clerk-1");
    a.run(&[
        "reject",
        &rejected,
        "--by",
        "registrar-1",
        "--reason",
        "mother's ID not shown",
    ])
    .expect_ok();
    others.push((&a, rejected, "rejected"));
    for f in &files[6..9] {
        approved.push((&b, b.register_approved(f)));
    }
    let only_verified = b.register(&files[9], "clerk-7");
    b.run(&["verify", &only_verified, "--by", "clerk-8"]).expect_ok();
    others.push((&b, only_verified, "verified"));

    // Syncing with the server down fails clearly and loses nothing.
    assert_eq!(a.run(&["sync"]).expect_err(), "offline");
    for (t, id) in &approved {
        let r = t.show(id);
        assert_eq!(r["status"], "approved");
        assert!(r.get("kidc").is_none_or(Value::is_null));
    }

    // The server comes back (same port: the tablets pinned its address).
    let server = Server::start_on(&server_data, &addr.to_string());
    let ra = a.run(&["sync"]).expect_ok();
    let rb = b.run(&["sync"]).expect_ok();
    assert!(ra["pushed"].as_u64().unwrap() >= 1, "{ra}");
    assert!(rb["pushed"].as_u64().unwrap() >= 1, "{rb}");

    let mut seen = HashSet::new();
    let mut before = Vec::new();
    for (t, id) in &approved {
        let r = t.show(id);
        assert_eq!(r["status"], "registered", "{id}");
        let kidc = kidc_of(&r).expect("an approved birth has a KIdC");
        assert!(seen.insert(kidc.to_string()), "KIdC issued twice");
        before.push(r);
    }
    for (t, id, status) in &others {
        let r = t.show(id);
        assert_eq!(r["status"], *status);
        assert!(kidc_of(&r).is_none(), "only approved births get a KIdC");
    }
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
        approved.len() as i64
    );

    // A second sync changes nothing.
    for t in [&a, &b] {
        let r = t.run(&["sync"]).expect_ok();
        assert_eq!(r["pushed"], 0, "{r}");
        assert_eq!(r["pulled"], 0, "{r}");
    }
    for ((t, id), earlier) in approved.iter().zip(&before) {
        assert_eq!(&t.show(id), earlier);
    }
    let devices = server.admin(&["devices"]).expect_ok();
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(
        devices
            .iter()
            .all(|d| d["revoked"] == false && !d["last_sync"].is_null())
    );
    // Each tablet reported, with its last sync, an empty outbox and the
    // version it runs.
    for d in devices {
        assert_eq!(d["reported"]["change_sets_waiting"], 0, "{d}");
        assert_eq!(d["reported"]["records_waiting"], 0, "{d}");
        assert_eq!(d["reported"]["app_version"], env!("CARGO_PKG_VERSION"), "{d}");
    }
}

both_backends!(a_server_that_vanishes_mid_answer_loses_and_duplicates_nothing);
fn a_server_that_vanishes_mid_answer_loses_and_duplicates_nothing(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let BehindProxy {
        server_data,
        server: _server,
        proxy,
        tablet: t,
    } = BehindProxy::start_on(backend, tmp.path());
    let births = bench_births();
    let files = write_births(&tmp.path().join("births"), &births[..8]);

    let mut ids = Vec::new();
    // Cut the answer at several points: in the status line, in the
    // headers, in the body.
    for (i, cut) in [1usize, 40, 200, 400].into_iter().enumerate() {
        ids.push(t.register_approved(&files[2 * i]));
        ids.push(t.register_approved(&files[2 * i + 1]));
        proxy.cut_after(cut);
        let code = t.run(&["sync"]).expect_err();
        assert_eq!(code, "offline", "cut after {cut} bytes");
        proxy.pass_through();
        t.run(&["sync"]).expect_ok();
    }
    let mut seen = HashSet::new();
    for id in &ids {
        let r = t.show(id);
        assert_eq!(r["status"], "registered");
        assert!(seen.insert(kidc_of(&r).expect("kidc").to_string()));
    }
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
        8
    );
    assert_eq!(server_count(&server_data, "SELECT COUNT(*) FROM records"), 8);
}

both_backends!(a_server_killed_during_a_sync_comes_back_and_the_next_sync_completes);
fn a_server_killed_during_a_sync_comes_back_and_the_next_sync_completes(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(backend, &tmp.path().join("server"));
    let mut server = Server::start(&server_data);
    let addr = server.addr;
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll("171003", &server);
    let births = bench_births();
    let files = write_births(&tmp.path().join("births"), &births[..12]);
    let ids: Vec<String> = files.iter().map(|f| t.register_approved(f)).collect();

    // Pull the plug on the server in the middle of the sync: at the named
    // fault point `after_commit` (`crvs_server::fault`), when it has
    // applied everything and issued every code but answered nothing. (A
    // kill after a guessed delay landed before any request.)
    server.terminate();
    let log = tmp.path().join("server.log");
    let mut server = Server::start_with(
        &server_data,
        &ServerOptions {
            listen: Some(addr.to_string()),
            log_file: Some(log.clone()),
            env: vec![("CRVS_FAULT".into(), "after_commit".into())],
            ..ServerOptions::default()
        },
    );
    assert_eq!(t.run(&["sync"]).expect_err(), "offline");
    let status = server.wait_exit(std::time::Duration::from_secs(20));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(6),
        "SIGABRT"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("fault point reached: after_commit\n"), "{logged}");
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
        12
    );
    for id in &ids {
        assert!(kidc_of(&t.show(id)).is_none(), "the tablet heard nothing yet");
    }

    let _server = Server::start_on(&server_data, &addr.to_string());
    t.run(&["sync"]).expect_ok();
    let mut seen = HashSet::new();
    for id in &ids {
        let r = t.show(id);
        assert_eq!(r["status"], "registered");
        assert!(seen.insert(kidc_of(&r).expect("kidc").to_string()));
    }
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
        12
    );
    let again = t.run(&["sync"]).expect_ok();
    assert_eq!(again["pushed"], 0);
}

#[test]
fn bad_registrar_input_gets_a_clear_error_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Tablet::new(tmp.path().join("tablet"));
    t.run(&["init", "--commune", "171003"]).expect_ok();

    let invalid = fixture("birth-invalid.json");
    let run = t.run(&["birth", "register", invalid.to_str().unwrap(), "--by", "clerk-1"]);
    let problems = run.json["problems"].clone();
    assert_eq!(run.expect_err(), "invalid_record");
    let fields: Vec<&str> = problems
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    for f in [
        "child.family_name",
        "child.sex",
        "child.date_of_birth",
        "child.place_of_birth.village_code",
        "residence_village_code",
        "mother",
        "informant",
    ] {
        assert!(fields.contains(&f), "{f} is not named in {fields:?}");
    }
    assert_eq!(
        t.run(&["list"]).expect_ok()["records"].as_array().unwrap().len(),
        0
    );

    assert_eq!(
        t.run_with_passphrase("not the passphrase", &["list"])
            .expect_err(),
        "wrong_passphrase"
    );

    let id = t.register(&fixture("birth-sok-dara.json"), "clerk-1");
    assert_eq!(
        t.run(&["approve", &id, "--by", "registrar-1"]).expect_err(),
        "not_allowed"
    );
    assert_eq!(
        t.run(&["verify", &id, "--by", "clerk-1"]).expect_err(),
        "not_allowed"
    );
    assert_eq!(t.show(&id)["status"], "submitted");
    assert_eq!(
        t.run(&["reject", &id, "--by", "registrar-1", "--reason", " "])
            .expect_err(),
        "not_allowed"
    );
    assert_eq!(t.show(&id)["transitions"].as_array().unwrap().len(), 1);
    assert_eq!(
        t.run(&["list"]).expect_ok()["records"].as_array().unwrap().len(),
        1
    );
}

both_backends!(no_name_reaches_the_tablet_files_unencrypted_even_after_sync);
fn no_name_reaches_the_tablet_files_unencrypted_even_after_sync(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll("171003", &server);
    t.register_approved(&fixture("birth-sok-dara.json"));
    t.register_approved(&fixture("birth-no-given-name.json"));
    t.run(&["sync"]).expect_ok();
    let needles = [
        "សុខ",
        "ដារ៉ា",
        "ចាន់",
        "សុភា",
        "វិចិត្រ",
        "មណ្ឌលសុខភាពពួក",
        "រ៉ូ",
        "ចន្ថា",
        "SOK",
        "DARA",
        "SOPHEA",
        "VICHET",
        "CHANTHA",
        "170123456",
    ];
    let files = files_under(&t.dir);
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for n in needles {
            assert!(
                !contains(&bytes, n.as_bytes()),
                "{} holds a name in the clear",
                f.display()
            );
        }
    }
}

both_backends!(a_revoked_tablet_is_refused_from_its_next_sync_and_keeps_its_records);
fn a_revoked_tablet_is_refused_from_its_next_sync_and_keeps_its_records(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let t = Tablet::new(tmp.path().join("tablet"));
    let device = t.init_and_enroll("171003", &server);
    t.register_approved(&fixture("birth-sok-dara.json"));
    t.run(&["sync"]).expect_ok();

    server.admin(&["revoke", &device]).expect_ok();
    let id = t.register(&fixture("birth-no-given-name.json"), "clerk-1");
    let code = t.run(&["sync"]).expect_err();
    assert_eq!(code, "server_refused");
    assert_eq!(t.show(&id)["status"], "submitted");
    let devices = server.admin(&["devices"]).expect_ok();
    assert_eq!(devices["devices"][0]["revoked"], true);
}

both_backends!(a_token_for_another_commune_is_refused_and_stays_valid_for_its_own);
fn a_token_for_another_commune_is_refused_and_stays_valid_for_its_own(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&server_data(backend, &tmp.path().join("server")));
    let tok = token(&server.data, "171004");
    let wrong = Tablet::new(tmp.path().join("wrong"));
    wrong.run(&["init", "--commune", "171003"]).expect_ok();
    let code = wrong
        .run(&["enroll", "--server", &server.url(), "--token", &tok])
        .expect_err();
    assert_eq!(code, "server_refused");
    let devices = server.admin(&["devices"]).expect_ok();
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(0));
    // The tablet of the right commune enrols with the same token.
    let right = Tablet::new(tmp.path().join("right"));
    right.run(&["init", "--commune", "171004"]).expect_ok();
    right
        .run(&["enroll", "--server", &server.url(), "--token", &tok])
        .expect_ok();
    let devices = server.admin(&["devices"]).expect_ok();
    assert_eq!(devices["devices"][0]["commune"], "171004");
}

#[test]
fn fixtures_are_verbatim_copies_of_the_shared_ones() {
    let shared = workspace().join("../shared");
    if !shared.exists() {
        eprintln!("../shared is absent here: nothing to compare the copies with");
        return;
    }
    // Every shared fixture, so that one added there and not copied here
    // fails this test.
    let mut names: Vec<String> = std::fs::read_dir(shared.join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 16, "the shared fixtures: {names:?}");
    for name in &names {
        assert_eq!(
            std::fs::read(fixture(name)).unwrap_or_default(),
            std::fs::read(shared.join("fixtures").join(name)).unwrap(),
            "{name} is missing here or differs from the shared fixture"
        );
    }
    let full = std::fs::read_to_string(shared.join("bench/births-10000.jsonl")).unwrap();
    let sample = all_sample_births();
    assert_eq!(sample.len(), 300);
    assert!(full.lines().zip(&sample).all(|(a, b)| a == b));
}
