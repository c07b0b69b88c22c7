//! Calendar dates (proleptic Gregorian, no time zone), written `YYYY-MM-DD`.
//!
//! Civil registration records days, not instants: a child is born on a
//! date in Cambodia's local calendar. This module never reads a clock; the
//! caller passes "now" in (see [`Date::today_in_cambodia`]).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A calendar date between 0000-01-01 and 9999-12-31 inclusive.
///
/// Ordering is chronological. Serialized as the string `"YYYY-MM-DD"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    // Field order matters: the derived `Ord` is chronological.
    year: i32,
    month: u8,
    day: u8,
}

/// Why a string is not a date. Messages never repeat the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// Not of the form `YYYY-MM-DD` (four, two and two ASCII digits).
    #[error("must be a date written YYYY-MM-DD")]
    Format,
    /// Well formed, but no such day (month 13, 30 February, ...).
    #[error("must be a date YYYY-MM-DD that exists")]
    NoSuchDay,
}

/// Offset of Cambodia's time zone (Indochina Time, UTC+7, no daylight
/// saving) in milliseconds.
const CAMBODIA_UTC_OFFSET_MS: i64 = 7 * 60 * 60 * 1000;
const MS_PER_DAY: i64 = 24 * 60 * 60 * 1000;

/// Is `year` a leap year in the proleptic Gregorian calendar?
fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1..=12) of `year`; 0 for an invalid month.
fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

impl Date {
    /// The earliest representable date, 0000-01-01.
    pub const MIN: Date = Date {
        year: 0,
        month: 1,
        day: 1,
    };
    /// The latest representable date, 9999-12-31.
    pub const MAX: Date = Date {
        year: 9999,
        month: 12,
        day: 31,
    };

    /// The date `year-month-day`, or `None` if that day does not exist or
    /// the year is outside 0..=9999.
    pub fn new(year: i32, month: u8, day: u8) -> Option<Date> {
        if !(0..=9999).contains(&year) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Date { year, month, day })
    }

    /// Parses exactly `YYYY-MM-DD` (ASCII digits, no sign, no spaces, no
    /// time part) and checks that the day exists, leap years included.
    pub fn parse(s: &str) -> Result<Date, DateError> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(DateError::Format);
        }
        let number = |range: std::ops::Range<usize>| -> Result<u32, DateError> {
            b[range].iter().try_fold(0u32, |acc, &c| {
                if c.is_ascii_digit() {
                    Ok(acc * 10 + u32::from(c - b'0'))
                } else {
                    Err(DateError::Format)
                }
            })
        };
        let year = number(0..4)?;
        let month = number(5..7)?;
        let day = number(8..10)?;
        // The values fit: at most 9999, 99 and 99.
        let (year, month, day) = (year as i32, month as u8, day as u8);
        Date::new(year, month, day).ok_or(DateError::NoSuchDay)
    }

    /// The year, 0..=9999.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1..=12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The day of the month, 1..=31.
    pub fn day(self) -> u8 {
        self.day
    }

    /// The date `days` days after 1970-01-01 (negative: before), or `None`
    /// outside [`Date::MIN`]..=[`Date::MAX`].
    ///
    /// Howard Hinnant's `civil_from_days` algorithm.
    pub fn from_unix_days(days: i64) -> Option<Date> {
        if !(Date::MIN.to_unix_days()..=Date::MAX.to_unix_days()).contains(&days) {
            return None;
        }
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097); // [0, 146096]
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11]
        let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
        let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
        let year = yoe + era * 400 + i64::from(month <= 2);
        // In range by the check above.
        Date::new(i32::try_from(year).ok()?, month as u8, day as u8)
    }

    /// Days since 1970-01-01 (negative before it).
    ///
    /// Howard Hinnant's `days_from_civil` algorithm.
    pub fn to_unix_days(self) -> i64 {
        let month = i64::from(self.month);
        let day = i64::from(self.day);
        let year = i64::from(self.year) - i64::from(self.month <= 2);
        let era = year.div_euclid(400);
        let yoe = year.rem_euclid(400); // [0, 399]
        let mp = if month > 2 { month - 3 } else { month + 9 }; // [0, 11]
        let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
        era * 146_097 + doe - 719_468
    }

    /// The current date in Cambodia (UTC+7) at the instant `unix_ms`
    /// (milliseconds since 1970-01-01T00:00:00Z), which the caller reads
    /// from its clock. Saturates at [`Date::MIN`] / [`Date::MAX`] for
    /// instants outside years 0..=9999.
    pub fn today_in_cambodia(unix_ms: i64) -> Date {
        let days = unix_ms
            .saturating_add(CAMBODIA_UTC_OFFSET_MS)
            .div_euclid(MS_PER_DAY);
        match Date::from_unix_days(days) {
            Some(date) => date,
            None if days < 0 => Date::MIN,
            None => Date::MAX,
        }
    }

    /// Number of days from `other` to `self`: positive when `self` is
    /// later. `d.days_since(d) == 0`.
    pub fn days_since(&self, other: &Date) -> i64 {
        self.to_unix_days() - other.to_unix_days()
    }

    /// The age in completed years, on the date `on`, of someone born on
    /// this date: a birthday counts from its day (29 February from 1 March
    /// in other years). Negative when `on` is before this date.
    pub fn age_on(self, on: Date) -> i32 {
        let years = on.year - self.year;
        if (on.month, on.day) < (self.month, self.day) {
            years - 1
        } else {
            years
        }
    }

    /// The date `days` days later (earlier if negative), or `None` outside
    /// [`Date::MIN`]..=[`Date::MAX`].
    pub fn add_days(self, days: i64) -> Option<Date> {
        Date::from_unix_days(self.to_unix_days().checked_add(days)?)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Date({self})")
    }
}

