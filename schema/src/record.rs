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
    ActorId, AutoCommit, ObjId, ObjType, Prop, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef,
    transaction::Transactable,
};
use serde_json::Value as Json;

use crate::kidc::Kidc;
use crate::workflow::{self, Action, Status, Transition, WorkflowError};

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

/// Kinds of vital event. Only births exist so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordKind {
    /// A birth registration.
    Birth,
}

impl RecordKind {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Birth => "birth",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<RecordKind> {
        match s {
            "birth" => Some(RecordKind::Birth),
            _ => None,
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

/// Why the server refuses a tablet's changes to a document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TabletChangeError {
    /// The tablet wrote a server-owned field (the KIdC, the registration).
    #[error("the change set writes the server-owned field '{0}'")]
    ServerOwnedField(String),
    /// The tablet wrote a root key that does not exist in the layout.
    #[error("the change set writes an unknown root field")]
    UnknownRootField,
    /// `kind` and `office` are written once.
    #[error("the change set rewrites the record's '{0}', which is written once")]
    Immutable(&'static str),
    /// Transitions are append-only.
    #[error("the change set rewrites or removes earlier workflow steps")]
    TransitionsRewritten,
    /// The document does not have the layout of a record.
    #[error("the record document is malformed: {0}")]
    Malformed(String),
    /// The new transitions break the workflow rules.
    #[error("the record's workflow is invalid: {0}")]
    Workflow(WorkflowError),
    /// An operation the record layout never needs: a deletion, a nested
    /// object, a key outside the layout, an overwrite inside the workflow
    /// list. Such operations could hide history that no reader of the
    /// document sees but that every copy carries.
    #[error("the change set contains an operation the record layout does not allow: {0}")]
    ForbiddenOperation(&'static str),
}

/// Server side: checks every operation of the tablet's changes, not just
/// the state they lead to. A tablet only ever puts `kind`, `office` and
/// `data` at the root, makes the `transitions` list once (in a new
/// record), and inserts strings into it. Anything else (a delete, a key
/// outside the layout that is deleted again, a nested object, an
/// overwritten list element) is refused: the visible document would look
/// fine while carrying hidden history.
pub fn check_tablet_operations(
    changes: &[automerge::Change],
    new_record: bool,
) -> Result<(), TabletChangeError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let mut lists_made = 0;
    for change in changes {
        for op in change.decode().operations {
            let root = matches!(op.obj, ObjectId::Root);
            let root_key = match (&op.key, root) {
                (Key::Map(k), true) => Some(k.as_str()),
                (_, true) => {
                    return Err(TabletChangeError::ForbiddenOperation(
                        "a root operation without a key",
                    ));
                }
                _ => None,
            };
            match (&op.action, root_key) {
                (OpType::Put(_), Some(KIND | OFFICE | DATA)) if !op.insert => {}
                (OpType::Make(ObjType::List), Some(TRANSITIONS)) if new_record && !op.insert => {
                    lists_made += 1;
                    if lists_made > 1 {
                        return Err(TabletChangeError::ForbiddenOperation(
                            "the workflow list made twice",
                        ));
                    }
                }
                (OpType::Put(automerge::ScalarValue::Str(_)), None) if op.insert => {}
                (OpType::Delete, _) => return Err(TabletChangeError::ForbiddenOperation("a deletion")),
                (_, Some(SERVER)) => return Err(TabletChangeError::ServerOwnedField(SERVER.to_string())),
                (_, Some(KIND | OFFICE | DATA | TRANSITIONS)) => {
                    return Err(TabletChangeError::ForbiddenOperation(
                        "a root field written with the wrong kind of value",
                    ));
                }
                (_, Some(_)) => return Err(TabletChangeError::UnknownRootField),
                (_, None) => {
                    return Err(TabletChangeError::ForbiddenOperation(
                        "an operation inside the workflow list other than appending a step",
                    ));
                }
            }
        }
    }
    Ok(())
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
    /// Why the server holds the record for review (a stable code such as
    /// `invalid_on_receipt` or `probable_duplicate`; never personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
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
        Ok(match tablet {
            Status::Approved if self.server.kidc.is_some() => Status::Registered,
            Status::Rejected => Status::Rejected,
            _ if self.server.hold.is_some() => Status::Held,
            other => other,
        })
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

/// Server side: records the registration of an approved record.
pub fn set_registration(doc: &mut AutoCommit, kidc: &Kidc, at_ms: i64) -> Result<(), RecordError> {
    let mut part = read_server_part(doc)?;
    part.kidc = Some(*kidc);
    part.registered_at_ms = Some(at_ms);
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

/// Whether `blob` is one automerge document chunk (chunk type 0, after
/// the 4 magic bytes and the 4 checksum bytes, and nothing after the
/// chunk), rather than a change chunk. Only the header is looked at;
/// loading checks the rest.
pub fn is_document_chunk(blob: &[u8]) -> bool {
    blob.get(8) == Some(&0) && chunk_len(blob) == Some(blob.len())
}

/// The length of the automerge chunk at the start of `blob` (magic,
/// checksum, type, LEB128 content length, content), if its header reads.
/// Automerge loads every chunk that follows the first, bundles included
/// (see [`decode_changes`]), so each element must be exactly one chunk.
fn chunk_len(blob: &[u8]) -> Option<usize> {
    let mut len: u64 = 0;
    for (i, &b) in blob.get(9..)?.iter().take(9).enumerate() {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return usize::try_from(len).ok()?.checked_add(10 + i);
        }
    }
    None
}

/// Decodes one element of [`crate::wire::RecordChanges::changes`]: either
/// one raw automerge change chunk, or a whole document chunk
/// (`save_nocompress()`), which a tablet sends for a record the server has
/// never seen: it encodes the dependencies between the record's changes as
/// indices instead of 32-byte hashes, about a quarter fewer bytes on the
/// wire. Either way the result is the list of changes, hashes verified.
pub fn decode_changes(blob: &[u8]) -> Result<Vec<automerge::Change>, RecordError> {
    // Exactly one chunk, of the two types a tablet sends. Automerge also
    // takes a bundle (type 3), alone or after a document, and expands its
    // run-length columns without limit: 476 bytes made it allocate over
    // 2 GiB. Found by fuzzing (`fuzz/regressions/record_chunk/`).
    if blob.get(8).is_none_or(|&t| t > 1) || chunk_len(blob) != Some(blob.len()) {
        return Err(RecordError::Malformed("not exactly one document or change chunk"));
    }
    if is_document_chunk(blob) {
        // Chunk type 0: a document. Loading it checks its heads.
        let doc = automerge::Automerge::load(blob)?;
        return Ok(doc.get_changes(&[]));
    }
    let change = automerge::Change::from_bytes(blob.to_vec())
        .map_err(|_| RecordError::Malformed("a change does not decode"))?;
    // The chunk's checksum (bytes 4..8) is the start of the change's hash.
    // Automerge 0.12 does not check it here, but loading a document does:
    // a change with a wrong one would be applied and stored verbatim, and
    // the stored record would never load again. Found by fuzzing
    // (`fuzz/regressions/record_chunk/`).
    if change.raw_bytes().get(4..8) != Some(&change.hash().0[..4]) {
        return Err(RecordError::Malformed(
            "a change's checksum does not match its content",
        ));
    }
    Ok(vec![change])
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

fn scalar_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::from(*i),
        ScalarValue::Uint(u) => Json::from(*u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Timestamp(t) => Json::from(*t),
        _ => Json::Null,
    }
}

/// [`scalar_json`] for a borrowed scalar.
fn scalar_ref_json(s: &ScalarValueRef<'_>) -> Json {
    match s {
        ScalarValueRef::Str(s) => Json::String(s.to_string()),
        ScalarValueRef::Int(i) => Json::from(*i),
        ScalarValueRef::Uint(u) => Json::from(*u),
        ScalarValueRef::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValueRef::Boolean(b) => Json::Bool(*b),
        ScalarValueRef::Timestamp(t) => Json::from(*t),
        _ => Json::Null,
    }
}

/// A canonical rendering of everything under `prop` of `obj`, every
/// conflicting value included, for comparing before and after a merge.
fn snapshot<R: ReadDoc>(doc: &R, obj: &ObjId, prop: Prop) -> Result<Json, automerge::AutomergeError> {
    let mut values = Vec::new();
    for (v, id) in doc.get_all(obj, prop)? {
        values.push(match v {
            Value::Scalar(s) => scalar_json(&s),
            Value::Object(t) => snapshot_object(doc, t, &id)?,
        });
    }
    Ok(Json::Array(values))
}

/// [`snapshot`] of a property whose winning value is `entry` (or which has
/// no value): only a property in conflict needs all its values looked up.
fn snapshot_entry<R: ReadDoc>(
    doc: &R,
    obj: &ObjId,
    prop: Prop,
    entry: Option<&Entry<'_>>,
) -> Result<Json, automerge::AutomergeError> {
    match entry {
        None => Ok(Json::Array(vec![])),
        Some(e) if e.conflict => snapshot(doc, obj, prop),
        Some(e) => Ok(Json::Array(vec![match (&e.value, &e.id) {
            (ValueRef::Object(t), Some(id)) => snapshot_object(doc, *t, id)?,
            (ValueRef::Object(_), None) => unreachable!("an object entry carries its id"),
            (ValueRef::Scalar(s), _) => scalar_ref_json(s),
        }])),
    }
}

/// The rendering of one object in a [`snapshot`]: its id and its content.
fn snapshot_object<R: ReadDoc>(doc: &R, t: ObjType, id: &ObjId) -> Result<Json, automerge::AutomergeError> {
    let mut m = serde_json::Map::new();
    m.insert("$id".into(), Json::String(id.to_string()));
    match t {
        ObjType::Map | ObjType::Table => {
            for item in doc.map_range(id, ..) {
                let entry = Entry::new(item.value.clone(), || item.id(), item.conflict);
                let inner = snapshot_entry(doc, id, item.key.as_ref().into(), Some(&entry))?;
                m.insert(item.key.into_owned(), inner);
            }
        }
        ObjType::List => {
            let mut items = Vec::new();
            for item in doc.list_range(id, ..) {
                let entry = Entry::new(item.value.clone(), || item.id(), item.conflict);
                items.push(snapshot_entry(doc, id, Prop::Seq(item.index), Some(&entry))?);
            }
            m.insert("$items".into(), Json::Array(items));
        }
        ObjType::Text => {
            m.insert("$text".into(), Json::String(doc.text(id)?));
        }
    }
    Ok(Json::Object(m))
}

/// Server side: checks that the changes a tablet made, turning `before`
/// into `after`, only touch tablet-owned fields, keep the workflow
/// append-only and valid, and leave `kind` and `office` as they were.
/// `before` is `None` for a record the server has not seen.
pub fn check_tablet_changes<R1: ReadDoc, R2: ReadDoc>(
    before: Option<&R1>,
    after: &R2,
) -> Result<RecordView, TabletChangeError> {
    let root = automerge::ROOT;
    let am = |e: automerge::AutomergeError| TabletChangeError::Malformed(e.to_string());
    // One walk of each root map; the snapshots and the view are read from it.
    let root_after = root_entries(after);
    if root_after.unknown {
        return Err(TabletChangeError::UnknownRootField);
    }
    let root_before = before.map(|b| (b, root_entries(b)));
    let server_before = match &root_before {
        Some((b, rb)) => snapshot_entry(*b, &root, SERVER.into(), rb.get(SERVER)).map_err(am)?,
        None => Json::Array(vec![]),
    };
    let server_after = snapshot_entry(after, &root, SERVER.into(), root_after.get(SERVER)).map_err(am)?;
    if server_before != server_after {
        return Err(TabletChangeError::ServerOwnedField(server_field_name(
            &server_after,
        )));
    }
    for key in [KIND, OFFICE, DATA, TRANSITIONS] {
        // Exactly one value: present, and not in conflict.
        if root_after.get(key).is_none_or(|e| e.conflict) {
            return Err(TabletChangeError::Malformed(format!(
                "root field '{key}' is missing or in conflict"
            )));
        }
    }
    // Steps the server already has; the others are new.
    let mut known_steps = 0;
    if let Some((b, rb)) = &root_before {
        let snap_before = |key: &str| snapshot_entry(*b, &root, key.into(), rb.get(key)).map_err(am);
        let snap_after =
            |key: &str| snapshot_entry(after, &root, key.into(), root_after.get(key)).map_err(am);
        for key in [KIND, OFFICE] {
            if snap_before(key)? != snap_after(key)? {
                return Err(TabletChangeError::Immutable(key));
            }
        }
        let steps_before = snap_before(TRANSITIONS)?;
        if !is_prefix_list(&steps_before, &snap_after(TRANSITIONS)?) {
            return Err(TabletChangeError::TransitionsRewritten);
        }
        known_steps = steps_before[0]["$items"].as_array().map_or(0, Vec::len);
    }
    let view = read_root(after, &root_after).map_err(|e| match e {
        RecordError::Workflow(w) => TabletChangeError::Workflow(w),
        other => TabletChangeError::Malformed(other.to_string()),
    })?;
    // Every transition, old and new, must follow the rules; a new one's
    // staff id must also have the form new steps have.
    workflow::derive(&view.transitions).map_err(TabletChangeError::Workflow)?;
    for t in view.transitions.iter().skip(known_steps) {
        workflow::check_staff_id(&t.by).map_err(TabletChangeError::Workflow)?;
    }
    if view.transitions.is_empty() {
        return Err(TabletChangeError::Workflow(WorkflowError::MustStartWithSubmit));
    }
    Ok(view)
}

fn server_field_name(snapshot: &Json) -> String {
    // Name the first key the tablet wrote under `server` (in a map it
    // made, or in a JSON string it wrote); no values.
    let key = match snapshot.as_array().and_then(|a| a.last()) {
        Some(Json::Object(m)) => m.keys().find(|k| !k.starts_with('$')).cloned(),
        Some(Json::String(json)) => serde_json::from_str::<serde_json::Map<String, Json>>(json)
            .ok()
            .and_then(|m| m.keys().next().cloned()),
        _ => None,
    };
    key.map(|k| format!("{SERVER}.{k}"))
        .unwrap_or_else(|| SERVER.to_string())
}

/// The list snapshot `a` (one list object, no conflicts) is a prefix of `b`.
fn is_prefix_list(a: &Json, b: &Json) -> bool {
    let (Some(a), Some(b)) = (a.as_array(), b.as_array()) else {
        return false;
    };
    if a.len() != 1 || b.len() != 1 || a[0].get("$id") != b[0].get("$id") {
        return false;
    }
    let (Some(ia), Some(ib)) = (
        a[0].get("$items").and_then(|v| v.as_array()),
        b[0].get("$items").and_then(|v| v.as_array()),
    ) else {
        return false;
    };
    ia.len() <= ib.len()
        && ia.iter().zip(ib).all(|(x, y)| x == y)
        && ib.iter().all(|v| v.as_array().is_some_and(|c| c.len() == 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::Automerge;

    fn actor(n: u8) -> ActorId {
        ActorId::from([n; 16])
    }

    fn submit(by: &str) -> Transition {
        Transition {
            action: Action::Submit,
            by: by.into(),
            at_ms: 1_700_000_000_000,
            device: "dev".into(),
            reason: None,
        }
    }

    fn sample() -> Json {
        serde_json::json!({
            "event": "birth",
            "child": { "family_name": "សុខ", "sex": "male", "date_of_birth": "2026-11-02" },
            "residence_village_code": "17100301"
        })
    }

    fn copy(doc: &mut AutoCommit) -> Automerge {
        Automerge::load(&doc.save()).unwrap()
    }

    #[test]
    fn document_chunks_and_change_chunks_decode_to_the_same_changes() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        doc.commit();
        let mut v = submit("checker");
        v.action = Action::Verify;
        append_transition(&mut doc, &v).unwrap();
        doc.commit();
        let from_changes: Vec<_> = doc.get_changes(&[]).into_iter().map(|c| c.hash()).collect();
        let from_doc: Vec<_> = decode_changes(&doc.save_nocompress())
            .unwrap()
            .iter()
            .map(|c| c.hash())
            .collect();
        assert_eq!(from_changes, from_doc);
        let raw = doc.get_changes(&[])[0].raw_bytes().to_vec();
        assert_eq!(decode_changes(&raw).unwrap()[0].hash(), from_changes[0]);
        assert!(decode_changes(&[1, 2, 3]).is_err());
        let mut corrupt = doc.save_nocompress();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(decode_changes(&corrupt).is_err());
    }

    #[test]
    fn a_new_record_reads_back_as_written() {
        let doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let view = read(&doc).unwrap();
        assert_eq!(view.kind, RecordKind::Birth);
        assert_eq!(view.office, "171003");
        assert_eq!(view.data, sample());
        assert_eq!(view.transitions, vec![submit("clerk")]);
        assert_eq!(view.status().unwrap(), Status::Submitted);
        assert!(view.conflicts.is_empty());
    }

    #[test]
    fn tablet_changes_that_follow_the_rules_pass() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let before = copy(&mut doc);
        let mut v = submit("checker");
        v.action = Action::Verify;
        append_transition(&mut doc, &v).unwrap();
        let view = check_tablet_changes(Some(&before), &doc).unwrap();
        assert_eq!(view.status().unwrap(), Status::Verified);
        assert!(check_tablet_changes(None::<&Automerge>, &doc).is_ok());
    }

    #[test]
    fn a_tablet_that_writes_a_kidc_is_refused() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let before = copy(&mut doc);
        let k = Kidc::parse("1000000019").ok();
        let s = doc.put_object(automerge::ROOT, SERVER, ObjType::Map).unwrap();
        doc.put(
            &s,
            "kidc",
            k.map(|k| k.to_string()).unwrap_or_else(|| "1234567890".into()),
        )
        .unwrap();
        assert_eq!(
            check_tablet_changes(Some(&before), &doc).unwrap_err(),
            TabletChangeError::ServerOwnedField("server.kidc".into())
        );
        assert!(matches!(
            check_tablet_changes(None::<&Automerge>, &doc),
            Err(TabletChangeError::ServerOwnedField(_))
        ));
        // The same forgery in the server's own form, a JSON string.
        let mut forged =
            new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let before = copy(&mut forged);
        forged
            .put(automerge::ROOT, SERVER, r#"{"kidc":"1000000019"}"#)
            .unwrap();
        assert_eq!(
            check_tablet_changes(Some(&before), &forged).unwrap_err(),
            TabletChangeError::ServerOwnedField("server.kidc".into())
        );
    }

    #[test]
    fn the_server_part_is_one_value_that_keeps_earlier_edits() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        doc.set_actor(actor(9));
        set_hold(&mut doc, "invalid_on_receipt").unwrap();
        let kidc = Kidc::generate(crate::kidc::Category::CITIZEN, &mut rand::rng());
        set_registration(&mut doc, &kidc, 5).unwrap();
        let view = read(&doc).unwrap();
        assert_eq!(
            view.server,
            ServerPart {
                kidc: Some(kidc),
                registered_at_ms: Some(5),
                hold: Some("invalid_on_receipt".into()),
            }
        );
        // Every part of the record is a whole value: a handful of
        // operations, not one per field.
        doc.commit();
        let ops: usize = doc.get_changes(&[]).iter().map(|c| c.len()).sum();
        assert!(ops <= 8, "{ops} operations");
    }

    #[test]
    fn a_tablet_that_rewrites_an_existing_kidc_is_refused() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        // The server writes its part with its own actor.
        let mut server = doc.fork().with_actor(actor(9));
        let kidc = Kidc::generate(crate::kidc::Category::CITIZEN, &mut rand::rng());
        set_registration(&mut server, &kidc, 5).unwrap();
        doc.merge(&mut server).unwrap();
        let before = copy(&mut doc);
        doc.put(automerge::ROOT, SERVER, r#"{"kidc":"1111111111"}"#)
            .unwrap();
        assert!(matches!(
            check_tablet_changes(Some(&before), &doc),
            Err(TabletChangeError::ServerOwnedField(_))
        ));
    }

    #[test]
    fn rewriting_office_or_history_is_refused() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let before = copy(&mut doc);
        let mut moved = doc.fork();
        moved.put(automerge::ROOT, OFFICE, "120101").unwrap();
        assert_eq!(
            check_tablet_changes(Some(&before), &moved).unwrap_err(),
            TabletChangeError::Immutable(OFFICE)
        );
        let mut rewritten = doc.fork();
        let list = rewritten.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
        let step = serde_json::to_string(&submit("someone-else")).unwrap();
        rewritten.put(&list, 0, step).unwrap();
        assert_eq!(
            check_tablet_changes(Some(&before), &rewritten).unwrap_err(),
            TabletChangeError::TransitionsRewritten
        );
        let mut extra = doc.fork();
        extra.put(automerge::ROOT, "status", "registered").unwrap();
        assert_eq!(
            check_tablet_changes(Some(&before), &extra).unwrap_err(),
            TabletChangeError::UnknownRootField
        );
    }

    #[test]
    fn a_self_verified_record_is_refused() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let before = copy(&mut doc);
        let mut v = submit("clerk");
        v.action = Action::Verify;
        append_transition(&mut doc, &v).unwrap();
        assert_eq!(
            check_tablet_changes(Some(&before), &doc).unwrap_err(),
            TabletChangeError::Workflow(WorkflowError::VerifierIsClerk)
        );
    }

