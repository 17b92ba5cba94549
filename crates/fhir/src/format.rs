//! Content negotiation helpers: which FHIR serialisation a MIME type or a
//! `_format` value asks for.

/// A FHIR serialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// The canonical MIME type for responses.
    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Json => "application/fhir+json",
            Self::Xml => "application/fhir+xml",
        }
    }

    /// `Content-Type` value with charset and the R4 version parameter.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/fhir+json; charset=utf-8; fhirVersion=4.0",
            Self::Xml => "application/fhir+xml; charset=utf-8; fhirVersion=4.0",
        }
    }
}

/// Parses a MIME type or `_format` value: `application/fhir+json`,
/// `application/json`, `json`, `application/fhir+xml`, `application/xml`,
/// `text/xml`, `xml` (case-insensitive, parameters such as `charset` and
/// `fhirVersion` allowed; a `+` decoded from a URL as a space is tolerated).
/// `None` for anything else, including `*/*`, which callers treat as their
/// default.
pub fn parse(value: &str) -> Option<Format> {
    let essence = value.split(';').next().unwrap_or("").trim();
    let essence = essence.to_ascii_lowercase().replace(' ', "+");
    match essence.as_str() {
        "application/fhir+json"
        | "application/json"
        | "json"
        | "application/json+fhir"
        | "text/json" => Some(Format::Json),
        "application/fhir+xml"
        | "application/xml"
        | "text/xml"
        | "xml"
        | "application/xml+fhir" => Some(Format::Xml),
        _ => None,
    }
}

/// Picks the format from an `Accept` header: the first listed type this
/// crate serves, honouring `q=0` as "not acceptable". `None` when nothing
/// matches (including `*/*`, so the caller picks its default).
pub fn from_accept(header: &str) -> Option<Format> {
    let mut best: Option<(Format, f32)> = None;
    for candidate in header.split(',') {
        let Some(format) = parse(candidate) else {
            continue;
        };
        let quality = candidate
            .split(';')
            .skip(1)
            .filter_map(|parameter| parameter.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if quality > 0.0 && best.is_none_or(|(_, best_quality)| quality > best_quality) {
            best = Some((format, quality));
        }
    }
    best.map(|(format, _)| format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mime_types_and_format_values() {
        for json in [
            "application/fhir+json",
            "application/json",
            "json",
            "JSON",
            "application/fhir+json; charset=utf-8",
            "application/fhir+json;fhirVersion=4.0",
            "application/fhir json",
        ] {
            assert_eq!(parse(json), Some(Format::Json), "{json}");
        }
        for xml in [
            "application/fhir+xml",
            "application/xml",
            "text/xml",
            "xml",
            "application/fhir+xml; charset=UTF-8; fhirVersion=4.0",
        ] {
            assert_eq!(parse(xml), Some(Format::Xml), "{xml}");
        }
        for other in [
            "text/html",
            "application/pdf",
            "*/*",
            "",
            "ttl",
            "application/fhir+turtle",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn accept_header_prefers_quality() {
        assert_eq!(from_accept("application/fhir+xml"), Some(Format::Xml));
        assert_eq!(
            from_accept("text/html, application/fhir+xml;q=0.5, application/fhir+json;q=0.9"),
            Some(Format::Json)
        );
        assert_eq!(
            from_accept("application/xml;q=0, application/json"),
            Some(Format::Json)
        );
        assert_eq!(from_accept("*/*"), None);
        assert_eq!(from_accept("text/html"), None);
    }

    #[test]
    fn content_types_round_trip_through_parse() {
        for format in [Format::Json, Format::Xml] {
            assert_eq!(parse(format.content_type()), Some(format));
            assert_eq!(parse(format.mime_type()), Some(format));
        }
    }
}