impl FromStr for Date {
    type Err = DateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Date::parse(s)
    }
}

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DateVisitor;

        impl Visitor<'_> for DateVisitor {
            type Value = Date;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date string YYYY-MM-DD")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Date, E> {
                Date::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DateVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Date {
        Date::parse(s).expect("test date is valid")
    }

    #[test]
    fn age_counts_completed_years() {
        assert_eq!(d("1998-04-15").age_on(d("2026-11-02")), 28);
        assert_eq!(d("1998-11-02").age_on(d("2026-11-02")), 28);
        assert_eq!(d("1998-11-03").age_on(d("2026-11-02")), 27);
        assert_eq!(d("2026-11-02").age_on(d("2026-11-02")), 0);
        assert_eq!(d("2026-11-03").age_on(d("2026-11-02")), -1);
        // Born on 29 February: a year older on 1 March in common years.
        assert_eq!(d("2000-02-29").age_on(d("2001-02-28")), 0);
        assert_eq!(d("2000-02-29").age_on(d("2001-03-01")), 1);
        assert_eq!(d("0001-01-01").age_on(d("2027-01-31")), 2026);
    }

    #[test]
    fn a_well_formed_existing_date_parses_and_displays_the_same() {
        let date = d("2026-11-02");
        assert_eq!((date.year(), date.month(), date.day()), (2026, 11, 2));
        assert_eq!(date.to_string(), "2026-11-02");
        assert_eq!("2026-11-02".parse::<Date>(), Ok(date));
    }

    #[test]
    fn february_29_exists_only_in_leap_years() {
        assert!(Date::parse("2024-02-29").is_ok());
        assert!(Date::parse("2000-02-29").is_ok());
        assert_eq!(Date::parse("2026-02-29"), Err(DateError::NoSuchDay));
        assert_eq!(Date::parse("1900-02-29"), Err(DateError::NoSuchDay));
        assert_eq!(Date::parse("2026-02-30"), Err(DateError::NoSuchDay));
    }

    #[test]
    fn days_and_months_out_of_range_do_not_exist() {
        for s in [
            "2026-00-10",
            "2026-13-01",
            "2026-04-31",
            "2026-01-00",
            "2026-01-32",
        ] {
            assert_eq!(Date::parse(s), Err(DateError::NoSuchDay), "{s}");
        }
    }

    #[test]
    fn anything_but_exactly_yyyy_mm_dd_is_a_format_error() {
        for s in [
            "",
            "2026-1-02",
            "2026-11-2",
            "26-11-02",
            "+2026-11-02",
            "2026/11/02",
            "2026-11-02T00:00",
            " 2026-11-02",
            "2026-11-02 ",
            "２０２６-11-02",
            "2026-1a-02",
            "-026-11-02",
        ] {
            assert_eq!(Date::parse(s), Err(DateError::Format), "{s:?}");
        }
    }

    #[test]
    fn error_messages_do_not_repeat_the_input() {
        let message = Date::parse("secret-val").unwrap_err().to_string();
        assert!(!message.contains("secret"));
    }

    #[test]
    fn unix_day_zero_is_1970_01_01() {
        assert_eq!(Date::from_unix_days(0), Some(d("1970-01-01")));
        assert_eq!(d("1970-01-01").to_unix_days(), 0);
        assert_eq!(d("1969-12-31").to_unix_days(), -1);
        assert_eq!(d("2000-03-01").to_unix_days(), 11_017);
        assert_eq!(d("2026-11-28").to_unix_days(), 20_785);
    }

    #[test]
    fn unix_days_outside_years_0_to_9999_have_no_date() {
        assert_eq!(Date::from_unix_days(Date::MIN.to_unix_days() - 1), None);
        assert_eq!(Date::from_unix_days(Date::MAX.to_unix_days() + 1), None);
        assert_eq!(Date::from_unix_days(i64::MIN), None);
        assert_eq!(Date::from_unix_days(i64::MAX), None);
        assert_eq!(Date::from_unix_days(Date::MAX.to_unix_days()), Some(Date::MAX));
        assert_eq!(Date::from_unix_days(Date::MIN.to_unix_days()), Some(Date::MIN));
    }

    #[test]
    fn today_in_cambodia_turns_at_17_00_utc() {
        // 2026-11-28T16:59:59.999Z is 23:59:59.999 in Phnom Penh.
        let before = 20_785 * MS_PER_DAY + 17 * 3_600_000 - 1;
        assert_eq!(Date::today_in_cambodia(before), d("2026-11-28"));
        assert_eq!(Date::today_in_cambodia(before + 1), d("2026-11-29"));
        assert_eq!(Date::today_in_cambodia(0), d("1970-01-01"));
        assert_eq!(Date::today_in_cambodia(-7 * 3_600_000 - 1), d("1969-12-31"));
        assert_eq!(Date::today_in_cambodia(i64::MAX), Date::MAX);
        assert_eq!(Date::today_in_cambodia(i64::MIN), Date::MIN);
    }

    #[test]
    fn days_since_counts_forward_and_backward() {
        assert_eq!(d("2026-03-01").days_since(&d("2026-02-01")), 28);
        assert_eq!(d("2024-03-01").days_since(&d("2024-02-01")), 29);
        assert_eq!(d("2026-02-01").days_since(&d("2026-03-01")), -28);
        assert_eq!(d("2026-12-31").days_since(&d("2026-01-01")), 364);
        assert_eq!(d("2026-01-01").add_days(31), Some(d("2026-02-01")));
        assert_eq!(Date::MAX.add_days(1), None);
    }

    #[test]
    fn dates_order_chronologically() {
        assert!(d("2025-12-31") < d("2026-01-01"));
        assert!(d("2026-01-31") < d("2026-02-01"));
        assert!(Date::MIN < Date::MAX);
    }

    #[test]
    fn serde_uses_the_yyyy_mm_dd_string() {
        let date = d("0999-01-05");
        let json = serde_json::to_string(&date).expect("serializes");
        assert_eq!(json, "\"0999-01-05\"");
        assert_eq!(serde_json::from_str::<Date>(&json).expect("parses"), date);
        assert!(serde_json::from_str::<Date>("\"2026-02-30\"").is_err());
        assert!(serde_json::from_str::<Date>("20261102").is_err());
    }

    proptest! {
        #[test]
        fn unix_days_round_trip_over_the_whole_range(
            days in Date::MIN.to_unix_days()..=Date::MAX.to_unix_days()
        ) {
            let date = Date::from_unix_days(days).expect("in range");
            prop_assert_eq!(date.to_unix_days(), days);
            prop_assert_eq!(Date::parse(&date.to_string()), Ok(date));
            if let Some(next) = Date::from_unix_days(days + 1) {
                prop_assert!(date < next);
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,12}") {
            let _ = Date::parse(&s);
        }
    }
}
