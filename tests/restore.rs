//! The restore drill: the real `crvs-server` process, its `backup` and
//! `restore` commands, three tablets driven through the real `crvs`
//! binary, on both backends: real SQLite files, and a real PostgreSQL
//! database (`pg_dump`, `pg_restore`).
//!
//! A backup is taken while the server runs; tablets register, approve and
//! sync; the server is restored to the backup; every tablet syncs again.
//! Every record keeps the KIdC it had, no code is issued twice, and new
//! approvals get codes that differ from every earlier one. Once with the
//! KIdC ledger kept (the usual restore), once with it lost as well (the
//! machine is gone: only the backup, the server key and the tablets'
//! evidence remain).
//!
//! After the restore, unused enrolment tokens are expired and the pull
//! feed's cursors are above anything the lost database handed out: every
//! tablet receives every record the others register after the restore.
//! On PostgreSQL, a restore is also refused while another server (its own
//! folder, the same database) serves it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crvs_e2e::*;
use crvs_schema::Kidc;

fn births(dir: &Path) -> Vec<PathBuf> {
    // Births dated well before today: none is held for a future date.
    let lines: Vec<String> = bench_births()
        .into_iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["child"]["date_of_birth"].as_str().expect("date") < "2026-10-01"
        })
        .take(30)
        .collect();
    write_births(dir, &lines)
}

/// Every record's KIdC, as the tablet shows it.
fn codes(tablet: &Tablet, ids: &[String]) -> HashMap<String, Kidc> {
    ids.iter()
        .map(|id| {
            let shown = tablet.show(id);
            let code = shown["kidc"]
                .as_str()
                .unwrap_or_else(|| panic!("record {id} has no KIdC: {shown}"));
            (id.clone(), Kidc::parse(code).expect("a valid KIdC"))
        })
        .collect()
}

