//! Codes of Cambodia's national gazetteer.
//!
//! A province has 2 digits (01..=25), a district 4, a commune 6 and a
//! village 8; each code extends its parent's by two digits, and no
//! segment after the province is `00`. For example village `17100301`
//! lies in commune `171003`, district `1710`, province `17`.
//!
//! Codes are not personal data, but error messages still do not repeat
//! the input: they say what is expected.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The administrative level of a gazetteer code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Province (or the capital, Phnom Penh): 2 digits.
    Province,
    /// District (srok, khan, krong): 4 digits.
    District,
    /// Commune (khum, sangkat): 6 digits.
    Commune,
    /// Village (phum): 8 digits.
    Village,
}

impl Level {
    /// All levels, from the largest area to the smallest.
    pub const ALL: [Level; 4] = [Level::Province, Level::District, Level::Commune, Level::Village];

    /// Number of digits of a code at this level (2, 4, 6 or 8).
    pub const fn digits(self) -> usize {
        match self {
            Level::Province => 2,
            Level::District => 4,
            Level::Commune => 6,
            Level::Village => 8,
        }
    }

    /// The level of a code with `digits` digits.
    pub const fn from_digits(digits: usize) -> Option<Level> {
        match digits {
            2 => Some(Level::Province),
            4 => Some(Level::District),
            6 => Some(Level::Commune),
            8 => Some(Level::Village),
            _ => None,
        }
    }

    /// The enclosing level, `None` for a province.
    pub const fn parent(self) -> Option<Level> {
        match self {
            Level::Province => None,
            Level::District => Some(Level::Province),
            Level::Commune => Some(Level::District),
            Level::Village => Some(Level::Commune),
        }
    }

    /// Lower-case English name: "province", "district", "commune", "village".
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Province => "province",
            Level::District => "district",
            Level::Commune => "commune",
            Level::Village => "village",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a (suitable) gazetteer code. Messages never repeat
/// the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GazetteerError {
    /// Not 2, 4, 6 or 8 characters long.
    #[error("must be a gazetteer code of 2, 4, 6 or 8 digits")]
    WrongLength,
    /// Contains a character other than an ASCII digit.
    #[error("must contain only the digits 0-9")]
    NotDigit,
    /// The first two digits are not a province number 01..=25.
    #[error("must start with a province number from 01 to 25")]
    UnknownProvince,
    /// The district, commune or village segment is `00`.
    #[error("must not have 00 as its {0} part")]
    ZeroSegment(Level),
    /// A valid code, but of another level than required.
    #[error("must be a {expected} code ({} digits), not a {found} code", .expected.digits())]
    WrongLevel {
        /// The level the caller required.
        expected: Level,
        /// The level of the code given.
        found: Level,
    },
}

/// A valid code of Cambodia's national gazetteer (province, district,
/// commune or village).
///
/// Ordered like its string, so a parent sorts right before its
/// descendants. Serialized as the digit string, e.g. `"17100301"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GazetteerCode {
    // ASCII digits, padded with 0 bytes after `len`. Field order matters:
    // since 0 < b'0', the derived `Ord` is the string order.
    bytes: [u8; 8],
    len: u8,
}

/// Highest province number in the gazetteer (Tboung Khmum, created 2013).
pub const MAX_PROVINCE: u8 = 25;

