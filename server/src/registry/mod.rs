//! The Population Registry (being built on the `registry` branch): the
//! interface ingest calls.

use crvs_schema::Kidc;
use crvs_schema::event::Event;
use uuid::Uuid;

use crate::storage::{StorageError, WriteTx};

/// A registered event, as the registry takes it.
pub struct RegisteredEvent<'a> {
    pub record_id: Uuid,
    pub registration_number: &'a str,
    pub registered_at_ms: i64,
    pub office: &'a str,
    pub event: &'a Event,
    pub kidc: Option<Kidc>,
    pub amends: Option<Amended>,
    pub late: bool,
}

/// What an amendment amends.
pub struct Amended {
    pub record_id: Uuid,
    pub kidc: Option<Kidc>,
}

pub fn check(
    _tx: &mut dyn WriteTx,
    _event: &Event,
    _amends: Option<&Amended>,
) -> Result<Option<&'static str>, StorageError> {
    Ok(None)
}

pub fn apply(_tx: &mut dyn WriteTx, _e: &RegisteredEvent<'_>) -> Result<(), StorageError> {
    Ok(())
}