/// The issuance log: (code, record, reason).
fn issuance_log(server_data: &Path) -> Vec<(String, String, String)> {
    if let Some(url) = database_url(server_data) {
        let cluster = crvs_testpg::shared().unwrap_or_else(|e| panic!("{e}"));
        let out = cluster
            .psql(
                &url,
                "SELECT kidc || ' ' || record_id || ' ' || reason FROM kidc_issuance",
            )
            .expect("read the issuance log");
        return out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut w = l.split(' ').map(str::to_owned);
                let mut next = || w.next().expect("three words");
                (next(), next(), next())
            })
            .collect();
    }
    let db = server_db(server_data);
    let mut st = db
        .prepare("SELECT kidc, record_id, reason FROM kidc_issuance")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn drill(backend: Backend, lose_the_ledger: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(backend, &tmp.path().join("server"));
    let mut server = Server::start(&server_data);
    let addr = server.addr.to_string();
    let tablets: Vec<Tablet> = ["a", "b", "c"]
        .iter()
        .map(|n| Tablet::new(tmp.path().join(format!("tablet-{n}"))))
        .collect();
    for t in &tablets {
        t.init_and_enroll("171003", &server);
    }
    let mut files = births(&tmp.path().join("births")).into_iter();
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); 3];

    // One approved birth each before the backup.
    for (t, mine) in tablets.iter().zip(&mut ids) {
        mine.push(t.register_approved(&files.next().unwrap()));
        t.run(&["sync"]).expect_ok();
    }
    // A token made before the backup and never used: the restore expires
    // it (it may have been used after the backup).
    let unused_token = token(&server_data, "171003");
    let backup = tmp.path().join("backup.db");
    let taken = server
        .admin(&["backup", "--out", backup.to_str().unwrap()])
        .expect_ok();
    assert_eq!(taken["issuances"], 3, "{taken}");
    assert_eq!(taken["devices"], 3, "{taken}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup holds names: owner only");
    }
    assert!(
        server
            .admin(&["backup", "--out", backup.to_str().unwrap()])
            .expect_err()
            == "invalid_argument",
        "a backup never overwrites a file"
    );

    // After the backup: three more approved births on each tablet, synced,
    // so the server issues nine codes the backup does not know.
    for (t, mine) in tablets.iter().zip(&mut ids) {
        for _ in 0..3 {
            mine.push(t.register_approved(&files.next().unwrap()));
        }
        t.run(&["sync"]).expect_ok();
    }
    // A fourth tablet enrolls after the backup (with the ledger kept, the
    // restore puts its device back).
    let late = Tablet::new(tmp.path().join("tablet-late"));
    let mut late_ids = Vec::new();
    if !lose_the_ledger {
        late.init_and_enroll("171003", &server);
        late_ids.push(late.register_approved(&files.next().unwrap()));
        late.run(&["sync"]).expect_ok();
    }
    let late_before = codes(&late, &late_ids);
    let before: Vec<HashMap<String, Kidc>> = tablets.iter().zip(&ids).map(|(t, i)| codes(t, i)).collect();
    let mut all_before: HashSet<Kidc> = before.iter().flat_map(|m| m.values().copied()).collect();
    assert_eq!(all_before.len(), 12, "twelve distinct codes before the restore");
    all_before.extend(late_before.values().copied());

    // The disaster.
    assert_eq!(
        admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]).expect_err(),
        "invalid_argument",
        "no restore under a running server"
    );
    // On PostgreSQL, another server (its own folder, the same database
    // and key) keeps the database served after the first stops.
    let mut other = (backend == Backend::Postgres).then(|| {
        let second = tmp.path().join("server-2");
        std::fs::create_dir_all(&second).unwrap();
        std::fs::copy(
            server_data.join(DATABASE_URL_FILE),
            second.join(DATABASE_URL_FILE),
        )
        .unwrap();
        std::fs::copy(server_data.join("server.key"), second.join("server.key")).unwrap();
        Server::start(&second)
    });
    server.terminate();
    if let Some(other) = &mut other {
        let refused = admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]);
        let message = refused.json["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(refused.expect_err(), "invalid_argument");
        assert!(message.contains("serving this database"), "{message}");
        other.terminate();
    }
    if lose_the_ledger {
        // A new machine: the data folder is gone but for the server key,
        // kept apart from the backups (and, on PostgreSQL, the name of
        // the database).
        let kept: Vec<(&str, Vec<u8>)> = ["server.key", DATABASE_URL_FILE]
            .into_iter()
            .filter_map(|f| std::fs::read(server_data.join(f)).ok().map(|b| (f, b)))
            .collect();
        std::fs::remove_dir_all(&server_data).unwrap();
        std::fs::create_dir_all(&server_data).unwrap();
        for (f, bytes) in kept {
            std::fs::write(server_data.join(f), bytes).unwrap();
        }
    }
    let restored = admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]).expect_ok();
    assert_eq!(restored["issuances"], 3, "{restored}");
    assert_eq!(restored["ledger_rebuilt"], lose_the_ledger, "{restored}");
    let expected_unaccounted = if lose_the_ledger { 0 } else { 10 };
    assert_eq!(
        restored["codes_to_record_again"], expected_unaccounted,
        "{restored}"
    );
    assert_eq!(
        restored["devices_restored"],
        u64::from(!lose_the_ledger),
        "{restored}"
    );
    assert_eq!(
        issuance_log(&server_data).len(),
        3,
        "the restored log predates nine codes"
    );
    assert!(restored["tokens_expired"].as_u64().unwrap() >= 1, "{restored}");
    assert!(
        restored["feed_floor"].as_u64().unwrap() > 1 << 32,
        "the feed's cursors jumped: {restored}"
    );
    if backend == Backend::Postgres {
        let moved = restored["replaced_moved_to"].as_str().expect("a schema");
        assert!(moved.starts_with("crvs_replaced_"), "{restored}");
    }

    // Every tablet syncs again: it resends what the server lost, with its
    // proofs, and keeps every code it had.
    let server = Server::start_on(&server_data, &addr);
    let newcomer = Tablet::new(tmp.path().join("tablet-new"));
    newcomer.run(&["init", "--commune", "171003"]).expect_ok();
    assert!(
        !newcomer
            .run(&["enroll", "--server", &server.url(), "--token", &unused_token])
            .ok,
        "a token unused in the backup is expired by the restore"
    );
    for (t, (mine, had)) in tablets.iter().zip(ids.iter().zip(&before)) {
        let report = t.run(&["sync"]).expect_ok();
        assert!(
            report["resent_from"].is_u64(),
            "the tablet resent lost change sets: {report}"
        );
        assert_eq!(&codes(t, mine), had, "every record keeps the KIdC it had");
    }
    if !lose_the_ledger {
        // Its device is back; the server asks for everything again.
        let report = late.run(&["sync"]).expect_ok();
        assert_eq!(report["resent_from"], 1, "{report}");
        assert_eq!(codes(&late, &late_ids), late_before, "it keeps its code too");
    }
    let log = issuance_log(&server_data);
    assert_eq!(
        log.len(),
        12 + late_ids.len(),
        "each lost code recorded again, and nothing more"
    );
    let logged: HashMap<String, Kidc> = log
        .iter()
        .map(|(k, r, _)| (r.clone(), Kidc::parse(k).unwrap()))
        .collect();
    for had in &before {
        for (record, code) in had {
            assert_eq!(
                logged.get(record),
                Some(code),
                "the server's log agrees with the tablet"
            );
        }
    }
    let again = log
        .iter()
        .filter(|(_, _, reason)| reason == "birth_approved_recorded_again")
        .count();
    assert_eq!(
        again,
        9 + late_ids.len(),
        "the lost codes were recorded again, not drawn"
    );

    // New approvals get fresh codes, different from every earlier one.
    let mut fresh = HashSet::new();
    for (t, mine) in tablets.iter().zip(&mut ids) {
        let mut new_ids = Vec::new();
        for _ in 0..2 {
            new_ids.push(t.register_approved(&files.next().unwrap()));
        }
        t.run(&["sync"]).expect_ok();
        for (_, code) in codes(t, &new_ids) {
            assert!(!all_before.contains(&code), "a new approval got an earlier code");
            assert!(fresh.insert(code), "two new approvals got one code");
        }
        mine.extend(new_ids);
    }
    let log = issuance_log(&server_data);
    assert_eq!(log.len(), 18 + late_ids.len());
    let distinct: HashSet<&String> = log.iter().map(|(k, _, _)| k).collect();
    assert_eq!(distinct.len(), log.len(), "no code issued twice");
    // And a second sync of everyone changes nothing but the feed: every
    // tablet receives what the others registered after the restore (its
    // cursor, from the lost database, is below every new entry).
    for t in &tablets {
        t.run(&["sync"]).expect_ok();
    }
    assert_eq!(issuance_log(&server_data).len(), 18 + late_ids.len());
    let newest: Vec<&[String]> = ids.iter().map(|mine| &mine[mine.len() - 2..]).collect();
    for (i, t) in tablets.iter().enumerate() {
        for (j, theirs) in newest.iter().enumerate() {
            if i != j {
                for id in theirs.iter() {
                    let shown = t.run(&["show", id]);
                    assert!(
                        shown.ok,
                        "tablet {i} missed a record of tablet {j}: {}",
                        shown.stderr
                    );
                }
            }
        }
    }
    drop(server);
}