impl GazetteerCode {
    /// Parses a code of any level, checking the rules in the module
    /// documentation.
    pub fn parse(s: &str) -> Result<GazetteerCode, GazetteerError> {
        let b = s.as_bytes();
        let level = Level::from_digits(b.len());
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(GazetteerError::NotDigit);
        }
        let Some(level) = level else {
            return Err(GazetteerError::WrongLength);
        };
        let province = (b[0] - b'0') * 10 + (b[1] - b'0');
        if !(1..=MAX_PROVINCE).contains(&province) {
            return Err(GazetteerError::UnknownProvince);
        }
        for segment_level in [Level::District, Level::Commune, Level::Village] {
            let end = segment_level.digits();
            if end > b.len() {
                break;
            }
            if &b[end - 2..end] == b"00" {
                return Err(GazetteerError::ZeroSegment(segment_level));
            }
        }
        let mut bytes = [0u8; 8];
        bytes[..b.len()].copy_from_slice(b);
        Ok(GazetteerCode {
            bytes,
            len: level.digits() as u8,
        })
    }

    /// Parses a code that must be of the given level, e.g.
    /// `parse_level(s, Level::Village)` for "must be a village code".
    pub fn parse_level(s: &str, level: Level) -> Result<GazetteerCode, GazetteerError> {
        let code = GazetteerCode::parse(s)?;
        if code.level() == level {
            Ok(code)
        } else {
            Err(GazetteerError::WrongLevel {
                expected: level,
                found: code.level(),
            })
        }
    }

    /// The code's digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored, so this never falls back.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// The code's level, from its length.
    pub fn level(&self) -> Level {
        match self.len {
            2 => Level::Province,
            4 => Level::District,
            6 => Level::Commune,
            _ => Level::Village,
        }
    }

    /// The enclosing code (a village's commune, ...), `None` for a province.
    pub fn parent(&self) -> Option<GazetteerCode> {
        self.level().parent().and_then(|level| self.at_level(level))
    }

    /// This code's ancestor at `level`, or the code itself if it is at
    /// that level; `None` if `level` is below this code's level.
    pub fn at_level(&self, level: Level) -> Option<GazetteerCode> {
        let len = level.digits();
        if len > usize::from(self.len) {
            return None;
        }
        let mut bytes = [0u8; 8];
        bytes[..len].copy_from_slice(&self.bytes[..len]);
        Some(GazetteerCode {
            bytes,
            len: len as u8,
        })
    }

    /// The province this code lies in (itself for a province).
    pub fn province(&self) -> GazetteerCode {
        let mut bytes = [0u8; 8];
        bytes[..2].copy_from_slice(&self.bytes[..2]);
        GazetteerCode { bytes, len: 2 }
    }

    /// The district this code lies in (itself for a district), `None` for
    /// a province.
    pub fn district(&self) -> Option<GazetteerCode> {
        self.at_level(Level::District)
    }

    /// The commune this code lies in (itself for a commune), `None` for a
    /// province or district.
    pub fn commune(&self) -> Option<GazetteerCode> {
        self.at_level(Level::Commune)
    }

    /// Is this code a strict descendant of `other` (a village of that
    /// commune, a commune of that province, ...)? A code does not extend
    /// itself; see [`GazetteerCode::is_within`].
    pub fn extends(&self, other: &GazetteerCode) -> bool {
        self.len > other.len && self.bytes[..usize::from(other.len)] == *other.as_bytes()
    }

    /// Is this code `other` or one of its descendants?
    pub fn is_within(&self, other: &GazetteerCode) -> bool {
        self == other || self.extends(other)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Display for GazetteerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for GazetteerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GazetteerCode({})", self.as_str())
    }
}

impl FromStr for GazetteerCode {
    type Err = GazetteerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GazetteerCode::parse(s)
    }
}

