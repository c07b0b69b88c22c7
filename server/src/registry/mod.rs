//! The Population Registry: one entry per person, kept up to date from
//! every registered event in the transaction that registers it.
//!
//! Ingest ([`crate::ingest`]) calls [`check`] before it registers an
//! event (a hold code, or none) and [`apply`] once it has, both on the
//! writer's transaction. [`apply`] appends the event to the registry's
//! own append-only log (`registry_events`), then updates the state
//! tables (`registry_persons`, `registry_documents`, `registry_parents`,
//! `registry_marriages`, `registry_marital_history`,
//! `registry_person_events`) from it alone, so that [`rebuild`] can
//! replay the log through the same code and get the same rows.
//!
//! A person is keyed by an internal id, derived from the record that
//! first named them and their role in it ([`person_id`]; never random),
//! and holds a KIdC when they have one. **The document rule:** a person
//! named without a KIdC is found again by their identity document (kind
//! and number); the document is the primary key of `registry_documents`,
//! so two events naming one document always name one person. A person
//! named without a KIdC and without a document cannot be found again: each
//! such mention makes a new person.
//!
//! **Architecture invariant:** no personal data in logs, errors or
//! panics: hold codes, ids and counts only.

mod rebuild;
mod view;

use crvs_schema::Kidc;
use crvs_schema::birth::IdDocument;
use crvs_schema::date::Date;
use crvs_schema::event::{BirthField, Event, Identified, IdentifyingDetails, Person};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::storage::{RegistryEventRow, RegistryMarriage, RegistryPerson, StorageError, WriteTx};

pub use rebuild::{RebuildReport, rebuild, rebuild_check};
pub use view::{PersonView, person, person_text};

/// Hold: the event names a KIdC the registry does not hold.
pub const HOLD_UNKNOWN_KIDC: &str = "unknown_kidc";
/// Hold: the event names a person the registry holds as deceased.
pub const HOLD_ALREADY_DECEASED: &str = "already_deceased";
/// Hold: a spouse of a new marriage is married in the registry.
pub const HOLD_ALREADY_MARRIED: &str = "already_married";
/// Hold: a divorce of a marriage the registry does not hold between those
/// two people on that date.
pub const HOLD_UNKNOWN_MARRIAGE: &str = "unknown_marriage";

/// A father may die this many days before his child's birth (a
/// pregnancy's length, generously); a mother not before it.
const FATHER_DEATH_BEFORE_BIRTH_DAYS: i64 = 310;

/// A registered event, as the registry takes it.
#[derive(Debug, Clone)]
pub struct RegisteredEvent<'a> {
    /// The registered record.
    pub record_id: Uuid,
    /// Its registration number, e.g. `"171003/2026/000042"`.
    pub registration_number: &'a str,
    /// When it was registered, server ms.
    pub registered_at_ms: i64,
    /// The registering office (6-digit commune code).
    pub office: &'a str,
    /// The event, typed and validated.
    pub event: &'a Event,
    /// A birth: the child's new KIdC.
    pub kidc: Option<Kidc>,
    /// An amendment: what it amends.
    pub amends: Option<Amended>,
    /// Registered past the legal period.
    pub late: bool,
}

/// What an amendment amends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amended {
    /// The amended birth record.
    pub record_id: Uuid,
    /// Its child's KIdC.
    pub kidc: Option<Kidc>,
}

