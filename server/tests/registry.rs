//! The Population Registry on real SQLite files: `registry::check` and
//! `registry::apply` on the writer's transaction, the `person` and
//! `registry rebuild [--check]` commands. Every test runs on SQLite and
//! on PostgreSQL (`both_backends!`).

mod backend;

use std::process::Command;

use backend::{Backend, Opened, both_backends};

use crvs_schema::event::{Event, validate};
use crvs_schema::{Date, Kidc};
use crvs_server::registry::{self, Amended, RegisteredEvent};
use crvs_server::storage::RegistryPerson;
use serde_json::Value;
use uuid::Uuid;

fn today() -> Date {
    Date::new(2026, 12, 4).unwrap()
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

/// A fixture with its placeholder KIdC replaced.
fn fixture_with_kidc(name: &str, kidc: &Kidc) -> Value {
    let text = fixture(name).to_string().replace("1000000001", kidc.as_str());
    serde_json::from_str(&text).unwrap()
}

fn event(json: &Value) -> Event {
    validate(json, today()).expect("a valid fixture")
}

/// A valid KIdC made from `n`.
fn kidc(n: u32) -> Kidc {
    (n..)
        .find_map(|m| {
            let body = format!("1{m:08}");
            (0..10)
                .map(|c| format!("{body}{c}"))
                .find_map(|s| Kidc::parse(&s).ok())
        })
        .unwrap()
}

struct Registry {
    db: Opened,
    next: u128,
}

impl Registry {
    fn open(backend: Backend) -> Registry {
        Registry {
            db: backend::open(backend),
            next: 0,
        }
    }

    /// Checks then registers the event as ingest does: the hold code, or
    /// `None` and the event applied and committed.
    fn register(
        &mut self,
        json: &Value,
        kidc: Option<Kidc>,
        amends: Option<Amended>,
    ) -> Option<&'static str> {
        self.next += 1;
        let record_id = Uuid::from_u128(self.next);
        let event = event(json);
        let mut tx = self.db.storage.begin().unwrap();
        if let Some(hold) = registry::check(&mut *tx, &event, amends.as_ref()).unwrap() {
            return Some(hold);
        }
        let number = format!("171003/2026/{:06}", self.next);
        registry::apply(
            &mut *tx,
            &RegisteredEvent {
                record_id,
                registration_number: &number,
                registered_at_ms: 1_764_800_000_000 + self.next as i64,
                office: "171003",
                event: &event,
                kidc,
                amends,
                late: false,
            },
        )
        .unwrap();
        tx.commit().unwrap();
        None
    }

    fn last_record(&self) -> Uuid {
        Uuid::from_u128(self.next)
    }

    fn person(&self, k: &Kidc) -> registry::PersonView {
        registry::person(&*self.db.storage, k)
            .unwrap()
            .expect("the person is in the registry")
    }

    fn by_document(&self, kind: &str, number: &str) -> Option<RegistryPerson> {
        let mut tx = self.db.storage.begin().unwrap();
        tx.registry_person_by_document(kind, number).unwrap()
    }
}

