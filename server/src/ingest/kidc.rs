//! Issuing a KIdC: the issuance log, the tablet's evidence and the ledger.

use crvs_schema::Kidc;
use crvs_schema::kidc::Category;
use uuid::Uuid;

use crate::storage::{Issuance, WriteTx};

use super::{Ctx, MAX_KIDC_DRAWS, REASON_BIRTH_APPROVED, REASON_RECORDED_AGAIN, Stats, Step, internal};

/// What [`issue_kidc`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Issued {
    /// The record's code.
    Code(Kidc),
    /// The record had a code before a restore, and recording it again
    /// would give one code to two records: hold it, issue nothing.
    Conflict,
}

/// The record's KIdC, in this order:
///
/// 1. the one already in the issuance log;
/// 2. the one issued before the database was restored from a backup: the
///    tablet's signed evidence, or the ledger's reservation (they must
///    agree, and the code must not be another record's);
/// 3. `drawn` if neither the issuance log nor the ledger holds it, else a
///    fresh draw that neither holds.
///
/// Every code issued is pushed to `stats.reserve.codes`, for the ledger.
pub(super) fn issue_kidc(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    record_id: Uuid,
    seq: u64,
    category: Category,
    drawn: Kidc,
    stats: &mut Stats,
) -> Result<Issued, Step> {
    let evidence = ctx.evidence.get(record_id.as_bytes()).copied();
    if let Some(k) = tx.issued_kidc(record_id)? {
        if evidence.is_some_and(|e| e != k) {
            tracing::warn!(record = %record_id, "the tablet's evidence names another code than the issuance log; the log stands");
        } else {
            tracing::warn!(record = %record_id, "record already in the issuance log: its code is reused");
        }
        return Ok(Issued::Code(k));
    }
    let ledger = ctx.server.ledger();
    let reserved = ledger.code_for(record_id)?;
    let known = match (evidence, reserved) {
        (Some(e), Some(l)) if e != l => {
            tracing::error!(record = %record_id, "the tablet's evidence and the KIdC ledger name different codes; record held");
            return Ok(Issued::Conflict);
        }
        (e, l) => e.or(l),
    };
    fn issuance<'k>(
        kidc: &'k Kidc,
        reason: &'k str,
        record_id: Uuid,
        category: Category,
        ctx: &Ctx<'_>,
        seq: u64,
    ) -> Issuance<'k> {
        Issuance {
            kidc,
            record_id,
            category: category.digit(),
            issued_at_ms: ctx.now_ms,
            device_id: ctx.device.device_id,
            seq,
            reason,
        }
    }
    if let Some(k) = known {
        if ledger.holder_of(&k)?.is_some_and(|holder| holder != record_id)
            || !tx.insert_issuance(&issuance(
                &k,
                REASON_RECORDED_AGAIN,
                record_id,
                category,
                ctx,
                seq,
            ))?
        {
            tracing::error!(record = %record_id, "the code this record held before the restore went to another record; record held");
            return Ok(Issued::Conflict);
        }
        tracing::info!(
            record = %record_id,
            from = if evidence.is_some() { "evidence" } else { "ledger" },
            "a code issued before the restore recorded again"
        );
        stats.recorded_again += 1;
        stats.issued.again += 1;
        stats.reserve.codes.push((k, record_id));
        return Ok(Issued::Code(k));
    }
    let mut kidc = drawn;
    for _ in 0..MAX_KIDC_DRAWS {
        if ledger.holder_of(&kidc)?.is_none() {
            if tx.insert_issuance(&issuance(
                &kidc,
                REASON_BIRTH_APPROVED,
                record_id,
                category,
                ctx,
                seq,
            ))? {
                stats.issued.new += 1;
                stats.reserve.codes.push((kidc, record_id));
                return Ok(Issued::Code(kidc));
            }
            if let Some(k) = tx.issued_kidc(record_id)? {
                return Ok(Issued::Code(k));
            }
        }
        tracing::info!(record = %record_id, "drawn KIdC already issued or reserved; drawing again");
        kidc = Kidc::generate(category, &mut rand::rng());
    }
    Err(internal("no unused KIdC found after many draws"))
}
