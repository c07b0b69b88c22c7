//! A person as `crvs-server person` shows them.

use crvs_schema::Kidc;
use serde::Serialize;

use crate::storage::{RegistryEntry, RegistryPerson, Storage, StorageError};

/// Everything the registry holds about one person, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonView {
    /// The internal person id.
    pub person_id: String,
    /// The KIdC, if any.
    pub kidc: Option<String>,
    /// Family name, Khmer script.
    pub family_name: Option<String>,
    /// Given name, Khmer script.
    pub given_name: Option<String>,
    /// Family name, Latin script.
    pub family_name_latin: Option<String>,
    /// Given name, Latin script.
    pub given_name_latin: Option<String>,
    /// `male` or `female`.
    pub sex: Option<String>,
    /// `YYYY-MM-DD`.
    pub date_of_birth: Option<String>,
    /// Where they were born, when known.
    pub place_of_birth: Option<PlaceView>,
    /// Nationality as declared.
    pub nationality: Option<String>,
    /// Citizenship.
    pub citizenship: Option<String>,
    /// Current marital status.
    pub marital_status: Option<String>,
    /// Every change of it, oldest first.
    pub marital_history: Vec<MaritalView>,
    /// Declared address: the residence village code.
    pub residence_village_code: Option<String>,
    /// Alive (no death registered).
    pub alive: bool,
    /// Date of death.
    pub date_of_death: Option<String>,
    /// Identity documents.
    pub documents: Vec<DocumentView>,
    /// Parents: `by` is `birth` or `adoption`.
    pub parents: Vec<RelativeView>,
    /// Children: `by` is `birth` or `adoption`.
    pub children: Vec<RelativeView>,
    /// Marriages, current and ended.
    pub marriages: Vec<MarriageView>,
    /// The events that named or changed the person.
    pub events: Vec<EventView>,
}

/// A place of birth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaceView {
    /// `health_facility`, `home`, `other`.
    pub kind: Option<String>,
    /// The facility's name.
    pub facility_name: Option<String>,
    /// The village code.
    pub village_code: Option<String>,
}

/// An entry of the marital history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaritalView {
    /// The status from then on.
    pub status: String,
    /// Since (the event's date), when known.
    pub since: Option<String>,
    /// The registry event that changed it.
    pub seq: u64,
}

/// An identity document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentView {
    /// `khmer_id_card`, `family_book`, `passport`.
    pub kind: String,
    /// As printed.
    pub number: String,
}

/// A parent or a child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelativeView {
    /// `mother`, `father` or `parent` (adoptive, by sex), for a parent;
    /// `child` for a child.
    pub relation: String,
    /// `birth` or `adoption`.
    pub by: String,
    /// The relative.
    #[serde(flatten)]
    pub person: PersonRef,
}

/// Who another person is, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonRef {
    /// Their internal id.
    pub person_id: String,
    /// Their KIdC, when they have one.
    pub kidc: Option<String>,
    /// Family name, Khmer script.
    pub family_name: Option<String>,
    /// Given name, Khmer script.
    pub given_name: Option<String>,
    /// Family name, Latin script.
    pub family_name_latin: Option<String>,
    /// Given name, Latin script.
    pub given_name_latin: Option<String>,
}

/// A marriage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarriageView {
    /// The marriage's record id.
    pub record_id: String,
    /// The other spouse.
    pub spouse: PersonRef,
    /// `YYYY-MM-DD`.
    pub date_of_marriage: String,
    /// Where (village code).
    pub place_village_code: String,
    /// When it ended.
    pub ended_on: Option<String>,
    /// `divorce` or `death`.
    pub ended_by: Option<String>,
}

/// An event that named or changed the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventView {
    /// The registered record.
    pub record_id: String,
    /// `birth`, `death`, ...
    pub kind: String,
    /// Its registration number.
    pub registration_number: String,
    /// When it was registered, server ms.
    pub registered_at_ms: i64,
    /// The person's role in it.
    pub role: String,
}

fn person_ref(p: &RegistryPerson) -> PersonRef {
    PersonRef {
        person_id: p.person_id.to_string(),
        kidc: p.kidc.map(|k| k.to_string()),
        family_name: p.family_name.clone(),
        given_name: p.given_name.clone(),
        family_name_latin: p.family_name_latin.clone(),
        given_name_latin: p.given_name_latin.clone(),
    }
}

