//! Parsing FHIR R4 search parameters into a [`SearchQuery`], and rendering it back as the
//! canonical URL parameters of `self` and `next` links.
//!
//! Choices where the specification leaves room:
//! - `_count` defaults to [`DEFAULT_COUNT`] (20) and is capped at [`MAX_COUNT`] (1000; a larger
//!   value is lowered and reported in `ignored`).
//! - `_offset` is Flare's paging cursor: the number of matches to skip.
//! - Unknown parameters, unsupported modifiers, composite/special parameters, wildcard
//!   `_include=*`, `_summary` other than `count`, `_contained`, `_has`, `_type`, `_text`,
//!   `_content`, `_list`, `_query`, `_filter` are reported in `ignored`, not rejected: the
//!   HTTP layer decides (e.g. `Prefer: handling=strict`). `_format` and `_pretty` belong to the
//!   HTTP layer and are skipped silently.
//! - Malformed values (a bad date, prefix, number, `:missing` value, `_count`…) are errors.
//! - Times without a timezone are UTC. `ap` widens a date by 10% of its distance from now and
//!   a number or quantity by 10% of its value.
//! - A chain through a reference that may point to several types needs a type
//!   (`subject:Patient.name`) unless only one of them has the chained parameter.

use std::time::{SystemTime, UNIX_EPOCH};

use flare_fhir::search_params::SearchParamKind;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::dates::parse_date_range;
use crate::normalize::normalize;
use crate::numbers::parse_decimal;
use crate::registry::{Registry, SearchParam};
use crate::{
    Chain, Clause, Include, Predicate, Prefix, SearchError, SearchQuery, SortKey, StringMatch,
    TotalMode,
};

/// Page size when `_count` is absent.
pub const DEFAULT_COUNT: usize = 20;
/// The largest page served; larger `_count` values are lowered to it.
pub const MAX_COUNT: usize = 1000;

/// The result of parsing a search: the query for the store, what was ignored and why, and the
/// HTTP-level `_elements` list.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSearch {
    pub query: SearchQuery,
    /// `(parameter as written, reason)` for everything that does not narrow the search.
    pub ignored: Vec<(String, String)>,
    /// `_elements`: the element names to keep in returned resources (empty = all).
    pub elements: Vec<String>,
    /// The search clauses in canonical form: `(name with modifiers, normalised values)`.
    canonical_clauses: Vec<(String, String)>,
}

const DATE_EXPECTED: &str = "a date such as 2020, 2020-03, 2020-03-04 or 2020-03-04T10:00:00Z, optionally after a prefix eq, ne, gt, lt, ge, le, sa, eb or ap (as in ge2020-03)";
const NUMBER_EXPECTED: &str = "a decimal number such as 5 or 5.40, optionally after a prefix eq, ne, gt, lt, ge, le, sa, eb or ap (as in gt5.4)";
const QUANTITY_EXPECTED: &str = "a quantity such as 5.4, 5.4|http://unitsofmeasure.org|mg or 5.4||mg, optionally after a prefix eq, ne, gt, lt, ge, le, sa, eb or ap";
const TOKEN_EXPECTED: &str = "a token such as code, system|code, |code or system|";
const BOOLEAN_EXPECTED: &str = "true or false";

impl Registry {
    /// Parses search parameters (already percent-decoded, in request order) for a search on
    /// `resource_type`, or a system-level search when `None`.
    pub fn parse(
        &self,
        resource_type: Option<&str>,
        params: &[(String, String)],
    ) -> Result<ParsedSearch, SearchError> {
        self.parse_at(resource_type, params, now_ms())
    }

