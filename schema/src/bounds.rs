//! Bounds on automerge bytes from a tablet, checked *before* automerge
//! decodes them.
//!
//! Automerge's columnar format run-length encodes its columns: a handful of
//! bytes can claim a billion operations, and a compressed chunk or a
//! deflated column inflates without limit. `AutoCommit::load` has no cap of
//! its own, so the server walks the chunk headers and every column's runs
//! here, allocating nothing, and refuses:
//!
//! * chunk types other than a document (0) or a change (1): compressed
//!   changes and bundles inflate or nest; tablets send neither;
//! * deflated columns, for the same reason (`save_nocompress` and raw
//!   changes never deflate);
//! * a column whose runs add up to more than [`Limits::max_column_entries`]
//!   entries (operations, changes, predecessors...), so that no column of
//!   what automerge then loads is longer;
//! * more bytes than [`Limits::max_bytes`].
//!
//! The layout follows automerge's binary format (the magic bytes
//! `85 6f 4a 83`, a 4-byte checksum, the chunk type, a LEB128 length; then,
//! for a document: actors, heads, change and operation column metadata,
//! column data, head indices; for a change: dependencies, actor, sequence
//! number, start op, time, message, other actors, operation column
//! metadata, column data). A column's spec is `id << 4 | deflate << 3 |
//! type`; types 0, 1, 2, 6 are unsigned RLE, 3 signed (delta) RLE, 4
//! boolean run lengths, 5 RLE of strings, 7 raw value bytes.

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in one element of a record's changes.
    pub max_bytes: usize,
    /// Most entries any one column of any one chunk may hold.
    pub max_column_entries: u64,
}

impl Limits {
    /// What the server accepts from a tablet for one record. A birth is
    /// one chunk of about 1.5 KB and a dozen operations.
    pub const RECORD: Limits = Limits {
        max_bytes: 256 * 1024,
        max_column_entries: 10_000,
    };
}

/// Why bytes were refused. No message echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BoundsError {
    /// Larger than [`Limits::max_bytes`].
    #[error("automerge data of {0} bytes is larger than the limit")]
    TooManyBytes(usize),
    /// A column claims more entries than the limit.
    #[error("an automerge column claims more than {0} entries")]
    TooManyEntries(u64),
    /// A chunk type tablets never send (compressed change, bundle...).
    #[error("automerge chunk type {0} is not accepted from a tablet")]
    ChunkType(u8),
    /// A deflated column.
    #[error("deflated automerge columns are not accepted from a tablet")]
    Deflated,
    /// The bytes do not parse as automerge chunks.
    #[error("automerge data is malformed ({0})")]
    Malformed(&'static str),
}

/// What a check counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Chunks in the bytes.
    pub chunks: usize,
    /// The longest column seen (about the number of operations).
    pub max_column_entries: u64,
}

/// Checks one element of a record's changes (one or more chunks back to
/// back) against `limits` without decoding it.
pub fn check(bytes: &[u8], limits: &Limits) -> Result<Counts, BoundsError> {
    if bytes.len() > limits.max_bytes {
        return Err(BoundsError::TooManyBytes(bytes.len()));
    }
    let mut r = Reader { bytes, pos: 0 };
    let mut counts = Counts::default();
    if r.done() {
        return Err(BoundsError::Malformed("empty"));
    }
    while !r.done() {
        if r.take(4)? != MAGIC {
            return Err(BoundsError::Malformed("no magic bytes"));
        }
        r.take(4)?; // checksum: automerge checks it
        let chunk_type = r.byte()?;
        let len = usize::try_from(r.uleb()?).map_err(|_| BoundsError::Malformed("length"))?;
        let body = r.take(len)?;
        let mut c = Reader { bytes: body, pos: 0 };
        let longest = match chunk_type {
            0 => document(&mut c, limits)?,
            1 => change(&mut c, limits)?,
            other => return Err(BoundsError::ChunkType(other)),
        };
        counts.chunks += 1;
        counts.max_column_entries = counts.max_column_entries.max(longest);
    }
    Ok(counts)
}

