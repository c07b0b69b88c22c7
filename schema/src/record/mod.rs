//! The layout of a record's automerge document, and the rules on who may
//! write which part of it.
//!
//! ```text
//! ROOT
//! ├── kind         "birth"                      tablet, written once
//! ├── office       "171003"                     tablet, written once
//! ├── data         "{\"child\":{...},...}"        tablet: the event data, one
//! │                                             JSON string
//! ├── transitions  [ "{\"action\":...,\"by\":...}", ... ]
//! │                                             tablet, append-only; each
//! │                                             step one JSON string
//! └── server       "{\"kidc\":...,\"registered_at_ms\":...}"
//!                                               server only, one JSON string
//! ```
//!
//! **Architecture invariant:** every field has exactly one writer side, so
//! that a merge never has to pick a winner between a tablet and the server.
//! [`check_tablet_changes`] is how the server enforces it.
//!
//! **Why JSON strings, not nested maps.** A registration is a legal
//! document that one device writes (the server refuses changes to a record
//! from any other device), a workflow step never changes once written, and
//! the server part has one writer. Field-by-field merging buys nothing
//! there, and it costs: an automerge operation per field made every record
//! about 60 operations, and loading, reading and checking them dominated
//! the server's ingest time. As whole values, a record is about 8
//! operations; loading it costs half as much, reading it a third, and the
//! change set on the wire is smaller. If two writes of `data` ever meet
//! (a store restored from a copy, say), automerge keeps both and the view
//! lists `data` in [`RecordView::conflicts`]: a person decides, nothing is
//! merged silently.

use automerge::{
    ActorId, AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef,
    transaction::Transactable,
};
use serde_json::Value as Json;

use crate::event::EventKind;
use crate::kidc::Kidc;
use crate::workflow::{self, Action, Status, Transition, WorkflowError};

mod check;
mod chunk;

#[cfg(test)]
mod tests;

pub use check::{TabletChangeError, check_tablet_changes, check_tablet_operations};
pub use chunk::{decode_changes, is_document_chunk};

/// Root key: the kind of vital event.
pub const KIND: &str = "kind";
/// Root key: the registration office (today a 6-digit commune code).
pub const OFFICE: &str = "office";
/// Root key: the event data, the registration JSON as one string.
pub const DATA: &str = "data";
/// Root key: the append-only list of workflow transitions.
pub const TRANSITIONS: &str = "transitions";
/// Root key: the server-owned part.
pub const SERVER: &str = "server";
/// The root keys a tablet may write.
pub const TABLET_ROOT_KEYS: [&str; 4] = [KIND, OFFICE, DATA, TRANSITIONS];

/// Kinds of vital event. Each record holds one registration, of the event
/// its kind names (an amendment is a record of its own that names the
/// birth record it amends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordKind {
    /// A birth registration.
    Birth,
    /// A death registration.
    Death,
    /// A marriage registration.
    Marriage,
    /// A divorce registration.
    Divorce,
    /// An adoption registration.
    Adoption,
    /// An amendment of a registered birth.
    Amendment,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 6] = [
        RecordKind::Birth,
        RecordKind::Death,
        RecordKind::Marriage,
        RecordKind::Divorce,
        RecordKind::Adoption,
        RecordKind::Amendment,
    ];

    /// The stable name (the same as the registration's `"event"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Birth => "birth",
            RecordKind::Death => "death",
            RecordKind::Marriage => "marriage",
            RecordKind::Divorce => "divorce",
            RecordKind::Adoption => "adoption",
            RecordKind::Amendment => "amendment",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The record kind of a registration of `event`.
    pub fn of_event(event: EventKind) -> RecordKind {
        match event {
            EventKind::Birth => RecordKind::Birth,
            EventKind::Death => RecordKind::Death,
            EventKind::Marriage => RecordKind::Marriage,
            EventKind::Divorce => RecordKind::Divorce,
            EventKind::Adoption => RecordKind::Adoption,
            EventKind::Amendment => RecordKind::Amendment,
        }
    }
}