    #[test]
    fn a_new_step_with_a_bad_staff_id_is_refused_but_an_old_one_stays_readable() {
        // A record written before staff ids had a charset.
        let mut doc = new_record(
            actor(1),
            RecordKind::Birth,
            "171003",
            &sample(),
            &submit("Clerk One"),
        )
        .unwrap();
        assert!(check_tablet_changes(None::<&Automerge>, &doc).is_err());
        let before = copy(&mut doc);
        let mut v = submit("checker");
        v.action = Action::Verify;
        append_transition(&mut doc, &v).unwrap();
        assert!(check_tablet_changes(Some(&before), &doc).is_ok());
        let before = copy(&mut doc);
        for by in ["a".repeat(10_000), "registrar\nclerk".to_owned()] {
            let mut forged = AutoCommit::load(&doc.save()).unwrap();
            let mut a = submit(&by);
            a.action = Action::Approve;
            append_transition(&mut forged, &a).unwrap();
            assert!(matches!(
                check_tablet_changes(Some(&before), &forged).unwrap_err(),
                TabletChangeError::Workflow(WorkflowError::StaffIdTooLong | WorkflowError::StaffIdCharacters)
            ));
        }
    }

    #[test]
    fn concurrent_writes_of_the_data_stay_visible_as_a_conflict() {
        let mut a = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let before = copy(&mut a);
        let mut b = a.fork().with_actor(actor(2));
        let mut data = sample();
        data["child"]["family_name"] = "A".into();
        a.put(automerge::ROOT, DATA, data.to_string()).unwrap();
        data["child"]["family_name"] = "B".into();
        b.put(automerge::ROOT, DATA, data.to_string()).unwrap();
        a.merge(&mut b).unwrap();
        let view = read(&a).unwrap();
        assert_eq!(view.conflicts, vec![DATA.to_string()]);
        // Nothing merged silently: the winner is one whole write.
        assert!(["A", "B"].contains(&view.data["child"]["family_name"].as_str().unwrap()));
        // A tablet never produces this, so the server refuses it.
        assert_eq!(
            check_tablet_changes(Some(&before), &a).unwrap_err(),
            TabletChangeError::Malformed("root field 'data' is missing or in conflict".into())
        );
    }

