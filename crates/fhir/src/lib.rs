//! FHIR R4 (4.0.1) on `serde_json::Value`: the definition-driven type model,
//! search parameter definitions, parsing and validation, XML ⇄ JSON and
//! OperationOutcome.

pub mod format;
pub mod model;
pub mod operation_outcome;
pub mod parse;
pub mod search_params;
pub mod validate;
pub mod xml;

pub use operation_outcome::{Issue, IssueCode, OperationOutcome, Severity};
pub use parse::{ParseError, ParseLimits, parse_json, parse_json_with};
pub use validate::{validate, validate_all};