/// The internal id of the person who first entered the registry as
/// `role` of record `record_id`: a UUID (version 8) made of the first 16
/// bytes of SHA-256 over a fixed label, the record id and the role.
pub fn person_id(record_id: Uuid, role: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"crvs-registry-person\0");
    h.update(record_id.as_bytes());
    h.update(role.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn by_document(
    tx: &mut dyn WriteTx,
    doc: Option<&IdDocument>,
) -> Result<Option<RegistryPerson>, StorageError> {
    match doc {
        Some(d) => tx.registry_person_by_document(d.kind.as_str(), &d.number),
        None => Ok(None),
    }
}

/// A divorcing spouse: by KIdC, or by identity document.
fn identified(
    tx: &mut dyn WriteTx,
    who: &Identified<IdentifyingDetails>,
) -> Result<Option<RegistryPerson>, StorageError> {
    match who {
        Identified::ByKidc(k) => tx.registry_person_by_kidc(&k.kidc),
        Identified::Described(d) => by_document(tx, d.id_document.as_ref()),
    }
}

fn date(s: Option<&str>) -> Option<Date> {
    s.and_then(|s| Date::parse(s).ok())
}

/// The registry's checks of `event` before it is registered: the hold
/// code, or `None` when the registry sees nothing against it. `amends` is
/// what an amendment amends.
pub fn check(
    tx: &mut dyn WriteTx,
    event: &Event,
    amends: Option<&Amended>,
) -> Result<Option<&'static str>, StorageError> {
    let deceased = |p: &Option<RegistryPerson>| p.as_ref().is_some_and(|p| p.date_of_death.is_some());
    Ok(match event {
        Event::Birth(b) => {
            // A child may be born after the father's death, and registered
            // after the mother's (who died giving birth): only a death
            // that makes the birth impossible names the wrong person.
            let born = b.child.date_of_birth;
            let mother = by_document(tx, b.mother.id_document.as_ref())?;
            let father = match &b.father {
                Some(f) => by_document(tx, f.id_document.as_ref())?,
                None => None,
            };
            let died_before = |p: &Option<RegistryPerson>, days: i64| {
                date(p.as_ref().and_then(|p| p.date_of_death.as_deref()))
                    .is_some_and(|died| born.days_since(&died) > days)
            };
            (died_before(&mother, 0) || died_before(&father, FATHER_DEATH_BEFORE_BIRTH_DAYS))
                .then_some(HOLD_ALREADY_DECEASED)
        }
        Event::Death(d) => match &d.deceased {
            Identified::ByKidc(k) => match tx.registry_person_by_kidc(&k.kidc)? {
                None => Some(HOLD_UNKNOWN_KIDC),
                p if deceased(&p) => Some(HOLD_ALREADY_DECEASED),
                _ => None,
            },
            Identified::Described(dec) => {
                deceased(&by_document(tx, dec.person.id_document.as_ref())?).then_some(HOLD_ALREADY_DECEASED)
            }
        },
        Event::Marriage(m) => {
            let mut hold = None;
            for spouse in &m.spouses {
                let p = by_document(tx, spouse.person.id_document.as_ref())?;
                if deceased(&p) {
                    return Ok(Some(HOLD_ALREADY_DECEASED));
                }
                if let Some(p) = p
                    && (p.marital_status.as_deref() == Some("married")
                        || tx.registry_current_marriage(p.person_id)?.is_some())
                {
                    hold = Some(HOLD_ALREADY_MARRIED);
                }
            }
            hold
        }
        Event::Divorce(d) => {
            let a = identified(tx, &d.spouses[0])?;
            let b = identified(tx, &d.spouses[1])?;
            if deceased(&a) || deceased(&b) {
                Some(HOLD_ALREADY_DECEASED)
            } else if current_marriage_between(tx, a.as_ref(), b.as_ref(), d.date_of_marriage)?.is_none() {
                Some(HOLD_UNKNOWN_MARRIAGE)
            } else {
                None
            }
        }
        Event::Adoption(a) => match tx.registry_person_by_kidc(&a.child.kidc)? {
            None => Some(HOLD_UNKNOWN_KIDC),
            p if deceased(&p) => Some(HOLD_ALREADY_DECEASED),
            _ => {
                let mut hold = None;
                for parent in &a.adoptive_parents {
                    if deceased(&by_document(tx, parent.person.id_document.as_ref())?) {
                        hold = Some(HOLD_ALREADY_DECEASED);
                    }
                }
                hold
            }
        },
        Event::Amendment(_) => match amends.and_then(|a| a.kidc) {
            Some(k) if tx.registry_person_by_kidc(&k)?.is_some() => None,
            _ => Some(HOLD_UNKNOWN_KIDC),
        },
    })
}

/// The current marriage of `a` and `b` celebrated on `on`, if any.
fn current_marriage_between(
    tx: &mut dyn WriteTx,
    a: Option<&RegistryPerson>,
    b: Option<&RegistryPerson>,
    on: Date,
) -> Result<Option<RegistryMarriage>, StorageError> {
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(None);
    };
    let on = on.to_string();
    Ok(tx.registry_current_marriage(a.person_id)?.filter(|m| {
        let other = if m.spouse_a == a.person_id {
            m.spouse_b
        } else {
            m.spouse_a
        };
        other == b.person_id && m.date_of_marriage == on
    }))
}

