//! Partial-precision dates, date-times and times with FHIRPath comparison and arithmetic.

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TemporalKind {
    Date,
    DateTime,
    Time,
}

/// How much of a value was given. `Second` includes any fraction of a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

/// A FHIRPath Date, DateTime or Time. Fields beyond `precision` are zero (or one for month/day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Temporal {
    pub kind: TemporalKind,
    pub precision: Precision,
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
    /// Offset from UTC in minutes, when given.
    pub offset_minutes: Option<i32>,
}

impl Temporal {
    fn empty(kind: TemporalKind, precision: Precision) -> Self {
        Temporal {
            kind,
            precision,
            year: 0,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millis: 0,
            offset_minutes: None,
        }
    }

    /// Parses the text of a `@` literal (without the `@`): `2015-02`, `2015T`,
    /// `2015-02-04T14:34:28.123+10:00`, `T14:34`.
    pub fn parse_literal(text: &str) -> Option<Temporal> {
        if let Some(time) = text.strip_prefix('T') {
            return parse_time(time, true);
        }
        let (date_part, time_part) = match text.find('T') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let mut value = parse_date(date_part)?;
        if let Some(time) = time_part {
            value.kind = TemporalKind::DateTime;
            if !time.is_empty() {
                if value.precision != Precision::Day {
                    return None;
                }
                apply_time(&mut value, time, true)?;
            }
        }
        Some(value)
    }

    /// Parses a FHIR `date`, `dateTime` or `instant` string (`1974-12-25`,
    /// `2015-02-07T13:28:17-05:00`). A value with a time part is a DateTime.
    pub fn parse_fhir_date_time(text: &str) -> Option<Temporal> {
        let (date_part, time_part) = match text.find('T') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        let mut value = parse_date(date_part)?;
        if let Some(time) = time_part {
            if value.precision != Precision::Day || time.is_empty() {
                return None;
            }
            value.kind = TemporalKind::DateTime;
            apply_time(&mut value, time, true)?;
        }
        Some(value)
    }

    /// Parses a FHIR `time` string (`14:34:28`).
    pub fn parse_fhir_time(text: &str) -> Option<Temporal> {
        parse_time(text, false)
    }

    pub fn with_kind(mut self, kind: TemporalKind) -> Temporal {
        self.kind = kind;
        self
    }

    /// Minutes since the epoch (and the second/millisecond remainder) of the value in UTC,
    /// normalising the offset only when the value has an hour.
    fn normalized(&self) -> Temporal {
        let Some(offset) = self.offset_minutes else {
            return *self;
        };
        if self.precision < Precision::Hour || offset == 0 {
            return *self;
        }
        let mut out = *self;
        if self.kind == TemporalKind::Time {
            let minutes = (self.hour as i32 * 60 + self.minute as i32 - offset).rem_euclid(24 * 60);
            out.hour = (minutes / 60) as u8;
            out.minute = (minutes % 60) as u8;
        } else {
            let days = days_from_civil(self.year, self.month as u32, self.day as u32);
            let minutes = days * 1440 + self.hour as i64 * 60 + self.minute as i64 - offset as i64;
            let (y, m, d) = civil_from_days(minutes.div_euclid(1440));
            let in_day = minutes.rem_euclid(1440);
            out.year = y;
            out.month = m as u8;
            out.day = d as u8;
            out.hour = (in_day / 60) as u8;
            out.minute = (in_day % 60) as u8;
        }
        out.offset_minutes = Some(0);
        out
    }

    fn components(&self) -> [(Precision, i64); 6] {
        [
            (Precision::Year, self.year as i64),
            (Precision::Month, self.month as i64),
            (Precision::Day, self.day as i64),
            (Precision::Hour, self.hour as i64),
            (Precision::Minute, self.minute as i64),
            (
                Precision::Second,
                self.second as i64 * 1000 + self.millis as i64,
            ),
        ]
    }

