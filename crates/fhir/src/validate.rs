//! Structural, definition-driven validation of R4 JSON resources.
//!
//! Checks what the StructureDefinitions say about shape: known resource
//! types and elements, choice suffixes, arrays exactly where elements repeat,
//! primitive JSON types and R4 lexical rules, `_name` primitive extensions,
//! contained resources and Bundle entries. Terminology bindings, invariants
//! and profiles are out of scope.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::model::{self, ElementInfo, JsonKind};
use crate::operation_outcome::{Issue, IssueCode, Severity};

/// Nesting beyond this is reported rather than followed, so values built in
/// code (not through `parse_json`) cannot exhaust the stack.
const MAX_DEPTH: usize = 120;

/// Validates a resource; `Err` holds every issue (warnings included) when at
/// least one is an error.
pub fn validate(resource: &Value) -> Result<(), Vec<Issue>> {
    let issues = validate_all(resource);
    if issues.iter().any(|issue| issue.severity.is_failure()) {
        Err(issues)
    } else {
        Ok(())
    }
}

/// Every issue found, warnings included.
pub fn validate_all(resource: &Value) -> Vec<Issue> {
    let mut validator = Validator { issues: Vec::new() };
    validator.resource(resource, None, 0);
    validator.issues
}

/// Whether `text` is a valid value of the primitive `type_name` (`"date"`,
/// `"id"`…), by the R4 regular expression. Unknown types are not valid.
pub fn is_valid_primitive_text(type_name: &str, text: &str) -> bool {
    match model::primitive_rule(type_name) {
        Some(_) => primitive_text_problem(type_name, text).is_none(),
        None => false,
    }
}

fn anchored_regexes() -> &'static HashMap<&'static str, Regex> {
    static REGEXES: OnceLock<HashMap<&'static str, Regex>> = OnceLock::new();
    REGEXES.get_or_init(|| {
        let mut compiled = HashMap::new();
        for name in PRIMITIVES_WITH_REGEX {
            let Some(pattern) = model::primitive_rule(name).and_then(|rule| rule.regex.as_deref())
            else {
                continue;
            };
            // The published patterns are whole-value patterns without anchors,
            // written for XML Schema/Java where \s, \S and \d are ASCII-only.
            let pattern = ascii_classes(pattern);
            if let Ok(regex) = Regex::new(&format!("^(?:{pattern})$")) {
                compiled.insert(*name, regex);
            }
        }
        compiled
    })
}

/// Rewrites `\s`, `\S` and `\d` to their ASCII meaning (Rust's are Unicode:
/// a no-break space would count as whitespace and fail `code` values that
/// the HL7 validator accepts).
fn ascii_classes(pattern: &str) -> String {
    let mut rewritten = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(current) = chars.next() {
        if current != '\\' {
            rewritten.push(current);
            continue;
        }
        match chars.next() {
            Some('s') => rewritten.push_str("[[:space:]]"),
            Some('S') => rewritten.push_str("[^[:space:]]"),
            Some('d') => rewritten.push_str("[0-9]"),
            Some(other) => {
                rewritten.push('\\');
                rewritten.push(other);
            }
            None => rewritten.push('\\'),
        }
    }
    rewritten
}

/// Primitives checked by their published regular expression. `string` and
/// `markdown` are checked by the rule their regex approximates instead: no
/// control characters but tab, CR and LF.
const PRIMITIVES_WITH_REGEX: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "oid",
    "positiveInt",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
];