/// Updates the registry from a registered event, in the caller's
/// transaction: logs it in `registry_events`, then changes the persons it
/// names. An event the log already holds (by record id) changes nothing.
pub fn apply(tx: &mut dyn WriteTx, e: &RegisteredEvent<'_>) -> Result<(), StorageError> {
    let event = serde_json::to_string(e.event)
        .map_err(|_| StorageError::Corrupt("a registered event does not serialize"))?;
    let row = RegistryEventRow {
        seq: 0,
        record_id: e.record_id,
        kind: e.event.kind().as_str().to_owned(),
        registration_number: e.registration_number.to_owned(),
        registered_at_ms: e.registered_at_ms,
        office: e.office.to_owned(),
        event,
        kidc: e.kidc,
        amends_record_id: e.amends.map(|a| a.record_id),
        amends_kidc: e.amends.and_then(|a| a.kidc),
        late: e.late,
    };
    match tx.registry_append_event(&row)? {
        Some(seq) => apply_state(tx, e, seq),
        None => {
            tracing::warn!(record = %e.record_id, "the registry already holds this event; not applied again");
            Ok(())
        }
    }
}

/// The state changes of event `e`, logged as `seq`: what [`apply`] does
/// after logging it, and what [`rebuild`] replays.
fn apply_state(tx: &mut dyn WriteTx, e: &RegisteredEvent<'_>, seq: u64) -> Result<(), StorageError> {
    let mut at = At {
        tx,
        record: e.record_id,
        seq,
        marital: Vec::new(),
    };
    match e.event {
        Event::Birth(b) => {
            let born = b.child.date_of_birth.to_string();
            let residence = b.residence_village_code.as_str().to_owned();
            let citizenship = std::iter::once(&b.mother)
                .chain(&b.father)
                .any(|p| p.nationality == "KHM")
                .then(|| "KHM".to_owned());
            let c = &b.child;
            let child = RegistryPerson {
                person_id: person_id(e.record_id, "child"),
                kidc: e.kidc,
                family_name: Some(c.family_name.clone()),
                given_name: c.given_name.clone(),
                family_name_latin: c.family_name_latin.clone(),
                given_name_latin: c.given_name_latin.clone(),
                sex: Some(c.sex.as_str().to_owned()),
                date_of_birth: Some(born.clone()),
                place_of_birth_kind: Some(c.place_of_birth.kind.as_str().to_owned()),
                place_of_birth_facility: c.place_of_birth.facility_name.clone(),
                place_of_birth_village: Some(c.place_of_birth.village_code.as_str().to_owned()),
                nationality: None,
                citizenship,
                marital_status: Some("never_married".to_owned()),
                residence_village_code: Some(residence.clone()),
                date_of_death: None,
                death_record_id: None,
                first_seq: seq,
                last_seq: seq,
            };
            let child_id = child.person_id;
            // A KIdC the registry already holds (never issued twice) would
            // be refused by its unique index: keep the first holder.
            let child = match e.kidc {
                Some(k) if at.tx.registry_person_by_kidc(&k)?.is_some() => {
                    tracing::warn!(record = %e.record_id, "the child's KIdC is already in the registry");
                    RegistryPerson { kidc: None, ..child }
                }
                _ => child,
            };
            at.tx.registry_put_person(&child)?;
            at.tx
                .registry_add_marital(child_id, seq, "never_married", Some(&born))?;
            at.tx.registry_link_event(child_id, seq, "child")?;
            for (parent, relation, sex) in std::iter::once((&b.mother, "mother", "female"))
                .chain(b.father.as_ref().map(|f| (f, "father", "male")))
            {
                let mut p = at.find_or_new(parent.id_document.as_ref(), relation)?;
                fill(&mut p.family_name, Some(&parent.family_name));
                fill(&mut p.given_name, Some(&parent.given_name));
                fill(&mut p.family_name_latin, parent.family_name_latin.as_ref());
                fill(&mut p.given_name_latin, parent.given_name_latin.as_ref());
                fill(&mut p.sex, Some(&sex.to_owned()));
                fill(
                    &mut p.date_of_birth,
                    parent.date_of_birth.map(|d| d.to_string()).as_ref(),
                );
                fill(&mut p.nationality, Some(&parent.nationality));
                fill(&mut p.citizenship, Some(&parent.nationality));
                fill(&mut p.residence_village_code, Some(&residence));
                at.save(&mut p, parent.id_document.as_ref(), relation)?;
                at.tx.registry_add_parent(child_id, p.person_id, relation, seq)?;
            }
        }
        Event::Death(d) => {
            let died = d.date_of_death.to_string();
            let mut p = match &d.deceased {
                Identified::ByKidc(k) => match at.tx.registry_person_by_kidc(&k.kidc)? {
                    Some(p) => p,
                    None => {
                        tracing::warn!(record = %e.record_id, "a death of a KIdC the registry does not hold");
                        return Ok(());
                    }
                },
                Identified::Described(dec) => {
                    let mut p = at.find_or_new(dec.person.id_document.as_ref(), "deceased")?;
                    at.fill_person(&mut p, &dec.person, dec.date_of_birth);
                    fill(
                        &mut p.residence_village_code,
                        Some(&dec.residence_village_code.as_str().to_owned()),
                    );
                    if p.marital_status.is_none()
                        && let Some(status) = dec.marital_status
                    {
                        at.set_marital(&mut p, status.as_str(), None);
                    }
                    p
                }
            };
            if p.date_of_death.is_none() {
                p.date_of_death = Some(died.clone());
                p.death_record_id = Some(e.record_id);
            }
            if let Some(mut m) = at.tx.registry_current_marriage(p.person_id)? {
                m.ended_on = Some(died.clone());
                m.ended_by = Some("death".to_owned());
                m.end_record_id = Some(e.record_id);
                at.tx.registry_put_marriage(&m)?;
                let other = if m.spouse_a == p.person_id {
                    m.spouse_b
                } else {
                    m.spouse_a
                };
                if let Some(mut o) = at.tx.registry_person(other)? {
                    at.set_marital(&mut o, "widowed", Some(&died));
                    at.save(&mut o, None, "widowed")?;
                }
            }
            let doc = match &d.deceased {
                Identified::Described(dec) => dec.person.id_document.as_ref(),
                Identified::ByKidc(_) => None,
            };
            at.save(&mut p, doc, "deceased")?;
        }
        Event::Marriage(m) => {
            let on = m.date_of_marriage.to_string();
            let mut ids = [Uuid::nil(); 2];
            for (i, (spouse, role)) in m.spouses.iter().zip(["spouse_a", "spouse_b"]).enumerate() {
                let mut p = at.find_or_new(spouse.person.id_document.as_ref(), role)?;
                at.fill_person(&mut p, &spouse.person, Some(spouse.date_of_birth));
                p.residence_village_code = Some(spouse.residence_village_code.as_str().to_owned());
                at.set_marital(&mut p, "married", Some(&on));
                at.save(&mut p, spouse.person.id_document.as_ref(), "spouse")?;
                ids[i] = p.person_id;
            }
            at.tx.registry_put_marriage(&RegistryMarriage {
                marriage_id: e.record_id,
                spouse_a: ids[0],
                spouse_b: ids[1],
                date_of_marriage: on,
                place_village: m.place_of_marriage.village_code.as_str().to_owned(),
                ended_on: None,
                ended_by: None,
                end_record_id: None,
            })?;
        }
        Event::Divorce(d) => {
            let a = identified(at.tx, &d.spouses[0])?;
            let b = identified(at.tx, &d.spouses[1])?;
            let Some(mut m) = current_marriage_between(at.tx, a.as_ref(), b.as_ref(), d.date_of_marriage)?
            else {
                tracing::warn!(record = %e.record_id, "a divorce of a marriage the registry does not hold");
                return Ok(());
            };
            let on = d.date_of_divorce.to_string();
            m.ended_on = Some(on.clone());
            m.ended_by = Some("divorce".to_owned());
            m.end_record_id = Some(e.record_id);
            at.tx.registry_put_marriage(&m)?;
            for mut p in [a, b].into_iter().flatten() {
                at.set_marital(&mut p, "divorced", Some(&on));
                at.save(&mut p, None, "spouse")?;
            }
        }
        Event::Adoption(a) => {
            let Some(mut child) = at.tx.registry_person_by_kidc(&a.child.kidc)? else {
                tracing::warn!(record = %e.record_id, "an adoption of a KIdC the registry does not hold");
                return Ok(());
            };
            for (i, parent) in a.adoptive_parents.iter().enumerate() {
                let role = if i == 0 {
                    "adoptive_parent_1"
                } else {
                    "adoptive_parent_2"
                };
                let mut p = at.find_or_new(parent.person.id_document.as_ref(), role)?;
                at.fill_person(&mut p, &parent.person, Some(parent.date_of_birth));
                at.save(&mut p, parent.person.id_document.as_ref(), "adoptive_parent")?;
                at.tx
                    .registry_add_parent(child.person_id, p.person_id, "adoptive", seq)?;
            }
            at.save(&mut child, None, "adopted_child")?;
        }
        Event::Amendment(a) => {
            let Some(kidc) = e.amends.and_then(|a| a.kidc) else {
                return Ok(());
            };
            let Some(mut p) = at.tx.registry_person_by_kidc(&kidc)? else {
                tracing::warn!(record = %e.record_id, "an amendment of a KIdC the registry does not hold");
                return Ok(());
            };
            for (field, value) in &a.changes {
                let value = value.as_str().map(str::to_owned);
                match field {
                    BirthField::ChildFamilyName => p.family_name = value,
                    BirthField::ChildGivenName => p.given_name = value,
                    BirthField::ChildFamilyNameLatin => p.family_name_latin = value,
                    BirthField::ChildGivenNameLatin => p.given_name_latin = value,
                    BirthField::ChildSex => p.sex = value,
                    BirthField::ChildDateOfBirth => p.date_of_birth = value,
                    BirthField::ChildPlaceOfBirthKind => p.place_of_birth_kind = value,
                    BirthField::ChildPlaceOfBirthFacilityName => p.place_of_birth_facility = value,
                    BirthField::ChildPlaceOfBirthVillageCode => p.place_of_birth_village = value,
                    // The parents', the informant's and the record's own
                    // fields: the event, in the person's events, says it.
                    _ => {}
                }
            }
            at.save(&mut p, None, "amended")?;
        }
    }
    Ok(())
}