    #[test]
    fn a_record_that_does_not_have_the_layout_is_malformed() {
        let base = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        type Damage = fn(&mut AutoCommit);
        let cases: [(&str, Damage); 4] = [
            ("data is a map", |d| {
                d.put_object(automerge::ROOT, DATA, ObjType::Map).unwrap();
            }),
            ("data is not JSON", |d| {
                d.put(automerge::ROOT, DATA, "{not json").unwrap();
            }),
            ("a step is not JSON", |d| {
                let list = d.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
                d.insert(&list, 1, "verify").unwrap();
            }),
            ("a step is a map", |d| {
                let list = d.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
                d.insert_object(&list, 1, ObjType::Map).unwrap();
            }),
        ];
        for (what, damage) in cases {
            let mut d = base.clone();
            damage(&mut d);
            assert!(matches!(read(&d), Err(RecordError::Malformed(_))), "{what}");
            assert!(
                matches!(
                    check_tablet_changes(None::<&Automerge>, &d),
                    Err(TabletChangeError::Malformed(_))
                ),
                "{what}"
            );
        }
    }

    /// The earlier, per-key implementation of [`snapshot`], as a reference.
    fn snapshot_by_key<R: ReadDoc>(doc: &R, obj: &ObjId, prop: Prop) -> Json {
        let mut values = Vec::new();
        for (v, id) in doc.get_all(obj, prop).unwrap() {
            values.push(match v {
                Value::Scalar(s) => scalar_json(&s),
                Value::Object(t) => {
                    let mut m = serde_json::Map::new();
                    m.insert("$id".into(), Json::String(id.to_string()));
                    match t {
                        ObjType::Map | ObjType::Table => {
                            for k in doc.keys(&id) {
                                let inner = snapshot_by_key(doc, &id, k.as_str().into());
                                m.insert(k, inner);
                            }
                        }
                        ObjType::List => {
                            let items = (0..doc.length(&id))
                                .map(|i| snapshot_by_key(doc, &id, Prop::Seq(i)))
                                .collect();
                            m.insert("$items".into(), Json::Array(items));
                        }
                        ObjType::Text => {
                            m.insert("$text".into(), Json::String(doc.text(&id).unwrap()));
                        }
                    }
                    Json::Object(m)
                }
            });
        }
        Json::Array(values)
    }

