//! The restore drill: the real `crvs-server` process, its `backup` and
//! `restore` commands, three tablets driven through the real `crvs`
//! binary, real SQLite files.
//!
//! A backup is taken while the server runs; tablets register, approve and
//! sync; the server is restored to the backup; every tablet syncs again.
//! Every record keeps the KIdC it had, no code is issued twice, and new
//! approvals get codes that differ from every earlier one. Once with the
//! KIdC ledger kept (the usual restore), once with it lost as well (the
//! machine is gone: only the backup, the server key and the tablets'
//! evidence remain).
//!
//! SQLite only, both tests: the drill reads the issuance log from
//! `server.db`, and the backup is a copy of that SQLite file.

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
    let db = server_db(server_data);
    let mut st = db
        .prepare("SELECT kidc, record_id, reason FROM kidc_issuance")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn drill(lose_the_ledger: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
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
    server.terminate();
    if lose_the_ledger {
        // A new machine: the data folder is gone but for the server key,
        // kept apart from the backups.
        let key = std::fs::read(server_data.join("server.key")).unwrap();
        std::fs::remove_dir_all(&server_data).unwrap();
        std::fs::create_dir_all(&server_data).unwrap();
        std::fs::write(server_data.join("server.key"), key).unwrap();
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

    // Every tablet syncs again: it resends what the server lost, with its
    // proofs, and keeps every code it had.
    let server = Server::start_on(&server_data, &addr);
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
    // And a second sync of everyone changes nothing.
    for t in &tablets {
        t.run(&["sync"]).expect_ok();
    }
    assert_eq!(issuance_log(&server_data).len(), 18 + late_ids.len());
    drop(server);
}

#[test]
fn a_restored_server_records_again_every_code_it_had_issued_and_never_draws_one_twice() {
    drill(false);
}

#[test]
fn with_the_ledger_lost_too_the_tablets_evidence_brings_every_code_back() {
    drill(true);
}
