//! A registration day at three communes of Siem Reap.
//!
//! An in-process `crvs-server` listens on a real socket. Three tablets are
//! enrolled while the office has a connection, then spend the day offline in
//! the villages: clerks register births, a second staff member verifies
//! each one, the registrar approves them (and rejects one). Back at the
//! office, each tablet syncs and prints the KIdCs it received.
//!
//! ```sh
//! cargo run -p crvs-examples --example registration_day
//! ```

use std::sync::Arc;

use crvs_core::Registrar;

const BIRTHS: &str = include_str!("../fixtures/births-sample.jsonl");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let day = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;

    // The central server, with its embedded SQLite storage.
    let server = Arc::new(crvs_server::Server::open(&day.path().join("server"))?);
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    runtime.spawn(crvs_server::http::serve(listener, server.clone()));
    println!("server listening on {url}");

    // Today's date in Cambodia bounds the dates of birth a clerk may enter.
    let today = crvs_schema::Date::today_in_cambodia(crvs_core::registrar::now_ms());
    let mut births = BIRTHS
        .lines()
        .filter(|l| crvs_schema::BirthRegistration::from_json_str(l, today).is_ok());

    let communes = ["171003", "171004", "171005"];
    let mut tablets = Vec::new();
    for commune in communes {
        // Morning, at the office: an operator creates a one-time token and
        // the tablet enrols with it.
        let token = crvs_server::admin::create_token(&server, commune, 24 * 3600 * 1000)?;
        let tablet = Registrar::init(
            day.path().join(format!("tablet-{commune}")),
            &"mango trees shade the commune office".into(),
            commune,
        )?;
        let enrolled = tablet.enroll(&url, &token.token, None)?;
        println!(
            "tablet for commune {commune} enrolled as device {}",
            enrolled.device_id
        );
        tablets.push(tablet);
    }

    // The day in the villages, offline.
    for (t, tablet) in tablets.iter().enumerate() {
        for n in 0..4 {
            let line = births.next().ok_or("ran out of sample births")?;
            // The sample families live in commune 171003; a tablet
            // registers the births of its own commune's families.
            let line = in_commune(line, tablet.office())?;
            let id = tablet.register_birth(&line, &format!("clerk-{t}"))?;
            if t == 2 && n == 3 {
                tablet.reject(
                    &id,
                    &format!("registrar-{t}"),
                    "the informant could not show the birth notice",
                )?;
                continue;
            }
            tablet.verify(&id, &format!("checker-{t}"))?;
            tablet.approve(&id, &format!("registrar-{t}"))?;
        }
    }

    // Evening, back at the office: sync, and read the KIdCs.
    for (tablet, commune) in tablets.iter().zip(communes) {
        let report = tablet.sync(&crvs_core::Quiet)?;
        println!(
            "commune {commune}: pushed {} change set(s) with {} record(s), received {} KIdC(s)",
            report.pushed, report.records_pushed, report.kidcs_received
        );
        for r in tablet.list()? {
            println!(
                "  record {}  {:<10}  KIdC {}",
                r.id,
                r.status,
                r.kidc.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// `line` with its residence moved to the village of `commune` with the
/// same number.
fn in_commune(line: &str, commune: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut doc: serde_json::Value = serde_json::from_str(line)?;
    let village = doc["residence_village_code"]
        .as_str()
        .and_then(|v| v.get(6..))
        .ok_or("a residence village code")?
        .to_owned();
    doc["residence_village_code"] = format!("{commune}{village}").into();
    Ok(doc.to_string())
}