    #[test]
    fn the_range_walks_match_the_per_key_reads_with_conflicts_everywhere() {
        let mut a = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        let mut b = a.fork().with_actor(actor(2));
        let mut c = a.fork().with_actor(actor(3));
        for (doc, tag) in [(&mut a, "A"), (&mut b, "B"), (&mut c, "C")] {
            // Forgeries of every shape, in conflict: scalars, maps with
            // lists and text inside, list elements rewritten and added.
            doc.put(automerge::ROOT, OFFICE, tag).unwrap();
            doc.put(automerge::ROOT, DATA, format!("{{\"tag\":\"{tag}\"}}"))
                .unwrap();
            let s = doc.put_object(automerge::ROOT, SERVER, ObjType::Map).unwrap();
            doc.put(&s, "hold", tag).unwrap();
            let l = doc.put_object(&s, "list", ObjType::List).unwrap();
            doc.insert(&l, 0, tag).unwrap();
            let note = doc.put_object(&s, "note", ObjType::Text).unwrap();
            doc.splice_text(&note, 0, 0, tag).unwrap();
            let t = doc.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
            doc.put(&t, 0, tag).unwrap();
            let m = doc.insert_object(&t, 1, ObjType::Map).unwrap();
            doc.put(&m, "by", tag).unwrap();
        }
        a.merge(&mut b).unwrap();
        a.merge(&mut c).unwrap();
        let root = root_entries(&a);
        for key in [KIND, OFFICE, DATA, TRANSITIONS, SERVER, "absent"] {
            assert_eq!(
                snapshot_entry(&a, &automerge::ROOT, key.into(), root.get(key)).unwrap(),
                snapshot_by_key(&a, &automerge::ROOT, key.into()),
                "{key}"
            );
        }
        assert!(root.get(DATA).unwrap().conflict);
    }