    /// FHIRPath ordering: `None` when the values differ in precision and agree on all the
    /// components both have (the answer is unknown).
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        if (self.kind == TemporalKind::Time) != (other.kind == TemporalKind::Time) {
            return None;
        }
        // With an offset on one side only, the instant of the other is unknown.
        if self.offset_minutes.is_some() != other.offset_minutes.is_some()
            && self.precision >= Precision::Hour
            && other.precision >= Precision::Hour
        {
            return None;
        }
        let (a, b) = (self.normalized(), other.normalized());
        let first = if self.kind == TemporalKind::Time {
            3
        } else {
            0
        };
        let (pa, pb) = (coarse(self.precision), coarse(other.precision));
        for (ca, cb) in a.components()[first..].iter().zip(&b.components()[first..]) {
            let level = ca.0;
            match (pa >= level, pb >= level) {
                (true, true) => {
                    if ca.1 != cb.1 {
                        return Some(ca.1.cmp(&cb.1));
                    }
                }
                (false, false) => return Some(Ordering::Equal),
                _ => return None,
            }
        }
        Some(Ordering::Equal)
    }

    pub fn same_precision(&self, other: &Temporal) -> bool {
        coarse(self.precision) == coarse(other.precision)
    }

    /// Adds a calendar or definite duration; `None` for a unit that is not a time unit.
    pub fn add(&self, amount: i64, unit: &str, fraction_millis: i64) -> Option<Temporal> {
        let mut out = *self;
        let month_delta = match unit {
            "year" | "years" | "a" => Some(amount.checked_mul(12)?),
            "month" | "months" | "mo" => Some(amount),
            _ => None,
        };
        if self.kind == TemporalKind::Time {
            let millis: i64 = match unit {
                "hour" | "hours" | "h" => amount.checked_mul(3_600_000)?,
                "minute" | "minutes" | "min" => amount.checked_mul(60_000)?,
                "second" | "seconds" | "s" => {
                    amount.checked_mul(1000)?.checked_add(fraction_millis)?
                }
                "millisecond" | "milliseconds" | "ms" => amount,
                _ => return None,
            };
            let day = 86_400_000;
            let current = self.hour as i64 * 3_600_000
                + self.minute as i64 * 60_000
                + self.second as i64 * 1000
                + self.millis as i64;
            let total = current.checked_add(millis)?.rem_euclid(day);
            out.hour = (total / 3_600_000) as u8;
            out.minute = (total / 60_000 % 60) as u8;
            out.second = (total / 1000 % 60) as u8;
            out.millis = (total % 1000) as u16;
            return Some(out);
        }
        if let Some(months) = month_delta {
            let total = self.year as i64 * 12 + (self.month as i64 - 1) + months;
            out.year = i32::try_from(total.div_euclid(12)).ok()?;
            out.month = (total.rem_euclid(12) + 1) as u8;
            out.day = out.day.min(days_in_month(out.year, out.month as u32) as u8);
        } else {
            let millis: i64 = match unit {
                "week" | "weeks" | "wk" => amount.checked_mul(7 * 86_400_000)?,
                "day" | "days" | "d" => amount.checked_mul(86_400_000)?,
                "hour" | "hours" | "h" => amount.checked_mul(3_600_000)?,
                "minute" | "minutes" | "min" => amount.checked_mul(60_000)?,
                "second" | "seconds" | "s" => {
                    amount.checked_mul(1000)?.checked_add(fraction_millis)?
                }
                "millisecond" | "milliseconds" | "ms" => amount,
                _ => return None,
            };
            let days = days_from_civil(self.year, self.month as u32, self.day as u32);
            let current = days * 86_400_000
                + self.hour as i64 * 3_600_000
                + self.minute as i64 * 60_000
                + self.second as i64 * 1000
                + self.millis as i64;
            let total = current.checked_add(millis)?;
            let (y, m, d) = civil_from_days(total.div_euclid(86_400_000));
            let in_day = total.rem_euclid(86_400_000);
            out.year = y;
            out.month = m as u8;
            out.day = d as u8;
            out.hour = (in_day / 3_600_000) as u8;
            out.minute = (in_day / 60_000 % 60) as u8;
            out.second = (in_day / 1000 % 60) as u8;
            out.millis = (in_day % 1000) as u16;
        }
        Some(out.truncated())
    }

    /// Zeroes the components beyond the precision.
    pub(crate) fn truncate_to_precision(self) -> Temporal {
        self.truncated()
    }

    /// Zeroes the components beyond the precision (after arithmetic).
    fn truncated(mut self) -> Temporal {
        let p = self.precision;
        if p < Precision::Month {
            self.month = 1;
        }
        if p < Precision::Day {
            self.day = 1;
        }
        if p < Precision::Hour {
            self.hour = 0;
        }
        if p < Precision::Minute {
            self.minute = 0;
        }
        if p < Precision::Second {
            self.second = 0;
        }
        if p < Precision::Millisecond {
            self.millis = 0;
        }
        self
    }

    /// The same instant at a lower precision (`toDate()` of a DateTime).
    pub fn to_date(&self) -> Temporal {
        let mut out = *self;
        out.kind = TemporalKind::Date;
        out.precision = out.precision.min(Precision::Day);
        out.offset_minutes = None;
        out.truncated()
    }
}

/// Seconds and milliseconds compare as one precision.
fn coarse(p: Precision) -> Precision {
    if p == Precision::Millisecond {
        Precision::Second
    } else {
        p
    }
}