/// What is wrong with a document. Messages carry no personal data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The document lacks a required part or has one of the wrong type.
    #[error("record document is malformed: {0}")]
    Malformed(&'static str),
    /// The workflow list is not a valid sequence of transitions.
    #[error("record workflow is invalid: {0}")]
    Workflow(#[from] WorkflowError),
    /// Automerge refused an operation.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

/// The server-owned part of a record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerPart {
    /// The KIdC issued to the child of an approved birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kidc: Option<Kidc>,
    /// Server time of registration, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at_ms: Option<i64>,
    /// The registration number, `office/year/sequence` (such as
    /// `171003/2026/000042`), given when the server registers the event.
    /// Births registered before numbers existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_number: Option<String>,
    /// Registered after the legal period (a birth more than the
    /// configured number of days after the day of birth).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// Why the server holds the record for review (a stable code such as
    /// `invalid_on_receipt` or `probable_duplicate`; never personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// The registered amendments of this record, oldest first: the only
    /// way its data changes once approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amendments: Vec<AppliedAmendment>,
}

/// One registered amendment, as the amended record keeps it: which record
/// amended it, its registration, why, and each field from which value to
/// which. Who made it is in the amendment record's own workflow steps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedAmendment {
    /// The amendment record's id.
    pub amendment_id: String,
    /// Its registration number.
    pub registration_number: String,
    /// Server time of its registration, in ms since the epoch.
    pub registered_at_ms: i64,
    /// The reason code.
    pub reason: String,
    /// Each changed field (a dotted path) with its old and new values.
    pub changes: Vec<FieldChange>,
}

/// One field an amendment changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldChange {
    /// The dotted path, such as `child.given_name`.
    pub field: String,
    /// The value before (`null`: none).
    pub from: Json,
    /// The value after (`null`: removed).
    pub to: Json,
}

/// What the server writes when it registers an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// A birth's new KIdC.
    pub kidc: Option<Kidc>,
    /// The registration number.
    pub number: String,
    /// Server time, ms since the epoch.
    pub at_ms: i64,
    /// Registered after the legal period.
    pub late: bool,
}

/// A decoded view of a record document.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordView {
    /// The kind of event.
    pub kind: RecordKind,
    /// The registration office.
    pub office: String,
    /// The event data as JSON.
    pub data: Json,
    /// The workflow so far.
    pub transitions: Vec<Transition>,
    /// The server-owned part.
    pub server: ServerPart,
    /// Root fields where concurrent writes left a conflict (the winner is
    /// shown): only `data` can be in conflict in a record that passed the
    /// server's check.
    pub conflicts: Vec<String>,
}

impl RecordView {
    /// The current state, derived from the transitions and the server part.
    pub fn status(&self) -> Result<Status, WorkflowError> {
        let tablet = workflow::derive(&self.transitions)?.ok_or(WorkflowError::MustStartWithSubmit)?;
        Ok(self.server.status_over(tablet))
    }

    /// The event data as it stands now: the registration with every
    /// registered amendment made, in order.
    pub fn current_data(&self) -> Json {
        let mut data = self.data.clone();
        for a in &self.server.amendments {
            for c in &a.changes {
                set_json_path(&mut data, &c.field, &c.to);
            }
        }
        data
    }

    /// The staff id of the clerk who entered the record.
    pub fn clerk(&self) -> Option<&str> {
        self.transitions
            .iter()
            .find(|t| t.action == Action::Submit)
            .map(|t| t.by.as_str())
    }
}

/// Creates the document of a new record, with its submission as the first
/// transition, in one automerge change.
pub fn new_record(
    actor: ActorId,
    kind: RecordKind,
    office: &str,
    data: &Json,
    submission: &Transition,
) -> Result<AutoCommit, RecordError> {
    let mut doc = AutoCommit::new().with_actor(actor);
    doc.put(automerge::ROOT, KIND, kind.as_str())?;
    doc.put(automerge::ROOT, OFFICE, office)?;
    if !data.is_object() {
        return Err(RecordError::Malformed("event data must be a JSON object"));
    }
    doc.put(automerge::ROOT, DATA, data.to_string())?;
    doc.put_object(automerge::ROOT, TRANSITIONS, ObjType::List)?;
    append_transition(&mut doc, submission)?;
    Ok(doc)
}