    /// [`Registry::parse`] with "now" given, for `ap` on dates (and for reproducible tests).
    pub fn parse_at(
        &self,
        resource_type: Option<&str>,
        params: &[(String, String)],
        now_ms: i64,
    ) -> Result<ParsedSearch, SearchError> {
        if let Some(resource_type) = resource_type
            && !self.knows_type(resource_type)
        {
            return Err(SearchError::UnknownResourceType(resource_type.to_owned()));
        }
        let mut parser = Parser {
            registry: self,
            resource_type,
            now_ms,
            parsed: ParsedSearch {
                query: SearchQuery {
                    resource_type: resource_type.map(str::to_owned),
                    count: DEFAULT_COUNT,
                    ..SearchQuery::default()
                },
                ignored: Vec::new(),
                elements: Vec::new(),
                canonical_clauses: Vec::new(),
            },
        };
        for (name, value) in params {
            parser.parameter(name.trim(), value.trim())?;
        }
        Ok(parser.parsed)
    }
}

impl ParsedSearch {
    /// The canonical URL parameters of this search: search clauses sorted by name (repeated
    /// parameters keep their order), then `_sort`, `_count`, `_offset` (when not 0), `_total`,
    /// `_summary`, `_elements`, `_include`, `_revinclude`. Two requests that mean the same
    /// search give the same list, so `self`/`next` links are stable.
    pub fn canonical_params(&self) -> Vec<(String, String)> {
        self.params_with_offset(self.query.offset)
    }

    /// [`ParsedSearch::canonical_params`] with another `_offset`: the `next`/`previous` links.
    pub fn params_with_offset(&self, offset: usize) -> Vec<(String, String)> {
        let mut params = self.canonical_clauses.clone();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let query = &self.query;
        if !query.sort.is_empty() {
            let keys: Vec<String> = query
                .sort
                .iter()
                .map(|key| format!("{}{}", if key.descending { "-" } else { "" }, key.param))
                .collect();
            params.push(("_sort".into(), keys.join(",")));
        }
        params.push(("_count".into(), query.count.to_string()));
        if offset > 0 {
            params.push(("_offset".into(), offset.to_string()));
        }
        if query.total == TotalMode::None {
            params.push(("_total".into(), "none".into()));
        }
        if query.count_only {
            params.push(("_summary".into(), "count".into()));
        }
        if !self.elements.is_empty() {
            params.push(("_elements".into(), self.elements.join(",")));
        }
        for (name, includes) in [
            ("_include", &query.includes),
            ("_revinclude", &query.revincludes),
        ] {
            for include in includes {
                let name = if include.iterate {
                    format!("{name}:iterate")
                } else {
                    name.to_owned()
                };
                let mut value = format!("{}:{}", include.source_type, include.param);
                if let Some(target) = &include.target_type {
                    value = format!("{value}:{target}");
                }
                params.push((name, value));
            }
        }
        params
    }

    /// The canonical parameters as a percent-encoded query string (without `?`).
    pub fn to_query_string(&self, offset: usize) -> String {
        encode_query(&self.params_with_offset(offset))
    }
}

