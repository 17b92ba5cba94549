//! The search parameters of the FHIR R4 core specification.
//!
//! Generated from HL7's `search-parameters.json` by
//! `tools/gen-fhir-definitions.py` into `data/r4-search-parameters.json`,
//! embedded and parsed once on first use.

use std::sync::OnceLock;

use serde_json::Value;

use crate::model;

const SEARCH_PARAMETERS_JSON: &str = include_str!("../data/r4-search-parameters.json");
const CANONICAL_PREFIX: &str = "http://hl7.org/fhir/SearchParameter/";

/// `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl SearchParamKind {
    /// Parses the R4 code (`"token"`, `"date"`…).
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "number" => Self::Number,
            "date" => Self::Date,
            "string" => Self::String,
            "token" => Self::Token,
            "reference" => Self::Reference,
            "composite" => Self::Composite,
            "quantity" => Self::Quantity,
            "uri" => Self::Uri,
            "special" => Self::Special,
            _ => return None,
        })
    }

    /// The R4 code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Date => "date",
            Self::String => "string",
            Self::Token => "token",
            Self::Reference => "reference",
            Self::Composite => "composite",
            Self::Quantity => "quantity",
            Self::Uri => "uri",
            Self::Special => "special",
        }
    }
}

/// One part of a composite search parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParamComponent {
    /// Canonical URL of the search parameter that defines the part.
    pub definition: String,
    /// FHIRPath relative to the composite's expression result.
    pub expression: String,
}

/// A search parameter definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParamDef {
    /// The name used in URLs: `"name"`, `"_id"`, `"code-value-quantity"`.
    pub code: String,
    /// Canonical URL: `http://hl7.org/fhir/SearchParameter/Patient-name`.
    pub url: String,
    /// Resource types it applies to (`Resource`/`DomainResource` for all).
    pub base: Vec<String>,
    pub kind: SearchParamKind,
    /// The FHIRPath expression, whole: R4 often joins several types' paths
    /// with `|`; paths for other types simply yield nothing.
    pub expression: Option<String>,
    /// For reference parameters: the resource types it may point to.
    pub targets: Vec<String>,
    /// For composite parameters: their parts, in order.
    pub components: Vec<SearchParamComponent>,
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_row(row: &Value) -> Option<SearchParamDef> {
    let text = |index: usize| row.get(index).and_then(Value::as_str);
    let url_tail = text(1)?;
    let url = if url_tail.contains(':') {
        url_tail.to_owned()
    } else {
        format!("{CANONICAL_PREFIX}{url_tail}")
    };
    let components = row
        .get(6)
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .map(|part| SearchParamComponent {
                    definition: part.get(0).and_then(Value::as_str).unwrap_or("").to_owned(),
                    expression: part.get(1).and_then(Value::as_str).unwrap_or("").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(SearchParamDef {
        code: text(0)?.to_owned(),
        url,
        base: strings(row.get(2)),
        kind: SearchParamKind::from_code(text(3)?)?,
        expression: text(4).map(str::to_owned),
        targets: strings(row.get(5)),
        components,
    })
}

fn load() -> Vec<SearchParamDef> {
    // Generated data checked by tests; a parse failure is a build defect.
    let rows: Vec<Value> = serde_json::from_str(SEARCH_PARAMETERS_JSON)
        .expect("embedded data/r4-search-parameters.json is valid");
    rows.iter().filter_map(parse_row).collect()
}

/// Every R4 core search parameter, sorted by code then URL.
pub fn all() -> &'static [SearchParamDef] {
    static ALL: OnceLock<Vec<SearchParamDef>> = OnceLock::new();
    ALL.get_or_init(load)
}

/// The parameters that apply to `resource_type`: its own plus those defined
/// on `Resource` / `DomainResource` (`_id`, `_lastUpdated`, `_tag`…).
pub fn for_type(resource_type: &str) -> impl Iterator<Item = &'static SearchParamDef> {
    let resource_type = resource_type.to_owned();
    all().iter().filter(move |definition| {
        definition
            .base
            .iter()
            .any(|base| model::is_a(&resource_type, base))
    })
}

/// The parameter `code` of `resource_type`, if it has one.
pub fn find(resource_type: &str, code: &str) -> Option<&'static SearchParamDef> {
    for_type(resource_type).find(|definition| definition.code == code)
}

/// Finds a parameter by its canonical URL (as composite components name them).
pub fn by_url(url: &str) -> Option<&'static SearchParamDef> {
    all().iter().find(|definition| definition.url == url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_has_its_own_and_the_common_parameters() {
        let codes: Vec<&str> = for_type("Patient").map(|p| p.code.as_str()).collect();
        for code in [
            "name",
            "birthdate",
            "identifier",
            "_id",
            "_lastUpdated",
            "_tag",
            "_profile",
            "_security",
            "_text",
        ] {
            assert!(codes.contains(&code), "Patient lacks {code}");
        }
        assert!(!codes.contains(&"code-value-quantity"));
        let name = find("Patient", "name").unwrap();
        assert_eq!(name.kind, SearchParamKind::String);
        assert_eq!(name.url, "http://hl7.org/fhir/SearchParameter/Patient-name");
    }

    #[test]
    fn shared_expressions_are_kept_whole() {
        let patient = find("Observation", "patient").unwrap();
        assert_eq!(patient.kind, SearchParamKind::Reference);
        let expression = patient.expression.as_deref().unwrap();
        assert!(expression.contains("AllergyIntolerance.patient"));
        assert!(expression.contains(" | "));
        assert!(patient.base.len() > 10);
        assert_eq!(patient.targets, ["Patient"]);
    }

    #[test]
    fn composite_parameters_list_components() {
        let composite = find("Observation", "code-value-quantity").unwrap();
        assert_eq!(composite.kind, SearchParamKind::Composite);
        assert_eq!(composite.components.len(), 2);
        for component in &composite.components {
            let part = by_url(&component.definition)
                .unwrap_or_else(|| panic!("component {} unknown", component.definition));
            assert_ne!(part.kind, SearchParamKind::Composite);
        }
    }

    #[test]
    fn every_parameter_parsed() {
        let raw: Vec<Value> = serde_json::from_str(SEARCH_PARAMETERS_JSON).unwrap();
        assert_eq!(all().len(), raw.len());
        assert!(all().len() > 1000);
        for definition in all() {
            for base in &definition.base {
                assert!(
                    model::is_type(base),
                    "{} has unknown base {base}",
                    definition.url
                );
            }
        }
    }
}