both_backends!(a_birth_enters_the_child_by_kidc_and_the_parents_linked_both_ways);
fn a_birth_enters_the_child_by_kidc_and_the_parents_linked_both_ways(backend: Backend) {
    let mut reg = Registry::open(backend);
    let k = kidc(1);
    assert_eq!(reg.register(&fixture("birth-sok-dara.json"), Some(k), None), None);
    let child = reg.person(&k);
    assert_eq!(child.kidc.as_deref(), Some(k.as_str()));
    assert_eq!(child.given_name_latin.as_deref(), Some("DARA"));
    assert_eq!(child.date_of_birth.as_deref(), Some("2026-11-02"));
    assert_eq!(
        child.place_of_birth.as_ref().unwrap().village_code.as_deref(),
        Some("17100301")
    );
    assert_eq!(child.citizenship.as_deref(), Some("KHM"));
    assert_eq!(child.residence_village_code.as_deref(), Some("17100301"));
    assert!(child.alive);
    let relations: Vec<(&str, &str)> = child
        .parents
        .iter()
        .map(|p| (p.relation.as_str(), p.by.as_str()))
        .collect();
    assert_eq!(relations, [("mother", "birth"), ("father", "birth")]);
    assert_eq!(child.events.len(), 1);
    assert_eq!(child.events[0].role, "child");
    assert_eq!(child.events[0].registration_number, "171003/2026/000001");

    // The mother is found by her identity document, and knows her child.
    let mother = reg
        .by_document("khmer_id_card", "170123456")
        .expect("the mother by her document");
    assert_eq!(mother.given_name_latin.as_deref(), Some("SOPHEA"));
    assert_eq!(mother.kidc, None);
    assert_eq!(child.parents[0].person.person_id, mother.person_id.to_string());
    let mut tx = reg.db.storage.begin().unwrap();
    assert_eq!(tx.registry_person(mother.person_id).unwrap().unwrap(), mother);
    drop(tx);
    assert_eq!(
        reg.db.count(&format!(
            "SELECT COUNT(*) FROM registry_parents WHERE parent_id = '{}' AND relation = 'mother'",
            mother.person_id
        )),
        1
    );
    // Ids are derived from the record and the role, never drawn.
    assert_eq!(
        child.person_id,
        registry::person_id(reg.last_record(), "child").to_string()
    );
}

both_backends!(a_second_birth_by_the_same_mother_finds_her_again);
fn a_second_birth_by_the_same_mother_finds_her_again(backend: Backend) {
    let mut reg = Registry::open(backend);
    let first = fixture("birth-sok-dara.json");
    let mut second = first.clone();
    second["child"]["given_name_latin"] = "DAVID".into();
    second["child"]["given_name"] = "ដាវីត".into();
    assert_eq!(reg.register(&first, Some(kidc(10)), None), None);
    assert_eq!(reg.register(&second, Some(kidc(20)), None), None);
    assert_eq!(
        reg.db
            .count("SELECT COUNT(*) FROM registry_documents WHERE number = '170123456'"),
        1
    );
    // 2 children, 1 mother, 2 fathers (no document: never found again).
    assert_eq!(reg.db.count("SELECT COUNT(*) FROM registry_persons"), 5);
    let a = reg.person(&kidc(10));
    let b = reg.person(&kidc(20));
    assert_eq!(a.parents[0].person.person_id, b.parents[0].person.person_id);
    let mother = reg.by_document("khmer_id_card", "170123456").unwrap();
    let entry = reg.db.count(&format!(
        "SELECT COUNT(*) FROM registry_parents WHERE parent_id = '{}'",
        mother.person_id
    ));
    assert_eq!(entry, 2, "the mother has both children");
}

both_backends!(a_marriage_makes_both_married_and_a_second_one_is_held);
fn a_marriage_makes_both_married_and_a_second_one_is_held(backend: Backend) {
    let mut reg = Registry::open(backend);
    let marriage = fixture("marriage-heng-ly.json");
    assert_eq!(reg.register(&marriage, None, None), None);
    for number in ["171200345", "171100678"] {
        let p = reg.by_document("khmer_id_card", number).unwrap();
        assert_eq!(p.marital_status.as_deref(), Some("married"));
    }
    assert_eq!(
        reg.db.count(
            "SELECT COUNT(*) FROM registry_marital_history WHERE status = 'married' AND since = '2026-11-21'"
        ),
        2
    );
    // The same bride marries someone else: held, and nothing written.
    let mut again = marriage.clone();
    again["spouses"][1]["id_document"]["number"] = "171999999".into();
    assert_eq!(
        reg.register(&again, None, None),
        Some(registry::HOLD_ALREADY_MARRIED)
    );
    assert_eq!(reg.db.count("SELECT COUNT(*) FROM registry_marriages"), 1);
    assert!(reg.by_document("khmer_id_card", "171999999").is_none());
}

