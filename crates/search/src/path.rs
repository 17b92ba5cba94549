//! Evaluation of search parameter expressions.
//!
//! Most R4 search expressions are plain typed paths: `Patient.name`, `Observation.value as
//! Quantity`, `Observation.subject.where(resolve() is Patient)`, joined by `|`. Those are
//! compiled here into steps walked directly over the JSON with the FHIR type model, which
//! keeps extraction to a few microseconds per resource. Expressions outside that subset are
//! reported by [`CompiledPath::compile`] and skipped.

use flare_fhir::model;
use serde_json::Value;

/// One result: a JSON value and its FHIR type (`HumanName`, `dateTime`, `Period`…).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathItem<'a> {
    pub type_name: &'a str,
    pub value: &'a Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A child element by its definition name (choice elements match every `name<Type>` key).
    Child(String),
    /// `as T`, `ofType(T)`: keep items of type `T`.
    OfType(String),
    /// `where(resolve() is T)`: keep references that point to a `T`.
    ResolvesTo(String),
    /// `where(child = 'literal')`: keep items whose string child equals the literal.
    WhereEquals(String, String),
}

#[derive(Debug, Clone, PartialEq)]
struct Branch {
    /// The type the branch starts from (`Patient`, or `Resource` for common parameters).
    root: String,
    steps: Vec<Step>,
}

/// A compiled search expression: a union of typed paths.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledPath {
    branches: Vec<Branch>,
}

impl CompiledPath {
    /// Compiles an expression; the error says which part is outside the supported subset.
    pub(crate) fn compile(expression: &str) -> Result<Self, String> {
        let branches = expression
            .split('|')
            .map(|branch| {
                compile_branch(branch.trim())
                    .ok_or_else(|| format!("unsupported expression part '{}'", branch.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledPath { branches })
    }

    /// Evaluates against a resource of type `resource_type`, appending the results to `out`.
    pub(crate) fn evaluate<'a>(
        &self,
        resource_type: &'a str,
        resource: &'a Value,
        out: &mut Vec<PathItem<'a>>,
    ) {
        // Two buffers reused across steps: allocation dominated the cost of short paths.
        let mut current = Vec::new();
        let mut next = Vec::new();
        for branch in &self.branches {
            if branch.root != resource_type
                && branch.root != "Resource"
                && branch.root != "DomainResource"
            {
                continue;
            }
            current.clear();
            current.push(PathItem {
                type_name: resource_type,
                value: resource,
            });
            for step in &branch.steps {
                next.clear();
                apply(step, &current, &mut next);
                std::mem::swap(&mut current, &mut next);
                if current.is_empty() {
                    break;
                }
            }
            out.append(&mut current);
        }
    }
}

fn compile_branch(text: &str) -> Option<Branch> {
    let mut text = text.trim();
    // `(X as T)` → `X as T`.
    while let Some(inner) = text
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
    {
        text = inner.trim();
    }
    let mut trailing_type = None;
    if let Some((path, type_name)) = text.rsplit_once(" as ") {
        trailing_type = Some(identifier(type_name.trim())?.to_owned());
        text = path.trim();
    }
    let mut parts = split_steps(text)?.into_iter();
    let root = identifier(parts.next()?)?.to_owned();
    let mut steps = Vec::new();
    for part in parts {
        let step = if let Some(argument) =
            call_argument(part, "ofType").or_else(|| call_argument(part, "as"))
        {
            Step::OfType(identifier(argument)?.to_owned())
        } else if let Some(argument) = call_argument(part, "where") {
            let argument = argument.trim();
            match argument.strip_prefix("resolve()") {
                Some(rest) => Step::ResolvesTo(
                    identifier(rest.trim().strip_prefix("is ")?.trim())?.to_owned(),
                ),
                None => {
                    let (field, literal) = argument.split_once('=')?;
                    let literal = literal.trim().strip_prefix('\'')?.strip_suffix('\'')?;
                    if literal.contains(['\'', '\\']) {
                        return None;
                    }
                    Step::WhereEquals(identifier(field.trim())?.to_owned(), literal.to_owned())
                }
            }
        } else {
            Step::Child(identifier(part)?.to_owned())
        };
        steps.push(step);
    }
    if let Some(type_name) = trailing_type {
        steps.push(Step::OfType(type_name));
    }
    Some(Branch { root, steps })
}

/// Splits `a.b.where(x.y).c` on dots outside parentheses.
fn split_steps(text: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0_i32;
    let mut start = 0;
    let mut in_string = false;
    for (at, ch) in text.char_indices() {
        if in_string {
            in_string = ch != '\'';
            continue;
        }
        match ch {
            '\'' if depth > 0 => in_string = true,
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            '\'' | '[' | '%' | '$' => return None,
            _ => {}
        }
    }
    parts.push(&text[start..]);
    (depth == 0).then_some(parts)
}

fn call_argument<'t>(part: &'t str, function: &str) -> Option<&'t str> {
    part.strip_prefix(function)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

fn identifier(text: &str) -> Option<&str> {
    let valid = text
        .chars()
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic())
        && text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    valid.then_some(text)
}

