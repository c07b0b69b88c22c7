//! Tests of the events other than birth, and of the dispatcher. The
//! fixtures are the committed copies under `fixtures/`.

use serde_json::{Value, json};

use super::*;
pub(super) use crate::test_support::{fields, with};

mod adoption;
mod amendment;
mod death;
mod divorce;
mod marriage;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/");

/// After every event in the fixtures (the latest is 2026-11-30).
fn today() -> Date {
    date("2027-01-31")
}

fn date(s: &str) -> Date {
    Date::parse(s).expect("test date is valid")
}

/// A committed fixture as JSON.
fn fixture(name: &str) -> Value {
    let path = format!("{FIXTURES}{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The problems of an invalid document, by the dispatcher.
fn problems_of(doc: &Value) -> ValidationError {
    validate(doc, today()).expect_err("document is invalid")
}

const BIDI: &str = "must not contain bidirectional control characters (such as a right-to-left override)";

#[test]
fn every_event_fixture_is_accepted_or_refused_as_stated() {
    for (name, kind) in [
        ("death-elderly.json", EventKind::Death),
        ("death-by-kidc.json", EventKind::Death),
        ("marriage-heng-ly.json", EventKind::Marriage),
        ("divorce-heng-ly.json", EventKind::Divorce),
        ("adoption-by-kidc.json", EventKind::Adoption),
        ("amendment-add-given-name.json", EventKind::Amendment),
        ("birth-sok-dara.json", EventKind::Birth),
        ("birth-no-given-name.json", EventKind::Birth),
    ] {
        let event = validate(&fixture(name), today()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event.kind(), kind, "{name}");
    }
    let underage = problems_of(&fixture("marriage-underage.json"));
    assert_eq!(
        underage.problems,
        [FieldProblem::new(
            "spouses[0].date_of_birth",
            "must make the spouse at least 18 years old on the date of marriage (the legal minimum age)"
        )]
    );
    let no_reason = problems_of(&fixture("amendment-no-reason.json"));
    assert_eq!(no_reason.problems, [FieldProblem::new("reason", "is required")]);
}

#[test]
fn accepted_fixtures_round_trip_through_json_and_serde() {
    for name in [
        "death-elderly.json",
        "death-by-kidc.json",
        "marriage-heng-ly.json",
        "divorce-heng-ly.json",
        "adoption-by-kidc.json",
        "amendment-add-given-name.json",
        "birth-sok-dara.json",
    ] {
        let original = fixture(name);
        let event = validate(&original, today()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event.to_json_value(), original, "{name}");
        let via_serde: Event =
            serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(via_serde, event, "{name}");
        let text = serde_json::to_string(&event).expect("serializes");
        let back: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(back, original, "{name}");
    }
}

#[test]
fn a_document_without_an_event_field_is_a_birth() {
    let birth = fixture("birth-sok-dara.json");
    let untagged = with(birth.clone(), "/event", None);
    let event = validate(&untagged, today()).expect("a birth");
    assert_eq!(event.kind(), EventKind::Birth);
    assert_eq!(event.to_json_value(), birth);
    let null = with(birth, "/event", Some(Value::Null));
    assert_eq!(
        validate(&null, today()).expect("a birth").kind(),
        EventKind::Birth
    );
    let via_serde: Event = serde_json::from_value(untagged).expect("serde reads it as a birth");
    assert_eq!(via_serde, event);
    // And a birth's problems are the birth validator's.
    let bad = with(fixture("birth-sok-dara.json"), "/event", None);
    let bad = with(bad, "/child/sex", Some(json!("M")));
    assert_eq!(fields(&problems_of(&bad)), ["child.sex"]);
}

#[test]
fn an_unknown_event_or_a_document_that_is_not_an_object_is_one_problem() {
    for bad in [json!("notification"), json!(7), json!("DEATH"), json!("")] {
        let doc = with(fixture("death-elderly.json"), "/event", Some(bad));
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new(
                "event",
                "must be one of birth, death, marriage, divorce, adoption, amendment"
            )]
        );
    }
    for doc in [json!([1]), json!("death"), Value::Null] {
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new("$", "must be an object")]
        );
    }
    let err = Event::from_json_str("{\"event\": \"death\"", today()).expect_err("malformed");
    assert_eq!(fields(&err), ["$"]);
}

#[test]
fn each_validator_refuses_another_event() {
    let marriage = fixture("marriage-heng-ly.json");
    let err = validate_death(&marriage, today()).expect_err("not a death");
    assert!(err.has_problem_with("event"), "{err}");
    assert!(
        err.problems
            .iter()
            .any(|p| p.field == "event" && p.problem == "must be \"death\"")
    );
    assert!(validate_amendment(&fixture("death-elderly.json"), today()).is_err());
    assert!(validate_adoption(&fixture("divorce-heng-ly.json"), today()).is_err());
    assert!(validate_divorce(&fixture("adoption-by-kidc.json"), today()).is_err());
    assert!(validate_marriage(&fixture("amendment-add-given-name.json"), today()).is_err());
    // The event field is required of each.
    let untagged = with(fixture("death-elderly.json"), "/event", None);
    assert_eq!(
        validate_death(&untagged, today()).expect_err("no event").problems,
        [FieldProblem::new("event", "is required")]
    );
}

#[test]
fn problem_messages_never_contain_the_input() {
    let secret = "ZZSECRETZZ";
    let long = secret.repeat(1000);
    let person = json!({
        "family_name": long, "given_name": format!("{secret}\u{202E}"),
        "family_name_latin": format!("{secret}\u{7}"), "sex": secret,
        "date_of_birth": secret, "nationality": secret,
        "id_document": { "kind": secret, "number": long },
        "ZZSECRETZZ field": secret
    });
    let docs = [
        json!({ "event": "death", "deceased": person, "date_of_death": secret,
                "place_of_death": { "kind": secret, "facility_name": long, "village_code": secret },
                "cause_of_death": { "text": long, "icd10": secret, "certified_by": secret },
                "informant": { "relationship": secret, "given_name": 7 }, "remarks": long.repeat(3) }),
        json!({ "event": "death", "deceased": { "kidc": secret, "given_name": secret } }),
        json!({ "event": "marriage", "date_of_marriage": secret, "place_of_marriage": secret,
                "spouses": [person, person], "witnesses": [person] }),
        json!({ "event": "divorce", "spouses": [person, { "kidc": "1000000002" }],
                "date_of_marriage": secret, "date_of_divorce": secret,
                "court_decision": { "court": long, "number": long, "date": secret } }),
        json!({ "event": "adoption", "child": { "kidc": secret }, "adoptive_parents": [person],
                "court_decision": secret }),
        json!({ "event": "amendment", "reason": long,
                "changes": { "child.given_name": long, "child.sex": secret,
                             "child.ZZSECRETZZ name": secret, "server.kidc": secret } }),
        json!({ "event": secret }),
    ];
    for doc in docs {
        let err = problems_of(&doc);
        let everything = format!("{err} {}", serde_json::to_string(&err).expect("serializes"));
        assert!(!everything.to_uppercase().contains("SECRET"), "{everything}");
    }
}