    #[test]
    fn concurrent_rewrites_hidden_behind_the_winner_are_still_refused() {
        let mut doc = new_record(actor(1), RecordKind::Birth, "171003", &sample(), &submit("clerk")).unwrap();
        doc.commit();
        // Two tablets, from the same state, write the same KIdC; the server
        // has seen one of them.
        let mut one = doc.fork().with_actor(actor(2));
        let mut two = doc.fork().with_actor(actor(3));
        for t in [&mut one, &mut two] {
            let s = t.put_object(automerge::ROOT, SERVER, ObjType::Map).unwrap();
            t.put(&s, "kidc", "1000000019").unwrap();
        }
        let mut seen = doc.fork();
        seen.merge(&mut one).unwrap();
        let before = copy(&mut seen);
        seen.merge(&mut two).unwrap();
        assert!(matches!(
            check_tablet_changes(Some(&before), &seen),
            Err(TabletChangeError::ServerOwnedField(_))
        ));

        // A concurrent rewrite of the first step that loses to the value
        // the server has seen: the winner is unchanged, the conflict is new.
        let mut one = doc.fork().with_actor(actor(3));
        let mut two = doc.fork().with_actor(actor(2));
        for (t, by) in [(&mut one, "clerk-1"), (&mut two, "clerk-2")] {
            let list = t.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
            t.put(&list, 0, serde_json::to_string(&submit(by)).unwrap())
                .unwrap();
        }
        let mut seen = doc.fork();
        seen.merge(&mut one).unwrap();
        let before = copy(&mut seen);
        seen.merge(&mut two).unwrap();
        let list = seen.get(automerge::ROOT, TRANSITIONS).unwrap().unwrap().1;
        assert_eq!(seen.get_all(&list, 0).unwrap().len(), 2);
        assert_eq!(
            read(&seen).unwrap().transitions,
            read(&before).unwrap().transitions
        );
        assert_eq!(
            check_tablet_changes(Some(&before), &seen).unwrap_err(),
            TabletChangeError::TransitionsRewritten
        );

        let mut one = doc.fork().with_actor(actor(2));
        let mut two = doc.fork().with_actor(actor(3));
        one.put(automerge::ROOT, KIND, "death").unwrap();
        two.put(automerge::ROOT, KIND, "marriage").unwrap();
        let mut seen = doc.fork();
        seen.merge(&mut one).unwrap();
        let before = copy(&mut seen);
        seen.merge(&mut two).unwrap();
        assert_eq!(
            check_tablet_changes(Some(&before), &seen).unwrap_err(),
            TabletChangeError::Malformed("root field 'kind' is missing or in conflict".into())
        );
    }
}
