//! The registry of search parameters per resource type, built once from the R4 definitions
//! (or any list of definitions, e.g. custom `SearchParameter`s) with each expression
//! narrowed to the resource type and compiled.

use std::collections::HashMap;
use std::sync::Arc;

use flare_fhir::search_params::{SearchParamDef, SearchParamKind};

use serde_json::Value;

use crate::IndexEntry;
use crate::extract::convert;
use crate::path::CompiledPath;

/// One search parameter as it applies to one resource type.
#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    /// Canonical URL of the definition.
    pub url: String,
    pub kind: SearchParamKind,
    /// For references: the resource types it may point to.
    pub targets: Vec<String>,
    /// The FHIRPath expression, keeping only the branches for this resource type.
    pub expression: Option<String>,
    /// `None` when there is no expression or it does not compile (reported at build time).
    pub(crate) compiled: Option<Evaluator>,
}

/// How a parameter's expression is evaluated: the typed-path fast path for the plain paths
/// most R4 expressions are, the full FHIRPath engine for the rest (`exists() and …`,
/// `entry[0].resource`, `(value as CodeableConcept).text`).
#[derive(Debug)]
pub(crate) enum Evaluator {
    Path(CompiledPath),
    FhirPath(flare_fhirpath::Expression),
}

/// One row of a CapabilityStatement's `rest.resource.searchParam`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityParam {
    pub code: String,
    /// The R4 type code: `token`, `date`…
    pub kind: &'static str,
    /// The canonical URL of the SearchParameter.
    pub definition: String,
    pub documentation: String,
}

#[derive(Debug, Default)]
struct TypeParams {
    params: Vec<Arc<SearchParam>>,
    by_code: HashMap<String, usize>,
}

/// Search parameters by resource type. Cheap to share behind an `Arc`; build it once.
#[derive(Debug, Default)]
pub struct Registry {
    by_type: HashMap<String, TypeParams>,
    /// Parameters defined on `Resource`/`DomainResource`: all a system-level search knows.
    common: TypeParams,
    /// Expressions that failed to compile: `(url, message)`.
    compile_failures: Vec<(String, String)>,
}

const ABSTRACT_BASES: [&str; 2] = ["Resource", "DomainResource"];

impl Registry {
    /// The registry of every FHIR R4 core search parameter.
    pub fn r4() -> Self {
        Self::from_definitions(flare_fhir::search_params::all())
    }