/// Replaces the event data (a rejected record corrected before it is
/// resubmitted; the server refuses it once the record is approved).
pub fn set_data(doc: &mut AutoCommit, data: &Json) -> Result<(), RecordError> {
    if !data.is_object() {
        return Err(RecordError::Malformed("event data must be a JSON object"));
    }
    doc.put(automerge::ROOT, DATA, data.to_string())?;
    Ok(())
}

/// Every value `data` holds: one, or several while concurrent writes of
/// two tablets are not settled (automerge keeps each; the view lists
/// `data` in [`RecordView::conflicts`]). In automerge's order, which is
/// the same on every copy of the document.
pub fn data_values<R: ReadDoc>(doc: &R) -> Result<Vec<Json>, RecordError> {
    doc.get_all(automerge::ROOT, DATA)?
        .into_iter()
        .map(|(v, _)| match v {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(json) => {
                    serde_json::from_str(json).map_err(|_| RecordError::Malformed("data is not valid JSON"))
                }
                _ => Err(RecordError::Malformed("data is not a JSON string")),
            },
            _ => Err(RecordError::Malformed("data is not a JSON string")),
        })
        .collect()
}

/// Appends a transition to the workflow list (no rule check: see
/// [`workflow::check_append`]).
pub fn append_transition(doc: &mut AutoCommit, t: &Transition) -> Result<(), RecordError> {
    let list = match doc.get(automerge::ROOT, TRANSITIONS)? {
        Some((Value::Object(ObjType::List), id)) => id,
        _ => return Err(RecordError::Malformed("transitions list missing")),
    };
    let idx = doc.length(&list);
    let step = serde_json::to_string(t).map_err(|_| RecordError::Malformed("transition does not encode"))?;
    doc.insert(&list, idx, step)?;
    Ok(())
}

impl ServerPart {
    /// Has the server registered the record (a number, or, for a birth
    /// registered before numbers existed, a KIdC)?
    pub fn is_registered(&self) -> bool {
        self.registration_number.is_some() || self.kidc.is_some()
    }

    /// The status of a record whose workflow steps alone give `tablet`,
    /// with this server part (see [`RecordView::status`]).
    pub fn status_over(&self, tablet: Status) -> Status {
        match tablet {
            Status::Approved if self.is_registered() => Status::Registered,
            Status::Rejected => Status::Rejected,
            _ if self.hold.is_some() => Status::Held,
            other => other,
        }
    }
}

/// Sets the dotted `path` of `root` to `value` (`null` removes it),
/// creating the objects on the way.
pub fn set_json_path(root: &mut Json, path: &str, value: &Json) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut node = root;
    for key in parts {
        if !node.is_object() {
            *node = Json::Object(serde_json::Map::new());
        }
        let Json::Object(map) = node else { return };
        node = map
            .entry(key.to_owned())
            .or_insert_with(|| Json::Object(serde_json::Map::new()));
    }
    if !node.is_object() {
        *node = Json::Object(serde_json::Map::new());
    }
    if let Json::Object(map) = node {
        if value.is_null() {
            map.remove(last);
        } else {
            map.insert(last.to_owned(), value.clone());
        }
    }
}

/// Server side: records the registration of an approved record.
pub fn set_registration(doc: &mut AutoCommit, r: &Registration) -> Result<(), RecordError> {
    let mut part = read_server_part(doc)?;
    if r.kidc.is_some() {
        part.kidc = r.kidc;
    }
    part.registered_at_ms = Some(r.at_ms);
    part.registration_number = Some(r.number.clone());
    part.late = r.late;
    write_server_part(doc, &part)
}