both_backends!(a_divorce_ends_the_marriage_it_names_and_one_it_does_not_know_is_held);
fn a_divorce_ends_the_marriage_it_names_and_one_it_does_not_know_is_held(backend: Backend) {
    let mut reg = Registry::open(backend);
    let divorce = fixture("divorce-heng-ly.json");
    assert_eq!(
        reg.register(&divorce, None, None),
        Some(registry::HOLD_UNKNOWN_MARRIAGE),
        "no marriage yet"
    );
    assert_eq!(reg.register(&fixture("marriage-heng-ly.json"), None, None), None);
    let mut wrong_date = divorce.clone();
    wrong_date["date_of_marriage"] = "2026-11-20".into();
    assert_eq!(
        reg.register(&wrong_date, None, None),
        Some(registry::HOLD_UNKNOWN_MARRIAGE)
    );
    assert_eq!(reg.register(&divorce, None, None), None);
    let bride = reg.by_document("khmer_id_card", "171200345").unwrap();
    assert_eq!(bride.marital_status.as_deref(), Some("divorced"));
    assert_eq!(
        reg.db.count(
            "SELECT COUNT(*) FROM registry_marriages WHERE ended_by = 'divorce' AND ended_on = '2026-11-29'"
        ),
        1
    );
    let history: i64 = reg.db.count(&format!(
        "SELECT COUNT(*) FROM registry_marital_history WHERE person_id = '{}'",
        bride.person_id
    ));
    assert_eq!(history, 2, "married, then divorced");
    // Divorced: free to marry again.
    assert_eq!(reg.register(&fixture("marriage-heng-ly.json"), None, None), None);
}

both_backends!(a_death_makes_the_person_deceased_and_a_second_death_is_held);
fn a_death_makes_the_person_deceased_and_a_second_death_is_held(backend: Backend) {
    let mut reg = Registry::open(backend);
    let k = kidc(30);
    assert_eq!(
        reg.register(&fixture_with_kidc("death-by-kidc.json", &k), None, None),
        Some(registry::HOLD_UNKNOWN_KIDC)
    );
    assert_eq!(reg.register(&fixture("birth-sok-dara.json"), Some(k), None), None);
    let death = fixture_with_kidc("death-by-kidc.json", &k);
    assert_eq!(reg.register(&death, None, None), None);
    let p = reg.person(&k);
    assert!(!p.alive);
    assert_eq!(p.date_of_death.as_deref(), Some("2026-11-30"));
    assert_eq!(
        p.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["birth", "death"]
    );
    assert_eq!(
        reg.register(&death, None, None),
        Some(registry::HOLD_ALREADY_DECEASED)
    );
    // Any other event naming them is held too.
    let adoption = fixture_with_kidc("adoption-by-kidc.json", &k);
    assert_eq!(
        reg.register(&adoption, None, None),
        Some(registry::HOLD_ALREADY_DECEASED)
    );
    // An amendment of their birth is not.
    let amendment = fixture("amendment-add-given-name.json");
    let amends = Amended {
        record_id: Uuid::from_u128(2),
        kidc: Some(k),
    };
    assert_eq!(reg.register(&amendment, None, Some(amends)), None);
}