/// Characters that must be escaped in a query-string name or value; `,` `|` `:` stay readable.
const QUERY_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`');

/// Percent-encodes `(name, value)` pairs as `a=1&b=2`.
pub fn encode_query(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                utf8_percent_encode(name, QUERY_ESCAPES),
                utf8_percent_encode(value, QUERY_ESCAPES)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Parser<'a> {
    registry: &'a Registry,
    resource_type: Option<&'a str>,
    now_ms: i64,
    parsed: ParsedSearch,
}

/// A parsed clause with its canonical `(name, value)`.
struct ParsedClause {
    clause: Clause,
    name: String,
    value: String,
}

impl Parser<'_> {
    fn ignore(&mut self, name: &str, reason: impl Into<String>) {
        self.parsed.ignored.push((name.to_owned(), reason.into()));
    }

    fn parameter(&mut self, name: &str, value: &str) -> Result<(), SearchError> {
        let (base_name, modifier) = match name.split_once(':') {
            Some((base, modifier)) if !base.contains('.') => (base, Some(modifier)),
            _ => (name, None),
        };
        match base_name {
            "_format" | "_pretty" => return Ok(()),
            "_count" => return self.count(name, value),
            "_offset" => {
                self.parsed.query.offset = value.parse().map_err(|_| {
                    SearchError::invalid(
                        name,
                        value,
                        "a whole number of matches to skip, such as 0 or 40",
                    )
                })?;
                return Ok(());
            }
            "_sort" => return self.sort(value),
            "_summary" => return self.summary(name, value),
            "_total" => return self.total(name, value),
            "_elements" => return self.elements(name, value),
            "_include" | "_revinclude" => {
                return self.include(name, base_name == "_revinclude", modifier, value);
            }
            "_contained" | "_containedType" | "_type" | "_list" | "_query" | "_filter"
            | "_text" | "_content" => {
                self.ignore(name, format!("{base_name} is not supported"));
                return Ok(());
            }
            _ if base_name.starts_with("_has") => {
                self.ignore(name, "reverse chaining (_has) is not supported");
                return Ok(());
            }
            _ => {}
        }
        if value.is_empty() {
            self.ignore(name, "empty value");
            return Ok(());
        }
        if let Some(parsed) = self.clause(self.resource_type, name, value)? {
            self.parsed.query.clauses.push(parsed.clause);
            self.parsed
                .canonical_clauses
                .push((parsed.name, parsed.value));
        }
        Ok(())
    }

    /// Parses `code[:modifier][.chained[:modifier]]=value` on `resource_type`; `None` when the
    /// parameter is reported as ignored.
    fn clause(
        &mut self,
        resource_type: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<Option<ParsedClause>, SearchError> {
        let (head, chained) = match name.split_once('.') {
            Some((head, chained)) => (head, Some(chained)),
            None => (name, None),
        };
        let (code, modifier) = match head.split_once(':') {
            Some((code, modifier)) => (code, Some(modifier)),
            None => (head, None),
        };
        let Some(param) = self.registry.lookup(resource_type, code) else {
            let scope = resource_type.map_or_else(
                || "a system-level search".to_owned(),
                |t| format!("resource type {t}"),
            );
            self.ignore(
                name,
                format!("unknown search parameter '{code}' for {scope}"),
            );
            return Ok(None);
        };
        let param = std::sync::Arc::clone(param);
        if !crate::registry::extractable(param.kind) {
            self.ignore(
                name,
                format!("{} search parameters are not supported", param.kind.code()),
            );
            return Ok(None);
        }
        if let Some(chained) = chained {
            return self.chain(name, &param, modifier, chained, value);
        }
        if modifier == Some("missing") {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => return Err(SearchError::invalid(name, value, BOOLEAN_EXPECTED)),
            };
            return Ok(Some(ParsedClause {
                clause: Clause {
                    param: param.code.clone(),
                    chain: None,
                    predicates: vec![Predicate::Missing(missing)],
                },
                name: format!("{}:missing", param.code),
                value: value.to_owned(),
            }));
        }
        let supported = match (param.kind, modifier) {
            (_, None) => true,
            (SearchParamKind::String, Some("exact" | "contains")) => true,
            (SearchParamKind::Token, Some("not" | "text")) => true,
            (SearchParamKind::Uri, Some("below" | "above")) => true,
            (SearchParamKind::Reference, Some(target)) => {
                flare_fhir::model::is_resource_type(target)
            }
            _ => false,
        };
        if !supported {
            let modifier = modifier.unwrap_or_default();
            self.ignore(
                name,
                format!(
                    "modifier ':{modifier}' is not supported on {} parameters",
                    param.kind.code()
                ),
            );
            return Ok(None);
        }
        let mut predicates = Vec::new();
        let mut canonical_values = Vec::new();
        for raw in split_unescaped(value, ',') {
            if raw.is_empty() {
                continue;
            }
            let (predicate, canonical) = self.value(name, &param, modifier, raw)?;
            predicates.push(predicate);
            canonical_values.push(canonical);
        }
        if predicates.is_empty() {
            self.ignore(name, "empty value");
            return Ok(None);
        }
        // A type modifier on a reference is folded into `Type/id` values.
        let canonical_modifier = match (param.kind, modifier) {
            (SearchParamKind::Reference, _) | (_, None) => String::new(),
            (_, Some(modifier)) => format!(":{modifier}"),
        };
        Ok(Some(ParsedClause {
            clause: Clause {
                param: param.code.clone(),
                chain: None,
                predicates,
            },
            name: format!("{}{canonical_modifier}", param.code),
            value: canonical_values.join(","),
        }))
    }

    fn chain(
        &mut self,
        name: &str,
        param: &SearchParam,
        type_modifier: Option<&str>,
        chained: &str,
        value: &str,
    ) -> Result<Option<ParsedClause>, SearchError> {
        if param.kind != SearchParamKind::Reference {
            self.ignore(
                name,
                format!(
                    "'{}' is not a reference parameter, so it cannot be chained",
                    param.code
                ),
            );
            return Ok(None);
        }
        if chained.contains('.') {
            self.ignore(name, "only single-level chains are supported");
            return Ok(None);
        }
        let chained_code = chained.split(':').next().unwrap_or(chained);
        let target_type = match type_modifier {
            Some(target) if flare_fhir::model::is_resource_type(target) => target.to_owned(),
            Some(other) => {
                self.ignore(name, format!("':{other}' is not a resource type"));
                return Ok(None);
            }
            None => {
                let candidates: Vec<&String> = param
                    .targets
                    .iter()
                    .filter(|target| self.registry.lookup(Some(target), chained_code).is_some())
                    .collect();
                match candidates.as_slice() {
                    [only] => (*only).clone(),
                    [] => {
                        self.ignore(
                            name,
                            format!(
                                "no target of '{}' has a search parameter '{chained_code}'",
                                param.code
                            ),
                        );
                        return Ok(None);
                    }
                    several => {
                        return Err(SearchError::AmbiguousChain {
                            param: param.code.clone(),
                            chained: chained.to_owned(),
                            candidates: several
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            example: several[0].clone(),
                        });
                    }
                }
            }
        };
        let Some(inner) = self.clause(Some(&target_type), chained, value)? else {
            return Ok(None);
        };
        Ok(Some(ParsedClause {
            clause: Clause {
                param: param.code.clone(),
                chain: Some(Box::new(Chain {
                    target_type: target_type.clone(),
                    clause: inner.clause,
                })),
                predicates: Vec::new(),
            },
            name: format!("{}:{target_type}.{}", param.code, inner.name),
            value: inner.value,
        }))
    }

    /// One comma-separated value: its predicate and canonical text.
    fn value(
        &self,
        name: &str,
        param: &SearchParam,
        modifier: Option<&str>,
        raw: &str,
    ) -> Result<(Predicate, String), SearchError> {
        match param.kind {
            SearchParamKind::String => {
                let text = unescape(raw);
                let predicate = match modifier {
                    Some("exact") => Predicate::String {
                        mode: StringMatch::Exact,
                        value: text.clone(),
                    },
                    Some("contains") => Predicate::String {
                        mode: StringMatch::Contains,
                        value: normalize(&text),
                    },
                    _ => Predicate::String {
                        mode: StringMatch::StartsWith,
                        value: normalize(&text),
                    },
                };
                Ok((predicate, escape(&text)))
            }
            SearchParamKind::Token => {
                if modifier == Some("text") {
                    let text = unescape(raw);
                    return Ok((Predicate::TokenText(normalize(&text)), escape(&text)));
                }
                let negate = modifier == Some("not");
                let (system, code) = match split_unescaped(raw, '|').as_slice() {
                    [code] => (None, Some(unescape(code))),
                    [system, code] => {
                        let system = if system.is_empty() {
                            Some(None)
                        } else {
                            Some(Some(unescape(system)))
                        };
                        let code = if code.is_empty() {
                            None
                        } else {
                            Some(unescape(code))
                        };
                        if system == Some(None) && code.is_none() {
                            return Err(SearchError::invalid(name, raw, TOKEN_EXPECTED));
                        }
                        (system, code)
                    }
                    _ => return Err(SearchError::invalid(name, raw, TOKEN_EXPECTED)),
                };
                let canonical = match &system {
                    None => escape(code.as_deref().unwrap_or_default()),
                    Some(system) => format!(
                        "{}|{}",
                        escape(system.as_deref().unwrap_or_default()),
                        escape(code.as_deref().unwrap_or_default())
                    ),
                };
                Ok((
                    Predicate::Token {
                        system,
                        code,
                        negate,
                    },
                    canonical,
                ))
            }
            SearchParamKind::Reference => self.reference(name, param, modifier, raw),
            SearchParamKind::Date => {
                let (prefix, text) = split_prefix(raw);
                let (mut low_ms, mut high_ms) = parse_date_range(text)
                    .ok_or_else(|| SearchError::invalid(name, raw, DATE_EXPECTED))?;
                if prefix == Prefix::Ap {
                    let middle = low_ms / 2 + high_ms / 2;
                    let widening = (self.now_ms.saturating_sub(middle)).saturating_abs() / 10;
                    low_ms = low_ms.saturating_sub(widening);
                    high_ms = high_ms.saturating_add(widening);
                }
                Ok((
                    Predicate::Date {
                        prefix,
                        low_ms,
                        high_ms,
                    },
                    format!("{}{text}", prefix_text(prefix)),
                ))
            }
            SearchParamKind::Number => {
                let (prefix, text) = split_prefix(raw);
                let (value, low, high) = parse_decimal(text)
                    .ok_or_else(|| SearchError::invalid(name, raw, NUMBER_EXPECTED))?;
                let (low, high) = widen_if_approximate(prefix, value, low, high);
                Ok((
                    Predicate::Number {
                        prefix,
                        value,
                        low,
                        high,
                    },
                    format!("{}{text}", prefix_text(prefix)),
                ))
            }
            SearchParamKind::Quantity => {
                let (prefix, text) = split_prefix(raw);
                let parts = split_unescaped(text, '|');
                let (number, system, code) = match parts.as_slice() {
                    [number] => (*number, None, None),
                    [number, system, code] => {
                        let system = (!system.is_empty()).then(|| unescape(system));
                        let code = (!code.is_empty()).then(|| unescape(code));
                        (*number, system, code)
                    }
                    _ => return Err(SearchError::invalid(name, raw, QUANTITY_EXPECTED)),
                };
                let (value, low, high) = parse_decimal(number)
                    .ok_or_else(|| SearchError::invalid(name, raw, QUANTITY_EXPECTED))?;
                let (low, high) = widen_if_approximate(prefix, value, low, high);
                let canonical = if system.is_none() && code.is_none() {
                    format!("{}{number}", prefix_text(prefix))
                } else {
                    format!(
                        "{}{number}|{}|{}",
                        prefix_text(prefix),
                        escape(system.as_deref().unwrap_or_default()),
                        escape(code.as_deref().unwrap_or_default())
                    )
                };
                Ok((
                    Predicate::Quantity {
                        prefix,
                        value,
                        low,
                        high,
                        system,
                        code,
                    },
                    canonical,
                ))
            }
            SearchParamKind::Uri => {
                let text = unescape(raw);
                let predicate = Predicate::Uri {
                    value: text.clone(),
                    below: modifier == Some("below"),
                    above: modifier == Some("above"),
                };
                Ok((predicate, escape(&text)))
            }
            SearchParamKind::Composite | SearchParamKind::Special => Err(SearchError::invalid(
                name,
                raw,
                "a parameter type Flare can search on",
            )),
        }
    }

    fn reference(
        &self,
        name: &str,
        param: &SearchParam,
        modifier: Option<&str>,
        raw: &str,
    ) -> Result<(Predicate, String), SearchError> {
        let text = unescape(raw);
        let is_absolute = text.contains("://") || text.starts_with("urn:");
        if is_absolute {
            let canonical = escape(&text);
            return Ok((
                Predicate::Reference {
                    target_type: None,
                    target_id: None,
                    url: Some(text),
                },
                canonical,
            ));
        }
        let mut segments = text.split('/');
        let (target_type, target_id) = match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some(id), None, ..) => {
                let single_target = match param.targets.as_slice() {
                    [only] => Some(only.clone()),
                    _ => None,
                };
                (modifier.map(str::to_owned).or(single_target), id.to_owned())
            }
            // `Type/id` or `Type/id/_history/version` (versions are not indexed).
            (Some(kind), Some(id), None, ..)
            | (Some(kind), Some(id), Some("_history"), Some(_), None) => {
                if !flare_fhir::model::is_resource_type(kind)
                    || modifier.is_some_and(|wanted| wanted != kind)
                {
                    return Err(SearchError::invalid(name, raw, reference_expected(param)));
                }
                (Some(kind.to_owned()), id.to_owned())
            }
            _ => return Err(SearchError::invalid(name, raw, reference_expected(param))),
        };
        if target_id.is_empty()
            || !target_id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
        {
            return Err(SearchError::invalid(name, raw, reference_expected(param)));
        }
        let canonical = match &target_type {
            Some(kind) => format!("{kind}/{target_id}"),
            None => target_id.clone(),
        };
        Ok((
            Predicate::Reference {
                target_type,
                target_id: Some(target_id),
                url: None,
            },
            canonical,
        ))
    }

    fn count(&mut self, name: &str, value: &str) -> Result<(), SearchError> {
        let count: usize = value.parse().map_err(|_| {
            SearchError::invalid(name, value, format!("a page size from 0 to {MAX_COUNT}"))
        })?;
        if count > MAX_COUNT {
            self.ignore(name, format!("_count is capped at {MAX_COUNT}"));
        }
        self.parsed.query.count = count.min(MAX_COUNT);
        Ok(())
    }

    fn sort(&mut self, value: &str) -> Result<(), SearchError> {
        for key in value
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
        {
            let (descending, code) = match key.strip_prefix('-') {
                Some(code) => (true, code),
                None => (false, key),
            };
            let sortable = matches!(code, "_id" | "_lastUpdated")
                || self
                    .registry
                    .lookup(self.resource_type, code)
                    .is_some_and(|param| crate::registry::extractable(param.kind));
            if sortable {
                self.parsed.query.sort.push(SortKey {
                    param: code.to_owned(),
                    descending,
                });
            } else {
                self.ignore(
                    "_sort",
                    format!("cannot sort by '{code}': not a search parameter of this type"),
                );
            }
        }
        Ok(())
    }

    fn summary(&mut self, name: &str, value: &str) -> Result<(), SearchError> {
        match value {
            "count" => self.parsed.query.count_only = true,
            "false" => {}
            "true" | "text" | "data" => self.ignore(
                name,
                format!("_summary={value} is not supported; full resources are returned"),
            ),
            _ => {
                return Err(SearchError::invalid(
                    name,
                    value,
                    "one of true, false, text, data, count",
                ));
            }
        }
        Ok(())
    }

    fn total(&mut self, name: &str, value: &str) -> Result<(), SearchError> {
        self.parsed.query.total = match value {
            "none" => TotalMode::None,
            "accurate" => TotalMode::Accurate,
            "estimate" => {
                self.ignore(name, "_total=estimate is served as accurate");
                TotalMode::Accurate
            }
            _ => {
                return Err(SearchError::invalid(
                    name,
                    value,
                    "one of none, estimate, accurate",
                ));
            }
        };
        Ok(())
    }

    fn elements(&mut self, name: &str, value: &str) -> Result<(), SearchError> {
        for element in value
            .split(',')
            .map(str::trim)
            .filter(|element| !element.is_empty())
        {
            let valid = element
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_alphabetic())
                && element
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.');
            if !valid {
                return Err(SearchError::invalid(
                    name,
                    value,
                    "a comma-separated list of element names, such as identifier,active",
                ));
            }
            if !self.parsed.elements.iter().any(|known| known == element) {
                self.parsed.elements.push(element.to_owned());
            }
        }
        Ok(())
    }

    fn include(
        &mut self,
        name: &str,
        reverse: bool,
        modifier: Option<&str>,
        value: &str,
    ) -> Result<(), SearchError> {
        let iterate = match modifier {
            None => false,
            Some("iterate" | "recurse") => true,
            Some(other) => {
                self.ignore(
                    name,
                    format!("modifier ':{other}' is not supported on includes"),
                );
                return Ok(());
            }
        };
        let parts: Vec<&str> = value.split(':').collect();
        if value == "*" || parts.get(1) == Some(&"*") {
            self.ignore(
                name,
                "wildcard includes are not supported; name the reference parameter",
            );
            return Ok(());
        }
        let (source_type, param_code, target_type) = match parts.as_slice() {
            [source, param] => (*source, *param, None),
            [source, param, target] => (*source, *param, Some(*target)),
            _ => {
                return Err(SearchError::invalid(
                    name,
                    value,
                    "SourceType:parameter or SourceType:parameter:TargetType, as in Observation:subject",
                ));
            }
        };
        if !self.registry.knows_type(source_type)
            || target_type.is_some_and(|target| !self.registry.knows_type(target))
        {
            return Err(SearchError::invalid(
                name,
                value,
                "resource types that exist in FHIR R4, as in Observation:subject:Patient",
            ));
        }
        let is_reference = self
            .registry
            .lookup(Some(source_type), param_code)
            .is_some_and(|param| param.kind == SearchParamKind::Reference);
        if !is_reference {
            self.ignore(
                name,
                format!("'{param_code}' is not a reference parameter of {source_type}"),
            );
            return Ok(());
        }
        if !reverse
            && self
                .resource_type
                .is_some_and(|searched| searched != source_type)
        {
            self.ignore(
                name,
                format!("_include must start from the searched type, not {source_type}"),
            );
            return Ok(());
        }
        let include = Include {
            source_type: source_type.to_owned(),
            param: param_code.to_owned(),
            target_type: target_type.map(str::to_owned),
            iterate,
        };
        let list = if reverse {
            &mut self.parsed.query.revincludes
        } else {
            &mut self.parsed.query.includes
        };
        if !list.contains(&include) {
            list.push(include);
        }
        Ok(())
    }
}

fn reference_expected(param: &SearchParam) -> String {
    let example = param.targets.first().map_or("Patient", String::as_str);
    format!("a reference such as {example}/123, 123 or an absolute URL")
}

fn widen_if_approximate(prefix: Prefix, value: f64, low: f64, high: f64) -> (f64, f64) {
    if prefix == Prefix::Ap {
        let tenth = value.abs() / 10.0;
        (low.min(value - tenth), high.max(value + tenth))
    } else {
        (low, high)
    }
}

/// Splits a leading two-letter prefix (`ge2020` → `(Ge, "2020")`); no prefix means `eq`.
fn split_prefix(raw: &str) -> (Prefix, &str) {
    let prefix = match raw.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, raw),
    };
    (prefix, &raw[2..])
}

fn prefix_text(prefix: Prefix) -> &'static str {
    match prefix {
        Prefix::Eq => "",
        Prefix::Ne => "ne",
        Prefix::Gt => "gt",
        Prefix::Lt => "lt",
        Prefix::Ge => "ge",
        Prefix::Le => "le",
        Prefix::Sa => "sa",
        Prefix::Eb => "eb",
        Prefix::Ap => "ap",
    }
}

/// Splits on `separator` where it is not escaped by `\` (escapes are kept for [`unescape`]).
fn split_unescaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (at, ch) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if ch == '\\' {
            escaped = true;
        } else if ch == separator {
            parts.push(&text[start..at]);
            start = at + ch.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Removes the search escapes `\,` `\|` `\$` `\\`.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' {
            match chars.next() {
                Some(next) => out.push(next),
                None => out.push('\\'),
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The inverse of [`unescape`] for canonical rendering.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '\\' | ',' | '|' | '$') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        assert_eq!(split_unescaped(r"a\,b,c", ','), vec![r"a\,b", "c"]);
        assert_eq!(unescape(r"a\,b\|c\\"), r"a,b|c\");
        assert_eq!(unescape(&escape(r"x,y|z\")), r"x,y|z\");
    }

    #[test]
    fn prefixes() {
        assert_eq!(split_prefix("ge2020"), (Prefix::Ge, "2020"));
        assert_eq!(split_prefix("2020"), (Prefix::Eq, "2020"));
        assert_eq!(split_prefix("xx2020"), (Prefix::Eq, "xx2020"));
    }
}