fn parse_number(text: &str, digits: usize) -> Option<u32> {
    if text.len() != digits || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_date(text: &str) -> Option<Temporal> {
    let mut parts = text.split('-');
    let year = parse_number(parts.next()?, 4)?;
    let mut value = Temporal::empty(TemporalKind::Date, Precision::Year);
    value.year = year as i32;
    if let Some(month) = parts.next() {
        let month = parse_number(month, 2)?;
        if !(1..=12).contains(&month) {
            return None;
        }
        value.month = month as u8;
        value.precision = Precision::Month;
        if let Some(day) = parts.next() {
            let day = parse_number(day, 2)?;
            if day < 1 || day > days_in_month(value.year, month) {
                return None;
            }
            value.day = day as u8;
            value.precision = Precision::Day;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(value)
}

fn parse_time(text: &str, allow_offset: bool) -> Option<Temporal> {
    let mut value = Temporal::empty(TemporalKind::Time, Precision::Hour);
    apply_time(&mut value, text, allow_offset)?;
    if value.offset_minutes.is_some() {
        // A Time has no offset in FHIRPath.
        return None;
    }
    Some(value)
}

fn apply_time(value: &mut Temporal, text: &str, allow_offset: bool) -> Option<()> {
    let (clock, offset) = split_offset(text);
    if offset.is_some() && !allow_offset {
        return None;
    }
    let mut parts = clock.split(':');
    let hour = parse_number(parts.next()?, 2)?;
    if hour > 23 {
        return None;
    }
    value.hour = hour as u8;
    value.precision = Precision::Hour;
    if let Some(minute) = parts.next() {
        let minute = parse_number(minute, 2)?;
        if minute > 59 {
            return None;
        }
        value.minute = minute as u8;
        value.precision = Precision::Minute;
        if let Some(second) = parts.next() {
            let (whole, fraction) = match second.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (second, None),
            };
            let whole = parse_number(whole, 2)?;
            if whole > 59 {
                return None;
            }
            value.second = whole as u8;
            value.precision = Precision::Second;
            if let Some(fraction) = fraction {
                if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let padded: String = fraction.chars().chain("000".chars()).take(3).collect();
                value.millis = padded.parse().ok()?;
                value.precision = Precision::Millisecond;
            }
        }
    }
    if parts.next().is_some() {
        return None;
    }
    match offset {
        Some("Z") => value.offset_minutes = Some(0),
        Some(off) => {
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (h, m) = off[1..].split_once(':')?;
            let minutes = parse_number(h, 2)? as i32 * 60 + parse_number(m, 2)? as i32;
            value.offset_minutes = Some(sign * minutes);
        }
        None => {}
    }
    Some(())
}

fn split_offset(text: &str) -> (&str, Option<&str>) {
    if let Some(clock) = text.strip_suffix('Z') {
        return (clock, Some("Z"));
    }
    match text.rfind(['+', '-']) {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    }
}

pub(crate) fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = year as i64 - if month <= 2 { 1 } else { 0 };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = (yoe + era * 400 + if m <= 2 { 1 } else { 0 }) as i32;
    (y, m, d)
}

impl fmt::Display for Temporal {
    /// FHIR text form (no `@`), at the value's precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != TemporalKind::Time {
            write!(f, "{:04}", self.year)?;
            if self.precision >= Precision::Month {
                write!(f, "-{:02}", self.month)?;
            }
            if self.precision >= Precision::Day {
                write!(f, "-{:02}", self.day)?;
            }
            if self.kind == TemporalKind::Date || self.precision < Precision::Hour {
                return Ok(());
            }
            f.write_str("T")?;
        }
        write!(f, "{:02}", self.hour)?;
        if self.precision >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if self.precision >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
        }
        if self.precision >= Precision::Millisecond {
            write!(f, ".{:03}", self.millis)?;
        }
        if self.kind == TemporalKind::DateTime {
            match self.offset_minutes {
                Some(0) => f.write_str("Z")?,
                Some(off) => {
                    let sign = if off < 0 { '-' } else { '+' };
                    write!(f, "{sign}{:02}:{:02}", off.abs() / 60, off.abs() % 60)?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_round_trips_at_its_precision() {
        for text in [
            "2015",
            "2015-02",
            "2015-02-04",
            "2015-02-04T14:34:28.123+10:00",
            "2015-02-04T14Z",
        ] {
            let value = Temporal::parse_literal(text).unwrap();
            assert_eq!(value.to_string(), text);
        }
        assert_eq!(
            Temporal::parse_literal("T14:34").unwrap().to_string(),
            "14:34"
        );
        assert!(Temporal::parse_literal("2015-13").is_none());
        assert!(Temporal::parse_literal("2015-02-30").is_none());
    }

    #[test]
    fn comparison_across_precision_is_unknown_unless_decided_early() {
        let a = Temporal::parse_literal("2012-04-15").unwrap();
        let b = Temporal::parse_literal("2012-04-15T10:00").unwrap();
        assert_eq!(a.compare(&b), None);
        let c = Temporal::parse_literal("2012-05").unwrap();
        assert_eq!(a.compare(&c), Some(Ordering::Less));
    }

    #[test]
    fn offsets_are_normalised_before_comparing() {
        let a = Temporal::parse_literal("2017-11-05T01:30:00.0-04:00").unwrap();
        let b = Temporal::parse_literal("2017-11-05T01:15:00.0-05:00").unwrap();
        assert_eq!(a.compare(&b), Some(Ordering::Less));
    }

    #[test]
    fn month_arithmetic_clamps_the_day() {
        let a = Temporal::parse_literal("2020-01-31").unwrap();
        assert_eq!(a.add(1, "month", 0).unwrap().to_string(), "2020-02-29");
        assert_eq!(a.add(-1, "year", 0).unwrap().to_string(), "2019-01-31");
    }
}
