//! A hold seen from both ends, through the real binaries: the server (its
//! clock three days behind, by libfaketime) holds a birth the tablet dated
//! "today"; the tablet learns it with the reason on its next sync (`show`,
//! `list`); the operator lists it (`holds`), and releases it once the
//! server's clock is right (`release`); the tablet then gets its KIdC.
//! On SQLite and on PostgreSQL (`both_backends!`).

use crvs_e2e::*;

both_backends!(a_held_record_is_shown_on_the_tablet_listed_for_operators_and_released);
fn a_held_record_is_shown_on_the_tablet_listed_for_operators_and_released(backend: Backend) {
    let Some(behind) = faketime_env("-3d") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server_data = server_data(backend, &tmp.path().join("server"));
    let mut server = Server::start_with(
        &server_data,
        &ServerOptions {
            env: behind,
            ..ServerOptions::default()
        },
    );
    let addr = server.addr.to_string();
    let t = Tablet::new(tmp.path().join("tablet"));
    t.init_and_enroll("171003", &server);

    // Born today by the tablet's clock: three days ahead of the server's.
    let mut birth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("birth-sok-dara.json")).unwrap()).unwrap();
    let today = crvs_schema::Date::today_in_cambodia(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    birth["child"]["date_of_birth"] = serde_json::Value::String(today.to_string());
    let file = tmp.path().join("birth-today.json");
    std::fs::write(&file, birth.to_string()).unwrap();
    let held = t.register_approved(&file);
    let fine = t.register_approved(&fixture("birth-sok-dara.json"));
    t.run(&["sync"]).expect_ok();

    let shown = t.show(&held);
    assert_eq!(shown["status"], "held", "{shown}");
    assert_eq!(shown["hold"], "invalid_on_receipt", "{shown}");
    assert!(shown.get("kidc").is_none());
    assert_eq!(
        t.show(&fine)["status"],
        "registered",
        "the other record went through"
    );
    let list = t.run(&["list"]).expect_ok();
    let line = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["record_id"] == held.as_str())
        .expect("listed")
        .clone();
    assert_eq!(line["hold"], "invalid_on_receipt", "{line}");

    let holds = server.admin(&["holds"]).expect_ok();
    assert_eq!(holds["holds"].as_array().map(Vec::len), Some(1), "{holds}");
    assert_eq!(holds["holds"][0]["record_id"], held.as_str());
    assert_eq!(holds["holds"][0]["reason"], "invalid_on_receipt");
    assert_eq!(holds["holds"][0]["office"], "171003");
    assert!(holds["holds"][0]["since"].is_i64());

    // The operator fixes the server's clock and releases the record.
    server.terminate();
    let released = admin(
        &server_data,
        &[
            "release",
            &held,
            "--by",
            "operator-1",
            "--reason",
            "server clock was three days behind",
        ],
    )
    .expect_ok();
    assert_eq!(released["released"], true, "{released}");
    assert_eq!(released["status"], "registered");
    let code = released["kidc"].as_str().expect("a code").to_string();
    assert!(
        admin(&server_data, &["holds"]).expect_ok()["holds"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let _server = Server::start_on(&server_data, &addr);
    t.run(&["sync"]).expect_ok();
    let shown = t.show(&held);
    assert_eq!(shown["status"], "registered", "{shown}");
    assert_eq!(shown["kidc"], code.as_str());
    assert!(shown.get("hold").is_none());
}