/// What the header of one automerge document chunk says, read without
/// loading the document: its actors, its heads, and whether any column is
/// deflated (`save()` deflates large columns, `save_nocompress()` never).
///
/// The checksum is not checked: this is for bytes the caller made itself
/// and kept sealed (a tablet's own stored documents), never for bytes
/// from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentHeader<'a> {
    /// The actor ids, in the chunk's order.
    pub actors: Vec<&'a [u8]>,
    /// The heads, sorted.
    pub heads: Vec<[u8; 32]>,
    /// Some column is deflated.
    pub deflated: bool,
}

/// The header of `bytes` when they are exactly one automerge document
/// chunk (nothing before or after it); `None` otherwise.
pub fn document_header(bytes: &[u8]) -> Option<DocumentHeader<'_>> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4).ok()? != MAGIC {
        return None;
    }
    r.take(4).ok()?;
    if r.byte().ok()? != 0 {
        return None;
    }
    let len = r.len().ok()?;
    let body = r.take(len).ok()?;
    if !r.done() {
        return None;
    }
    let mut c = Reader { bytes: body, pos: 0 };
    let n = c.uleb().ok()?;
    let mut actors = Vec::new();
    for _ in 0..n {
        let len = c.len().ok()?;
        actors.push(c.take(len).ok()?);
    }
    let n = c.uleb().ok()?;
    let mut heads = Vec::new();
    for _ in 0..n {
        heads.push(<[u8; 32]>::try_from(c.take(32).ok()?).ok()?);
    }
    heads.sort_unstable();
    let change_cols = columns(&mut c).ok()?;
    let op_cols = columns(&mut c).ok()?;
    let deflated = change_cols
        .iter()
        .chain(&op_cols)
        .any(|(spec, _)| spec & 0b1000 != 0);
    Some(DocumentHeader {
        actors,
        heads,
        deflated,
    })
}

fn document(r: &mut Reader<'_>, limits: &Limits) -> Result<u64, BoundsError> {
    let actors = r.uleb()?;
    for _ in 0..actors {
        let n = r.len()?;
        r.take(n)?;
    }
    let heads = r.uleb()?;
    r.take(
        usize::try_from(heads)
            .ok()
            .and_then(|h| h.checked_mul(32))
            .ok_or(BoundsError::Malformed("heads"))?,
    )?;
    let change_cols = columns(r)?;
    let op_cols = columns(r)?;
    let mut longest = 0;
    for spec_len in change_cols.iter().chain(&op_cols) {
        longest = longest.max(column(r, *spec_len, limits)?);
    }
    // Head indices follow; automerge reads one per head.
    Ok(longest)
}

fn change(r: &mut Reader<'_>, limits: &Limits) -> Result<u64, BoundsError> {
    let deps = r.uleb()?;
    r.take(
        usize::try_from(deps)
            .ok()
            .and_then(|d| d.checked_mul(32))
            .ok_or(BoundsError::Malformed("deps"))?,
    )?;
    let n = r.len()?; // actor
    r.take(n)?;
    r.uleb()?; // seq
    r.uleb()?; // start op
    r.uleb()?; // time (signed; the same bytes)
    let n = r.len()?; // message
    r.take(n)?;
    let others = r.uleb()?;
    for _ in 0..others {
        let n = r.len()?;
        r.take(n)?;
    }
    let op_cols = columns(r)?;
    let mut longest = 0;
    for spec_len in &op_cols {
        longest = longest.max(column(r, *spec_len, limits)?);
    }
    Ok(longest)
}

