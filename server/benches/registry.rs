//! Population Registry benchmark, at a million persons.
//!
//! ```text
//! cargo bench -p crvs-server --bench registry
//! BENCH_PERSONS=1000000 BENCH_EVENTS=2000 BENCH_LOOKUPS=10000 cargo bench -p crvs-server --bench registry
//! ```
//!
//! A fresh server database (every migration) is populated with
//! `BENCH_PERSONS` persons in one transaction (bulk inserts, generated
//! deterministically: each has a KIdC; every other one, the adults, an
//! identity document). Then, through the server's own storage:
//!
//! * `BENCH_EVENTS` births (each naming a mother and a father by the
//!   document of a person already in the registry, so both are found, and
//!   a new child), deaths (by the KIdC of a living person) and marriages
//!   (two unmarried adults by document), each checked
//!   (`registry::check`) and applied (`registry::apply`) in a write
//!   transaction. The time measured per event is the check and the apply;
//!   the commit (one per 100 events, with its fsync) is reported
//!   separately, per event;
//! * `BENCH_LOOKUPS` `registry::person` lookups (what `crvs-server person`
//!   reads) of random KIdCs through the read-only connection.
//!
//! Prints one JSON object per line.

use std::time::Instant;

use crvs_schema::event::{Event, validate};
use crvs_schema::kidc::check_digit;
use crvs_schema::{Date, Kidc};
use crvs_server::registry::{self, RegisteredEvent};
use crvs_server::storage::Storage;
use crvs_server::storage::sqlite::SqliteStorage;
use rusqlite::params;
use serde_json::{Value, json};
use uuid::Uuid;

// The allocator the `crvs-server` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `n` distinct valid KIdCs, the same at every run: the body digits run
/// through a permutation of 0..10^8.
fn kidcs(n: usize) -> Vec<Kidc> {
    let mut out = Vec::with_capacity(n);
    let mut i: u64 = 0;
    while out.len() < n {
        let mut x = (i * 7_919_993 + 13) % 100_000_000;
        i += 1;
        let mut body = [0u8; 9];
        body[0] = 1;
        for slot in body[1..].iter_mut().rev() {
            *slot = (x % 10) as u8;
            x /= 10;
        }
        if let Some(c) = check_digit(&body) {
            let s: String = body.iter().chain(&[c]).map(|d| char::from(b'0' + d)).collect();
            out.push(Kidc::parse(&s).expect("a valid code"));
        }
    }
    out
}

/// The document number of person `i` (the adults: even `i`).
fn doc(i: usize) -> String {
    format!("{:09}", 100_000_000 + i)
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

fn populate(path: &std::path::Path, codes: &[Kidc]) -> f64 {
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;")
        .unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut person = tx
            .prepare(
                "INSERT INTO registry_persons (person_id, kidc, family_name, given_name, family_name_latin,
                     given_name_latin, sex, date_of_birth, place_of_birth_kind, place_of_birth_village,
                     nationality, citizenship, marital_status, residence_village_code, first_seq, last_seq)
                 VALUES (?1, ?2, 'សុខ', 'ដារ៉ា', 'SOK', ?3, ?4, ?5, 'home', '17100301', 'KHM', 'KHM', ?6,
                     '17100301', 0, 0)",
            )
            .unwrap();
        let mut document = tx
            .prepare("INSERT INTO registry_documents (kind, number, person_id, seq) VALUES ('khmer_id_card', ?1, ?2, 0)")
            .unwrap();
        for (i, k) in codes.iter().enumerate() {
            let id = Uuid::from_u128(i as u128 + 1).to_string();
            let adult = i % 2 == 0;
            let born = if adult {
                format!("19{:02}-{:02}-{:02}", 50 + i % 50, 1 + i % 12, 1 + i % 28)
            } else {
                format!("20{:02}-{:02}-{:02}", 10 + i % 16, 1 + i % 12, 1 + i % 28)
            };
            person
                .execute(params![
                    id,
                    k.as_str(),
                    format!("P{i}"),
                    if i % 4 < 2 { "female" } else { "male" },
                    born,
                    "never_married"
                ])
                .unwrap();
            if adult {
                document.execute(params![doc(i), id]).unwrap();
            }
        }
    }
    tx.commit().unwrap();
    started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn stats(mut us: Vec<f64>) -> Value {
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    json!({
        "mean_us": (mean * 10.0).round() / 10.0,
        "p50_us": (percentile(&us, 0.5) * 10.0).round() / 10.0,
        "p99_us": (percentile(&us, 0.99) * 10.0).round() / 10.0,
    })
}