fn apply<'a>(step: &Step, items: &[PathItem<'a>], out: &mut Vec<PathItem<'a>>) {
    for &item in items {
        match step {
            Step::Child(name) => children(item, name, out),
            Step::OfType(type_name) => {
                if item.type_name == type_name || model::is_a(item.type_name, type_name) {
                    out.push(item);
                }
            }
            Step::WhereEquals(field, literal) => {
                if item.value.get(field).and_then(Value::as_str) == Some(literal.as_str()) {
                    out.push(item);
                }
            }
            Step::ResolvesTo(target) => {
                let points_to_target = item
                    .value
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(|reference| reference.split("/_history/").next())
                    .and_then(|reference| reference.rsplit('/').nth(1))
                    .is_some_and(|kind| kind == target);
                if points_to_target {
                    out.push(item);
                }
            }
        }
    }
}

fn children<'a>(item: PathItem<'a>, name: &str, out: &mut Vec<PathItem<'a>>) {
    let Value::Object(object) = item.value else {
        return;
    };
    // Look at the JSON first: most elements of a parameter are absent, and a key check is
    // far cheaper than a model lookup.
    let mut push = |key: &str, value: &'a Value| {
        let Some((element, type_name)) = model::resolve_json_key(item.type_name, key) else {
            return;
        };
        if element.name != name {
            return;
        }
        match value {
            Value::Array(values) => out.extend(
                values
                    .iter()
                    .filter(|value| !value.is_null())
                    .map(|value| PathItem { type_name, value }),
            ),
            Value::Null => {}
            value => out.push(PathItem { type_name, value }),
        }
    };
    if let Some(value) = object.get(name) {
        push(name, value);
        return;
    }
    // A choice element: `value` is held by `valueQuantity`, `valueString`…
    for (key, value) in object {
        let is_variant = key
            .strip_prefix(name)
            .is_some_and(|suffix| suffix.starts_with(|ch: char| ch.is_ascii_uppercase()));
        if is_variant {
            push(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn evaluate(expression: &str, resource: &Value) -> Vec<(String, Value)> {
        let compiled = CompiledPath::compile(expression).unwrap();
        let resource_type = resource["resourceType"].as_str().unwrap();
        let mut out = Vec::new();
        compiled.evaluate(resource_type, resource, &mut out);
        out.into_iter()
            .map(|item| (item.type_name.to_owned(), item.value.clone()))
            .collect()
    }

    #[test]
    fn walks_typed_paths_choices_and_reference_filters() {
        let observation = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Patient/1"},
            "valueQuantity": {"value": 5},
            "effectivePeriod": {"start": "2020"},
        });
        let values = evaluate("Observation.value as Quantity", &observation);
        assert_eq!(values, vec![("Quantity".to_owned(), json!({"value": 5}))]);
        assert_eq!(
            evaluate("(Observation.value as CodeableConcept)", &observation),
            vec![]
        );
        assert_eq!(
            evaluate("Observation.effective", &observation)[0].0,
            "Period"
        );
        assert_eq!(
            evaluate(
                "Observation.subject.where(resolve() is Patient)",
                &observation
            )
            .len(),
            1
        );
        assert_eq!(
            evaluate(
                "Observation.subject.where(resolve() is Group)",
                &observation
            )
            .len(),
            0
        );
        assert_eq!(
            evaluate("Patient.name | Observation.subject", &observation).len(),
            1
        );
        let patient = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "2"}]});
        let phones = evaluate("Patient.telecom.where(system='phone')", &patient);
        assert_eq!(
            phones,
            vec![(
                "ContactPoint".to_owned(),
                json!({"system": "phone", "value": "1"})
            )]
        );
    }

    #[test]
    fn rejects_what_it_cannot_evaluate() {
        assert!(CompiledPath::compile("Patient.telecom.where(system='phone').exists()").is_err());
        assert!(
            CompiledPath::compile("Patient.telecom.where(system='phone' or system='fax')").is_err()
        );
        assert!(CompiledPath::compile("Bundle.entry[0].resource").is_err());
        assert!(
            CompiledPath::compile("Patient.deceased.exists() and Patient.deceased != false")
                .is_err()
        );
    }
}