/// Column metadata: `(spec, length)` pairs.
fn columns(r: &mut Reader<'_>) -> Result<Vec<(u64, usize)>, BoundsError> {
    let n = r.uleb()?;
    // Each pair takes at least two bytes: no more pairs than bytes left.
    if n > (r.bytes.len() - r.pos) as u64 {
        return Err(BoundsError::Malformed("column count"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let spec = r.uleb()?;
        let len = r.len()?;
        out.push((spec, len));
    }
    Ok(out)
}

/// Walks one column's data and returns how many entries it holds.
fn column(r: &mut Reader<'_>, (spec, len): (u64, usize), limits: &Limits) -> Result<u64, BoundsError> {
    if spec & 0b1000 != 0 {
        return Err(BoundsError::Deflated);
    }
    let data = r.take(len)?;
    let mut c = Reader { bytes: data, pos: 0 };
    let mut entries: u64 = 0;
    let mut add = |n: u64| -> Result<(), BoundsError> {
        entries = entries.saturating_add(n);
        if entries > limits.max_column_entries {
            Err(BoundsError::TooManyEntries(limits.max_column_entries))
        } else {
            Ok(())
        }
    };
    match spec & 0b111 {
        // Raw value bytes: their count is in the metadata column.
        7 => {}
        // Boolean: alternating run lengths.
        4 => {
            while !c.done() {
                add(c.uleb()?)?;
            }
        }
        kind => {
            // RLE: a signed count, then one value (a run), |count| values
            // (a literal run), or for 0 a count of nulls.
            while !c.done() {
                let count = c.sleb()?;
                if count > 0 {
                    add(count as u64)?;
                    value(&mut c, kind)?;
                } else if count < 0 {
                    let n = count.unsigned_abs();
                    add(n)?;
                    for _ in 0..n {
                        value(&mut c, kind)?;
                    }
                } else {
                    add(c.uleb()?)?;
                }
            }
        }
    }
    Ok(entries)
}

fn value(r: &mut Reader<'_>, kind: u64) -> Result<(), BoundsError> {
    match kind {
        3 => {
            r.sleb()?;
        }
        5 => {
            let n = r.len()?;
            r.take(n)?;
        }
        _ => {
            r.uleb()?;
        }
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, BoundsError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(BoundsError::Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BoundsError> {
        let end = self.pos.checked_add(n).ok_or(BoundsError::Malformed("length"))?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(BoundsError::Malformed("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn uleb(&mut self) -> Result<u64, BoundsError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(BoundsError::Malformed("LEB128 too long"))
    }

    fn sleb(&mut self) -> Result<i64, BoundsError> {
        let mut v: i64 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift >= 64 {
                return Err(BoundsError::Malformed("LEB128 too long"));
            }
            v |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Ok(v);
            }
        }
    }

    /// A LEB128 length that must fit in what is left.
    fn len(&mut self) -> Result<usize, BoundsError> {
        let n = self.uleb()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.pos)
            .ok_or(BoundsError::Malformed("length"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    fn doc_with_list(n: usize) -> AutoCommit {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "kind", "birth").unwrap();
        let list = doc.put_object(ROOT, "transitions", ObjType::List).unwrap();
        for i in 0..n {
            doc.insert(&list, i, format!("step {i}")).unwrap();
        }
        doc
    }

    #[test]
    fn honest_documents_and_changes_pass_and_are_counted() {
        let mut doc = doc_with_list(20);
        let chunk = doc.save_nocompress();
        let counts = check(&chunk, &Limits::RECORD).unwrap();
        assert_eq!(counts.chunks, 1);
        assert!(counts.max_column_entries >= 22, "{counts:?}");
        for c in doc.get_changes(&[]) {
            check(c.raw_bytes(), &Limits::RECORD).unwrap();
        }
        // Several chunks back to back.
        let mut two = chunk.clone();
        two.extend_from_slice(doc.get_changes(&[])[0].raw_bytes());
        assert_eq!(check(&two, &Limits::RECORD).unwrap().chunks, 2);
    }

    #[test]
    fn a_document_with_more_operations_than_the_limit_is_refused_before_loading() {
        let chunk = doc_with_list(200).save_nocompress();
        let small = Limits {
            max_bytes: 1 << 20,
            max_column_entries: 100,
        };
        assert_eq!(check(&chunk, &small), Err(BoundsError::TooManyEntries(100)));
    }

    #[test]
    fn compressed_documents_and_chunks_are_refused() {
        let mut doc = doc_with_list(300);
        // `save()` deflates columns longer than 256 bytes.
        let saved = doc.save();
        assert_eq!(check(&saved, &Limits::RECORD), Err(BoundsError::Deflated));
        let mut compressed = doc.get_changes(&[])[0].clone();
        let bytes = compressed.bytes().to_vec();
        if bytes.get(8) == Some(&2) {
            assert_eq!(check(&bytes, &Limits::RECORD), Err(BoundsError::ChunkType(2)));
        }
    }

    #[test]
    fn a_run_claiming_a_billion_entries_is_refused_in_a_few_bytes() {
        // A change chunk whose one column is a single run of 10^9.
        let mut body = vec![0u8]; // no deps
        body.extend([1, 0xaa]); // actor of one byte
        body.extend([1, 1, 0, 0]); // seq, start op, time, empty message
        body.push(0); // no other actors
        let mut run = Vec::new();
        leb(&mut run, 1_000_000_000); // a run of 10^9 ...
        run.push(5); // ... of the value 5
        body.extend([1, 0x42]); // one column: id 4 (action), type unsigned RLE
        body.push(run.len() as u8);
        body.extend(&run);
        let mut chunk = MAGIC.to_vec();
        chunk.extend([0; 4]);
        chunk.push(1);
        chunk.push(body.len() as u8);
        chunk.extend(&body);
        assert!(chunk.len() < 40);
        assert_eq!(
            check(&chunk, &Limits::RECORD),
            Err(BoundsError::TooManyEntries(Limits::RECORD.max_column_entries))
        );
    }

    fn leb(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn truncated_or_garbage_bytes_are_malformed_never_a_panic() {
        let chunk = doc_with_list(5).save_nocompress();
        for n in 0..chunk.len() {
            assert!(check(&chunk[..n], &Limits::RECORD).is_err(), "cut at {n}");
        }
        let mut rng = 0x2545f4914f6cdd1du64;
        for _ in 0..2000 {
            let mut b = chunk.clone();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng as usize) % b.len();
            b[i] ^= (rng >> 32) as u8 | 1;
            let _ = check(&b, &Limits::RECORD);
        }
        assert!(check(&vec![0u8; 300 * 1024], &Limits::RECORD).is_err());
    }

    #[test]
    fn a_document_header_says_what_loading_the_document_finds() {
        // Two actors and two heads (concurrent changes), large enough
        // that `save()` deflates a column.
        let mut a = AutoCommit::new().with_actor(automerge::ActorId::from([1u8; 16]));
        a.put(ROOT, "kind", "birth").unwrap();
        a.put(ROOT, "data", "x".repeat(2000)).unwrap();
        let mut b = a.fork().with_actor(automerge::ActorId::from([2u8; 16]));
        a.put(ROOT, "office", "171003").unwrap();
        b.put(ROOT, "office", "171004").unwrap();
        a.merge(&mut b).unwrap();
        let plain = a.save_nocompress();
        let h = document_header(&plain).expect("one document chunk");
        let loaded = AutoCommit::load(&plain).unwrap();
        let mut heads: Vec<[u8; 32]> = loaded.clone().get_heads().iter().map(|h| h.0).collect();
        heads.sort_unstable();
        assert_eq!(h.heads.len(), 2);
        assert_eq!(h.heads, heads);
        assert_eq!(h.actors, vec![&[1u8; 16][..], &[2u8; 16][..]]);
        assert!(!h.deflated);
        let deflated = a.save();
        let h2 = document_header(&deflated).expect("one document chunk");
        assert!(h2.deflated, "save() deflates the long value column");
        assert_eq!(h2.heads, heads);
        // Not exactly one document chunk: nothing.
        let mut two = plain.clone();
        two.extend_from_slice(&a.save_nocompress());
        assert_eq!(document_header(&two), None);
        let mut change_doc = doc_with_list(1);
        change_doc.commit();
        let change = change_doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        assert_eq!(document_header(&change), None, "a change chunk");
        for cut in 0..plain.len() {
            assert_eq!(document_header(&plain[..cut]), None);
        }
    }
}
