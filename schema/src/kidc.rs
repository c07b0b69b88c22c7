//! The Khmer Identification Code (KIdC).
//!
//! Ten ASCII digits: a category digit `d1`, eight digits `d2..d9` drawn
//! uniformly from a cryptographically secure random generator, and a check
//! digit `d10`. With `S = Σ (11 − i)·d_i` over `i = 1..9`, the check digit
//! is `d10 = (11 − S mod 11) mod 11`; a draw whose check digit would be 10
//! is discarded and drawn again. The ten digits therefore always form a
//! valid ISBN-10 with a numeric check digit, which detects every
//! single-digit error and every transposition of two adjacent digits.
//!
//! The code carries no information but its category. Uniqueness and the
//! issuance log are the server's business, not this module's.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, RngExt};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of digits of a KIdC.
pub const KIDC_LEN: usize = 10;

/// The category digit of a KIdC, 1..=9.
///
/// Which categories are in use is configuration; [`Category::CITIZEN`] and
/// [`Category::FOREIGN_RESIDENT`] are the two defined today. 0 is never a
/// category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Category(u8);

impl Category {
    /// Cambodian citizens.
    pub const CITIZEN: Category = Category(1);
    /// Foreign residents.
    pub const FOREIGN_RESIDENT: Category = Category(2);

    /// The category with this digit, `None` unless `digit` is 1..=9.
    pub const fn new(digit: u8) -> Option<Category> {
        if digit >= 1 && digit <= 9 {
            Some(Category(digit))
        } else {
            None
        }
    }

    /// The category digit's value, 1..=9.
    pub const fn digit(self) -> u8 {
        self.0
    }
}

/// Why a string is not a KIdC. Messages never repeat the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KidcError {
    /// Not exactly ten characters.
    #[error("must be exactly 10 digits")]
    WrongLength,
    /// A character other than an ASCII digit.
    #[error("must contain only the digits 0-9")]
    NotDigit,
    /// The check digit does not match: a typing error.
    #[error("has a wrong check digit")]
    BadCheckDigit,
    /// The first digit is 0, which is not a category.
    #[error("must start with a category digit from 1 to 9")]
    BadCategory,
}

/// The check digit for body digits `d1..d9` (values 0..=9, not ASCII):
/// `(11 − S mod 11) mod 11` with `S = Σ (11 − i)·d_i`, or `None` when
/// that is 10 (such a body is never issued).
pub fn check_digit(body: &[u8; 9]) -> Option<u8> {
    let sum: u32 = body
        .iter()
        .zip((2..=10u32).rev())
        .map(|(&d, weight)| weight * u32::from(d))
        .sum();
    // `sum % 11` < 11, so this cannot underflow and the result is 0..=10.
    let check = (11 - sum % 11) % 11;
    u8::try_from(check).ok().filter(|&c| c < 10)
}

/// A valid Khmer Identification Code: ten ASCII digits with a non-zero
/// category digit and a correct check digit.
///
/// Displayed and serialized as the plain ten digits, e.g. `"1234567806"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kidc([u8; KIDC_LEN]);

impl Kidc {
    /// Parses exactly ten ASCII digits, checking the category digit (not 0)
    /// and then the check digit. No spaces or separators are accepted.
    pub fn parse(s: &str) -> Result<Kidc, KidcError> {
        let b = s.as_bytes();
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(if s.chars().count() == KIDC_LEN {
                KidcError::NotDigit
            } else {
                KidcError::WrongLength
            });
        }
        let digits: [u8; KIDC_LEN] = b.try_into().map_err(|_| KidcError::WrongLength)?;
        if digits[0] == b'0' {
            return Err(KidcError::BadCategory);
        }
        let mut body = [0u8; 9];
        for (value, &ascii) in body.iter_mut().zip(&digits) {
            *value = ascii - b'0';
        }
        if check_digit(&body) != Some(digits[9] - b'0') {
            return Err(KidcError::BadCheckDigit);
        }
        Ok(Kidc(digits))
    }

    /// Draws a new code of `category` from `rng`, which must be a
    /// cryptographically secure generator (the server passes the operating
    /// system's). Draws whose check digit would be 10 are discarded.
    ///
    /// Uniqueness is not checked here: the caller must compare against the
    /// codes already issued.
    pub fn generate<R: CryptoRng + ?Sized>(category: Category, rng: &mut R) -> Kidc {
        loop {
            let mut random = rng.random_range(0..100_000_000u32);
            let mut body = [0u8; 9];
            body[0] = category.digit();
            for slot in body[1..].iter_mut().rev() {
                // `random % 10` < 10: the cast cannot truncate.
                *slot = (random % 10) as u8;
                random /= 10;
            }
            if let Some(check) = check_digit(&body) {
                let mut digits = [0u8; KIDC_LEN];
                for (ascii, &value) in digits.iter_mut().zip(&body) {
                    *ascii = b'0' + value;
                }
                digits[9] = b'0' + check;
                return Kidc(digits);
            }
        }
    }

    /// The category digit.
    pub fn category(&self) -> Category {
        Category(self.0[0] - b'0')
    }

    /// The ten digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Kidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Kidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kidc({})", self.as_str())
    }
}

