use super::*;

fn add_given_name() -> Value {
    fixture("amendment-add-given-name.json")
}

/// A clerical correction of `changes`.
fn correction(changes: Value) -> Value {
    json!({ "event": "amendment", "changes": changes, "reason": "clerical_error" })
}

const SERVER_ONLY: &str = "is written by the server only: an amendment cannot change it";

#[test]
fn the_given_name_amendment_is_typed() {
    let amendment = validate_amendment(&add_given_name(), today()).expect("valid");
    assert_eq!(amendment.reason, AmendmentReason::GivenNameAdded);
    assert_eq!(
        amendment.changes.keys().copied().collect::<Vec<_>>(),
        [BirthField::ChildGivenName, BirthField::ChildGivenNameLatin]
    );
    assert_eq!(
        amendment.changes[&BirthField::ChildGivenNameLatin],
        json!("SREYPOV")
    );
    assert!(amendment.remarks.is_some());
}

#[test]
fn an_amendment_without_a_reason_is_refused() {
    let err = validate_amendment(&fixture("amendment-no-reason.json"), today()).expect_err("no reason");
    assert_eq!(err.problems, [FieldProblem::new("reason", "is required")]);
}

#[test]
fn a_reason_of_ten_thousand_characters_is_refused_without_being_repeated() {
    let long = "given_name_added".repeat(625);
    assert_eq!(long.chars().count(), 10_000);
    let doc = with(add_given_name(), "/reason", Some(json!(long)));
    let err = problems_of(&doc);
    assert_eq!(
        err.problems,
        [FieldProblem::new(
            "reason",
            "must be one of given_name_added, clerical_error, paternity_acknowledged, court_order, name_change"
        )]
    );
    assert!(err.to_string().len() < 200, "{err}");
    for reason in AmendmentReason::ALL
        .iter()
        .filter(|r| r.allows(BirthField::ChildGivenName))
    {
        let doc = with(add_given_name(), "/reason", Some(json!(reason.as_str())));
        validate_amendment(&doc, today()).unwrap_or_else(|e| panic!("{reason}: {e}"));
    }
}

#[test]
fn server_owned_fields_cannot_be_amended() {
    for key in [
        "server.kidc",
        "kidc",
        "server",
        "server.hold",
        "registration_number",
    ] {
        let doc = correction(json!({ key: "1000000001" }));
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new(format!("changes.{key}"), SERVER_ONLY)],
            "{key}"
        );
    }
    for key in [
        "event",
        "child.kidc",
        "transitions",
        "mother.phone",
        "child.given_name.x",
        "",
    ] {
        let doc = correction(json!({ key: "x" }));
        let shown = if key.is_empty() {
            "changes.*".to_owned()
        } else {
            format!("changes.{key}")
        };
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new(
                shown,
                "is not a field of a birth registration that an amendment may change"
            )],
            "{key}"
        );
    }
    for key in ["child", "father", "child.place_of_birth", "mother.id_document"] {
        let doc = correction(json!({ key: {} }));
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new(
                format!("changes.{key}"),
                "must name a single field (such as child.given_name), not a whole part of the registration"
            )],
            "{key}"
        );
    }
}

#[test]
fn an_amendment_changes_at_least_one_field() {
    let doc = with(add_given_name(), "/changes", Some(json!({})));
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("changes", "must change at least one field")]
    );
    for not_an_object in [json!([]), json!("child.given_name"), json!(null)] {
        let doc = with(add_given_name(), "/changes", Some(not_an_object));
        assert_eq!(fields(&problems_of(&doc)), ["changes"]);
    }
}

