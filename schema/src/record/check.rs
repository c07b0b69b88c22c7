//! Who may write what: the server's checks of a tablet's changes, on every
//! operation they contain ([`check_tablet_operations`]) and on the state
//! they lead to ([`check_tablet_changes`]).

use automerge::{ObjId, ObjType, Prop, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef};
use serde_json::Value as Json;

use super::{
    DATA, Entry, KIND, OFFICE, RecordError, RecordView, SERVER, TRANSITIONS, read_root, root_entries,
};
use crate::workflow::{self, WorkflowError};

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
    /// The event data of an approved record changed: once a record is
    /// approved, only a registered amendment changes its data.
    #[error("the change set rewrites the data of an approved record; only an amendment may change it")]
    RegisteredDataChanged,
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
                // Settling two concurrent values of `data` by keeping one of
                // them: automerge writes it as the deletion of the others.
                // A deletion that leaves no value is refused below ("root
                // field 'data' is missing"), and a changed approved record
                // as `RegisteredDataChanged`.
                (OpType::Delete, Some(DATA)) if !op.insert => {}
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

pub(super) fn scalar_json(s: &ScalarValue) -> Json {
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
pub(super) fn snapshot_entry<R: ReadDoc>(
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
    // Exactly one value: present, and not in conflict. Two tablets of the
    // office may write `data` concurrently (a rejected record corrected on
    // both): the conflict is kept and shown, the server holds the record.
    if root_after.get(DATA).is_none() {
        return Err(TabletChangeError::Malformed(format!(
            "root field '{DATA}' is missing"
        )));
    }
    for key in [KIND, OFFICE, TRANSITIONS] {
        if root_after.get(key).is_none_or(|e| e.conflict) {
            return Err(TabletChangeError::Malformed(format!(
                "root field '{key}' is missing or in conflict"
            )));
        }
    }
    // Steps the server already has; the others are new.
    // Which steps of the merged list the server already had.
    let mut known: Option<Vec<bool>> = None;
    // The data of an approved record changed: allowed only by a new
    // registrar's settlement of a record not registered yet.
    let mut approved_data_changed: Option<(bool, usize)> = None;
    let settlements = |v: &RecordView| {
        v.transitions
            .iter()
            .filter(|t| t.action == workflow::Action::Settle)
            .count()
    };
    if let Some((b, rb)) = &root_before {
        let snap_before = |key: &str| snapshot_entry(*b, &root, key.into(), rb.get(key)).map_err(am);
        let snap_after =
            |key: &str| snapshot_entry(after, &root, key.into(), root_after.get(key)).map_err(am);
        for key in [KIND, OFFICE] {
            if snap_before(key)? != snap_after(key)? {
                return Err(TabletChangeError::Immutable(key));
            }
        }
        // Approved (or beyond, registered): the data is the legal record.
        let before_view = read_root(*b, rb).ok();
        let approved_before = before_view.as_ref().is_some_and(|v| {
            v.transitions
                .iter()
                .any(|t| t.action == workflow::Action::Approve)
        });
        if approved_before && snap_before(DATA)? != snap_after(DATA)? {
            approved_data_changed = Some((
                before_view.as_ref().is_some_and(|v| v.server.is_registered()),
                before_view.as_ref().map_or(0, settlements),
            ));
        }
        let steps_before = snap_before(TRANSITIONS)?;
        match kept_in_order(&steps_before, &snap_after(TRANSITIONS)?) {
            Some(k) => known = Some(k),
            None => return Err(TabletChangeError::TransitionsRewritten),
        }
    }
    let view = read_root(after, &root_after).map_err(|e| match e {
        RecordError::Workflow(w) => TabletChangeError::Workflow(w),
        other => TabletChangeError::Malformed(other.to_string()),
    })?;
    if let Some((registered, settled_before)) = approved_data_changed
        && (registered || settlements(&view) <= settled_before)
    {
        return Err(TabletChangeError::RegisteredDataChanged);
    }
    // Every transition, old and new, must follow the rules; a new one's
    // staff id must also have the form new steps have.
    workflow::derive(&view.transitions).map_err(TabletChangeError::Workflow)?;
    let is_new = |i: usize| known.as_ref().is_none_or(|k| !k.get(i).copied().unwrap_or(false));
    for t in view
        .transitions
        .iter()
        .enumerate()
        .filter(|(i, _)| is_new(*i))
        .map(|(_, t)| t)
    {
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

/// Every step of the list snapshot `a` is still in `b`, the same list
/// object, in the same order, and every element of `b` has one value:
/// steps are only ever added. Two tablets of the office may append steps
/// concurrently, so the new ones need not all come last (automerge orders
/// concurrent inserts by their ids). Returns, for each element of `b`,
/// whether it was in `a`; `None` when a step was removed or rewritten.
fn kept_in_order(a: &Json, b: &Json) -> Option<Vec<bool>> {
    let (Some(a), Some(b)) = (a.as_array(), b.as_array()) else {
        return None;
    };
    if a.len() != 1 || b.len() != 1 || a[0].get("$id") != b[0].get("$id") {
        return None;
    }
    let (Some(ia), Some(ib)) = (
        a[0].get("$items").and_then(|v| v.as_array()),
        b[0].get("$items").and_then(|v| v.as_array()),
    ) else {
        return None;
    };
    if !ib.iter().all(|v| v.as_array().is_some_and(|c| c.len() == 1)) {
        return None;
    }
    let mut known = vec![false; ib.len()];
    let mut next = ia.iter().peekable();
    for (slot, item) in known.iter_mut().zip(ib) {
        if next.peek().is_some_and(|x| *x == item) {
            *slot = true;
            next.next();
        }
    }
    next.peek().is_none().then_some(known)
}
