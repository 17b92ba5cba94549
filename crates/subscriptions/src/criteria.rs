//! Search criteria as subscriptions use them: a classic `Type?params` URL, a topic's query
//! test, a Backport filter string. Everything is parsed by `flare_search`; whatever it could
//! not turn into a clause (an ignored parameter, a chain, paging or sorting) is refused, so a
//! criteria never silently matches more than it says.

use flare_search::{Clause, Registry};
use percent_encoding::percent_decode_str;

/// Splits a query string into percent-decoded `(name, value)` pairs. A `+` stays a `+`:
/// criteria are FHIR strings, not form data, and `+` is common in time zones.
pub(crate) fn decode_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Parameters that shape a result page rather than select resources: meaningless for a
/// notification, so refused rather than dropped.
const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_offset",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
];

/// Parses a query string (`a=1&b=2`, already split off its `Type?`) for `resource_type` into
/// clauses that the in-memory matcher evaluates exactly, or a message naming what cannot be.
pub fn parse_search_criteria(
    registry: &Registry,
    resource_type: &str,
    query: &str,
) -> Result<Vec<Clause>, String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    parse_pairs(registry, resource_type, &decode_query(query))
}

pub(crate) fn parse_pairs(
    registry: &Registry,
    resource_type: &str,
    pairs: &[(String, String)],
) -> Result<Vec<Clause>, String> {
    for (name, _) in pairs {
        let base = name.split(':').next().unwrap_or(name);
        if RESULT_PARAMETERS.contains(&base) {
            return Err(format!(
                "'{name}' shapes search results and has no meaning in subscription criteria; remove it"
            ));
        }
    }
    let parsed = registry
        .parse(Some(resource_type), pairs)
        .map_err(|error| error.to_string())?;
    if let Some((name, reason)) = parsed.ignored.first() {
        return Err(format!(
            "'{name}' cannot be evaluated exactly on a notification ({reason}); criteria that would match more than asked are refused"
        ));
    }
    if flare_search::matcher::has_chain(&parsed.query.clauses) {
        return Err(
            "chained parameters need other resources and cannot be evaluated on a notification; use a topic filter on the resource itself"
                .into(),
        );
    }
    Ok(parsed.query.clauses)
}

/// A parsed classic criteria `Type?params`.
#[derive(Debug, Clone)]
pub struct ClassicCriteria {
    /// As written.
    pub text: String,
    pub resource_type: String,
    pub clauses: Vec<Clause>,
}

/// Parses `Type` or `Type?params` (a leading base URL or `/` is tolerated).
pub fn parse_classic_criteria(registry: &Registry, text: &str) -> Result<ClassicCriteria, String> {
    let trimmed = text.trim();
    let (path, query) = trimmed.split_once('?').unwrap_or((trimmed, ""));
    let resource_type = path.rsplit('/').next().unwrap_or(path);
    if resource_type.is_empty() {
        return Err(format!(
            "criteria '{text}' names no resource type: expected a search such as Observation?code=1234-5"
        ));
    }
    if !registry.knows_type(resource_type) {
        return Err(format!(
            "criteria '{text}': '{resource_type}' is not an R4 resource type"
        ));
    }
    let clauses = parse_search_criteria(registry, resource_type, query)?;
    Ok(ClassicCriteria {
        text: trimmed.to_owned(),
        resource_type: resource_type.to_owned(),
        clauses,
    })
}

/// One Backport filter string, split but not yet checked against a topic: `param=value`,
/// `param:modifier=value`, `Type.param=value`, `Type.param:modifier=value`, or a search URL
/// `Type?a=1&b=2` (several AND-ed parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterParts {
    pub resource_type: Option<String>,
    /// `(parameter with modifier, value)`, decoded.
    pub params: Vec<(String, String)>,
}

pub fn split_filter(text: &str) -> Result<FilterParts, String> {
    let text = text.trim();
    if let Some((resource_type, query)) = text.split_once('?') {
        let resource_type = resource_type.rsplit('/').next().unwrap_or(resource_type);
        let params = decode_query(query);
        if params.is_empty() {
            return Err(format!("filter '{text}' has no parameter"));
        }
        return Ok(FilterParts {
            resource_type: (!resource_type.is_empty()).then(|| resource_type.to_owned()),
            params,
        });
    }
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!(
            "filter '{text}' is not of the form param=value, param:modifier=value, Type.param=value or Type?param=value"
        ));
    };
    // `Type.param`: types start with an upper-case letter, parameters never do.
    let (resource_type, name) = match name.split_once('.') {
        Some((resource_type, name))
            if resource_type.starts_with(|c: char| c.is_ascii_uppercase()) =>
        {
            (Some(resource_type.to_owned()), name)
        }
        _ => (None, name),
    };
    if name.is_empty() {
        return Err(format!("filter '{text}' names no parameter"));
    }
    Ok(FilterParts {
        resource_type,
        params: vec![(decode(name), decode(value))],
    })
}
