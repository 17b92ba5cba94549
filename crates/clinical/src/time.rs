//! FHIR date/time values as UTC instants.
//!
//! Clinical windows need one comparable number per effective time, so every FHIR `dateTime` or
//! `instant` becomes milliseconds since the Unix epoch (UTC). Partial precision (`2026`,
//! `2026-03`, `2026-03-14`) means the start of that period, read as UTC because FHIR gives
//! dates without a time no zone.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An instant in UTC, milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

const MILLIS_PER_MINUTE: i64 = 60_000;
const MILLIS_PER_HOUR: i64 = 3_600_000;
const MILLIS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// A bound far beyond any clinical date that still leaves room for window arithmetic.
    pub const FAR_FUTURE: Timestamp = Timestamp(i64::MAX / 4);

    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub fn saturating_add_millis(self, millis: i64) -> Self {
        Timestamp(self.0.saturating_add(millis))
    }

    pub fn saturating_sub_millis(self, millis: i64) -> Self {
        Timestamp(self.0.saturating_sub(millis))
    }

    /// Parses a FHIR `date`, `dateTime` or `instant`; `None` when the text is not one.
    pub fn parse_fhir(text: &str) -> Option<Timestamp> {
        parse_fhir_millis(text.as_bytes()).map(Timestamp)
    }

    /// The start of the UTC day holding this instant.
    pub fn start_of_day(self) -> Timestamp {
        Timestamp(self.0.div_euclid(MILLIS_PER_DAY) * MILLIS_PER_DAY)
    }

    /// The start of the UTC hour holding this instant.
    pub fn start_of_hour(self) -> Timestamp {
        Timestamp(self.0.div_euclid(MILLIS_PER_HOUR) * MILLIS_PER_HOUR)
    }

    /// RFC 3339 in UTC (`2026-03-14T09:26:53Z`, with `.sss` when there are milliseconds): a
    /// valid FHIR `dateTime` and `instant`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MILLIS_PER_DAY);
        let in_day = self.0.rem_euclid(MILLIS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let hour = in_day / MILLIS_PER_HOUR;
        let minute = (in_day % MILLIS_PER_HOUR) / MILLIS_PER_MINUTE;
        let second = (in_day % MILLIS_PER_MINUTE) / 1000;
        let millis = in_day % 1000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}"
        )?;
        if millis != 0 {
            write!(f, ".{millis:03}")?;
        }
        f.write_str("Z")
    }
}

/// Minutes as milliseconds (config values are in minutes).
pub(crate) const fn minutes(count: u32) -> i64 {
    count as i64 * MILLIS_PER_MINUTE
}

fn digits(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0')),
    )
}

fn parse_fhir_millis(text: &[u8]) -> Option<i64> {
    let year = digits(text.get(0..4)?)?;
    let mut month = 1;
    let mut day = 1;
    let mut rest = &text[4..];
    if !rest.is_empty() {
        if rest[0] != b'-' {
            return None;
        }
        month = digits(rest.get(1..3)?)?;
        rest = &rest[3..];
        if !rest.is_empty() {
            if rest[0] != b'-' {
                return None;
            }
            day = digits(rest.get(1..3)?)?;
            rest = &rest[3..];
        }
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut millis = days_from_civil(year, month, day) * MILLIS_PER_DAY;
    if rest.is_empty() {
        return Some(millis);
    }
    // hh:mm:ss(.fff...)?(Z|+hh:mm|-hh:mm); FHIR requires a zone once a time is given.
    if rest.len() < 9 || rest[0] != b'T' || rest[3] != b':' || rest[6] != b':' {
        return None;
    }
    let hour = digits(&rest[1..3])?;
    let minute = digits(&rest[4..6])?;
    let second = digits(&rest[7..9])?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // A leap second is the last instant of its minute.
    let second = second.min(59);
    rest = &rest[9..];
    let mut fraction_millis = 0;
    if rest.first() == Some(&b'.') {
        let end = rest[1..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(rest.len(), |p| p + 1);
        let fraction = &rest[1..end];
        if fraction.is_empty() {
            return None;
        }
        let mut scaled = 0;
        for position in 0..3 {
            let digit = fraction.get(position).map_or(0, |b| i64::from(b - b'0'));
            scaled = scaled * 10 + digit;
        }
        fraction_millis = scaled;
        rest = &rest[end..];
    }
    let offset_minutes = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2])?;
            let mins = digits(&[*m1, *m2])?;
            if hours > 14 || mins > 59 {
                return None;
            }
            let total = hours * 60 + mins;
            if *sign == b'-' { -total } else { total }
        }
        _ => return None,
    };
    millis += hour * MILLIS_PER_HOUR + minute * MILLIS_PER_MINUTE + second * 1000 + fraction_millis;
    Some(millis - offset_minutes * MILLIS_PER_MINUTE)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        Timestamp::parse_fhir(text).unwrap().as_millis()
    }

    #[test]
    fn partial_precision_means_the_start_of_the_period() {
        assert_eq!(at("2026-03-14"), at("2026-03-14T00:00:00Z"));
        assert_eq!(at("2026-03"), at("2026-03-01T00:00:00Z"));
        assert_eq!(at("2026"), at("2026-01-01T00:00:00Z"));
        assert_eq!(at("1970-01-01"), 0);
    }

    #[test]
    fn offsets_and_fractions_become_utc_milliseconds() {
        assert_eq!(at("2026-03-14T10:00:00+02:00"), at("2026-03-14T08:00:00Z"));
        assert_eq!(at("2026-03-14T00:30:00-01:00"), at("2026-03-14T01:30:00Z"));
        assert_eq!(at("1970-01-01T00:00:01.5Z"), 1500);
        assert_eq!(at("1970-01-01T00:00:00.123456Z"), 123);
        assert_eq!(at("1969-12-31T23:59:59Z"), -1000);
    }

    #[test]
    fn malformed_text_is_not_a_time() {
        for bad in [
            "",
            "26",
            "2026-13",
            "2026-02-30",
            "2026-03-14T10:00",
            "2026-03-14T10:00:00",
            "2026-03-14T25:00:00Z",
            "2026-03-14T10:00:00+15:00",
            "2026-03-14T10:00:00.Z",
            "2026/03/14",
            "2026-03-14x",
        ] {
            assert_eq!(Timestamp::parse_fhir(bad), None, "{bad}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for text in [
            "2026-03-14T09:26:53Z",
            "2024-02-29T23:59:59.999Z",
            "1899-12-31T00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse_fhir(text).unwrap().to_rfc3339(), text);
        }
        let t = Timestamp::parse_fhir("2026-03-14T09:26:53.250Z").unwrap();
        assert_eq!(t.start_of_hour().to_rfc3339(), "2026-03-14T09:00:00Z");
        assert_eq!(t.start_of_day().to_rfc3339(), "2026-03-14T00:00:00Z");
    }
}
