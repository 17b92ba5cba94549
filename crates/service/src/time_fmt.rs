//! FHIR `instant` text for `meta.lastUpdated`, always UTC with milliseconds.

use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};

/// `2026-11-21T23:17:08.123Z` for milliseconds since the epoch.
pub fn format_instant(ms: i64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 instant (`_since`, `If-Modified-Since` style
/// values); `None` when the text is not one.
pub fn parse_instant(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

pub(crate) fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        let text = format_instant(1_700_000_000_123);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_instant(&text), Some(1_700_000_000_123));
        assert_eq!(
            parse_instant("2023-11-14T23:13:20.123+01:00"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_instant("yesterday"), None);
    }
}
