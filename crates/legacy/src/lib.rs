//! DSTU2 and STU3 feeds mapped to FHIR R4.
//!
//! [`convert`] takes the bytes of a message or file, its format and the
//! declared (or auto-detected) FHIR version, and returns R4 resources ready
//! for the commit path, the resource types it could not map (as values, with
//! the reason), and the elements it had to drop. R4 input passes unchanged.
//!
//! The path for legacy input: XML is read without a schema
//! ([`xml::to_loose_json`]); [`map`] applies the official R2→R3 and R3→R4
//! map semantics per resource type (DSTU2 goes through STU3); [`conform`]
//! fixes cardinality and primitive JSON types against the R4 model; every
//! result is checked with `flare_fhir::validate`.

mod conform;
mod detect;
mod map;
pub mod xml;

use std::collections::BTreeMap;

use serde_json::Value;
use thiserror::Error;

pub use detect::detect;

/// The FHIR version a document is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FhirVersion {
    /// DSTU2 (1.0.x).
    Dstu2,
    /// STU3 (3.0.x).
    Stu3,
    /// R4 (4.0.x): passed through unchanged.
    R4,
}

impl FhirVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dstu2 => "dstu2",
            Self::Stu3 => "stu3",
            Self::R4 => "r4",
        }
    }
}

/// The version a caller declares, or `Auto` to detect it from the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeclaredVersion {
    #[default]
    Auto,
    Exactly(FhirVersion),
}

impl std::str::FromStr for DeclaredVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "dstu2" | "r2" | "1.0" => Ok(Self::Exactly(FhirVersion::Dstu2)),
            "stu3" | "r3" | "3.0" => Ok(Self::Exactly(FhirVersion::Stu3)),
            "r4" | "4.0" => Ok(Self::Exactly(FhirVersion::R4)),
            other => Err(format!(
                "unknown FHIR version {other:?}: expected auto, dstu2, stu3 or r4"
            )),
        }
    }
}

/// How the bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Json,
    Xml,
}

/// A resource that has no R4 mapping; it is reported, never silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub resource_type: String,
    /// The resource's id, when it has one.
    pub id: Option<String>,
    pub reason: String,
}

/// The result of converting one document.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The version the document was read as.
    pub version: FhirVersion,
    /// R4 resources or Bundles, in input order (one per document today).
    pub resources: Vec<Value>,
    /// Resources left out because their type has no mapping.
    pub unmapped: Vec<Unmapped>,
    /// Source elements with no R4 place, by path, with how often they occurred.
    pub dropped: BTreeMap<String, u64>,
}

/// Why a document could not be converted. [`LegacyError::reason`] is one line,
/// fit for a dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LegacyError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not FHIR XML: {0}")]
    Xml(String),
    #[error("not a FHIR resource: {0}")]
    NotAResource(String),
    /// A mapped resource still breaks R4's rules (the mapping cannot supply
    /// required content the source lacks).
    #[error("{resource} does not map to valid R4: {issues}")]
    InvalidR4 { resource: String, issues: String },
}

impl LegacyError {
    /// A short machine-friendly kind (`json`, `xml`, `not-a-resource`, `invalid-r4`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Json(_) => "json",
            Self::Xml(_) => "xml",
            Self::NotAResource(_) => "not-a-resource",
            Self::InvalidR4 { .. } => "invalid-r4",
        }
    }

    /// The message on one line (header values cannot hold line breaks).
    pub fn reason(&self) -> String {
        self.to_string().replace(['\r', '\n'], " ")
    }
}

/// Bodies up to this size are accepted; the depth limit of the JSON parser stays.
const MAX_BYTES: usize = 1 << 30;

fn parse_json(bytes: &[u8]) -> Result<Value, LegacyError> {
    let limits = flare_fhir::ParseLimits {
        max_bytes: MAX_BYTES,
        ..flare_fhir::ParseLimits::default()
    };
    flare_fhir::parse_json_with(bytes, limits).map_err(|e| LegacyError::Json(e.to_string()))
}