/// Server side: records a registered amendment of this record.
pub fn add_amendment(doc: &mut AutoCommit, a: AppliedAmendment) -> Result<(), RecordError> {
    let mut part = read_server_part(doc)?;
    if part.amendments.iter().any(|x| x.amendment_id == a.amendment_id) {
        return Ok(());
    }
    part.amendments.push(a);
    write_server_part(doc, &part)
}

/// Server side: holds the record for review, with a stable reason code.
pub fn set_hold(doc: &mut AutoCommit, code: &str) -> Result<(), RecordError> {
    let mut part = read_server_part(doc)?;
    part.hold = Some(code.to_string());
    write_server_part(doc, &part)
}

/// Server side: lifts the record's hold (an operator released it).
pub fn clear_hold(doc: &mut AutoCommit) -> Result<(), RecordError> {
    let mut part = read_server_part(doc)?;
    part.hold = None;
    write_server_part(doc, &part)
}

fn read_server_part(doc: &AutoCommit) -> Result<ServerPart, RecordError> {
    match doc.get(automerge::ROOT, SERVER)? {
        Some((Value::Scalar(v), _)) => match v.as_ref() {
            ScalarValue::Str(json) => parse_server_part(json),
            _ => Err(RecordError::Malformed("server part is not a JSON string")),
        },
        Some((Value::Object(_), _)) => Err(RecordError::Malformed("server part is not a JSON string")),
        None => Ok(ServerPart::default()),
    }
}

/// Tablet side: the server part that `change` writes, when writing it is
/// all `change` does and no server part can be there before it: exactly
/// one operation, a put of the root's `server` key with no predecessor.
/// Applied to a document that holds no server part and whose heads are
/// the change's dependencies, such a change leaves every other field as
/// it was and makes this the record's server part, with no conflict; so a
/// tablet can store it beside the document without loading the document
/// (`crvs_core`'s answer to a sync). `None` for any other change.
pub fn first_server_part(change: &automerge::Change) -> Option<ServerPart> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let decoded = change.decode();
    let [op] = decoded.operations.as_slice() else {
        return None;
    };
    match (&op.obj, &op.key, &op.action) {
        (ObjectId::Root, Key::Map(key), OpType::Put(ScalarValue::Str(json)))
            if key.as_str() == SERVER && !op.insert && op.pred.is_empty() =>
        {
            parse_server_part(json).ok()
        }
        _ => None,
    }
}

fn parse_server_part(json: &str) -> Result<ServerPart, RecordError> {
    serde_json::from_str(json).map_err(|_| RecordError::Malformed("server part is not valid"))
}

/// The whole server part, as one value: one operation per server edit.
fn write_server_part(doc: &mut AutoCommit, part: &ServerPart) -> Result<(), RecordError> {
    let json =
        serde_json::to_string(part).map_err(|_| RecordError::Malformed("server part does not encode"))?;
    doc.put(automerge::ROOT, SERVER, json)?;
    Ok(())
}

/// Decodes a record document.
pub fn read<R: ReadDoc>(doc: &R) -> Result<RecordView, RecordError> {
    read_root(doc, &root_entries(doc))
}

/// The winning value of a map key or list element, its id (for objects
/// only) and whether concurrent writes left other values beside it.
struct Entry<'a> {
    value: ValueRef<'a>,
    id: Option<ObjId>,
    conflict: bool,
}

impl<'a> Entry<'a> {
    fn new(value: ValueRef<'a>, id: impl FnOnce() -> ObjId, conflict: bool) -> Self {
        let id = matches!(value, ValueRef::Object(_)).then(id);
        Entry { value, id, conflict }
    }

    /// The id of the object this entry holds, if it holds one of type `t`.
    fn object(&self, t: ObjType) -> Option<&ObjId> {
        match self.value {
            ValueRef::Object(ot) if ot == t => self.id.as_ref(),
            _ => None,
        }
    }
}

