//! Issues and the R4 `OperationOutcome` resource that reports them.

use std::fmt;

use serde_json::{Map, Value, json};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn code(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }

    /// Fatal and error issues make the request fail.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Fatal | Self::Error)
    }
}

/// `OperationOutcome.issue.code` (value set `issue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Unknown,
    Expired,
    Forbidden,
    Suppressed,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    Extension,
    TooCostly,
    BusinessRule,
    Conflict,
    Transient,
    LockError,
    NoStore,
    Exception,
    Timeout,
    Incomplete,
    Throttled,
    Informational,
}

impl IssueCode {
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::Invariant => "invariant",
            Self::Security => "security",
            Self::Login => "login",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Forbidden => "forbidden",
            Self::Suppressed => "suppressed",
            Self::Processing => "processing",
            Self::NotSupported => "not-supported",
            Self::Duplicate => "duplicate",
            Self::MultipleMatches => "multiple-matches",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::TooLong => "too-long",
            Self::CodeInvalid => "code-invalid",
            Self::Extension => "extension",
            Self::TooCostly => "too-costly",
            Self::BusinessRule => "business-rule",
            Self::Conflict => "conflict",
            Self::Transient => "transient",
            Self::LockError => "lock-error",
            Self::NoStore => "no-store",
            Self::Exception => "exception",
            Self::Timeout => "timeout",
            Self::Incomplete => "incomplete",
            Self::Throttled => "throttled",
            Self::Informational => "informational",
        }
    }

    /// The HTTP status a server conventionally answers with when this is the
    /// main issue of a failed request.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Security | Self::Forbidden => 403,
            Self::Login | Self::Unknown | Self::Expired => 401,
            Self::NotFound => 404,
            Self::Deleted => 410,
            Self::Conflict | Self::Duplicate => 409,
            Self::MultipleMatches => 412,
            Self::TooLong => 413,
            Self::BusinessRule | Self::Invariant | Self::CodeInvalid | Self::Processing => 422,
            Self::NotSupported => 400,
            Self::Throttled | Self::TooCostly => 429,
            Self::Exception | Self::NoStore | Self::LockError => 500,
            Self::Transient | Self::Timeout => 503,
            Self::Invalid
            | Self::Structure
            | Self::Required
            | Self::Value
            | Self::Extension
            | Self::Incomplete
            | Self::Suppressed
            | Self::Informational => 400,
        }
    }
}

/// One finding: what is wrong, where, and how bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// Names the problem and the fix.
    pub message: String,
    /// FHIRPath location, e.g. `Patient.name[0].given[1]`; empty when the
    /// issue concerns the whole request.
    pub location: String,
}

impl Issue {
    pub fn error(code: IssueCode, message: impl Into<String>, location: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            location: location.into(),
        }
    }

    pub fn warning(
        code: IssueCode,
        message: impl Into<String>,
        location: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message, location)
        }
    }

    /// The issue as an `OperationOutcome.issue` JSON object.
    pub fn to_json(&self) -> Value {
        let mut issue = Map::new();
        issue.insert("severity".into(), self.severity.code().into());
        issue.insert("code".into(), self.code.code().into());
        issue.insert("diagnostics".into(), self.message.clone().into());
        if !self.location.is_empty() {
            issue.insert("expression".into(), json!([self.location]));
        }
        Value::Object(issue)
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(formatter, "{}: {}", self.severity.code(), self.message)
        } else {
            write!(
                formatter,
                "{} at {}: {}",
                self.severity.code(),
                self.location,
                self.message
            )
        }
    }
}

/// An R4 `OperationOutcome`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OperationOutcome {
    pub issues: Vec<Issue>,
}

impl OperationOutcome {
    pub fn from_issues(issues: Vec<Issue>) -> Self {
        Self { issues }
    }

    /// A single error issue.
    pub fn error(
        code: IssueCode,
        message: impl Into<String>,
        expression: impl Into<String>,
    ) -> Self {
        Self::from_issues(vec![Issue::error(code, message, expression)])
    }

    /// An outcome that reports success with an informational message (R4
    /// requires at least one issue).
    pub fn information(message: impl Into<String>) -> Self {
        Self::from_issues(vec![Issue {
            severity: Severity::Information,
            code: IssueCode::Informational,
            message: message.into(),
            location: String::new(),
        }])
    }

    /// Whether any issue is an error or fatal.
    pub fn has_errors(&self) -> bool {
        self.issues.iter().any(|issue| issue.severity.is_failure())
    }

    /// The HTTP status for the most severe issue (200 when none fails).
    pub fn http_status(&self) -> u16 {
        self.issues
            .iter()
            .filter(|issue| issue.severity.is_failure())
            .min_by_key(|issue| issue.severity)
            .map_or(200, |issue| issue.code.http_status())
    }

    /// The R4 JSON resource. An empty outcome gets one informational issue,
    /// since `OperationOutcome.issue` is 1..*.
    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = if self.issues.is_empty() {
            vec![Self::information("All OK").issues[0].to_json()]
        } else {
            self.issues.iter().map(Issue::to_json).collect()
        };
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

impl From<Vec<Issue>> for OperationOutcome {
    fn from(issues: Vec<Issue>) -> Self {
        Self::from_issues(issues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_issues_as_r4_json() {
        let outcome = OperationOutcome::error(
            IssueCode::Value,
            "'2020-13-01' is not a valid date: use YYYY, YYYY-MM or YYYY-MM-DD",
            "Patient.birthDate",
        );
        assert!(outcome.has_errors());
        assert_eq!(outcome.http_status(), 400);
        assert_eq!(
            outcome.to_json(),
            json!({
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "error",
                    "code": "value",
                    "diagnostics": "'2020-13-01' is not a valid date: use YYYY, YYYY-MM or YYYY-MM-DD",
                    "expression": ["Patient.birthDate"]
                }]
            })
        );
    }

    #[test]
    fn information_outcome_has_no_expression_and_does_not_fail() {
        let outcome = OperationOutcome::information("Deleted Patient/1");
        assert!(!outcome.has_errors());
        assert_eq!(outcome.http_status(), 200);
        let json = outcome.to_json();
        assert_eq!(json["issue"][0]["severity"], "information");
        assert_eq!(json["issue"][0]["code"], "informational");
        assert!(json["issue"][0].get("expression").is_none());
        assert_eq!(
            OperationOutcome::default().to_json()["issue"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn status_follows_the_most_severe_failure() {
        let outcome = OperationOutcome::from_issues(vec![
            Issue::warning(IssueCode::Value, "odd", "Patient.name"),
            Issue::error(IssueCode::NotFound, "no such patient", ""),
        ]);
        assert_eq!(outcome.http_status(), 404);
        let only_warning =
            OperationOutcome::from_issues(vec![Issue::warning(IssueCode::Value, "odd", "")]);
        assert_eq!(only_warning.http_status(), 200);
    }
}
