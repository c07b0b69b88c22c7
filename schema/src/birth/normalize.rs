//! Names as stored and compared: zero-width characters removed, NFC,
//! whitespace collapsed.

use unicode_normalization::UnicodeNormalization;

use crate::text;

/// Normalizes a name in Khmer script for storage and comparison: removes
/// zero-width spaces (U+200B, and U+FEFF), applies Unicode NFC, trims, and
/// collapses each run of whitespace inside the name to one space. The
/// joiners (U+200C, U+200D) are kept: they change how Khmer signs combine
/// (a word of nothing but joiners is dropped).
///
/// It does not yet reorder Khmer signs typed in a non-canonical order
/// beyond what NFC does.
pub fn normalize_name(name: &str) -> String {
    normalize_without(name, |c| {
        c == text::ZERO_WIDTH_SPACE || c == text::BYTE_ORDER_MARK
    })
}

/// Normalizes a name in Latin script: as [`normalize_name`], and removes
/// the joiners too (U+200C, U+200D), which mean nothing in Latin script.
pub fn normalize_latin_name(name: &str) -> String {
    normalize_without(name, |c| {
        text::is_khmer_zero_width(c) || c == text::BYTE_ORDER_MARK
    })
}

fn normalize_without(name: &str, removed: impl Fn(char) -> bool) -> String {
    let composed: String = name.chars().filter(|&c| !removed(c)).nfc().collect();
    let mut out = String::with_capacity(composed.len());
    // A word of nothing but joiners is nothing: a name of joiners is empty.
    for word in composed
        .split_whitespace()
        .filter(|w| !w.chars().all(text::is_khmer_zero_width))
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}