/// The root keys of a record document, read in one walk of the root map.
#[derive(Default)]
struct RootEntries<'a> {
    kind: Option<Entry<'a>>,
    office: Option<Entry<'a>>,
    data: Option<Entry<'a>>,
    transitions: Option<Entry<'a>>,
    server: Option<Entry<'a>>,
    /// A root key outside the layout is present.
    unknown: bool,
}

impl<'a> RootEntries<'a> {
    fn get(&self, key: &str) -> Option<&Entry<'a>> {
        match key {
            KIND => self.kind.as_ref(),
            OFFICE => self.office.as_ref(),
            DATA => self.data.as_ref(),
            TRANSITIONS => self.transitions.as_ref(),
            SERVER => self.server.as_ref(),
            _ => None,
        }
    }
}

fn root_entries<R: ReadDoc>(doc: &R) -> RootEntries<'_> {
    let mut root = RootEntries::default();
    for item in doc.map_range(automerge::ROOT, ..) {
        let slot = match item.key.as_ref() {
            KIND => &mut root.kind,
            OFFICE => &mut root.office,
            DATA => &mut root.data,
            TRANSITIONS => &mut root.transitions,
            SERVER => &mut root.server,
            _ => {
                root.unknown = true;
                continue;
            }
        };
        *slot = Some(Entry::new(item.value.clone(), || item.id(), item.conflict));
    }
    root
}

fn read_root<R: ReadDoc>(doc: &R, root: &RootEntries<'_>) -> Result<RecordView, RecordError> {
    let kind = match ref_str(root.kind.as_ref().map(|e| &e.value))? {
        Some(k) => RecordKind::parse(&k).ok_or(RecordError::Malformed("unknown record kind"))?,
        None => return Err(RecordError::Malformed("kind missing")),
    };
    let office =
        ref_str(root.office.as_ref().map(|e| &e.value))?.ok_or(RecordError::Malformed("office missing"))?;
    let (data, conflicts) = match &root.data {
        Some(Entry {
            value: ValueRef::Scalar(ScalarValueRef::Str(json)),
            conflict,
            ..
        }) => {
            let data: Json =
                serde_json::from_str(json).map_err(|_| RecordError::Malformed("data is not valid JSON"))?;
            if !data.is_object() {
                return Err(RecordError::Malformed("data is not a JSON object"));
            }
            (
                data,
                if *conflict {
                    vec![DATA.to_string()]
                } else {
                    Vec::new()
                },
            )
        }
        Some(_) => return Err(RecordError::Malformed("data is not a JSON string")),
        None => return Err(RecordError::Malformed("data missing")),
    };
    let transitions = match root.transitions.as_ref().and_then(|e| e.object(ObjType::List)) {
        Some(list) => read_transitions(doc, list)?,
        None => return Err(RecordError::Malformed("transitions list missing")),
    };
    let server = match &root.server {
        Some(Entry {
            value: ValueRef::Scalar(ScalarValueRef::Str(json)),
            ..
        }) => parse_server_part(json)?,
        Some(_) => return Err(RecordError::Malformed("server part is not a JSON string")),
        None => ServerPart::default(),
    };
    Ok(RecordView {
        kind,
        office,
        data,
        transitions,
        server,
        conflicts,
    })
}

fn read_transitions<R: ReadDoc>(doc: &R, list: &ObjId) -> Result<Vec<Transition>, RecordError> {
    let mut out = Vec::new();
    for item in doc.list_range(list, ..) {
        let ValueRef::Scalar(ScalarValueRef::Str(json)) = &item.value else {
            return Err(RecordError::Malformed("transition is not a JSON string"));
        };
        out.push(serde_json::from_str(json).map_err(|_| RecordError::Malformed("transition is not valid"))?);
    }
    Ok(out)
}

/// The string in a (winning) value, if there is a value.
fn ref_str(v: Option<&ValueRef<'_>>) -> Result<Option<String>, RecordError> {
    match v {
        Some(ValueRef::Scalar(ScalarValueRef::Str(s))) => Ok(Some(s.to_string())),
        Some(_) => Err(RecordError::Malformed("expected a string")),
        None => Ok(None),
    }
}
