use super::*;

fn heng_ly() -> Value {
    fixture("divorce-heng-ly.json")
}

#[test]
fn the_heng_ly_divorce_is_typed() {
    let divorce = validate_divorce(&heng_ly(), today()).expect("valid");
    let [Identified::Described(bopha), Identified::Described(piseth)] = &divorce.spouses else {
        panic!("both described");
    };
    assert_eq!(bopha.given_name_latin.as_deref(), Some("BOPHA"));
    assert_eq!(bopha.family_name, None);
    assert_eq!(piseth.date_of_birth, Some(date("1997-01-28")));
    assert_eq!(divorce.date_of_divorce, date("2026-11-29"));
    assert_eq!(divorce.court_decision.number, "123/2026");
    assert_eq!(divorce.court_decision.date, date("2026-11-29"));
}

#[test]
fn a_divorce_before_the_marriage_is_refused() {
    let doc = with(heng_ly(), "/date_of_divorce", Some(json!("2026-11-20")));
    let doc = with(doc, "/court_decision/date", Some(json!("2026-11-20")));
    assert_eq!(
        problems_of(&doc).problems,
        [
            FieldProblem::new("date_of_divorce", "must not be before the date of marriage"),
            FieldProblem::new("court_decision.date", "must not be before the date of marriage"),
        ]
    );
    // The day of the marriage itself is possible.
    let doc = with(heng_ly(), "/date_of_divorce", Some(json!("2026-11-21")));
    validate_divorce(&doc, today()).expect("same day");
}

#[test]
fn a_divorce_needs_a_court_decision_with_every_part() {
    let doc = with(heng_ly(), "/court_decision", None);
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("court_decision", "is required")]
    );
    let doc = with(heng_ly(), "/court_decision", Some(json!({})));
    assert_eq!(
        fields(&problems_of(&doc)),
        [
            "court_decision.court",
            "court_decision.number",
            "court_decision.date"
        ]
    );
    let doc = with(
        heng_ly(),
        "/court_decision/number",
        Some(json!("123/\u{202E}2026")),
    );
    let doc = with(doc, "/court_decision/date", Some(json!("2027-02-01")));
    let doc = with(doc, "/court_decision/court", Some(json!("\u{200B}")));
    assert_eq!(
        problems_of(&doc).problems,
        [
            FieldProblem::new("court_decision.court", "must not be empty"),
            FieldProblem::new("court_decision.number", BIDI),
            FieldProblem::new("court_decision.date", "must not be in the future"),
        ]
    );
}

#[test]
fn a_spouse_needs_names_and_a_date_of_birth_or_a_document_or_a_kidc() {
    let doc = with(
        heng_ly(),
        "/spouses/0",
        Some(json!({ "date_of_birth": "2000-06-11" })),
    );
    assert_eq!(
        problems_of(&doc).problems,
        [
            FieldProblem::new(
                "spouses[0].family_name",
                "is required (or family_name_latin), unless kidc is given"
            ),
            FieldProblem::new(
                "spouses[0].given_name",
                "is required (or given_name_latin), unless kidc is given"
            ),
        ]
    );
    let doc = with(heng_ly(), "/spouses/1/id_document", None);
    let doc = with(doc, "/spouses/1/date_of_birth", None);
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new(
            "spouses[1].id_document",
            "is required when date_of_birth is left out, unless kidc is given"
        )]
    );
    // Khmer names serve as well as Latin ones, a document as well as a date.
    let doc = with(
        heng_ly(),
        "/spouses/1",
        Some(json!({
            "family_name": "លី", "given_name": "ពិសិដ្ឋ",
            "id_document": { "kind": "khmer_id_card", "number": "171100678" }
        })),
    );
    validate_divorce(&doc, today()).expect("Khmer names and a document");
    let doc = with(heng_ly(), "/spouses/0", Some(json!({ "kidc": "1000000001" })));
    let divorce = validate_divorce(&doc, today()).expect("a spouse by KIdC");
    assert!(matches!(divorce.spouses[0], Identified::ByKidc(_)));
    assert_eq!(divorce.to_json_value(), doc);
}

#[test]
fn a_spouse_born_after_the_marriage_is_refused() {
    let doc = with(heng_ly(), "/spouses/0/date_of_birth", Some(json!("2026-11-22")));
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new(
            "spouses[0].date_of_birth",
            "must not be after the date of marriage"
        )]
    );
}

#[test]
fn a_divorce_has_exactly_two_spouses() {
    let doc = with(heng_ly(), "/spouses/1", None);
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("spouses", "must hold exactly 2 entries")]
    );
}
