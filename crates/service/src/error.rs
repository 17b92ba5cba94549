//! Errors of FHIR interactions, each with the HTTP status FHIR specifies and the issues an
//! OperationOutcome reports (what was wrong and how to fix it).

use flare_fhir::operation_outcome::{Issue, IssueCode, OperationOutcome};
use serde_json::Value;

/// A failed interaction: an HTTP status and the issues behind it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {}", issues.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; "))]
pub struct FhirError {
    pub status: u16,
    pub issues: Vec<Issue>,
}

impl FhirError {
    pub fn new(status: u16, code: IssueCode, message: impl Into<String>) -> Self {
        Self {
            status,
            issues: vec![Issue::error(code, message, "")],
        }
    }

    pub fn with_issues(status: u16, issues: Vec<Issue>) -> Self {
        Self { status, issues }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, IssueCode::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, IssueCode::NotFound, message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, IssueCode::Deleted, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, IssueCode::Conflict, message)
    }

    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(412, IssueCode::Conflict, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, IssueCode::BusinessRule, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, IssueCode::Exception, message)
    }

    /// The OperationOutcome resource describing this error.
    pub fn outcome(&self) -> Value {
        OperationOutcome::from_issues(self.issues.clone()).to_json()
    }

    /// Prefixes every message with the Bundle entry it concerns.
    pub(crate) fn at_entry(mut self, index: usize) -> Self {
        for issue in &mut self.issues {
            if !issue.message.starts_with("entry ") {
                issue.message = format!("entry {index}: {}", issue.message);
            }
        }
        self
    }
}

impl From<flare_store::StoreError> for FhirError {
    fn from(err: flare_store::StoreError) -> Self {
        match err {
            flare_store::StoreError::Conflict { key, .. } => FhirError::conflict(format!(
                "{key} was changed by another request at the same time; retry the request"
            )),
            flare_store::StoreError::UnsupportedSearch(msg) => {
                FhirError::new(400, IssueCode::NotSupported, msg)
            }
            other => FhirError::internal(format!("storage failed: {other}")),
        }
    }
}