/// Sets `slot` when it is empty: a later event does not overwrite what an
/// earlier one said (except where noted: residence, marital status).
fn fill(slot: &mut Option<String>, value: Option<&String>) {
    if slot.is_none() {
        slot.clone_from(&value.cloned());
    }
}

/// The event being applied.
struct At<'t> {
    tx: &'t mut dyn WriteTx,
    record: Uuid,
    seq: u64,
    /// Marital status changes to record once their person is stored.
    marital: Vec<(Uuid, String, Option<String>)>,
}

impl At<'_> {
    /// The person with this document, or a new one (not yet stored) who
    /// enters as `role` of this record.
    fn find_or_new(&mut self, doc: Option<&IdDocument>, role: &str) -> Result<RegistryPerson, StorageError> {
        if let Some(p) = by_document(self.tx, doc)? {
            return Ok(p);
        }
        Ok(RegistryPerson {
            person_id: person_id(self.record, role),
            first_seq: self.seq,
            last_seq: self.seq,
            ..RegistryPerson::default()
        })
    }

    /// Fills what `person` says that the registry does not have yet.
    fn fill_person(&mut self, p: &mut RegistryPerson, person: &Person, born: Option<Date>) {
        fill(&mut p.family_name, Some(&person.name.family_name));
        fill(&mut p.given_name, Some(&person.name.given_name));
        fill(&mut p.family_name_latin, person.name.family_name_latin.as_ref());
        fill(&mut p.given_name_latin, person.name.given_name_latin.as_ref());
        fill(&mut p.sex, Some(&person.sex.as_str().to_owned()));
        fill(&mut p.date_of_birth, born.map(|d| d.to_string()).as_ref());
        fill(&mut p.nationality, Some(&person.nationality));
        fill(&mut p.citizenship, Some(&person.nationality));
    }

    /// Changes the marital status, with an entry in its history (written
    /// by [`At::save`]).
    fn set_marital(&mut self, p: &mut RegistryPerson, status: &str, since: Option<&str>) {
        p.marital_status = Some(status.to_owned());
        self.marital
            .push((p.person_id, status.to_owned(), since.map(str::to_owned)));
    }

    /// Stores the person (and their document, when new) and records their
    /// part in the event.
    fn save(
        &mut self,
        p: &mut RegistryPerson,
        doc: Option<&IdDocument>,
        role: &str,
    ) -> Result<(), StorageError> {
        p.last_seq = self.seq;
        self.tx.registry_put_person(p)?;
        for (id, status, since) in std::mem::take(&mut self.marital) {
            if id == p.person_id {
                self.tx
                    .registry_add_marital(id, self.seq, &status, since.as_deref())?;
            } else {
                self.marital.push((id, status, since));
            }
        }
        if let Some(d) = doc {
            self.tx
                .registry_add_document(p.person_id, d.kind.as_str(), &d.number, self.seq)?;
        }
        self.tx.registry_link_event(p.person_id, self.seq, role)
    }
}

/// The registered event of a log entry, to replay it.
fn replayed(row: &RegistryEventRow) -> Result<Event, StorageError> {
    let event: Event = serde_json::from_str(&row.event)
        .map_err(|_| StorageError::Corrupt("a registry event does not parse"))?;
    if event.kind().as_str() != row.kind {
        return Err(StorageError::Corrupt(
            "a registry event's kind does not match its JSON",
        ));
    }
    Ok(event)
}
