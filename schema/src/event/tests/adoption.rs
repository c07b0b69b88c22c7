use super::*;

fn pech() -> Value {
    fixture("adoption-by-kidc.json")
}

#[test]
fn the_adoption_by_kidc_is_typed() {
    let adoption = validate_adoption(&pech(), today()).expect("valid");
    assert_eq!(adoption.child.kidc.as_str(), "1000000001");
    assert_eq!(adoption.adoptive_parents.len(), 2);
    assert_eq!(
        adoption.adoptive_parents[0]
            .person
            .name
            .given_name_latin
            .as_deref(),
        Some("SOVANN")
    );
    assert_eq!(adoption.adoptive_parents[1].date_of_birth, date("1987-12-03"));
    assert_eq!(adoption.court_decision.number, "45/2026");
}

#[test]
fn one_adoptive_parent_is_enough_and_three_too_many() {
    let one = with(pech(), "/adoptive_parents/1", None);
    let adoption = validate_adoption(&one, today()).expect("one parent");
    assert_eq!(adoption.adoptive_parents.len(), 1);
    let parent = pech()["adoptive_parents"][0].clone();
    let three = with(pech(), "/adoptive_parents/2", Some(parent));
    let none = with(pech(), "/adoptive_parents", Some(json!([])));
    for doc in [three, none] {
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new("adoptive_parents", "must hold 1 to 2 entries")]
        );
    }
}

#[test]
fn an_adoption_needs_a_court_decision() {
    let doc = with(pech(), "/court_decision", None);
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("court_decision", "is required")]
    );
}

#[test]
fn the_child_is_named_by_a_valid_kidc_only() {
    let doc = with(pech(), "/child", Some(json!({ "family_name": "ពេជ្រ" })));
    assert_eq!(
        problems_of(&doc).problems,
        [
            FieldProblem::new("child.family_name", "unknown field"),
            FieldProblem::new("child.kidc", "is required"),
        ]
    );
    let doc = with(pech(), "/child/kidc", Some(json!("1000000010")));
    assert_eq!(fields(&problems_of(&doc)), ["child.kidc"]);
    let doc = with(pech(), "/child/kidc", Some(json!("100000000")));
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new(
            "child.kidc",
            "must be a KIdC: it must be exactly 10 digits"
        )]
    );
}

#[test]
fn an_adoptive_parent_is_an_adult_on_the_date_of_the_decision() {
    // The decision is of 2026-11-26.
    let doc = with(
        pech(),
        "/adoptive_parents/1/date_of_birth",
        Some(json!("2008-11-27")),
    );
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new(
            "adoptive_parents[1].date_of_birth",
            "must make the adoptive parent at least 18 years old on the date of the court decision"
        )]
    );
    let doc = with(
        pech(),
        "/adoptive_parents/1/date_of_birth",
        Some(json!("2008-11-26")),
    );
    validate_adoption(&doc, today()).expect("18 on the day");
}

#[test]
fn a_right_to_left_override_in_an_adoptive_parents_name_is_refused() {
    let doc = with(
        pech(),
        "/adoptive_parents/0/given_name_latin",
        Some(json!("SOV\u{202E}ANN")),
    );
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("adoptive_parents[0].given_name_latin", BIDI)]
    );
}