/// What the R4 rules say is wrong with `text` as a `type_name`, if anything.
fn primitive_text_problem(type_name: &str, text: &str) -> Option<String> {
    if text.is_empty() {
        return Some("an empty value is not allowed: omit the element instead".into());
    }
    let rule = model::primitive_rule(type_name)?;
    if let Some(max) = rule.max_length
        && text.len() as u64 > max
    {
        return Some(format!(
            "is longer than the {max} bytes a {type_name} may hold"
        ));
    }
    if type_name == "xhtml" {
        let trimmed = text.trim();
        if !(trimmed.starts_with("<div")
            && (trimmed.ends_with("</div>") || trimmed.ends_with("/>")))
        {
            return Some("narrative must be a single XHTML <div> element".into());
        }
        return None;
    }
    if model::is_a(type_name, "string")
        && let Some(control) = text
            .chars()
            .find(|c| u32::from(*c) < 0x20 && !matches!(c, '\t' | '\r' | '\n'))
    {
        return Some(format!(
            "contains the control character U+{:04X}, which FHIR strings may not hold",
            u32::from(control)
        ));
    }
    if let Some(regex) = anchored_regexes().get(type_name)
        && !regex.is_match(text)
    {
        return Some(format!(
            "is not a valid {type_name}{}",
            lexical_hint(type_name)
        ));
    }
    let out_of_range = match type_name {
        "integer" => text.parse::<i32>().is_err(),
        "positiveInt" => text.trim_start_matches('+').parse::<i32>().is_err(),
        "unsignedInt" => text.parse::<i32>().is_err(),
        _ => false,
    };
    if out_of_range {
        return Some(format!("is outside the 32-bit range of {type_name}"));
    }
    None
}

fn lexical_hint(type_name: &str) -> &'static str {
    match type_name {
        "date" => ": use YYYY, YYYY-MM or YYYY-MM-DD",
        "dateTime" => {
            ": use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone (Z or +hh:mm)"
        }
        "instant" => ": use YYYY-MM-DDThh:mm:ss(.sss) with a time zone (Z or +hh:mm)",
        "time" => ": use hh:mm:ss",
        "id" => ": use 1 to 64 letters, digits, '-' and '.'",
        "code" => ": no leading/trailing or repeated whitespace",
        "oid" => ": use urn:oid:1.2.3",
        "uuid" => ": use urn:uuid: and a lower-case UUID",
        "positiveInt" => ": use a whole number of 1 or more",
        "unsignedInt" => ": use a whole number of 0 or more",
        "integer" => ": use a whole number without exponent or fraction",
        "decimal" => ": use a plain decimal number",
        "base64Binary" => ": use standard base64 with padding",
        "uri" | "url" | "canonical" => ": remove whitespace",
        _ => "",
    }
}

struct Validator {
    issues: Vec<Issue>,
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn indexed(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

impl Validator {
    fn error(&mut self, code: IssueCode, message: String, location: &str) {
        self.issues.push(Issue::error(code, message, location));
    }

    /// Validates a resource at `location` (`None` at the root: the location
    /// then starts with the resource type).
    fn resource(&mut self, value: &Value, location: Option<&str>, depth: usize) {
        let Some(object) = value.as_object() else {
            self.error(
                IssueCode::Structure,
                format!("a resource must be a JSON object, not {}", describe(value)),
                location.unwrap_or(""),
            );
            return;
        };
        let resource_type = match object.get("resourceType") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                self.error(
                    IssueCode::Structure,
                    format!("resourceType must be a string, not {}", describe(other)),
                    location.unwrap_or("resourceType"),
                );
                return;
            }
            None => {
                self.error(
                    IssueCode::Required,
                    "resourceType is missing: add \"resourceType\": \"<type>\" (e.g. \"Patient\")"
                        .into(),
                    location.unwrap_or(""),
                );
                return;
            }
        };
        if !model::is_resource_type(resource_type) {
            let hint = if model::is_type(resource_type) {
                "is not a concrete resource type"
            } else {
                "is not an R4 resource type (names are case-sensitive)"
            };
            self.error(
                IssueCode::NotSupported,
                format!("resourceType '{resource_type}' {hint}"),
                location.unwrap_or(resource_type),
            );
            return;
        }
        let path = location.unwrap_or(resource_type).to_owned();
        self.object(object, resource_type, &path, true, depth + 1);
    }