/// Converts one document (a resource or a Bundle) to R4.
///
/// With [`DeclaredVersion::Auto`], JSON is detected from its content and XML
/// is first read as R4; when that fails or the content shows an older
/// version, it is read as legacy XML. R4 input is returned unchanged (not
/// validated here: the commit path validates it).
pub fn convert(
    bytes: &[u8],
    format: InputFormat,
    declared: DeclaredVersion,
) -> Result<Converted, LegacyError> {
    let text = || std::str::from_utf8(bytes).map_err(|_| LegacyError::Xml("not UTF-8".into()));
    let (value, version) = match (format, declared) {
        (InputFormat::Json, DeclaredVersion::Exactly(version)) => (parse_json(bytes)?, version),
        (InputFormat::Json, DeclaredVersion::Auto) => {
            let value = parse_json(bytes)?;
            let version = detect(&value);
            (value, version)
        }
        (InputFormat::Xml, DeclaredVersion::Exactly(FhirVersion::R4)) => {
            let value =
                flare_fhir::xml::to_json(text()?).map_err(|e| LegacyError::Xml(e.to_string()))?;
            (value, FhirVersion::R4)
        }
        (InputFormat::Xml, DeclaredVersion::Exactly(version)) => {
            (xml::to_loose_json(text()?)?, version)
        }
        (InputFormat::Xml, DeclaredVersion::Auto) => {
            let text = text()?;
            match flare_fhir::xml::to_json(text) {
                Ok(value) if detect(&value) == FhirVersion::R4 => (value, FhirVersion::R4),
                read_as_r4 => {
                    let r4_error = read_as_r4.err();
                    let loose = xml::to_loose_json(text)?;
                    match (detect(&loose), r4_error) {
                        // Nothing older in it: the R4 reader's complaint is the useful one.
                        (FhirVersion::R4, Some(error)) => {
                            return Err(LegacyError::Xml(error.to_string()));
                        }
                        (version, _) => (loose, version),
                    }
                }
            }
        }
    };
    if version == FhirVersion::R4 {
        return Ok(Converted {
            version,
            resources: vec![value],
            unmapped: Vec::new(),
            dropped: BTreeMap::new(),
        });
    }
    to_r4(value, version)
}

/// Maps one parsed legacy resource or Bundle to R4 and validates the result.
pub fn to_r4(value: Value, version: FhirVersion) -> Result<Converted, LegacyError> {
    if value.get("resourceType").and_then(Value::as_str).is_none() {
        return Err(LegacyError::NotAResource("no resourceType".into()));
    }
    let mut unmapped = Vec::new();
    let mut dropped = BTreeMap::new();
    let mapped = map::document(value, version, &mut unmapped, &mut dropped);
    let mut resources = Vec::new();
    if let Some(mapped) = mapped {
        let mut mapped = conform::resource(mapped, &mut dropped);
        set_aside_invalid_entries(&mut mapped, &mut unmapped);
        if let Err(issues) = flare_fhir::validate(&mapped) {
            return Err(LegacyError::InvalidR4 {
                resource: map::describe(&mapped),
                issues: summarize(&issues),
            });
        }
        resources.push(mapped);
    }
    Ok(Converted {
        version,
        resources,
        unmapped,
        dropped,
    })
}

fn summarize(issues: &[flare_fhir::Issue]) -> String {
    flare_fhir::validate::errors(issues)
        .take(5)
        .map(|issue| format!("{}: {}", issue.location, issue.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Bundle entry whose mapped resource is still not valid R4 leaves the
/// Bundle and is reported, so one bad record does not hold back the others.
fn set_aside_invalid_entries(bundle: &mut Value, unmapped: &mut Vec<Unmapped>) {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    entries.retain(|entry| {
        let Some(resource) = entry.get("resource") else {
            return true;
        };
        match flare_fhir::validate(resource) {
            Ok(()) => true,
            Err(issues) => {
                unmapped.push(Unmapped {
                    resource_type: resource
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    id: resource
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    reason: format!("does not map to valid R4: {}", summarize(&issues)),
                });
                false
            }
        }
    });
}