both_backends!(a_spouse_s_death_widows_the_other_and_a_dead_spouse_cannot_marry);
fn a_spouse_s_death_widows_the_other_and_a_dead_spouse_cannot_marry(backend: Backend) {
    let mut reg = Registry::open(backend);
    assert_eq!(reg.register(&fixture("marriage-heng-ly.json"), None, None), None);
    let mut death = fixture_with_kidc("death-by-kidc.json", &kidc(1));
    death["deceased"] = serde_json::json!({
        "family_name": "លី", "given_name": "ពិសិដ្ឋ", "sex": "male", "nationality": "KHM",
        "id_document": { "kind": "khmer_id_card", "number": "171100678" },
        "residence_village_code": "17100304"
    });
    death["cause_of_death"] =
        serde_json::json!({"text": "Stroke", "icd10": "I64", "certified_by": "physician"});
    death["informant"] = serde_json::json!({"relationship": "spouse"});
    assert_eq!(reg.register(&death, None, None), None);
    let bride = reg.by_document("khmer_id_card", "171200345").unwrap();
    assert_eq!(bride.marital_status.as_deref(), Some("widowed"));
    let groom = reg.by_document("khmer_id_card", "171100678").unwrap();
    assert_eq!(groom.date_of_death.as_deref(), Some("2026-11-30"));
    assert_eq!(
        reg.db.count("SELECT COUNT(*) FROM registry_persons"),
        2,
        "the deceased was found by his document, not entered twice"
    );
    assert_eq!(
        reg.register(&fixture("marriage-heng-ly.json"), None, None),
        Some(registry::HOLD_ALREADY_DECEASED)
    );
}

both_backends!(an_adoption_keeps_the_birth_parents_and_adds_the_adoptive_ones_labelled);
fn an_adoption_keeps_the_birth_parents_and_adds_the_adoptive_ones_labelled(backend: Backend) {
    let mut reg = Registry::open(backend);
    let k = kidc(40);
    assert_eq!(
        reg.register(&fixture_with_kidc("adoption-by-kidc.json", &k), None, None),
        Some(registry::HOLD_UNKNOWN_KIDC)
    );
    assert_eq!(reg.register(&fixture("birth-sok-dara.json"), Some(k), None), None);
    assert_eq!(
        reg.register(&fixture_with_kidc("adoption-by-kidc.json", &k), None, None),
        None
    );
    let child = reg.person(&k);
    let parents: Vec<(&str, &str, Option<&str>)> = child
        .parents
        .iter()
        .map(|p| {
            (
                p.relation.as_str(),
                p.by.as_str(),
                p.person.given_name_latin.as_deref(),
            )
        })
        .collect();
    assert_eq!(parents.len(), 4);
    assert!(parents.contains(&("mother", "birth", Some("SOPHEA"))));
    assert!(parents.contains(&("father", "birth", Some("VICHET"))));
    assert!(parents.contains(&("father", "adoption", Some("SOVANN"))));
    assert!(parents.contains(&("mother", "adoption", Some("MALY"))));
    let adoptive = reg.by_document("khmer_id_card", "171300222").unwrap();
    assert_eq!(adoptive.sex.as_deref(), Some("female"));
}

both_backends!(an_amendment_changes_the_given_name_and_keeps_the_history);
fn an_amendment_changes_the_given_name_and_keeps_the_history(backend: Backend) {
    let mut reg = Registry::open(backend);
    let k = kidc(50);
    let mut birth = fixture("birth-sok-dara.json");
    birth["child"].as_object_mut().unwrap().remove("given_name");
    birth["child"].as_object_mut().unwrap().remove("given_name_latin");
    assert_eq!(reg.register(&birth, Some(k), None), None);
    let birth_record = reg.last_record();
    assert_eq!(reg.person(&k).given_name, None);
    let amendment = fixture("amendment-add-given-name.json");
    assert_eq!(
        reg.register(
            &amendment,
            None,
            Some(Amended {
                record_id: birth_record,
                kidc: Some(kidc(51))
            })
        ),
        Some(registry::HOLD_UNKNOWN_KIDC)
    );
    assert_eq!(
        reg.register(&amendment, None, None),
        Some(registry::HOLD_UNKNOWN_KIDC)
    );
    let amends = Amended {
        record_id: birth_record,
        kidc: Some(k),
    };
    assert_eq!(reg.register(&amendment, None, Some(amends)), None);
    let p = reg.person(&k);
    assert_eq!(p.given_name.as_deref(), Some("ស្រីពៅ"));
    assert_eq!(p.given_name_latin.as_deref(), Some("SREYPOV"));
    assert_eq!(p.family_name_latin.as_deref(), Some("SOK"), "other fields stay");
    let events: Vec<(&str, &str)> = p
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.role.as_str()))
        .collect();
    assert_eq!(events, [("birth", "child"), ("amendment", "amended")]);
    // The log keeps the amendment as applied, with what it amends.
    assert_eq!(
        reg.db.count(&format!(
                "SELECT COUNT(*) FROM registry_events WHERE kind = 'amendment' AND amends_record_id = '{birth_record}' AND amends_kidc = '{}'",
                k.as_str()
            )
        ),
        1
    );
}

