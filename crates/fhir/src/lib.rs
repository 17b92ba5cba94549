//! FHIR R4 (4.0.1) on `serde_json::Value`: the definition-driven type model,
//! search parameter definitions, parsing and validation, XML ⇄ JSON and
//! OperationOutcome.

pub mod model;
pub mod search_params;