    /// Validates the members of `object` as an instance of `parent` (a type
    /// name or backbone path).
    fn object(
        &mut self,
        object: &Map<String, Value>,
        parent: &str,
        path: &str,
        is_resource: bool,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            self.error(
                IssueCode::TooLong,
                format!("content nests deeper than {MAX_DEPTH} levels"),
                path,
            );
            return;
        }
        if object.is_empty() {
            self.error(
                IssueCode::Structure,
                "empty objects are not allowed: remove the element or give it content".into(),
                path,
            );
            return;
        }
        for (key, value) in object {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(plain) = key.strip_prefix('_') {
                self.primitive_extension(object, parent, plain, value, path, depth);
                continue;
            }
            let Some((element, type_name)) = model::resolve_json_key(parent, key) else {
                self.unknown_key(parent, key, path);
                continue;
            };
            let element_path = format!("{path}.{}", element.name);
            let extension = object.get(&format!("_{key}"));
            self.element_value(element, type_name, value, extension, &element_path, depth);
        }
        self.required_elements(object, parent, path);
        if is_resource && let Some(contained) = object.get("contained").and_then(Value::as_array) {
            for (index, resource) in contained.iter().enumerate() {
                if resource.get("contained").is_some() {
                    self.error(
                        IssueCode::Invariant,
                        "a contained resource must not contain resources itself (dom-2): \
                         move them up to the container"
                            .into(),
                        &format!("{path}.contained[{index}]"),
                    );
                }
            }
        }
    }

    /// Elements with `min` ≥ 1 must be present (a `_name` sibling with only
    /// extensions counts: R4 allows a data-absent-reason instead of a value).
    fn required_elements(&mut self, object: &Map<String, Value>, parent: &str, path: &str) {
        let Some(elements) = model::elements(parent) else {
            return;
        };
        for element in elements.iter().filter(|element| element.min > 0) {
            let present = if element.choice {
                element.types.iter().any(|code| {
                    let key = format!("{}{}", element.name, model::choice_suffix(code));
                    object.contains_key(&key) || object.contains_key(&format!("_{key}"))
                })
            } else {
                object.contains_key(&element.name)
                    || object.contains_key(&format!("_{}", element.name))
            };
            if !present {
                let name = if element.choice {
                    format!("{}[x]", element.name)
                } else {
                    element.name.clone()
                };
                self.error(
                    IssueCode::Required,
                    format!("{name} is required in {}: add it", display_parent(parent)),
                    &format!("{path}.{}", element.name),
                );
            }
        }
    }

    fn unknown_key(&mut self, parent: &str, key: &str, path: &str) {
        // A choice element written without, or with a wrong, type suffix.
        let choice = model::elements(parent).and_then(|elements| {
            elements
                .iter()
                .filter(|element| element.choice && key.starts_with(element.name.as_str()))
                .max_by_key(|element| element.name.len())
        });
        let message = match choice {
            Some(element) => {
                let allowed: Vec<String> = element
                    .types
                    .iter()
                    .map(|code| format!("{}{}", element.name, model::choice_suffix(code)))
                    .collect();
                format!(
                    "'{key}' is not an allowed form of {}[x]: use one of {}",
                    element.name,
                    allowed.join(", ")
                )
            }
            None => format!(
                "unknown element '{key}' in {}: remove it or check its spelling (R4 names are case-sensitive)",
                display_parent(parent)
            ),
        };
        self.error(IssueCode::Structure, message, &format!("{path}.{key}"));
    }

    /// A JSON property value for `element`, holding `type_name`.
    fn element_value(
        &mut self,
        element: &ElementInfo,
        type_name: &str,
        value: &Value,
        extension: Option<&Value>,
        path: &str,
        depth: usize,
    ) {
        let primitive = model::is_primitive(type_name);
        if element.many {
            let Some(items) = value.as_array() else {
                self.error(
                    IssueCode::Structure,
                    format!(
                        "{} repeats: wrap the value in an array [ ... ]",
                        element.name
                    ),
                    path,
                );
                return;
            };
            if items.is_empty() {
                self.error(
                    IssueCode::Structure,
                    "empty arrays are not allowed: remove the element".into(),
                    path,
                );
                return;
            }
            let extensions = extension.and_then(Value::as_array);
            for (index, item) in items.iter().enumerate() {
                let item_path = indexed(path, index);
                if item.is_null() {
                    let has_extension = primitive
                        && extensions
                            .and_then(|list| list.get(index))
                            .is_some_and(|entry| !entry.is_null());
                    if !has_extension {
                        self.error(
                            IssueCode::Structure,
                            "null is only allowed in an array of primitives whose _ sibling \
                             has content at the same position: remove it"
                                .into(),
                            &item_path,
                        );
                    }
                    continue;
                }
                self.single_value(type_name, item, &item_path, depth);
            }
        } else {
            if value.is_array() {
                self.error(
                    IssueCode::Structure,
                    format!(
                        "{} does not repeat: give a single value, not an array",
                        element.name
                    ),
                    path,
                );
                return;
            }
            if value.is_null() {
                self.error(
                    IssueCode::Structure,
                    "null is not a value: remove the element".into(),
                    path,
                );
                return;
            }
            self.single_value(type_name, value, path, depth);
        }
    }

    fn single_value(&mut self, type_name: &str, value: &Value, path: &str, depth: usize) {
        if let Some(rule) = model::primitive_rule(type_name) {
            self.primitive(type_name, rule.json, value, path);
            return;
        }
        if model::is_a(type_name, "Resource") {
            self.resource(value, Some(path), depth + 1);
            if type_name != "Resource"
                && let Some(actual) = value.get("resourceType").and_then(Value::as_str)
                && !model::is_a(actual, type_name)
            {
                self.error(
                    IssueCode::Structure,
                    format!("expected a {type_name} resource here, found {actual}"),
                    path,
                );
            }
            return;
        }
        match value.as_object() {
            Some(object) => self.object(object, type_name, path, false, depth + 1),
            None => self.error(
                IssueCode::Structure,
                format!(
                    "{} must be an object ({}), found {}",
                    element_name(path),
                    display_parent(type_name),
                    describe(value)
                ),
                path,
            ),
        }
    }

    fn primitive(&mut self, type_name: &str, json: JsonKind, value: &Value, path: &str) {
        let text = match (json, value) {
            (JsonKind::String, Value::String(text)) => text.clone(),
            (JsonKind::Number, Value::Number(number)) => number.to_string(),
            (JsonKind::Boolean, Value::Bool(_)) => return,
            _ => {
                let wanted = match json {
                    JsonKind::String => "a JSON string",
                    JsonKind::Number => "a JSON number (no quotes)",
                    JsonKind::Boolean => "true or false (no quotes)",
                };
                self.error(
                    IssueCode::Value,
                    format!(
                        "{} is a {type_name} and must be {wanted}, found {}",
                        element_name(path),
                        describe(value)
                    ),
                    path,
                );
                return;
            }
        };
        if let Some(problem) = primitive_text_problem(type_name, &text) {
            self.error(
                IssueCode::Value,
                format!("{}: '{}' {problem}", element_name(path), shorten(&text)),
                path,
            );
        }
    }

    /// `_key`: the id/extensions of the primitive `key`.
    fn primitive_extension(
        &mut self,
        object: &Map<String, Value>,
        parent: &str,
        plain: &str,
        value: &Value,
        path: &str,
        depth: usize,
    ) {
        let resolved = model::resolve_json_key(parent, plain)
            .filter(|(_, type_name)| model::is_primitive(type_name));
        let Some((element, _)) = resolved else {
            self.error(
                IssueCode::Structure,
                format!(
                    "'_{plain}' does not belong to a primitive element of {}: only primitives \
                     carry _ siblings",
                    display_parent(parent)
                ),
                &format!("{path}._{plain}"),
            );
            return;
        };
        let element_path = format!("{path}.{}", element.name);
        let plain_value = object.get(plain);
        if element.many {
            let Some(items) = value.as_array() else {
                self.error(
                    IssueCode::Structure,
                    format!("_{plain} must be an array matching {plain}"),
                    &element_path,
                );
                return;
            };
            if let Some(plain_items) = plain_value.and_then(Value::as_array)
                && plain_items.len() != items.len()
            {
                self.error(
                    IssueCode::Structure,
                    format!(
                        "_{plain} has {} entries but {plain} has {}: pad the shorter with null",
                        items.len(),
                        plain_items.len()
                    ),
                    &element_path,
                );
            }
            if items.iter().all(Value::is_null) {
                self.error(
                    IssueCode::Structure,
                    format!("_{plain} holds only nulls: remove it"),
                    &element_path,
                );
            }
            for (index, item) in items.iter().enumerate() {
                if item.is_null() {
                    continue;
                }
                self.element_extension(item, &indexed(&element_path, index), depth);
            }
        } else {
            self.element_extension(value, &element_path, depth);
        }
    }

    fn element_extension(&mut self, value: &Value, path: &str, depth: usize) {
        match value.as_object() {
            Some(object) => self.object(object, "Element", path, false, depth + 1),
            None => self.error(
                IssueCode::Structure,
                format!(
                    "a _ sibling must be an object with id and/or extension, found {}",
                    describe(value)
                ),
                path,
            ),
        }
    }
}

