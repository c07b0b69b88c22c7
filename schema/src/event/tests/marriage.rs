use super::*;

fn heng_ly() -> Value {
    fixture("marriage-heng-ly.json")
}

const TOO_YOUNG: &str =
    "must make the spouse at least 18 years old on the date of marriage (the legal minimum age)";

#[test]
fn the_heng_ly_marriage_is_typed() {
    let marriage = validate_marriage(&heng_ly(), today()).expect("valid");
    assert_eq!(marriage.date_of_marriage, date("2026-11-21"));
    assert_eq!(marriage.place_of_marriage.village_code.as_str(), "17100301");
    let [bride, groom] = &marriage.spouses;
    assert_eq!(bride.person.name.given_name_latin.as_deref(), Some("BOPHA"));
    assert_eq!(bride.person.sex, crate::birth::Sex::Female);
    assert_eq!(groom.date_of_birth, date("1997-01-28"));
    assert_eq!(groom.marital_status_before, MaritalStatus::NeverMarried);
    assert_eq!(marriage.witnesses.len(), 2);
    assert_eq!(marriage.witnesses[1].family_name_latin.as_deref(), Some("LY"));
}

#[test]
fn the_underage_marriage_is_refused_naming_the_spouse() {
    let err = validate_marriage(&fixture("marriage-underage.json"), today()).expect_err("underage");
    assert_eq!(
        err.problems,
        [FieldProblem::new("spouses[0].date_of_birth", TOO_YOUNG)]
    );
}

#[test]
fn a_spouse_who_turns_18_the_day_after_the_marriage_is_refused() {
    // Married on 2026-11-21.
    let doc = with(heng_ly(), "/spouses/1/date_of_birth", Some(json!("2008-11-22")));
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("spouses[1].date_of_birth", TOO_YOUNG)]
    );
    let doc = with(heng_ly(), "/spouses/1/date_of_birth", Some(json!("2008-11-21")));
    validate_marriage(&doc, today()).expect("18 on the day");
    // Born on 29 February: 18 from 1 March.
    let doc = with(heng_ly(), "/date_of_marriage", Some(json!("2026-02-28")));
    let leap = with(doc.clone(), "/spouses/0/date_of_birth", Some(json!("2008-02-29")));
    assert_eq!(fields(&problems_of(&leap)), ["spouses[0].date_of_birth"]);
    let doc = with(leap, "/date_of_marriage", Some(json!("2026-03-01")));
    validate_marriage(&doc, today()).expect("18 on 1 March");
    // A spouse born after the marriage, or in the future.
    for dob in ["2026-11-22", "2027-06-01"] {
        let doc = with(heng_ly(), "/spouses/0/date_of_birth", Some(json!(dob)));
        assert_eq!(fields(&problems_of(&doc)), ["spouses[0].date_of_birth"], "{dob}");
    }
}

#[test]
fn a_spouse_married_before_is_refused_and_the_other_statuses_accepted() {
    let doc = with(
        heng_ly(),
        "/spouses/1/marital_status_before",
        Some(json!("married")),
    );
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new(
            "spouses[1].marital_status_before",
            "must not be married: a person still married cannot marry again (a divorce or the spouse's \
             death must be registered first)"
        )]
    );
    for status in ["never_married", "divorced", "widowed"] {
        let doc = with(heng_ly(), "/spouses/1/marital_status_before", Some(json!(status)));
        let marriage = validate_marriage(&doc, today()).unwrap_or_else(|e| panic!("{status}: {e}"));
        assert_eq!(marriage.to_json_value(), doc);
    }
    let doc = with(
        heng_ly(),
        "/spouses/0/marital_status_before",
        Some(json!("single")),
    );
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new(
            "spouses[0].marital_status_before",
            "must be one of never_married, married, divorced, widowed"
        )]
    );
}

#[test]
fn a_marriage_has_exactly_two_spouses() {
    let one = with(heng_ly(), "/spouses/1", None);
    let spouse = heng_ly()["spouses"][0].clone();
    let three = with(heng_ly(), "/spouses/2", Some(spouse));
    let none = with(heng_ly(), "/spouses", Some(json!([])));
    for doc in [one, three, none] {
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new("spouses", "must hold exactly 2 entries")]
        );
    }
    let object = with(heng_ly(), "/spouses", Some(json!({})));
    assert_eq!(
        problems_of(&object).problems,
        [FieldProblem::new("spouses", "must be a list")]
    );
    let missing = with(heng_ly(), "/spouses", None);
    assert_eq!(
        problems_of(&missing).problems,
        [FieldProblem::new("spouses", "is required")]
    );
}

#[test]
fn witnesses_are_optional_but_never_an_empty_list_or_more_than_four() {
    let doc = with(heng_ly(), "/witnesses", None);
    let marriage = validate_marriage(&doc, today()).expect("no witnesses");
    assert!(marriage.witnesses.is_empty());
    assert_eq!(marriage.to_json_value(), doc);
    let empty = with(heng_ly(), "/witnesses", Some(json!([])));
    let witness = heng_ly()["witnesses"][0].clone();
    let five = with(heng_ly(), "/witnesses", Some(json!(vec![witness; 5])));
    for doc in [empty, five] {
        assert_eq!(
            problems_of(&doc).problems,
            [FieldProblem::new("witnesses", "must hold 1 to 4 entries")]
        );
    }
}

#[test]
fn every_bad_field_of_every_spouse_is_reported_at_once() {
    let mut doc = heng_ly();
    for (pointer, value) in [
        ("/spouses/0/given_name", json!("បុប្ផា\u{202E}")),
        ("/spouses/0/nationality", json!("kh")),
        ("/spouses/1/family_name_latin", json!("LY\u{2066}")),
        ("/spouses/1/id_document/number", json!("171\u{200B}100678")),
        ("/spouses/1/residence_village_code", json!("1710030")),
        ("/witnesses/1/given_name_latin", json!("CHAN\u{202E}TREA")),
        ("/place_of_marriage/village_code", json!("99999999")),
    ] {
        doc = with(doc, pointer, Some(value));
    }
    assert_eq!(
        fields(&problems_of(&doc)),
        [
            "place_of_marriage.village_code",
            "spouses[0].given_name",
            "spouses[0].nationality",
            "spouses[1].family_name_latin",
            "spouses[1].id_document.number",
            "spouses[1].residence_village_code",
            "witnesses[1].given_name_latin",
        ]
    );
    let doc = with(heng_ly(), "/spouses/0/date_of_birth", None);
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("spouses[0].date_of_birth", "is required")]
    );
}

#[test]
fn a_marriage_after_today_is_refused() {
    let doc = with(heng_ly(), "/date_of_marriage", Some(json!("2027-02-01")));
    assert_eq!(
        problems_of(&doc).problems,
        [FieldProblem::new("date_of_marriage", "must not be in the future")]
    );
}
