//! Helpers shared by the unit tests of the registrations.

use serde_json::Value;

use crate::validation::ValidationError;

/// `doc` with the value at JSON pointer `pointer` replaced (or, for
/// `None`, removed). Array elements are addressed by index.
pub(crate) fn with(mut doc: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
    let target = doc.pointer_mut(parent).expect("parent exists");
    match (target, value) {
        (Value::Object(map), Some(value)) => {
            map.insert(key.to_owned(), value);
        }
        (Value::Object(map), None) => {
            map.remove(key);
        }
        (Value::Array(items), Some(value)) => match key.parse::<usize>().expect("an index") {
            i if i == items.len() => items.push(value),
            i => items[i] = value,
        },
        (Value::Array(items), None) => {
            items.remove(key.parse::<usize>().expect("an index"));
        }
        _ => panic!("parent is neither an object nor an array"),
    }
    doc
}

pub(crate) fn fields(err: &ValidationError) -> Vec<&str> {
    err.problems.iter().map(|p| p.field.as_str()).collect()
}