/// The element a FHIRPath location ends in: `Patient.name[0]` → `name`.
fn element_name(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

fn display_parent(parent: &str) -> &str {
    match parent {
        "Element" => "a primitive's _ sibling",
        other => other,
    }
}

fn shorten(text: &str) -> String {
    const LIMIT: usize = 80;
    if text.chars().count() <= LIMIT {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(LIMIT).collect();
        format!("{cut}…")
    }
}

/// The issues that are errors.
pub fn errors(issues: &[Issue]) -> impl Iterator<Item = &Issue> {
    issues
        .iter()
        .filter(|issue| matches!(issue.severity, Severity::Error | Severity::Fatal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues_of(resource: Value) -> Vec<Issue> {
        validate(&resource).expect_err("expected issues")
    }

    fn single_issue(resource: Value) -> Issue {
        let mut issues = issues_of(resource);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        issues.remove(0)
    }

    #[test]
    fn accepts_a_well_formed_patient() {
        let patient = json!({
            "resourceType": "Patient",
            "id": "example-1.a",
            "meta": {"lastUpdated": "2024-01-02T03:04:05.678+01:00"},
            "name": [{"family": "Chalmers", "given": ["Peter", "James"], "_given": [null, {"extension": [{"url": "http://example.org/x", "valueBoolean": true}]}]}],
            "birthDate": "1974-12",
            "_birthDate": {"id": "b1"},
            "deceasedBoolean": false,
            "multipleBirthInteger": 2,
            "contact": [{"name": {"text": "Bénédicte"}}],
            "contained": [{"resourceType": "Organization", "id": "org", "name": "X"}],
            "managingOrganization": {"reference": "#org"}
        });
        assert_eq!(validate(&patient), Ok(()));
    }

    #[test]
    fn resource_type_must_be_known() {
        let issue = single_issue(json!({"id": "1"}));
        assert_eq!(issue.code, IssueCode::Required);
        let issue = single_issue(json!({"resourceType": "Patien"}));
        assert_eq!(issue.code, IssueCode::NotSupported);
        assert!(issue.message.contains("Patien"));
        let issue = single_issue(json!({"resourceType": "DomainResource"}));
        assert!(issue.message.contains("not a concrete"));
        assert_eq!(single_issue(json!([1])).code, IssueCode::Structure);
    }

    #[test]
    fn unknown_elements_are_named_with_their_location() {
        let issue = single_issue(
            json!({"resourceType": "Immunization", "status": "completed",
            "vaccineCode": {"text": "x"}, "patient": {"reference": "Patient/1"},
            "occurrenceDateTime": "2020", "notGiven": false}),
        );
        assert_eq!(issue.code, IssueCode::Structure);
        assert_eq!(issue.location, "Immunization.notGiven");
        assert!(issue.message.contains("unknown element 'notGiven'"));
        let issue = single_issue(json!({"resourceType": "Patient", "name": [{"giv": ["a"]}]}));
        assert_eq!(issue.location, "Patient.name[0].giv");
    }

    #[test]
    fn choice_elements_need_an_allowed_suffix() {
        let issue = single_issue(json!({"resourceType": "Patient", "deceasedString": "yes"}));
        assert!(
            issue.message.contains("deceasedBoolean, deceasedDateTime"),
            "{issue}"
        );
        let issue = single_issue(json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "value": 3}));
        assert!(issue.message.contains("valueQuantity"), "{issue}");
    }

    #[test]
    fn arrays_exactly_where_elements_repeat() {
        let issue = single_issue(json!({"resourceType": "Patient", "name": {"family": "X"}}));
        assert_eq!(issue.location, "Patient.name");
        assert!(issue.message.contains("wrap the value in an array"));
        let issue = single_issue(json!({"resourceType": "Patient", "gender": ["male"]}));
        assert!(issue.message.contains("does not repeat"));
    }

    #[test]
    fn primitives_are_checked_by_json_type_and_regex() {
        let cases = [
            (
                json!({"resourceType": "Patient", "birthDate": "1974-13-01"}),
                "Patient.birthDate",
            ),
            (
                json!({"resourceType": "Patient", "active": "true"}),
                "Patient.active",
            ),
            (
                json!({"resourceType": "Patient", "id": "has space"}),
                "Patient.id",
            ),
            (
                json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
                "Patient.multipleBirth",
            ),
            (
                json!({"resourceType": "Patient", "multipleBirthInteger": "2"}),
                "Patient.multipleBirth",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a", ""]}]}),
                "Patient.name[0].given[1]",
            ),
            (
                json!({"resourceType": "Patient", "gender": " male"}),
                "Patient.gender",
            ),
            (
                json!({"resourceType": "Patient", "meta": {"lastUpdated": "2020-01-01"}}),
                "Patient.meta.lastUpdated",
            ),
            (
                json!({"resourceType": "Patient", "photo": [{"data": "not base64!"}]}),
                "Patient.photo[0].data",
            ),
            (
                json!({"resourceType": "Patient", "photo": [{"size": -1}]}),
                "Patient.photo[0].size",
            ),
            (
                json!({"resourceType": "Patient", "photo": [{"size": 3000000000u64}]}),
                "Patient.photo[0].size",
            ),
            (
                json!({"resourceType": "Patient", "text": {"status": "generated", "div": "plain"}}),
                "Patient.text.div",
            ),
        ];
        for (resource, location) in cases {
            let issue = single_issue(resource);
            assert_eq!(issue.code, IssueCode::Value, "{issue}");
            assert_eq!(issue.location, location);
        }
    }

    #[test]
    fn decimals_keep_their_text() {
        let observation: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
                "valueQuantity":{"value":1.000000000000000000001}}"#,
        )
        .unwrap();
        assert_eq!(validate(&observation), Ok(()));
    }

    #[test]
    fn empty_content_is_rejected() {
        assert!(
            single_issue(json!({"resourceType": "Patient", "name": []}))
                .message
                .contains("empty arrays")
        );
        assert!(
            single_issue(json!({"resourceType": "Patient", "name": [{}]}))
                .message
                .contains("empty objects")
        );
        assert_eq!(
            single_issue(json!({"resourceType": "Patient", "gender": ""})).code,
            IssueCode::Value
        );
    }

    #[test]
    fn primitive_extension_siblings() {
        let issue =
            single_issue(json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}));
        assert_eq!(issue.location, "Patient.name[0].given[1]");
        let issue = single_issue(json!({"resourceType": "Patient", "_name": {"id": "x"}}));
        assert!(issue.message.contains("only primitives"));
        let issue = single_issue(
            json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [null, {"id": "x"}]}]}),
        );
        assert!(issue.message.contains("pad the shorter"));
        let issue = single_issue(json!({"resourceType": "Patient", "_birthDate": {"foo": 1}}));
        assert_eq!(issue.location, "Patient.birthDate.foo");
    }

    #[test]
    fn nested_resources_are_validated_with_their_location() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "active": true}},
            {"resource": {"resourceType": "Patient", "contained": [{"resourceType": "Basic", "code": {"text": "x"}, "bogus": 1}]}}
        ]});
        let issue = single_issue(bundle);
        assert_eq!(
            issue.location,
            "Bundle.entry[1].resource.contained[0].bogus"
        );
        let issue = single_issue(json!({"resourceType": "Patient", "contained": [
            {"resourceType": "Patient", "contained": [{"resourceType": "Patient", "active": true}]}]}));
        assert_eq!(issue.code, IssueCode::Invariant);
    }

    #[test]
    fn content_references_validate_against_their_target() {
        let questionnaire = json!({"resourceType": "Questionnaire", "status": "active", "item": [
            {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "unknown": 1}]}]});
        let issue = single_issue(questionnaire);
        assert_eq!(issue.location, "Questionnaire.item[0].item[0].unknown");
    }

    #[test]
    fn required_elements_must_be_present() {
        let issue = single_issue(json!({"resourceType": "Observation", "code": {"text": "x"}}));
        assert_eq!(issue.code, IssueCode::Required);
        assert_eq!(issue.location, "Observation.status");
        // A data-absent extension in place of the value counts as present.
        let absent = json!({"resourceType": "Observation", "code": {"text": "x"},
            "_status": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
        assert_eq!(validate(&absent), Ok(()));
        let issue = single_issue(json!({"resourceType": "Patient", "link": [{"type": "seealso"}]}));
        assert_eq!(issue.location, "Patient.link[0].other");
        let issue = single_issue(json!({"resourceType": "Extension"}));
        assert_eq!(issue.code, IssueCode::NotSupported);
        let issue =
            single_issue(json!({"resourceType": "Patient", "extension": [{"valueString": "x"}]}));
        assert_eq!(issue.location, "Patient.extension[0].url");
    }

    #[test]
    fn primitive_text_helper() {
        assert!(is_valid_primitive_text(
            "dateTime",
            "2015-02-07T13:28:17-05:00"
        ));
        assert!(!is_valid_primitive_text("dateTime", "2015-02-07T13:28"));
        assert!(is_valid_primitive_text(
            "instant",
            "2015-02-07T13:28:17.239+02:00"
        ));
        assert!(is_valid_primitive_text(
            "uuid",
            "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"
        ));
        assert!(!is_valid_primitive_text("id", &"a".repeat(65)));
        assert!(!is_valid_primitive_text("NoSuchType", "x"));
        assert!(
            is_valid_primitive_text("code", "CHEST\u{a0}"),
            "no-break space is not XML whitespace"
        );
        assert!(!is_valid_primitive_text("code", "a  b"));
        assert!(is_valid_primitive_text("string", "\u{a0}Seul"));
        assert!(!is_valid_primitive_text("string", "bell\u{7}"));
        assert!(!is_valid_primitive_text("markdown", "nul\u{0}"));
        assert_eq!(
            anchored_regexes().len(),
            PRIMITIVES_WITH_REGEX.len(),
            "every R4 regex compiles"
        );
    }
}
