//! Characters that do not belong in names and ids: bidirectional controls
//! and other invisible characters.
//!
//! A right-to-left override (U+202E) makes a name display differently from
//! what is stored; an invisible character makes two ids or names that look
//! the same compare different. Both are refused in the fields people type
//! (see [`crate::birth`] and [`crate::workflow`]), with three exceptions
//! Khmer text needs: the zero-width space (U+200B), which marks word
//! boundaries in a script written without spaces, and the zero-width
//! non-joiner and joiner (U+200C, U+200D), which change how signs combine.

/// U+200B ZERO WIDTH SPACE.
pub const ZERO_WIDTH_SPACE: char = '\u{200B}';
/// U+200C ZERO WIDTH NON-JOINER.
pub const ZERO_WIDTH_NON_JOINER: char = '\u{200C}';
/// U+200D ZERO WIDTH JOINER.
pub const ZERO_WIDTH_JOINER: char = '\u{200D}';
/// U+FEFF ZERO WIDTH NO-BREAK SPACE, the byte order mark: pasted text
/// often starts with one. Removed by normalization, never refused.
pub const BYTE_ORDER_MARK: char = '\u{FEFF}';

/// Is `c` one of the zero-width characters Khmer text legitimately uses
/// (U+200B, U+200C, U+200D)?
pub fn is_khmer_zero_width(c: char) -> bool {
    matches!(c, ZERO_WIDTH_SPACE | ZERO_WIDTH_NON_JOINER | ZERO_WIDTH_JOINER)
}

/// Is `c` a bidirectional formatting character: the marks (U+061C,
/// U+200E, U+200F), embeddings and overrides (U+202A to U+202E) and
/// isolates (U+2066 to U+2069)?
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Is `c` invisible: a Unicode format character (general category Cf) or
/// a default-ignorable code point (Unicode 15)? This includes the bidi
/// controls, the zero-width characters, the byte order mark, the soft
/// hyphen, variation selectors, tags, the Hangul fillers and the two
/// Khmer inherent vowels U+17B4 and U+17B5, which Unicode advises against
/// using. Control characters (Cc) are not included: they are refused
/// separately.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_controls_are_invisible_and_letters_are_not() {
        for c in [
            '\u{202E}', '\u{202D}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            assert!(is_bidi_control(c), "{:X}", c as u32);
            assert!(is_invisible(c), "{:X}", c as u32);
        }
        for c in ['a', 'Z', '0', 'ក', '\u{17D2}', '\u{17B6}', 'é', ' ', '-'] {
            assert!(!is_bidi_control(c), "{:X}", c as u32);
            assert!(!is_invisible(c), "{:X}", c as u32);
        }
    }

    #[test]
    fn the_khmer_zero_width_characters_are_invisible_but_singled_out() {
        for c in [ZERO_WIDTH_SPACE, ZERO_WIDTH_NON_JOINER, ZERO_WIDTH_JOINER] {
            assert!(is_invisible(c));
            assert!(is_khmer_zero_width(c));
            assert!(!is_bidi_control(c));
        }
        for c in [
            BYTE_ORDER_MARK,
            '\u{00AD}',
            '\u{2060}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{17B4}',
        ] {
            assert!(is_invisible(c), "{:X}", c as u32);
            assert!(!is_khmer_zero_width(c), "{:X}", c as u32);
        }
    }
}