impl FromStr for Kidc {
    type Err = KidcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kidc::parse(s)
    }
}

impl Serialize for Kidc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kidc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KidcVisitor;

        impl Visitor<'_> for KidcVisitor {
            type Value = Kidc;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a KIdC string of 10 digits")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Kidc, E> {
                Kidc::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(KidcVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Independent ISBN-10 check: Σ (11 − i)·d_i over all ten digits ≡ 0 (mod 11).
    fn is_valid_isbn10(s: &str) -> bool {
        s.len() == 10
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.bytes()
                .enumerate()
                .map(|(i, b)| (10 - i as u32) * u32::from(b - b'0'))
                .sum::<u32>()
                % 11
                == 0
    }

    fn digits_of(s: &str) -> [u8; 9] {
        let mut body = [0u8; 9];
        for (value, b) in body.iter_mut().zip(s.bytes()) {
            *value = b - b'0';
        }
        body
    }

    /// Valid codes built from an arbitrary category and eight digits.
    fn valid_code() -> impl Strategy<Value = String> {
        (1u8..=9, proptest::array::uniform8(0u8..=9)).prop_filter_map(
            "check digit would be 10",
            |(category, rest)| {
                let mut body = [category; 9];
                body[1..].copy_from_slice(&rest);
                let check = check_digit(&body)?;
                Some(
                    body.iter()
                        .chain(std::iter::once(&check))
                        .map(|d| char::from(b'0' + d))
                        .collect(),
                )
            },
        )
    }

    #[test]
    fn the_check_digit_matches_known_isbn_10_examples() {
        // ISBN 0-306-40615-2 and 0-19-852663-6.
        assert_eq!(check_digit(&digits_of("030640615")), Some(2));
        assert_eq!(check_digit(&digits_of("019852663")), Some(6));
        // ISBN 0-8044-2957-X has check "digit" 10: never issued.
        assert_eq!(check_digit(&digits_of("080442957")), None);
        assert!(is_valid_isbn10("0306406152"));
    }

    #[test]
    fn a_valid_isbn_with_category_zero_is_rejected_for_its_category() {
        assert_eq!(Kidc::parse("0306406152"), Err(KidcError::BadCategory));
    }

    #[test]
    fn a_valid_code_parses_and_displays_unchanged() {
        let code = Kidc::parse("1234567806").expect("valid");
        assert_eq!(code.category(), Category::CITIZEN);
        assert_eq!(code.as_str(), "1234567806");
        assert_eq!(code.to_string(), "1234567806");
        assert_eq!("1234567806".parse::<Kidc>(), Ok(code));
        assert_eq!(format!("{code:?}"), "Kidc(1234567806)");
    }

    #[test]
    fn malformed_strings_are_rejected_with_the_right_error() {
        assert_eq!(Kidc::parse(""), Err(KidcError::WrongLength));
        assert_eq!(Kidc::parse("123456789"), Err(KidcError::WrongLength));
        assert_eq!(Kidc::parse("12345678060"), Err(KidcError::WrongLength));
        assert_eq!(Kidc::parse("123456789X"), Err(KidcError::NotDigit));
        assert_eq!(Kidc::parse("1234 67806"), Err(KidcError::NotDigit));
        assert_eq!(Kidc::parse("１234567897"), Err(KidcError::NotDigit));
        assert_eq!(Kidc::parse("123-456-7897"), Err(KidcError::WrongLength));
        assert_eq!(Kidc::parse("1234567807"), Err(KidcError::BadCheckDigit));
    }

    #[test]
    fn categories_are_the_digits_1_to_9() {
        assert_eq!(Category::new(0), None);
        assert_eq!(Category::new(10), None);
        assert_eq!(Category::new(1), Some(Category::CITIZEN));
        assert_eq!(Category::new(2), Some(Category::FOREIGN_RESIDENT));
        assert_eq!(Category::new(9).map(Category::digit), Some(9));
    }

    #[test]
    fn generated_codes_carry_their_category() {
        let mut rng = StdRng::seed_from_u64(7);
        for digit in 1..=9 {
            let category = Category::new(digit).expect("1..=9");
            let code = Kidc::generate(category, &mut rng);
            assert_eq!(code.category(), category);
            assert!(code.as_str().starts_with(char::from(b'0' + digit)));
        }
    }

    #[test]
    fn the_eight_random_digits_are_spread_over_all_values() {
        let mut rng = StdRng::seed_from_u64(2026);
        let draws = 2000;
        let mut counts = [[0u32; 10]; 8];
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..draws {
            let code = Kidc::generate(Category::CITIZEN, &mut rng);
            distinct.insert(code);
            for (position, b) in code.as_str().bytes().skip(1).take(8).enumerate() {
                counts[position][usize::from(b - b'0')] += 1;
            }
        }
        // 2000 draws from 10^8: collisions are possible but rare.
        assert!(distinct.len() >= draws - 2);
        // Expected 200 per digit and position, standard deviation about 13.4;
        // 120..=280 is six standard deviations.
        for (position, per_digit) in counts.iter().enumerate() {
            for (digit, &count) in per_digit.iter().enumerate() {
                assert!(
                    (120..=280).contains(&count),
                    "digit {digit} at position {} occurred {count} times",
                    position + 2
                );
            }
        }
    }

    #[test]
    fn the_operating_system_generator_can_be_used() {
        let code = Kidc::generate(Category::FOREIGN_RESIDENT, &mut rand::rng());
        assert_eq!(Kidc::parse(code.as_str()), Ok(code));
    }

    #[test]
    fn serde_uses_the_digit_string() {
        let code = Kidc::parse("1234567806").expect("valid");
        let json = serde_json::to_string(&code).expect("serializes");
        assert_eq!(json, "\"1234567806\"");
        assert_eq!(serde_json::from_str::<Kidc>(&json).expect("parses"), code);
        assert!(serde_json::from_str::<Kidc>("\"1234567807\"").is_err());
        assert!(serde_json::from_str::<Kidc>("1234567806").is_err());
    }

    proptest! {
        #[test]
        fn every_generated_code_parses_and_is_a_valid_isbn_10(
            seed: u64,
            category in 1u8..=9,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let category = Category::new(category).expect("1..=9");
            let code = Kidc::generate(category, &mut rng);
            prop_assert!(is_valid_isbn10(code.as_str()));
            prop_assert_eq!(Kidc::parse(code.as_str()), Ok(code));
            prop_assert_eq!(code.category(), category);
        }

        #[test]
        fn every_valid_isbn_10_with_a_category_digit_parses(code in valid_code()) {
            prop_assert!(is_valid_isbn10(&code));
            prop_assert!(Kidc::parse(&code).is_ok());
        }

        #[test]
        fn every_single_digit_change_is_rejected(
            code in valid_code(),
            position in 0usize..10,
            replacement in 0u8..=9,
        ) {
            let mut bytes = code.clone().into_bytes();
            prop_assume!(bytes[position] != b'0' + replacement);
            bytes[position] = b'0' + replacement;
            let changed = String::from_utf8(bytes).expect("ASCII");
            let result = Kidc::parse(&changed);
            prop_assert!(
                matches!(result, Err(KidcError::BadCheckDigit | KidcError::BadCategory)),
                "{} accepted as a change of {}", changed, code
            );
        }

        #[test]
        fn every_adjacent_transposition_is_rejected(
            code in valid_code(),
            position in 0usize..9,
        ) {
            let mut bytes = code.clone().into_bytes();
            prop_assume!(bytes[position] != bytes[position + 1]);
            bytes.swap(position, position + 1);
            let swapped = String::from_utf8(bytes).expect("ASCII");
            let result = Kidc::parse(&swapped);
            prop_assert!(
                matches!(result, Err(KidcError::BadCheckDigit | KidcError::BadCategory)),
                "{} accepted as a transposition of {}", swapped, code
            );
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,12}") {
            let _ = Kidc::parse(&s);
        }
    }
}
