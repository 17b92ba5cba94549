//! Errors of search parsing. Unknown parameters and unsupported modifiers are not errors:
//! they are reported in [`crate::ParsedSearch::ignored`].

/// A search request that cannot be executed as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// A value that does not have the form its parameter needs.
    #[error("invalid value '{value}' for search parameter '{param}': expected {expected}")]
    InvalidValue {
        param: String,
        value: String,
        expected: String,
    },
    /// The searched resource type does not exist in FHIR R4.
    #[error(
        "unknown resource type '{0}': expected an R4 resource type such as Patient or Observation"
    )]
    UnknownResourceType(String),
    /// A chain whose target type cannot be chosen from the parameter's targets.
    #[error(
        "search parameter '{param}' may point to {candidates}: name the type, as in '{param}:{example}.{chained}'"
    )]
    AmbiguousChain {
        param: String,
        chained: String,
        candidates: String,
        example: String,
    },
}

impl SearchError {
    pub(crate) fn invalid(param: &str, value: &str, expected: impl Into<String>) -> Self {
        Self::InvalidValue {
            param: param.to_owned(),
            value: value.to_owned(),
            expected: expected.into(),
        }
    }
}