both_backends!(
    a_restored_server_records_again_every_code_it_had_issued_and_never_draws_one_twice,
    with_the_ledger_lost_too_the_tablets_evidence_brings_every_code_back,
);

fn a_restored_server_records_again_every_code_it_had_issued_and_never_draws_one_twice(backend: Backend) {
    drill(backend, false);
}

fn with_the_ledger_lost_too_the_tablets_evidence_brings_every_code_back(backend: Backend) {
    drill(backend, true);
}

both_backends!(a_damaged_or_foreign_backup_is_refused_by_name_and_the_database_is_kept);

/// Every string of a birth's JSON of four characters or more: what no
/// message may repeat.
fn personal_strings(line: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.chars().count() >= 4 => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_str(line).expect("json"), &mut out);
    out
}

fn a_damaged_or_foreign_backup_is_refused_by_name_and_the_database_is_kept(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(backend, &tmp.path().join("server"));
    let mut server = Server::start(&server_data);
    let addr = server.addr.to_string();
    let tablet = Tablet::new(tmp.path().join("tablet"));
    tablet.init_and_enroll("171003", &server);
    let files = births(&tmp.path().join("births"));
    let id = tablet.register_approved(&files[0]);
    tablet.run(&["sync"]).expect_ok();
    let personal = personal_strings(&std::fs::read_to_string(&files[0]).unwrap());
    let backup = tmp.path().join("backup.db");
    server
        .admin(&["backup", "--out", backup.to_str().unwrap()])
        .expect_ok();
    let refused = server.admin(&["backup", "--out", backup.to_str().unwrap()]);
    let message = refused.json["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(refused.expect_err(), "invalid_argument");
    assert!(message.contains("exists already"), "{message}");
    server.terminate();

    let bytes = std::fs::read(&backup).unwrap();
    let damaged = tmp.path().join("damaged.db");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = tmp.path().join("garbage.db");
    std::fs::write(&garbage, b"these are not the records you are looking for").unwrap();
    // A backup of the other backend.
    let foreign = tmp.path().join("foreign.db");
    if backend == Backend::Postgres {
        std::fs::copy(server_data.join("kidc-ledger.db"), &foreign).unwrap();
    } else {
        std::fs::write(&foreign, b"PGDMP\x01\x0e\x00\x04\x08\x01\x01").unwrap();
    }
    for (file, expect) in [
        (&damaged, ""),
        (&garbage, "is not a usable crvs-server backup"),
        (
            &foreign,
            if backend == Backend::Postgres {
                "without --database"
            } else {
                "with --database"
            },
        ),
    ] {
        let run = admin(&server_data, &["restore", "--from", file.to_str().unwrap()]);
        let message = run.json["message"].as_str().unwrap_or_default().to_owned();
        let stderr = run.stderr.clone();
        assert_eq!(run.expect_err(), "invalid_argument", "{message}");
        assert!(message.contains(expect), "{}: {message}", file.display());
        for s in &personal {
            assert!(
                !message.contains(s.as_str()) && !stderr.contains(s.as_str()),
                "a refusal names personal data: {message}"
            );
        }
    }
    // Nothing was replaced: the server starts on the database it had.
    assert_eq!(server_count(&server_data, "SELECT COUNT(*) FROM records"), 1);
    let server = Server::start_on(&server_data, &addr);
    tablet.run(&["sync"]).expect_ok();
    assert!(tablet.show(&id)["kidc"].is_string());
    assert_eq!(server_count(&server_data, "SELECT COUNT(*) FROM records"), 1);
    assert_eq!(
        server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
        1
    );
    drop(server);
}

/// A PostgreSQL restore is not one transaction: the replaced schema is set
/// aside, then `pg_restore` loads the backup, then the restore's steps run.
/// A restore killed between them leaves the database refused by every
/// command (never served empty or half-adjusted) until a restore is run
/// again; that one finishes, keeps the first replaced schema, and the
/// tablets' evidence brings back what the backup lacked.
#[test]
fn a_restore_killed_half_way_leaves_the_database_refused_until_it_is_run_again() {
    if !backend_available(Backend::Postgres, module_path!()) {
        return;
    }
    for point in ["restore_set_aside", "restore_loaded"] {
        let tmp = tempfile::tempdir().unwrap();
        let server_data = server_data(Backend::Postgres, &tmp.path().join("server"));
        let mut server = Server::start(&server_data);
        let addr = server.addr.to_string();
        let tablet = Tablet::new(tmp.path().join("tablet"));
        tablet.init_and_enroll("171003", &server);
        let files = births(&tmp.path().join("births"));
        let mut ids = vec![tablet.register_approved(&files[0])];
        tablet.run(&["sync"]).expect_ok();
        let backup = tmp.path().join("backup.dump");
        server
            .admin(&["backup", "--out", backup.to_str().unwrap()])
            .expect_ok();
        ids.push(tablet.register_approved(&files[1]));
        tablet.run(&["sync"]).expect_ok();
        let before = codes(&tablet, &ids);
        assert_eq!(before.len(), 2);
        server.terminate();

        // Killed at `point`.
        let killed = std::process::Command::new(bin("crvs-server"))
            .args(["restore", "--from", backup.to_str().unwrap()])
            .args(data_args(&server_data))
            .env("CRVS_FAULT", point)
            .output()
            .unwrap();
        assert!(!killed.status.success(), "{point}: the restore was not killed");

        // Every command that opens the database refuses, saying what to do.
        let refused = admin(&server_data, &["devices"]);
        let message = refused.json["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(refused.expect_err(), "invalid_argument", "{point}: {message}");
        assert!(
            message.contains("restore of this database stopped before it finished")
                && message.contains("crvs-server restore"),
            "{point}: {message}"
        );
        let refused = admin(
            &server_data,
            &["backup", "--out", tmp.path().join("half.dump").to_str().unwrap()],
        );
        let message = refused.json["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(refused.expect_err(), "invalid_argument", "{point}: {message}");
        assert!(
            message.contains("restore of this database stopped"),
            "{point}: {message}"
        );
        assert!(!tmp.path().join("half.dump").exists());
        let serve = std::process::Command::new(bin("crvs-server"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(data_args(&server_data))
            .output()
            .unwrap();
        assert!(
            !serve.status.success(),
            "{point}: a server started on a half-restored database"
        );
        assert!(
            String::from_utf8_lossy(&serve.stderr).contains("restore of this database stopped"),
            "{point}: {}",
            String::from_utf8_lossy(&serve.stderr)
        );

        // Run again: it finishes, and names the schema of the data it
        // replaced first (with both records), not the half-restored one.
        let report = admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]).expect_ok();
        let aside = report["replaced_moved_to"]
            .as_str()
            .expect("a replaced schema")
            .to_owned();
        assert_eq!(
            server_count(&server_data, &format!("SELECT COUNT(*) FROM {aside}.records")),
            2,
            "{point}: the replaced schema named is not the one with the data"
        );
        assert_eq!(server_count(&server_data, "SELECT COUNT(*) FROM records"), 1);
        assert_eq!(
            server_count(
                &server_data,
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'crvs_restore_pending'"
            ),
            0
        );

        // Served again: the tablet's evidence brings the second code back.
        let server = Server::start_on(&server_data, &addr);
        tablet.run(&["sync"]).expect_ok();
        assert_eq!(codes(&tablet, &ids), before, "{point}: a code changed");
        assert_eq!(server_count(&server_data, "SELECT COUNT(*) FROM records"), 2);
        assert_eq!(
            server_count(&server_data, "SELECT COUNT(*) FROM kidc_issuance"),
            2
        );
        drop(server);
    }
}

// Someone with the database (an attacker, or a careless hand) edits the
// marker of an unfinished restore: the next restore refuses and changes
// nothing, and no name from the marker reaches SQL. Put right, it finishes.
#[test]
fn a_forged_restore_marker_is_refused_and_nothing_it_names_is_run() {
    if !backend_available(Backend::Postgres, module_path!()) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(Backend::Postgres, &tmp.path().join("server"));
    let mut server = Server::start(&server_data);
    let tablet = Tablet::new(tmp.path().join("tablet"));
    tablet.init_and_enroll("171003", &server);
    let files = births(&tmp.path().join("births"));
    tablet.register_approved(&files[0]);
    tablet.run(&["sync"]).expect_ok();
    let backup = tmp.path().join("backup.dump");
    server
        .admin(&["backup", "--out", backup.to_str().unwrap()])
        .expect_ok();
    server.terminate();
    let killed = std::process::Command::new(bin("crvs-server"))
        .args(["restore", "--from", backup.to_str().unwrap()])
        .args(data_args(&server_data))
        .env("CRVS_FAULT", "restore_set_aside")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the restore was not killed");

    let url = database_url(&server_data).expect("a PostgreSQL data folder");
    let cluster = crvs_testpg::shared().unwrap_or_else(|e| panic!("{e}"));
    let sql = |q: &str| cluster.psql(&url, q).unwrap_or_else(|e| panic!("{q}: {e}"));
    let aside = sql("SELECT aside FROM public.crvs_restore_pending");
    assert!(aside.starts_with("crvs_replaced_"), "{aside}");
    let intact = |why: &str| {
        assert_eq!(
            server_count(&server_data, &format!("SELECT COUNT(*) FROM {aside}.records")),
            1,
            "{why}: the data set aside"
        );
        assert_eq!(
            server_count(&server_data, "SELECT COUNT(*) FROM public.crvs_restore_pending"),
            1,
            "{why}: the marker"
        );
    };
    let forged = [
        format!("{aside}\"; DROP SCHEMA \"{aside}\" CASCADE; --"),
        format!("{aside} CASCADE"),
        "public".to_owned(),
        "pg_catalog".to_owned(),
        "crvs_replaced_".to_owned(),
        format!("{aside}0000000000000000000000"),
    ];
    for name in &forged {
        sql(&format!(
            "UPDATE public.crvs_restore_pending SET aside = '{}'",
            name.replace('\'', "''")
        ));
        let refused = admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]);
        let message = refused.json["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(refused.expect_err(), "invalid_argument", "{name}: {message}");
        assert!(
            message.contains("does not name a schema crvs-server made")
                && message.contains("nothing was changed"),
            "{name}: {message}"
        );
        assert!(
            !message.contains("DROP") && !message.contains(&aside),
            "the marker is not echoed: {message}"
        );
        intact(name);
    }
    // Two rows, or a NULL: not what a restore writes either.
    sql(&format!(
        "UPDATE public.crvs_restore_pending SET aside = '{aside}'"
    ));
    sql("INSERT INTO public.crvs_restore_pending (aside) VALUES (NULL)");
    assert_eq!(
        admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]).expect_err(),
        "invalid_argument"
    );
    sql("DELETE FROM public.crvs_restore_pending WHERE aside IS NULL");
    intact("two rows");

    // Put right: it finishes, and names the schema it was given.
    let report = admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]).expect_ok();
    assert_eq!(report["replaced_moved_to"].as_str(), Some(aside.as_str()));
    assert_eq!(server_count(&server_data, "SELECT COUNT(*) FROM records"), 1);
    assert_eq!(
        server_count(
            &server_data,
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'crvs_restore_pending'"
        ),
        0
    );
}

