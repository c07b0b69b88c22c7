//! One element of a change set's record changes: exactly one automerge
//! document chunk or change chunk, checked before automerge expands it.

use super::RecordError;

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
