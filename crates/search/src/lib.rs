//! FHIR search without storage: the registry of search parameters (from the official R4
//! definitions), extraction of index values from resources (through FHIRPath), and parsing of
//! search URLs into a [`SearchQuery`] that a store executes.
//!
//! The types in this file are the contract between this crate and `flare-store`.

mod dates;
mod error;
mod extract;
pub mod matcher;
pub mod normalize;
mod numbers;
mod path;
mod query;
mod registry;

pub use dates::{format_ms, parse_date_range};
pub use error::SearchError;
pub use flare_fhir::search_params::SearchParamKind;
pub use matcher::matches;
pub use numbers::parse_decimal;
pub use query::{DEFAULT_COUNT, MAX_COUNT, ParsedSearch, encode_query};
pub use registry::{CapabilityParam, Registry, SearchParam};

/// One extracted index value of one search parameter of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter code, e.g. `family`, `code`, `patient`.
    pub param: String,
    pub value: IndexValue,
}

/// Index values, normalised for matching.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized` is lower-cased with accents and punctuation folded (default and
    /// `:contains` matching); `exact` is the original text (`:exact`).
    String {
        normalized: String,
        exact: String,
    },
    /// A code with its system (`None` when the data has no system). `text` carries the
    /// display / CodeableConcept.text for `:text`, folded like `String::normalized`.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// A reference: `target_type`/`target_id` for relative and resolvable references,
    /// `url` always the reference text as written (absolute or canonical).
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: String,
    },
    /// The value as an inclusive millisecond range [low, high] (a date `2020` is the whole
    /// year; an open Period end is `i64::MAX`).
    Date {
        low_ms: i64,
        high_ms: i64,
    },
    /// A number as the range implied by its precision (1.5 → [1.45, 1.55]).
    Number {
        value: f64,
        low: f64,
        high: f64,
    },
    /// A quantity with its system and code (UCUM preferred) and unit text.
    Quantity {
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri(String),
}

/// Comparison prefixes of number, date and quantity parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefix {
    #[default]
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// How a string parameter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    /// Case- and accent-insensitive "starts with" (the default).
    StartsWith,
    Exact,
    Contains,
}

/// One value of a search parameter (values of one parameter are OR-ed).
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    String {
        mode: StringMatch,
        value: String,
    },
    /// `system`: `None` = any system; `Some(None)` = no system (`|code`); `Some(Some(s))`.
    /// `code`: `None` = any code of the system (`system|`). `negate` is `:not`.
    Token {
        system: Option<Option<String>>,
        code: Option<String>,
        negate: bool,
    },
    /// `:text` on a token: matches the display / text, like a string search.
    TokenText(String),
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
    },
    /// A date range [low, high] from the value's precision, compared by `prefix`.
    Date {
        prefix: Prefix,
        low_ms: i64,
        high_ms: i64,
    },
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// `below`/`above` are the `:below` / `:above` modifiers on uris.
    Uri {
        value: String,
        below: bool,
        above: bool,
    },
    /// `:missing=true|false`.
    Missing(bool),
}

/// One AND-ed clause: a parameter with OR-ed predicates, maybe reached through a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub param: String,
    /// `subject:Patient.name=x` → the clause matches resources whose `subject` reference points
    /// to a `Patient` matching the inner clause.
    pub chain: Option<Box<Chain>>,
    pub predicates: Vec<Predicate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub target_type: String,
    pub clause: Clause,
}

/// `_sort` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// A search parameter code, or `_id` / `_lastUpdated`.
    pub param: String,
    pub descending: bool,
}

/// `_include` / `_revinclude`: `source_type:param[:target_type]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    pub param: String,
    pub target_type: Option<String>,
    /// `:iterate` (only one level is followed; recorded so it can be reported).
    pub iterate: bool,
}

/// Whether and how to count the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotalMode {
    #[default]
    Accurate,
    None,
}

/// A parsed search, ready for a store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    /// `None` for a system-level search.
    pub resource_type: Option<String>,
    pub clauses: Vec<Clause>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub offset: usize,
    pub total: TotalMode,
    /// `_summary=count`: only the total is wanted.
    pub count_only: bool,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
}
