//! FHIR `date`, `dateTime` and `instant` values as inclusive millisecond ranges (Unix epoch,
//! UTC). A value covers the whole period its precision implies: `2020` is the year 2020,
//! `2020-03-04T10:00` the minute. Times without a timezone are taken as UTC (FHIR leaves the
//! zone to the server; Flare's is UTC).

use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm[:ss[.fff…]][Z|±hh:mm]` into an
/// inclusive `[low, high]` millisecond range; `None` when the text is not such a date.
pub fn parse_date_range(text: &str) -> Option<(i64, i64)> {
    let bytes = text.as_bytes();
    let year = digits(bytes, 0, 4)?;
    if bytes.len() == 4 {
        let low = day_start(year, 1, 1)?;
        let high = day_start(year + 1, 1, 1)? - 1;
        return Some((low, high));
    }
    expect(bytes, 4, b'-')?;
    let month = digits(bytes, 5, 2)?;
    if bytes.len() == 7 {
        let low = day_start(year, month, 1)?;
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let high = day_start(next_year, next_month, 1)? - 1;
        return Some((low, high));
    }
    expect(bytes, 7, b'-')?;
    let day = digits(bytes, 8, 2)?;
    if bytes.len() == 10 {
        let low = day_start(year, month, day)?;
        return Some((low, low + MS_PER_DAY - 1));
    }
    expect(bytes, 10, b'T')?;
    let hour = digits(bytes, 11, 2)?;
    expect(bytes, 13, b':')?;
    let minute = digits(bytes, 14, 2)?;
    let mut at = 16;
    let mut second = 0;
    let mut millis = 0;
    // Width of the range below the stated precision, in ms.
    let mut span = MS_PER_MINUTE;
    if bytes.get(at) == Some(&b':') {
        second = digits(bytes, at + 1, 2)?;
        at += 3;
        span = 1_000;
        if bytes.get(at) == Some(&b'.') {
            let start = at + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            let fraction = &text[start..end];
            if fraction.is_empty() {
                return None;
            }
            // Only milliseconds are kept; finer digits are truncated.
            let kept = &fraction[..fraction.len().min(3)];
            let scale = 10_i64.pow(3 - kept.len() as u32);
            millis = kept.parse::<i64>().ok()? * scale;
            span = scale;
            at = end;
        }
    }
    let offset = parse_offset(&text[at..])?;
    let date = Date::from_calendar_date(
        year,
        Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    let clock = Time::from_hms_milli(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
        u16::try_from(millis).ok()?,
    )
    .ok()?;
    let nanos = PrimitiveDateTime::new(date, clock)
        .assume_offset(offset)
        .unix_timestamp_nanos();
    let low = i64::try_from(nanos / 1_000_000).ok()?;
    Some((low, low + span - 1))
}

/// `Z`, `±hh:mm`, or nothing (UTC).
fn parse_offset(text: &str) -> Option<UtcOffset> {
    match text.as_bytes() {
        [] | [b'Z'] => Some(UtcOffset::UTC),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2], 0, 2)?;
            let minutes = digits(&[*m1, *m2], 0, 2)?;
            if hours > 14 || minutes > 59 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            UtcOffset::from_hms(
                i8::try_from(sign * hours).ok()?,
                i8::try_from(sign * minutes).ok()?,
                0,
            )
            .ok()
        }
        _ => None,
    }
}

fn day_start(year: i32, month: i32, day: i32) -> Option<i64> {
    if year > 9999 {
        // The end of year 9999 is the latest FHIR date.
        return day_start(9999, 12, 31).map(|start| start + MS_PER_DAY);
    }
    let date = Date::from_calendar_date(
        year,
        Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    Some(i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY) * MS_PER_DAY)
}

const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

fn digits(bytes: &[u8], start: usize, count: usize) -> Option<i32> {
    let slice = bytes.get(start..start + count)?;
    let mut value = 0;
    for byte in slice {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i32::from(byte - b'0');
    }
    Some(value)
}

fn expect(bytes: &[u8], at: usize, wanted: u8) -> Option<()> {
    (bytes.get(at) == Some(&wanted)).then_some(())
}

/// Formats a millisecond instant as an RFC 3339 UTC timestamp (used in messages and tests).
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> (String, String) {
        let (low, high) = parse_date_range(text).unwrap_or_else(|| panic!("{text} should parse"));
        (format_ms(low), format_ms(high))
    }

    #[test]
    fn partial_precision_covers_the_whole_period() {
        assert_eq!(
            range("2020"),
            (
                "2020-01-01T00:00:00Z".into(),
                "2020-12-31T23:59:59.999Z".into()
            )
        );
        assert_eq!(
            range("2020-02"),
            (
                "2020-02-01T00:00:00Z".into(),
                "2020-02-29T23:59:59.999Z".into()
            )
        );
        assert_eq!(
            range("2019-12"),
            (
                "2019-12-01T00:00:00Z".into(),
                "2019-12-31T23:59:59.999Z".into()
            )
        );
        assert_eq!(
            range("2020-03-04"),
            (
                "2020-03-04T00:00:00Z".into(),
                "2020-03-04T23:59:59.999Z".into()
            )
        );
        assert_eq!(
            range("2020-03-04T10:00"),
            (
                "2020-03-04T10:00:00Z".into(),
                "2020-03-04T10:00:59.999Z".into()
            )
        );
        assert_eq!(
            range("2020-03-04T10:00:05.1Z"),
            (
                "2020-03-04T10:00:05.1Z".into(),
                "2020-03-04T10:00:05.199Z".into()
            )
        );
        assert_eq!(
            range("2020-03-04T10:00:05.123456Z").0,
            "2020-03-04T10:00:05.123Z"
        );
    }

    #[test]
    fn timezones_shift_to_utc() {
        assert_eq!(range("2020-03-04T10:00:00+02:00").0, "2020-03-04T08:00:00Z");
        assert_eq!(range("2020-03-04T23:30:00-05:30").0, "2020-03-05T05:00:00Z");
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "20",
            "2020-13",
            "2020-02-30",
            "2020-1-01",
            "2020-03-04T25:00",
            "2020-03-04T10",
            "2020/03",
            "2020-03-04T10:00:00+2",
            "abcd",
            "2020-03-04T10:00:00.Z",
        ] {
            assert_eq!(parse_date_range(bad), None, "{bad}");
        }
    }
}