    /// Builds a registry from definitions; later definitions of the same (type, code) win, so
    /// custom parameters can override core ones.
    pub fn from_definitions<'a>(definitions: impl IntoIterator<Item = &'a SearchParamDef>) -> Self {
        let definitions: Vec<&SearchParamDef> = definitions.into_iter().collect();
        let mut registry = Registry::default();
        let mut concrete_types: Vec<String> = flare_fhir::model::resource_types()
            .map(str::to_owned)
            .collect();
        for definition in &definitions {
            for base in &definition.base {
                if !ABSTRACT_BASES.contains(&base.as_str()) && !concrete_types.contains(base) {
                    concrete_types.push(base.clone());
                }
            }
        }
        for definition in &definitions {
            if definition
                .base
                .iter()
                .any(|base| ABSTRACT_BASES.contains(&base.as_str()))
            {
                let param = registry.build_param(definition, None);
                insert(&mut registry.common, param);
            }
        }
        for resource_type in &concrete_types {
            let mut params = TypeParams::default();
            for common in &registry.common.params {
                insert(&mut params, Arc::clone(common));
            }
            registry.by_type.insert(resource_type.clone(), params);
        }
        for definition in &definitions {
            for base in &definition.base {
                if ABSTRACT_BASES.contains(&base.as_str()) {
                    continue;
                }
                let param = registry.build_param(definition, Some(base));
                if let Some(params) = registry.by_type.get_mut(base) {
                    insert(params, param);
                }
            }
        }
        registry
    }

    fn build_param(
        &mut self,
        definition: &SearchParamDef,
        resource_type: Option<&str>,
    ) -> Arc<SearchParam> {
        let expression = definition
            .expression
            .as_deref()
            .map(|text| match resource_type {
                Some(resource_type) => narrow_expression(text, resource_type),
                None => text.to_owned(),
            })
            .filter(|text| !text.is_empty());
        let compiled = match (&expression, definition.kind) {
            (Some(text), kind) if extractable(kind) => match CompiledPath::compile(text) {
                Ok(compiled) => Some(Evaluator::Path(compiled)),
                Err(_) => match flare_fhirpath::Expression::parse(text) {
                    Ok(expression) => Some(Evaluator::FhirPath(expression)),
                    Err(error) => {
                        let message = error.to_string();
                        tracing::warn!(url = %definition.url, %message, "search parameter expression does not compile");
                        self.compile_failures
                            .push((definition.url.clone(), message));
                        None
                    }
                },
            },
            _ => None,
        };
        Arc::new(SearchParam {
            code: definition.code.clone(),
            url: definition.url.clone(),
            kind: definition.kind,
            targets: definition.targets.clone(),
            expression,
            compiled,
        })
    }

    /// The parameters of a resource type (its own and the common ones), or `None` for an
    /// unknown type.
    pub fn params(&self, resource_type: &str) -> Option<&[Arc<SearchParam>]> {
        self.by_type
            .get(resource_type)
            .map(|params| params.params.as_slice())
    }

    /// The parameter `code` of `resource_type`; with no type, the common parameters
    /// (`_id`, `_lastUpdated`…) of a system-level search.
    pub fn lookup(&self, resource_type: Option<&str>, code: &str) -> Option<&Arc<SearchParam>> {
        let params = match resource_type {
            Some(resource_type) => self.by_type.get(resource_type)?,
            None => &self.common,
        };
        params.by_code.get(code).map(|&index| &params.params[index])
    }

    /// Whether `resource_type` is a resource type this registry knows.
    pub fn knows_type(&self, resource_type: &str) -> bool {
        self.by_type.contains_key(resource_type)
    }

    /// The search parameters to declare in the CapabilityStatement for a resource type: those
    /// this crate can search on (not composite or special ones), sorted by code.
    pub fn capability(&self, resource_type: &str) -> Vec<CapabilityParam> {
        let Some(params) = self.params(resource_type) else {
            return Vec::new();
        };
        let mut rows: Vec<CapabilityParam> = params
            .iter()
            .filter(|param| extractable(param.kind))
            .map(|param| CapabilityParam {
                code: param.code.clone(),
                kind: param.kind.code(),
                definition: param.url.clone(),
                documentation: documentation(param),
            })
            .collect();
        rows.sort_by(|a, b| a.code.cmp(&b.code));
        rows
    }

    /// The index entries of a resource: every parameter of its type evaluated and converted
    /// (composite and special parameters are not indexed). A resource without a known
    /// `resourceType` has none.
    pub fn extract(&self, resource: &Value) -> Vec<IndexEntry> {
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        let Some(params) = self.by_type.get(resource_type) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        let mut items = Vec::new();
        for param in &params.params {
            let Some(compiled) = &param.compiled else {
                continue;
            };
            match compiled {
                Evaluator::Path(path) => {
                    items.clear();
                    path.evaluate(resource_type, resource, &mut items);
                    for item in &items {
                        convert(
                            &param.code,
                            param.kind,
                            item.type_name,
                            item.value,
                            &mut entries,
                        );
                    }
                }
                Evaluator::FhirPath(expression) => {
                    match expression.evaluate(resource, &flare_fhirpath::Env::new()) {
                        Ok(results) => {
                            for item in &results {
                                let type_name = fhir_type_of(&item.type_name);
                                convert(
                                    &param.code,
                                    param.kind,
                                    type_name,
                                    &item.to_json(),
                                    &mut entries,
                                );
                            }
                        }
                        Err(error) => {
                            tracing::debug!(param = %param.code, %error, "search expression failed on a resource; the parameter is not indexed for it");
                        }
                    }
                }
            }
        }
        entries
    }

    /// Definitions whose expression could not be compiled: `(url, message)`.
    pub fn compile_failures(&self) -> &[(String, String)] {
        &self.compile_failures
    }
}