#[test]
fn each_new_value_passes_the_rule_of_the_field_it_replaces() {
    // The Latin rule drops the joiners; the Khmer rule keeps them.
    let doc = correction(json!({
        "child.given_name": " ស្រី\u{200D}ពៅ\u{200B} ",
        "child.given_name_latin": "SREY\u{200D}POV ",
        "child.sex": "female",
        "child.date_of_birth": "2026-11-02",
        "child.place_of_birth.village_code": "17100302",
        "mother.id_document.number": " 170123457 ",
        "father.nationality": "THA",
        "informant.relationship": "grandmother",
        "registered_away_from_residence": true,
        "remarks": null,
    }));
    let amendment = validate_amendment(&doc, today()).expect("valid");
    assert_eq!(
        amendment.changes[&BirthField::ChildGivenName],
        json!("ស្រី\u{200D}ពៅ")
    );
    assert_eq!(
        amendment.changes[&BirthField::ChildGivenNameLatin],
        json!("SREYPOV")
    );
    assert_eq!(
        amendment.changes[&BirthField::MotherIdDocumentNumber],
        json!("170123457")
    );
    assert_eq!(amendment.changes[&BirthField::Remarks], Value::Null);
    assert_eq!(amendment.changes.len(), 10);
    let bad = correction(json!({
        "child.given_name": "ស្រី\u{202E}ពៅ",
        "child.family_name_latin": "SOK\u{00AD}",
        "child.sex": "F",
        "child.date_of_birth": "2027-02-01",
        "child.place_of_birth.village_code": "171003",
        "mother.nationality": "khm",
        "mother.id_document.number": "170\u{200B}123",
        "father.id_document.kind": "licence",
        "informant.relationship": "son",
        "registered_away_from_residence": "yes",
        "remarks": "",
    }));
    let err = problems_of(&bad);
    assert_eq!(
        fields(&err),
        [
            "changes.child.date_of_birth",
            "changes.child.family_name_latin",
            "changes.child.given_name",
            "changes.child.place_of_birth.village_code",
            "changes.child.sex",
            "changes.father.id_document.kind",
            "changes.informant.relationship",
            "changes.mother.id_document.number",
            "changes.mother.nationality",
            "changes.registered_away_from_residence",
            "changes.remarks",
        ]
    );
    assert!(
        err.problems
            .contains(&FieldProblem::new("changes.child.given_name", BIDI))
    );
    assert!(err.problems.contains(&FieldProblem::new(
        "changes.child.date_of_birth",
        "must not be in the future"
    )));
}

#[test]
fn a_right_to_left_override_in_a_new_latin_name_is_refused() {
    let doc = with(
        add_given_name(),
        "/changes/child.given_name_latin",
        Some(json!("\u{202E}VOPYERS")),
    );
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("changes.child.given_name_latin", BIDI)]
    );
}

#[test]
fn a_required_field_cannot_be_removed_but_an_optional_one_can() {
    let doc = correction(json!({ "child.family_name": null, "mother.nationality": null }));
    assert_eq!(
        problems_of(&doc).problems,
        [
            FieldProblem::new(
                "changes.child.family_name",
                "must not be null: a birth registration requires the field"
            ),
            FieldProblem::new(
                "changes.mother.nationality",
                "must not be null: a birth registration requires the field"
            ),
        ]
    );
    let doc = correction(json!({ "father.given_name_latin": null, "mother.date_of_birth": null }));
    validate_amendment(&doc, today()).expect("optional fields removed");
    assert!(BirthField::ALL.iter().filter(|f| f.is_required()).count() >= 10);
}

#[test]
fn a_reason_may_restrict_the_fields_it_changes() {
    let doc = with(add_given_name(), "/changes/child.family_name", Some(json!("សុខ")));
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new(
            "changes.child.family_name",
            "cannot be changed by an amendment for the reason given_name_added"
        )]
    );
    let paternity = json!({
        "event": "amendment",
        "reason": "paternity_acknowledged",
        "changes": { "father.family_name": "សុខ", "father.given_name": "វិចិត្រ", "father.nationality": "KHM",
                     "child.family_name": "សុខ" }
    });
    validate_amendment(&paternity, today()).expect("the father and the child's family name");
    let doc = with(paternity, "/changes/mother.given_name", Some(json!("សុភា")));
    assert_eq!(fields(&problems_of(&doc)), ["changes.mother.given_name"]);
}

#[test]
fn every_birth_field_path_is_a_field_of_the_birth_layout() {
    let birth = fixture("birth-sok-dara.json");
    let birth = with(birth, "/remarks", Some(json!("x")));
    let birth = with(birth, "/registered_away_from_residence", Some(json!(false)));
    let birth = with(
        birth,
        "/father/id_document",
        Some(json!({ "kind": "passport", "number": "N1" })),
    );
    let birth = with(birth, "/informant/family_name", Some(json!("ចាន់")));
    let birth = with(birth, "/informant/given_name", Some(json!("សុភា")));
    for field in BirthField::ALL {
        let pointer = format!("/{}", field.as_str().replace('.', "/"));
        assert!(
            birth.pointer(&pointer).is_some(),
            "{field} is not in the birth layout"
        );
    }
    assert_eq!(BirthField::ALL.len(), 31);
}

#[test]
fn an_unusual_key_in_changes_is_not_shown() {
    let doc = correction(json!({ "child.ឈ្មោះ": "x", "child given_name": "y" }));
    assert_eq!(fields(&problems_of(&doc)), ["changes.*", "changes.*"]);
}