/// The count of `crvs-server serve` processes holding the serving lock of
/// the database of `server_data` (their lock connections).
fn serving_locks(server_data: &Path) -> i64 {
    server_count(
        server_data,
        "SELECT COUNT(*) FROM pg_stat_activity
         WHERE application_name = 'crvs-server serving lock' AND datname = current_database()",
    )
}

/// The serving lock is held by a connection of its own; a server whose
/// lock connection is lost takes the lock again, so a restore stays
/// refused while it serves. If a restore took the lock in the gap, the
/// server stops rather than write beside the restore.
#[test]
fn a_server_whose_serving_lock_is_lost_takes_it_again_or_stops_for_a_restore() {
    let Some(cluster) = (if backend_available(Backend::Postgres, module_path!()) {
        Some(crvs_testpg::shared().unwrap_or_else(|e| panic!("{e}")))
    } else {
        None
    }) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(Backend::Postgres, &tmp.path().join("server"));
    let url = database_url(&server_data).unwrap();
    let mut first = Server::start(&server_data);
    let backup = tmp.path().join("backup.dump");
    first
        .admin(&["backup", "--out", backup.to_str().unwrap()])
        .expect_ok();
    first.terminate();
    // The server that serves: its own folder, the same database and key
    // (the restore runs from the first folder).
    let second = tmp.path().join("server-2");
    std::fs::create_dir_all(&second).unwrap();
    for f in [DATABASE_URL_FILE, "server.key"] {
        std::fs::copy(server_data.join(f), second.join(f)).unwrap();
    }
    let mut server = Server::start(&second);
    assert_eq!(serving_locks(&server_data), 1);
    let kill_lock = "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE application_name = 'crvs-server serving lock' AND datname = current_database()";

    // Lost, then taken again.
    assert_eq!(cluster.psql(&url, kill_lock).unwrap(), "1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while serving_locks(&server_data) != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the serving lock was never taken again"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let refused = admin(&server_data, &["restore", "--from", backup.to_str().unwrap()]);
    let message = refused.json["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(refused.expect_err(), "invalid_argument");
    assert!(message.contains("is serving this database"), "{message}");

    // Lost while something else holds it exclusively, as a restore does:
    // the server stops.
    let mut holder = cluster
        .bin("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &url,
            "-c",
            &format!("{kill_lock}; SELECT pg_advisory_lock({SERVING_LOCK}); SELECT pg_sleep(20)"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = server.wait_exit(std::time::Duration::from_secs(20));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!status.success(), "the server went on serving beside a restore");
}

/// `SERVING_LOCK` of `crvs_server::storage::postgres`.
const SERVING_LOCK: i64 = 0x6372_7673_0003;