/// The FHIR type name of a FHIRPath result: system types (`System.Boolean`) as the FHIR
/// primitive they stand for, FHIR types as they are.
fn fhir_type_of(type_name: &str) -> &str {
    match type_name {
        "System.Boolean" => "boolean",
        "System.String" => "string",
        "System.Integer" => "integer",
        "System.Decimal" => "decimal",
        "System.Date" => "date",
        "System.DateTime" => "dateTime",
        "System.Time" => "time",
        "System.Quantity" => "Quantity",
        other => other,
    }
}

fn insert(params: &mut TypeParams, param: Arc<SearchParam>) {
    match params.by_code.get(&param.code) {
        Some(&index) => params.params[index] = param,
        None => {
            params
                .by_code
                .insert(param.code.clone(), params.params.len());
            params.params.push(param);
        }
    }
}

/// Kinds whose values this crate extracts and matches.
pub(crate) fn extractable(kind: SearchParamKind) -> bool {
    !matches!(kind, SearchParamKind::Composite | SearchParamKind::Special)
}

fn documentation(param: &SearchParam) -> String {
    let what = param.expression.as_deref().unwrap_or("(no expression)");
    match param.kind {
        SearchParamKind::Reference if !param.targets.is_empty() => {
            format!(
                "{} search on {what} (to {})",
                param.kind.code(),
                param.targets.join(", ")
            )
        }
        kind => format!("{} search on {what}", kind.code()),
    }
}

/// Keeps the `|`-separated branches of a shared R4 expression that apply to `resource_type`
/// (`AllergyIntolerance.patient | Observation.subject…` on Observation → `Observation.subject…`),
/// so extraction does not evaluate dozens of paths that can only be empty.
pub(crate) fn narrow_expression(expression: &str, resource_type: &str) -> String {
    let branches = split_top_level_unions(expression);
    if branches.len() < 2 {
        return expression.trim().to_owned();
    }
    let kept: Vec<&str> = branches
        .iter()
        .map(|branch| branch.trim())
        .filter(|branch| match root_identifier(branch) {
            Some(root) if root.chars().next().is_some_and(char::is_uppercase) => {
                root == resource_type || ABSTRACT_BASES.contains(&root)
            }
            _ => true,
        })
        .collect();
    kept.join(" | ")
}

/// Splits on `|` outside parentheses, brackets and string literals.
fn split_top_level_unions(expression: &str) -> Vec<&str> {
    let mut branches = Vec::new();
    let mut depth = 0_i32;
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (at, ch) in expression.char_indices() {
        if in_string {
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => in_string = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '\'' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '|' if depth == 0 => {
                branches.push(&expression[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    branches.push(&expression[start..]);
    branches
}

/// The first identifier of a branch, skipping opening parentheses: `(Observation.value as
/// Quantity)` → `Observation`.
fn root_identifier(branch: &str) -> Option<&str> {
    let trimmed = branch.trim_start_matches(|ch: char| ch == '(' || ch.is_whitespace());
    let end = trimmed
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
        .unwrap_or(trimmed.len());
    (end > 0).then(|| &trimmed[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrows_shared_expressions() {
        let shared = "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | Observation.subject.where(resolve() is Patient)";
        assert_eq!(
            narrow_expression(shared, "Observation"),
            "Observation.subject.where(resolve() is Patient)"
        );
        assert_eq!(
            narrow_expression(
                "(ActivityDefinition.useContext.value as CodeableConcept) | (Library.useContext.value as CodeableConcept)",
                "Library"
            ),
            "(Library.useContext.value as CodeableConcept)"
        );
        assert_eq!(
            narrow_expression("Patient.name.where(use = 'a|b')", "Patient"),
            "Patient.name.where(use = 'a|b')"
        );
    }
}