both_backends!(the_registry_is_updated_in_the_callers_transaction_and_its_log_is_append_only);
fn the_registry_is_updated_in_the_callers_transaction_and_its_log_is_append_only(backend: Backend) {
    let reg = Registry::open(backend);
    let event = event(&fixture("birth-sok-dara.json"));
    {
        let mut tx = reg.db.storage.begin().unwrap();
        registry::apply(
            &mut *tx,
            &RegisteredEvent {
                record_id: Uuid::from_u128(7),
                registration_number: "171003/2026/000001",
                registered_at_ms: 1,
                office: "171003",
                event: &event,
                kidc: Some(kidc(60)),
                amends: None,
                late: true,
            },
        )
        .unwrap();
        // Rolled back: dropped without a commit.
    }
    assert!(registry::person(&*reg.db.storage, &kidc(60)).unwrap().is_none());
    assert_eq!(reg.db.count("SELECT COUNT(*) FROM registry_events"), 0);

    let mut reg = reg;
    assert_eq!(
        reg.register(&fixture("birth-sok-dara.json"), Some(kidc(60)), None),
        None
    );
    assert!(
        reg.db
            .execute("UPDATE registry_events SET office = '000000'")
            .is_err()
    );
    assert!(reg.db.execute("DELETE FROM registry_events").is_err());
}

