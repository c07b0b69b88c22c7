use super::*;

fn elderly() -> Value {
    fixture("death-elderly.json")
}

fn death_problems(doc: &Value) -> Vec<FieldProblem> {
    validate_death(doc, today()).expect_err("invalid").problems
}

#[test]
fn the_elderly_death_is_typed() {
    let death = validate_death(&elderly(), today()).expect("valid");
    let Identified::Described(deceased) = &death.deceased else {
        panic!("described, not by KIdC");
    };
    assert_eq!(deceased.person.name.family_name_latin.as_deref(), Some("MAO"));
    assert_eq!(deceased.date_of_birth, Some(date("1941-03-02")));
    assert_eq!(deceased.marital_status, Some(MaritalStatus::Widowed));
    assert_eq!(deceased.residence_village_code.as_str(), "17100302");
    assert_eq!(death.date_of_death, date("2026-11-25"));
    assert_eq!(
        death.cause_of_death.icd10.as_ref().map(Icd10::as_str),
        Some("I64")
    );
    assert_eq!(death.cause_of_death.certified_by, CertifiedBy::LayReporting);
    assert_eq!(death.informant.relationship, DeathInformantRelationship::Son);
    assert!(death.informant.id_document.is_some());
}

#[test]
fn the_death_by_kidc_names_the_deceased_by_code() {
    let death = validate_death(&fixture("death-by-kidc.json"), today()).expect("valid");
    assert_eq!(
        death.deceased,
        Identified::ByKidc(ByKidc {
            kidc: "1000000001".parse().expect("a KIdC")
        })
    );
    assert_eq!(death.cause_of_death.certified_by, CertifiedBy::Physician);
    assert_eq!(death.place_of_death.kind, crate::birth::PlaceKind::HealthFacility);
}

#[test]
fn a_kidc_with_a_wrong_check_digit_or_company_is_refused() {
    let doc = with(
        fixture("death-by-kidc.json"),
        "/deceased/kidc",
        Some(json!("1000000002")),
    );
    assert_eq!(
        death_problems(&doc),
        [FieldProblem::new(
            "deceased.kidc",
            "must be a KIdC: it has a wrong check digit"
        )]
    );
    let doc = with(
        fixture("death-by-kidc.json"),
        "/deceased/family_name",
        Some(json!("ម៉ៅ")),
    );
    assert_eq!(
        death_problems(&doc),
        [FieldProblem::new(
            "deceased.family_name",
            "must be left out when kidc is given"
        )]
    );
    let doc = with(
        fixture("death-by-kidc.json"),
        "/deceased/kidc",
        Some(json!(1000000001)),
    );
    assert_eq!(fields(&problems_of(&doc)), ["deceased.kidc"]);
}

#[test]
fn a_death_the_day_before_the_birth_is_refused_and_the_same_day_accepted() {
    let doc = with(elderly(), "/deceased/date_of_birth", Some(json!("2026-11-26")));
    assert_eq!(
        death_problems(&doc),
        [FieldProblem::new(
            "date_of_death",
            "must not be before the deceased's date of birth"
        )]
    );
    let doc = with(elderly(), "/deceased/date_of_birth", Some(json!("2026-11-25")));
    validate_death(&doc, today()).expect("a death on the day of birth");
    // Without a date of birth, nothing to compare.
    let doc = with(elderly(), "/deceased/date_of_birth", None);
    validate_death(&doc, today()).expect("an unknown date of birth");
}

#[test]
fn a_death_after_today_is_refused() {
    let doc = with(elderly(), "/date_of_death", Some(json!("2027-02-01")));
    assert_eq!(
        death_problems(&doc),
        [FieldProblem::new("date_of_death", "must not be in the future")]
    );
    let doc = with(elderly(), "/date_of_death", Some(json!("2027-01-31")));
    validate_death(&doc, today()).expect("today");
    for bad in ["2026-02-30", "2026-11-5", "yesterday"] {
        let doc = with(elderly(), "/date_of_death", Some(json!(bad)));
        assert_eq!(fields(&problems_of(&doc)), ["date_of_death"], "{bad}");
    }
}

#[test]
fn nobody_dies_older_than_120() {
    let doc = with(elderly(), "/deceased/date_of_birth", Some(json!("1905-11-25")));
    assert_eq!(
        death_problems(&doc),
        [FieldProblem::new(
            "deceased.date_of_birth",
            "must not be more than 120 years before the date of death"
        )]
    );
    let doc = with(elderly(), "/deceased/date_of_birth", Some(json!("1905-11-26")));
    validate_death(&doc, today()).expect("120 on the day of death");
}