impl Serialize for GazetteerCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GazetteerCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;

        impl Visitor<'_> for CodeVisitor {
            type Value = GazetteerCode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a gazetteer code string of 2, 4, 6 or 8 digits")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GazetteerCode, E> {
                GazetteerCode::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(CodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(s: &str) -> GazetteerCode {
        GazetteerCode::parse(s).expect("test code is valid")
    }

    #[test]
    fn codes_of_every_level_parse() {
        assert_eq!(code("17").level(), Level::Province);
        assert_eq!(code("1710").level(), Level::District);
        assert_eq!(code("171003").level(), Level::Commune);
        assert_eq!(code("17100301").level(), Level::Village);
        assert_eq!(code("17100301").as_str(), "17100301");
        assert_eq!(code("01").as_str(), "01");
        assert_eq!(code("25999999").as_str(), "25999999");
    }

    #[test]
    fn lengths_other_than_2_4_6_8_are_rejected() {
        for s in ["", "1", "171", "17100", "1710030", "171003011", "1710030101"] {
            assert_eq!(GazetteerCode::parse(s), Err(GazetteerError::WrongLength), "{s}");
        }
    }

    #[test]
    fn non_digits_are_rejected() {
        for s in ["1a", "17-0", "not-a-code", " 17 ", "１７", "17.0"] {
            assert_eq!(GazetteerCode::parse(s), Err(GazetteerError::NotDigit), "{s}");
        }
    }

    #[test]
    fn province_numbers_outside_01_to_25_are_rejected() {
        for s in ["00", "26", "99", "0010", "26100301"] {
            assert_eq!(
                GazetteerCode::parse(s),
                Err(GazetteerError::UnknownProvince),
                "{s}"
            );
        }
    }

    #[test]
    fn a_00_segment_below_the_province_is_rejected() {
        assert_eq!(
            GazetteerCode::parse("1700"),
            Err(GazetteerError::ZeroSegment(Level::District))
        );
        assert_eq!(
            GazetteerCode::parse("171000"),
            Err(GazetteerError::ZeroSegment(Level::Commune))
        );
        assert_eq!(
            GazetteerCode::parse("17100300"),
            Err(GazetteerError::ZeroSegment(Level::Village))
        );
    }

    #[test]
    fn parse_level_demands_the_given_level() {
        assert!(GazetteerCode::parse_level("17100301", Level::Village).is_ok());
        let err = GazetteerCode::parse_level("1710", Level::Village).unwrap_err();
        assert_eq!(
            err,
            GazetteerError::WrongLevel {
                expected: Level::Village,
                found: Level::District
            }
        );
        assert_eq!(
            err.to_string(),
            "must be a village code (8 digits), not a district code"
        );
    }

    #[test]
    fn parents_drop_the_last_two_digits() {
        let village = code("17100301");
        assert_eq!(village.parent(), Some(code("171003")));
        assert_eq!(code("171003").parent(), Some(code("1710")));
        assert_eq!(code("1710").parent(), Some(code("17")));
        assert_eq!(code("17").parent(), None);
        assert_eq!(village.province(), code("17"));
        assert_eq!(village.district(), Some(code("1710")));
        assert_eq!(village.commune(), Some(code("171003")));
        assert_eq!(code("1710").commune(), None);
        assert_eq!(code("17").district(), None);
        assert_eq!(code("171003").commune(), Some(code("171003")));
    }

    #[test]
    fn extends_means_strict_descendant() {
        let village = code("17100301");
        assert!(village.extends(&code("171003")));
        assert!(village.extends(&code("1710")));
        assert!(village.extends(&code("17")));
        assert!(!village.extends(&village));
        assert!(village.is_within(&village));
        assert!(!village.extends(&code("171004")));
        assert!(!village.extends(&code("1711")));
        assert!(!code("171003").extends(&village));
        assert!(!code("1210").extends(&code("17")));
    }

    #[test]
    fn ordering_follows_the_string_so_parents_come_first() {
        let mut codes = [
            code("17100301"),
            code("1711"),
            code("17"),
            code("171003"),
            code("1710"),
        ];
        codes.sort();
        let strings: Vec<&str> = codes.iter().map(GazetteerCode::as_str).collect();
        assert_eq!(strings, ["17", "1710", "171003", "17100301", "1711"]);
    }

    #[test]
    fn serde_uses_the_digit_string() {
        let village = code("17100301");
        let json = serde_json::to_string(&village).expect("serializes");
        assert_eq!(json, "\"17100301\"");
        assert_eq!(
            serde_json::from_str::<GazetteerCode>(&json).expect("parses"),
            village
        );
        assert!(serde_json::from_str::<GazetteerCode>("\"1700\"").is_err());
        assert!(serde_json::from_str::<GazetteerCode>("17100301").is_err());
    }

    #[test]
    fn error_messages_do_not_repeat_the_input() {
        for s in ["9999999", "abcdefgh", "99", "17000000"] {
            let message = GazetteerCode::parse(s).unwrap_err().to_string();
            assert!(!message.contains(s), "{message}");
        }
    }

    proptest! {
        #[test]
        fn every_valid_code_round_trips_and_extends_its_ancestors(
            province in 1u8..=25,
            segments in proptest::collection::vec(1u8..=99, 0..=3),
        ) {
            let mut s = format!("{province:02}");
            for segment in &segments {
                s.push_str(&format!("{segment:02}"));
            }
            let c = GazetteerCode::parse(&s).expect("valid by construction");
            prop_assert_eq!(c.as_str(), s.as_str());
            prop_assert_eq!(c.to_string().parse::<GazetteerCode>(), Ok(c));
            let mut ancestor = c.parent();
            while let Some(a) = ancestor {
                prop_assert!(c.extends(&a));
                prop_assert!(!a.extends(&c));
                prop_assert!(a < c);
                ancestor = a.parent();
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,10}") {
            let _ = GazetteerCode::parse(&s);
        }
    }
}