impl From<RegistryEntry> for PersonView {
    fn from(e: RegistryEntry) -> PersonView {
        let p = &e.person;
        let parents = e
            .parents
            .iter()
            .map(|r| {
                let adoptive = r.relation == "adoptive";
                RelativeView {
                    relation: match (adoptive, r.person.sex.as_deref()) {
                        (false, _) => r.relation.clone(),
                        (true, Some("female")) => "mother".to_owned(),
                        (true, Some("male")) => "father".to_owned(),
                        (true, _) => "parent".to_owned(),
                    },
                    by: if adoptive { "adoption" } else { "birth" }.to_owned(),
                    person: person_ref(&r.person),
                }
            })
            .collect();
        let children = e
            .children
            .iter()
            .map(|r| RelativeView {
                relation: "child".to_owned(),
                by: if r.relation == "adoptive" {
                    "adoption"
                } else {
                    "birth"
                }
                .to_owned(),
                person: person_ref(&r.person),
            })
            .collect();
        let marriages = e
            .marriages
            .iter()
            .zip(&e.spouses)
            .map(|(m, s)| MarriageView {
                record_id: m.marriage_id.to_string(),
                spouse: person_ref(s),
                date_of_marriage: m.date_of_marriage.clone(),
                place_village_code: m.place_village.clone(),
                ended_on: m.ended_on.clone(),
                ended_by: m.ended_by.clone(),
            })
            .collect();
        let has_place = p.place_of_birth_kind.is_some()
            || p.place_of_birth_village.is_some()
            || p.place_of_birth_facility.is_some();
        PersonView {
            person_id: p.person_id.to_string(),
            kidc: p.kidc.map(|k| k.to_string()),
            family_name: p.family_name.clone(),
            given_name: p.given_name.clone(),
            family_name_latin: p.family_name_latin.clone(),
            given_name_latin: p.given_name_latin.clone(),
            sex: p.sex.clone(),
            date_of_birth: p.date_of_birth.clone(),
            place_of_birth: has_place.then(|| PlaceView {
                kind: p.place_of_birth_kind.clone(),
                facility_name: p.place_of_birth_facility.clone(),
                village_code: p.place_of_birth_village.clone(),
            }),
            nationality: p.nationality.clone(),
            citizenship: p.citizenship.clone(),
            marital_status: p.marital_status.clone(),
            marital_history: e
                .marital_history
                .iter()
                .map(|m| MaritalView {
                    status: m.status.clone(),
                    since: m.since.clone(),
                    seq: m.seq,
                })
                .collect(),
            residence_village_code: p.residence_village_code.clone(),
            alive: p.date_of_death.is_none(),
            date_of_death: p.date_of_death.clone(),
            documents: e
                .documents
                .iter()
                .map(|(kind, number)| DocumentView {
                    kind: kind.clone(),
                    number: number.clone(),
                })
                .collect(),
            parents,
            children,
            marriages,
            events: e
                .events
                .iter()
                .map(|v| EventView {
                    record_id: v.record_id.to_string(),
                    kind: v.kind.clone(),
                    registration_number: v.registration_number.clone(),
                    registered_at_ms: v.registered_at_ms,
                    role: v.role.clone(),
                })
                .collect(),
        }
    }
}

/// The person with KIdC `kidc`, or `None` when the registry does not hold
/// them (read-only).
pub fn person(storage: &dyn Storage, kidc: &Kidc) -> Result<Option<PersonView>, StorageError> {
    Ok(storage.registry_entry(kidc)?.map(PersonView::from))
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

fn names(p: &PersonRef) -> String {
    format!(
        "{} {} ({} {})",
        or_dash(p.family_name.as_deref()),
        or_dash(p.given_name.as_deref()),
        or_dash(p.family_name_latin.as_deref()),
        or_dash(p.given_name_latin.as_deref())
    )
}

/// The person in a readable form, several lines.
pub fn person_text(v: &PersonView) -> String {
    let mut out = Vec::new();
    let me = PersonRef {
        person_id: v.person_id.clone(),
        kidc: v.kidc.clone(),
        family_name: v.family_name.clone(),
        given_name: v.given_name.clone(),
        family_name_latin: v.family_name_latin.clone(),
        given_name_latin: v.given_name_latin.clone(),
    };
    out.push(format!(
        "KIdC {}  person {}",
        or_dash(v.kidc.as_deref()),
        v.person_id
    ));
    out.push(format!("name: {}", names(&me)));
    out.push(format!(
        "sex: {}  born: {}{}",
        or_dash(v.sex.as_deref()),
        or_dash(v.date_of_birth.as_deref()),
        v.place_of_birth.as_ref().map_or(String::new(), |p| format!(
            " at {} village {}{}",
            or_dash(p.kind.as_deref()),
            or_dash(p.village_code.as_deref()),
            p.facility_name
                .as_deref()
                .filter(|f| !f.is_empty())
                .map_or(String::new(), |f| format!(" ({f})"))
        ))
    ));
    out.push(format!(
        "nationality: {}  citizenship: {}",
        or_dash(v.nationality.as_deref()),
        or_dash(v.citizenship.as_deref())
    ));
    out.push(format!(
        "residence village: {}",
        or_dash(v.residence_village_code.as_deref())
    ));
    out.push(match &v.date_of_death {
        Some(d) => format!("DECEASED on {d}"),
        None => "alive".to_owned(),
    });
    out.push(format!(
        "marital status: {}{}",
        or_dash(v.marital_status.as_deref()),
        if v.marital_history.is_empty() {
            String::new()
        } else {
            format!(
                " (history: {})",
                v.marital_history
                    .iter()
                    .map(|m| format!("{} since {}", m.status, or_dash(m.since.as_deref())))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    for d in &v.documents {
        out.push(format!("document: {} {}", d.kind, d.number));
    }
    for r in &v.parents {
        out.push(format!(
            "{} (by {}): KIdC {}  {}",
            r.relation,
            r.by,
            or_dash(r.person.kidc.as_deref()),
            names(&r.person)
        ));
    }
    for r in &v.children {
        out.push(format!(
            "child (by {}): KIdC {}  {}",
            r.by,
            or_dash(r.person.kidc.as_deref()),
            names(&r.person)
        ));
    }
    for m in &v.marriages {
        out.push(format!(
            "married {} at village {} to KIdC {}  {}{}",
            m.date_of_marriage,
            m.place_village_code,
            or_dash(m.spouse.kidc.as_deref()),
            names(&m.spouse),
            match (&m.ended_on, &m.ended_by) {
                (Some(on), Some(by)) => format!("; ended {on} by {by}"),
                _ => String::new(),
            }
        ));
    }
    for e in &v.events {
        out.push(format!(
            "event: {} {} record {} ({}) registered at {}",
            e.kind, e.registration_number, e.record_id, e.role, e.registered_at_ms
        ));
    }
    out.join("\n")
}