/// Checks and applies `events` in write transactions of 100; per event,
/// the time of the check and the apply, and the commits' time in all.
fn run(storage: &SqliteStorage, events: &[(Event, Option<Kidc>)], first_record: u128) -> (Vec<f64>, f64) {
    let mut us = Vec::with_capacity(events.len());
    let mut commit_s = 0.0;
    for (chunk_no, chunk) in events.chunks(100).enumerate() {
        let mut tx = storage.begin().unwrap();
        for (i, (event, kidc)) in chunk.iter().enumerate() {
            let n = first_record + (chunk_no * 100 + i) as u128;
            let number = format!("171003/2026/{n:06}");
            let started = Instant::now();
            let hold = registry::check(&mut *tx, event, None).unwrap();
            assert_eq!(hold, None, "a bench event is never held");
            registry::apply(
                &mut *tx,
                &RegisteredEvent {
                    record_id: Uuid::from_u128(n),
                    registration_number: &number,
                    registered_at_ms: 1_800_000_000_000,
                    office: "171003",
                    event,
                    kidc: *kidc,
                    amends: None,
                    late: false,
                },
            )
            .unwrap();
            us.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let started = Instant::now();
        tx.commit().unwrap();
        commit_s += started.elapsed().as_secs_f64();
    }
    (us, commit_s)
}

fn main() {
    let persons = env("BENCH_PERSONS", 1_000_000);
    let events = env("BENCH_EVENTS", 2000);
    let lookups = env("BENCH_LOOKUPS", 10_000);
    let today = Date::new(2026, 12, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crvs_server::DB_FILE);
    drop(SqliteStorage::open(&path).unwrap());
    // The population, and the codes of the children born during the run.
    let codes = kidcs(persons + events);
    let populate_s = populate(&path, &codes[..persons]);
    let storage = SqliteStorage::open(&path).unwrap();
    let db_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        json!({"case": "populate", "persons": persons, "documents": persons.div_ceil(2),
               "seconds": (populate_s * 100.0).round() / 100.0, "db_bytes": db_bytes})
    );

    let mut rng = Rng(42);
    // Adults (even indexes) drawn without repetition: a shuffled pool.
    let mut adults: Vec<usize> = (0..persons).step_by(2).collect();
    for i in (1..adults.len()).rev() {
        adults.swap(i, rng.below(i + 1));
    }
    let mut pool = adults.into_iter();

    let birth = fixture("birth-sok-dara.json");
    let births: Vec<(Event, Option<Kidc>)> = (0..events)
        .map(|j| {
            let mut b = birth.clone();
            b["mother"]["id_document"]["number"] = doc(pool.next().unwrap()).into();
            b["father"]["id_document"] =
                json!({"kind": "khmer_id_card", "number": doc(pool.next().unwrap())});
            (validate(&b, today).unwrap(), Some(codes[persons + j]))
        })
        .collect();
    let (us, commit_s) = run(&storage, &births, 1);
    print_case("birth", &us, commit_s);

    let death = fixture("death-by-kidc.json").to_string();
    let deaths: Vec<(Event, Option<Kidc>)> = (0..events)
        .map(|_| {
            let k = codes[pool.next().unwrap()];
            let json: Value = serde_json::from_str(&death.replace("1000000001", k.as_str())).unwrap();
            (validate(&json, today).unwrap(), None)
        })
        .collect();
    let (us, commit_s) = run(&storage, &deaths, 1_000_000);
    print_case("death", &us, commit_s);

    let marriage = fixture("marriage-heng-ly.json");
    let marriages: Vec<(Event, Option<Kidc>)> = (0..events)
        .map(|_| {
            let mut m = marriage.clone();
            m["spouses"][0]["id_document"]["number"] = doc(pool.next().unwrap()).into();
            m["spouses"][1]["id_document"]["number"] = doc(pool.next().unwrap()).into();
            (validate(&m, today).unwrap(), None)
        })
        .collect();
    let (us, commit_s) = run(&storage, &marriages, 2_000_000);
    print_case("marriage", &us, commit_s);

    let mut us = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        let k = codes[rng.below(persons)];
        let started = Instant::now();
        let p = registry::person(&storage, &k).unwrap();
        us.push(started.elapsed().as_secs_f64() * 1e6);
        assert!(p.is_some(), "every drawn KIdC is in the registry");
    }
    let mut line = stats(us);
    line["case"] = "person_lookup".into();
    line["lookups"] = lookups.into();
    line["persons"] = persons.into();
    println!("{line}");
}

fn print_case(kind: &str, us: &[f64], commit_s: f64) {
    let mut line = stats(us.to_vec());
    line["case"] = format!("apply_{kind}").into();
    line["events"] = us.len().into();
    line["commit_us_per_event"] = (((commit_s * 1e6 / us.len() as f64) * 10.0).round() / 10.0).into();
    println!("{line}");
}