fn cli(db: &Opened, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crvs-server"))
        .args(args)
        .args(db.cli_args())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A registry with every kind of event in it.
fn populated(backend: Backend) -> (Opened, Kidc) {
    let mut reg = Registry::open(backend);
    let k = kidc(70);
    assert_eq!(reg.register(&fixture("birth-sok-dara.json"), Some(k), None), None);
    let birth = reg.last_record();
    let mut second = fixture("birth-sok-dara.json");
    second["child"]["given_name_latin"] = "DAVID".into();
    assert_eq!(reg.register(&second, Some(kidc(71)), None), None);
    assert_eq!(reg.register(&fixture("marriage-heng-ly.json"), None, None), None);
    assert_eq!(reg.register(&fixture("divorce-heng-ly.json"), None, None), None);
    assert_eq!(
        reg.register(&fixture_with_kidc("adoption-by-kidc.json", &k), None, None),
        None
    );
    let amends = Amended {
        record_id: birth,
        kidc: Some(k),
    };
    assert_eq!(
        reg.register(&fixture("amendment-add-given-name.json"), None, Some(amends)),
        None
    );
    assert_eq!(
        reg.register(&fixture_with_kidc("death-by-kidc.json", &kidc(71)), None, None),
        None
    );
    (reg.db, k)
}

both_backends!(person_prints_one_json_object_and_an_unknown_kidc_fails);
fn person_prints_one_json_object_and_an_unknown_kidc_fails(backend: Backend) {
    let (db, k) = populated(backend);
    let (ok, out, _) = cli(&db, &["person", k.as_str(), "--json"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kidc"], k.as_str());
    assert_eq!(v["given_name_latin"], "SREYPOV");
    assert_eq!(v["parents"].as_array().unwrap().len(), 4);
    assert_eq!(v["alive"], true);
    let (ok, text, _) = cli(&db, &["person", k.as_str()]);
    assert!(ok);
    assert!(
        text.contains("SREYPOV") && text.contains("(by adoption)"),
        "{text}"
    );

    let (ok, out, err) = cli(&db, &["person", kidc(99).as_str(), "--json"]);
    assert!(!ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["message"].as_str().unwrap().contains("not in the registry") || err.contains("no person"));
    let (ok, _, _) = cli(&db, &["person", "1234"]);
    assert!(!ok);
}

both_backends!(rebuild_check_is_identical_and_finds_a_tampered_row);
fn rebuild_check_is_identical_and_finds_a_tampered_row(backend: Backend) {
    let (db, k) = populated(backend);
    let (ok, out, err) = cli(&db, &["registry", "rebuild", "--check", "--json"]);
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["identical"], true);
    assert_eq!(v["events"], 7);
    let digest = v["digest"].as_str().unwrap().to_owned();

    // A row changed behind the registry's back.
    db.execute(&format!(
        "UPDATE registry_persons SET given_name_latin = 'TAMPERED' WHERE kidc = '{}'",
        k.as_str()
    ))
    .unwrap();
    let person_id = db.text(&format!(
        "SELECT person_id FROM registry_persons WHERE kidc = '{}'",
        k.as_str()
    ));
    let (ok, out, err) = cli(&db, &["registry", "rebuild", "--check", "--json"]);
    assert!(!ok, "a tampered registry must fail the check");
    let v: Value = serde_json::from_str(&out).unwrap();
    let message = v["message"].as_str().unwrap();
    assert!(message.contains(&person_id), "{message}");
    assert!(
        !message.contains("TAMPERED") && !err.contains("TAMPERED"),
        "no personal data"
    );
    assert_eq!(
        message.matches('-').count(),
        4,
        "exactly one person differs: {message}"
    );

    // Without --check the registry is replaced by its rebuild.
    let (ok, out, err) = cli(&db, &["registry", "rebuild", "--json"]);
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["digest"], digest);
    let (ok, out, _) = cli(&db, &["registry", "rebuild", "--check", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["digest"], digest, "byte-identical to the first registry");
    assert!(
        std::fs::read_dir(db.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("registry-check")),
        "the scratch database is removed"
    );
}

both_backends!(a_birth_after_the_father_s_death_is_registered_but_not_one_after_the_mother_s);
fn a_birth_after_the_father_s_death_is_registered_but_not_one_after_the_mother_s(backend: Backend) {
    let mut reg = Registry::open(backend);
    let mut birth = fixture("birth-sok-dara.json");
    birth["father"]["id_document"] = serde_json::json!({"kind": "khmer_id_card", "number": "170999888"});
    // Both parents enter the registry through an earlier child's birth.
    let mut elder = birth.clone();
    elder["child"]["date_of_birth"] = "2024-01-10".into();
    assert_eq!(reg.register(&elder, Some(kidc(80)), None), None);
    let died = |number: &str, on: &str| {
        let mut d = fixture_with_kidc("death-by-kidc.json", &kidc(1));
        d["deceased"] = serde_json::json!({
            "family_name": "សុខ", "given_name": "វិចិត្រ", "sex": "male", "nationality": "KHM",
            "id_document": { "kind": "khmer_id_card", "number": number },
            "residence_village_code": "17100301"
        });
        d["date_of_death"] = on.into();
        d["informant"] = serde_json::json!({"relationship": "spouse"});
        d
    };
    // The father died in the pregnancy: the child is his, and registered.
    assert_eq!(reg.register(&died("170999888", "2026-06-01"), None, None), None);
    assert_eq!(reg.register(&birth, Some(kidc(81)), None), None);
    assert_eq!(reg.person(&kidc(81)).parents.len(), 2);
    // A mother registered dead before the day of birth names the wrong
    // person: held.
    assert_eq!(reg.register(&died("170123456", "2026-10-01"), None, None), None);
    let mut later = birth.clone();
    later["child"]["given_name_latin"] = "DAVID".into();
    assert_eq!(
        reg.register(&later, Some(kidc(82)), None),
        Some(registry::HOLD_ALREADY_DECEASED)
    );
}