#[test]
fn icd10_codes_are_checked_for_their_form() {
    let icd = |code: Value| with(elderly(), "/cause_of_death/icd10", Some(code));
    for bad in [
        "I6", "II64", "i64", "I64.", "I64.123", "164", "I6A", " I64", "I64 ", "P36-9", "P369", "", "I64.x",
        "Ｉ64",
    ] {
        assert_eq!(
            death_problems(&icd(json!(bad))),
            [FieldProblem::new(
                "cause_of_death.icd10",
                "must be an ICD-10 code: a capital letter, two digits, and optionally a dot and one or two \
                 more digits or capital letters (such as I64 or P36.9)"
            )],
            "{bad}"
        );
        assert!(Icd10::parse(bad).is_none(), "{bad}");
    }
    assert_eq!(fields(&problems_of(&icd(json!(64)))), ["cause_of_death.icd10"]);
    for good in ["I64", "P36.9", "U07.1", "A00.01", "C34.9X"] {
        let death = validate_death(&icd(json!(good)), today()).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(
            death.cause_of_death.icd10.map(|c| c.as_str().to_owned()),
            Some(good.to_owned())
        );
    }
    // The code is optional; the text and the certifier are not.
    let doc = with(elderly(), "/cause_of_death/icd10", None);
    validate_death(&doc, today()).expect("no code");
    let doc = with(doc, "/cause_of_death/text", Some(json!(" \u{200B} ")));
    let doc = with(doc, "/cause_of_death/certified_by", None);
    assert_eq!(
        death_problems(&doc),
        [
            FieldProblem::new("cause_of_death.text", "must not be empty"),
            FieldProblem::new("cause_of_death.certified_by", "is required"),
        ]
    );
    assert!(serde_json::from_value::<Icd10>(json!("II64")).is_err());
    assert!(serde_json::from_value::<Icd10>(json!("P36.9")).is_ok());
}

#[test]
fn certified_by_is_one_of_the_list() {
    for value in [
        "physician",
        "health_worker",
        "forensic",
        "verbal_autopsy",
        "lay_reporting",
    ] {
        let doc = with(elderly(), "/cause_of_death/certified_by", Some(json!(value)));
        let death = validate_death(&doc, today()).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(death.to_json_value(), doc);
    }
    assert_eq!(CertifiedBy::ALL.len(), 5);
    let doc = with(elderly(), "/cause_of_death/certified_by", Some(json!("doctor")));
    assert_eq!(
        death_problems(&doc),
        [FieldProblem::new(
            "cause_of_death.certified_by",
            "must be one of physician, health_worker, forensic, verbal_autopsy, lay_reporting"
        )]
    );
}

#[test]
fn a_right_to_left_override_in_a_name_is_refused_naming_the_field() {
    let doc = with(elderly(), "/deceased/given_name", Some(json!("សុខា\u{202E}")));
    let doc = with(doc, "/deceased/family_name_latin", Some(json!("\u{2067}MAO")));
    let doc = with(doc, "/informant/given_name", Some(json!("\u{202D}វណ្ណា")));
    let doc = with(doc, "/cause_of_death/text", Some(json!("stroke\u{202E}")));
    assert_eq!(
        death_problems(&doc),
        [
            FieldProblem::new("deceased.given_name", BIDI),
            FieldProblem::new("deceased.family_name_latin", BIDI),
            FieldProblem::new("cause_of_death.text", BIDI),
            FieldProblem::new("informant.given_name", BIDI),
        ]
    );
}

#[test]
fn every_bad_field_of_a_death_is_reported_at_once() {
    let mut doc = elderly();
    for (pointer, value) in [
        ("/deceased/sex", json!("F")),
        ("/deceased/marital_status", json!("single")),
        ("/deceased/residence_village_code", json!("171003")),
        ("/deceased/nickname", json!("x")),
        ("/place_of_death/kind", json!("health_facility")),
        (
            "/cause_of_death/text",
            json!("x".repeat(MAX_CAUSE_OF_DEATH_CHARS + 1)),
        ),
        ("/informant/relationship", json!("neighbour")),
        ("/remarks", json!("")),
    ] {
        doc = with(doc, pointer, Some(value));
    }
    assert_eq!(
        fields(&problems_of(&doc)),
        [
            "deceased.nickname",
            "deceased.sex",
            "deceased.marital_status",
            "deceased.residence_village_code",
            "place_of_death.facility_name",
            "cause_of_death.text",
            "informant.relationship",
            "remarks",
        ]
    );
    let err = problems_of(&doc);
    assert!(
        err.problems
            .iter()
            .any(|p| p.problem == "is required for a death in a health facility")
    );
}

#[test]
fn names_of_the_deceased_are_stored_normalized() {
    let doc = with(elderly(), "/deceased/given_name", Some(json!("  សុ\u{200B}ខា ")));
    let doc = with(doc, "/deceased/given_name_latin", Some(json!("SO\u{200D}KHA\t")));
    let death = validate_death(&doc, today()).expect("valid");
    let Identified::Described(deceased) = death.deceased else {
        panic!("described");
    };
    assert_eq!(deceased.person.name.given_name, "សុខា");
    assert_eq!(deceased.person.name.given_name_latin.as_deref(), Some("SOKHA"));
}
