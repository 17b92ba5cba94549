//! The FHIR R4 (4.0.1) type model: which elements each type and backbone
//! element has, in definition order, with their types and cardinality.
//!
//! The tables are generated from HL7's StructureDefinitions by
//! `tools/gen-fhir-definitions.py` into `data/r4-model.json`, embedded in the
//! binary and parsed once on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

const MODEL_JSON: &str = include_str!("../data/r4-model.json");

/// One element of a type or backbone element, as its definition declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementInfo {
    /// Definition name without `[x]`: `"value"`, `"name"`, `"contact"`.
    pub name: String,
    /// Type codes (`["Quantity", "string", ...]`); `"BackboneElement"` or
    /// `"Element"` for inline types. Elements defined by a content reference
    /// carry the types of the element they refer to.
    pub types: Vec<String>,
    pub min: u32,
    /// `max != "1"`: the JSON property is an array.
    pub many: bool,
    /// Declared as `name[x]`: the JSON property carries a type suffix.
    pub choice: bool,
    /// For inline types: the path that defines the children
    /// (`"Patient.contact"`), including the target of a content reference.
    pub backbone: Option<String>,
    /// The path a `contentReference` points to (`Questionnaire.item.item` →
    /// `"Questionnaire.item"`); the same value is in `backbone`.
    pub content_reference: Option<String>,
}

/// The kind of a StructureDefinition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    Primitive,
    Complex,
    Resource,
}

/// How a primitive's value is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    String,
    Number,
    Boolean,
}

/// The lexical rules of a primitive type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimitiveRule {
    /// The R4 regular expression for the value (unanchored, as published).
    pub regex: Option<String>,
    pub json: JsonKind,
    pub max_length: Option<u64>,
}

struct TypeDef {
    kind: TypeKind,
    base: Option<String>,
    is_abstract: bool,
    /// For constraint profiles (SimpleQuantity → Quantity): the constrained type.
    constraint_on: Option<String>,
    members: Members,
}

#[derive(Default)]
struct Members {
    elements: Vec<ElementInfo>,
    by_name: HashMap<String, usize>,
    /// Every JSON property name: plain names and each choice suffix.
    by_json_key: HashMap<String, (usize, usize)>,
}

struct Model {
    types: HashMap<String, TypeDef>,
    backbones: HashMap<String, Members>,
    /// The declared type of each backbone path (`BackboneElement` or `Element`).
    backbone_base: HashMap<String, String>,
    primitives: HashMap<String, PrimitiveRule>,
    resource_types: Vec<String>,
}

#[derive(Deserialize)]
struct RawModel {
    types: HashMap<String, RawType>,
    backbones: HashMap<String, Vec<Vec<Value>>>,
    primitives: HashMap<String, RawPrimitive>,
}

#[derive(Deserialize)]
struct RawType {
    kind: String,
    base: Option<String>,
    #[serde(default, rename = "abstract")]
    is_abstract: bool,
    #[serde(rename = "constraintOn")]
    constraint_on: Option<String>,
    #[serde(default)]
    elements: Vec<Vec<Value>>,
}

#[derive(Deserialize)]
struct RawPrimitive {
    regex: Option<String>,
    json: String,
    #[serde(rename = "maxLength")]
    max_length: Option<u64>,
}

/// One generated row: `[name, "T1|T2", min, max, "#contentReference"?]`.
struct RawRow {
    name: String,
    types: Vec<String>,
    min: u32,
    many: bool,
    content_reference: Option<String>,
}

fn parse_row(row: &[Value]) -> RawRow {
    let text = |index: usize| row.get(index).and_then(Value::as_str).unwrap_or_default();
    let types = text(1)
        .split('|')
        .filter(|code| !code.is_empty())
        .map(str::to_owned)
        .collect();
    RawRow {
        name: text(0).to_owned(),
        types,
        min: row
            .get(2)
            .and_then(Value::as_u64)
            .and_then(|min| u32::try_from(min).ok())
            .unwrap_or(0),
        many: text(3) != "1",
        content_reference: row
            .get(4)
            .and_then(Value::as_str)
            .map(|reference| reference.trim_start_matches('#').to_owned()),
    }
}

/// Capitalises the first letter of a type code, as JSON choice suffixes do.
pub fn choice_suffix(type_code: &str) -> String {
    let mut chars = type_code.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn is_inline_type(types: &[String]) -> bool {
    matches!(types, [only] if only == "BackboneElement" || only == "Element")
}

fn build_members(parent_path: &str, rows: Vec<RawRow>) -> Members {
    let mut members = Members::default();
    for row in rows {
        let choice = row.name.ends_with("[x]");
        let name = row.name.trim_end_matches("[x]").to_owned();
        let backbone = if row.content_reference.is_some() {
            row.content_reference.clone()
        } else if is_inline_type(&row.types) {
            Some(format!("{parent_path}.{name}"))
        } else {
            None
        };
        members.elements.push(ElementInfo {
            name,
            types: row.types,
            min: row.min,
            many: row.many,
            choice,
            backbone,
            content_reference: row.content_reference,
        });
    }
    members
}

/// Fills in the types of content-reference elements from their targets; runs
/// once every type and backbone is known.
fn resolve_content_references(
    types: &mut HashMap<String, TypeDef>,
    backbones: &mut HashMap<String, Members>,
) {
    let mut fixes = Vec::new();
    {
        let members_at = |path: &str| {
            types
                .get(path)
                .map(|def| &def.members)
                .or_else(|| backbones.get(path))
        };
        let all = types
            .iter()
            .map(|(path, def)| (path, &def.members))
            .chain(backbones.iter());
        for (path, members) in all {
            for (index, element) in members.elements.iter().enumerate() {
                let Some(target) = &element.content_reference else {
                    continue;
                };
                let resolved = target
                    .rsplit_once('.')
                    .and_then(|(parent, name)| {
                        let members = members_at(parent)?;
                        let target_index = *members.by_name.get(name)?;
                        Some(members.elements[target_index].types.clone())
                    })
                    .unwrap_or_default();
                fixes.push((path.clone(), index, resolved));
            }
        }
    }
    for (path, index, resolved) in fixes {
        let members = match types.get_mut(&path) {
            Some(def) => Some(&mut def.members),
            None => backbones.get_mut(&path),
        };
        if let Some(members) = members {
            members.elements[index].types = resolved;
        }
    }
}

fn index_members(members: &mut Members) {
    members.by_name.clear();
    members.by_json_key.clear();
    for (index, element) in members.elements.iter().enumerate() {
        members.by_name.insert(element.name.clone(), index);
        if element.choice {
            for (type_index, code) in element.types.iter().enumerate() {
                let key = format!("{}{}", element.name, choice_suffix(code));
                members.by_json_key.insert(key, (index, type_index));
            }
        } else {
            members.by_json_key.insert(element.name.clone(), (index, 0));
        }
    }
}

fn load() -> Model {
    // The embedded file is generated and checked by tests; failing to parse it
    // is a build defect, not an input error.
    let raw: RawModel =
        serde_json::from_str(MODEL_JSON).expect("embedded data/r4-model.json is valid");
    let mut types = HashMap::new();
    for (name, raw_type) in raw.types {
        let kind = match raw_type.kind.as_str() {
            "primitive-type" => TypeKind::Primitive,
            "resource" => TypeKind::Resource,
            _ => TypeKind::Complex,
        };
        let rows = raw_type.elements.iter().map(|row| parse_row(row)).collect();
        let mut members = build_members(&name, rows);
        index_members(&mut members);
        types.insert(
            name,
            TypeDef {
                kind,
                base: raw_type.base,
                is_abstract: raw_type.is_abstract,
                constraint_on: raw_type.constraint_on,
                members,
            },
        );
    }
    let mut backbones = HashMap::new();
    for (path, rows) in raw.backbones {
        let rows = rows.iter().map(|row| parse_row(row)).collect();
        let mut members = build_members(&path, rows);
        index_members(&mut members);
        backbones.insert(path, members);
    }
    resolve_content_references(&mut types, &mut backbones);
    let mut backbone_base = HashMap::new();
    for members in types
        .values()
        .map(|def| &def.members)
        .chain(backbones.values())
    {
        for element in &members.elements {
            if let (Some(path), None) = (&element.backbone, &element.content_reference)
                && let Some(code) = element.types.first()
            {
                backbone_base.insert(path.clone(), code.clone());
            }
        }
    }
    let primitives = raw
        .primitives
        .into_iter()
        .map(|(name, rule)| {
            let json = match rule.json.as_str() {
                "number" => JsonKind::Number,
                "boolean" => JsonKind::Boolean,
                _ => JsonKind::String,
            };
            let rule = PrimitiveRule {
                regex: rule.regex,
                json,
                max_length: rule.max_length,
            };
            (name, rule)
        })
        .collect();
    let mut resource_types: Vec<String> = types
        .iter()
        .filter(|(_, def)| def.kind == TypeKind::Resource && !def.is_abstract)
        .map(|(name, _)| name.clone())
        .collect();
    resource_types.sort();
    Model {
        types,
        backbones,
        backbone_base,
        primitives,
        resource_types,
    }
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(load)
}

/// The members of a type (following constraint profiles to their base type)
/// or of a backbone path.
fn members_of(parent: &str) -> Option<&'static Members> {
    let model = model();
    if let Some(def) = model.types.get(parent) {
        if let Some(constrained) = &def.constraint_on {
            return model.types.get(constrained).map(|def| &def.members);
        }
        return Some(&def.members);
    }
    model.backbones.get(parent)
}

/// The element `name` (without `[x]`) of `parent`, a type name (`"HumanName"`,
/// `"Patient"`) or a backbone path (`"Patient.contact"`). Inherited elements
/// (`id`, `extension`, `meta`, `text`, `contained`, `modifierExtension`…) are
/// included.
pub fn child(parent: &str, name: &str) -> Option<&'static ElementInfo> {
    let members = members_of(parent)?;
    members
        .by_name
        .get(name)
        .map(|&index| &members.elements[index])
}

/// All elements of `parent` in definition order (the order XML requires).
pub fn elements(parent: &str) -> Option<&'static [ElementInfo]> {
    members_of(parent).map(|members| members.elements.as_slice())
}

/// Resolves a JSON property name of `parent` to its element and the type the
/// property holds: `"valueQuantity"` → (value, `"Quantity"`); `"name"` →
/// (name, `"HumanName"`); a backbone element gives its backbone path
/// (`"Patient.contact"`). A `_name` key (a primitive's id/extensions) resolves
/// like `name` when that element is primitive. Elements with several types
/// that are not choices do not occur in R4; the first type is returned.
pub fn resolve_json_key(parent: &str, key: &str) -> Option<(&'static ElementInfo, &'static str)> {
    let members = members_of(parent)?;
    let (element, type_name) = match key.strip_prefix('_') {
        Some(plain) => {
            let (element, type_name) = lookup_json_key(members, plain)?;
            if !is_primitive(type_name) {
                return None;
            }
            (element, type_name)
        }
        None => lookup_json_key(members, key)?,
    };
    Some((element, type_name))
}

fn lookup_json_key(
    members: &'static Members,
    key: &str,
) -> Option<(&'static ElementInfo, &'static str)> {
    let &(index, type_index) = members.by_json_key.get(key)?;
    let element = &members.elements[index];
    if let Some(backbone) = &element.backbone {
        return Some((element, backbone.as_str()));
    }
    let type_name = element.types.get(type_index)?;
    Some((element, type_name.as_str()))
}

/// Whether `name` is a concrete resource type (`Patient`, `Bundle`…). The
/// abstract `Resource` and `DomainResource` are not: no instance has them as
/// its `resourceType`.
pub fn is_resource_type(name: &str) -> bool {
    model()
        .types
        .get(name)
        .is_some_and(|def| def.kind == TypeKind::Resource && !def.is_abstract)
}

/// The concrete resource types, sorted.
pub fn resource_types() -> impl Iterator<Item = &'static str> {
    model().resource_types.iter().map(String::as_str)
}

/// Whether `type_name` is a FHIR primitive type (`string`, `dateTime`…).
pub fn is_primitive(type_name: &str) -> bool {
    model().primitives.contains_key(type_name)
}

/// Whether `name` is any known type (primitive, complex, resource, abstract
/// or not).
pub fn is_type(name: &str) -> bool {
    model().types.contains_key(name)
}

/// The kind of a type, `None` for unknown names and backbone paths.
pub fn type_kind(name: &str) -> Option<TypeKind> {
    model().types.get(name).map(|def| def.kind)
}

/// Whether a type is abstract (`Resource`, `DomainResource`, `Element`,
/// `BackboneElement`).
pub fn is_abstract(name: &str) -> bool {
    model().types.get(name).is_some_and(|def| def.is_abstract)
}

/// The base type: `Patient` → `DomainResource` → `Resource`; `Age` →
/// `Quantity`; `code` → `string`; `BackboneElement` → `Element`. For a
/// backbone path it is its declared type (`Patient.contact` →
/// `BackboneElement`). `None` at the root of a hierarchy or for unknown names.
pub fn base_of(type_name: &str) -> Option<&'static str> {
    let model = model();
    match model.types.get(type_name) {
        Some(def) => def.base.as_deref(),
        None => model.backbone_base.get(type_name).map(String::as_str),
    }
}

/// Whether `type_name` is `ancestor` or derives from it (`Age` is a
/// `Quantity`; `Patient` is a `Resource`).
pub fn is_a(type_name: &str, ancestor: &str) -> bool {
    let mut current = Some(type_name);
    while let Some(name) = current {
        if name == ancestor {
            return true;
        }
        current = base_of(name);
    }
    false
}

/// The lexical rules of a primitive type.
pub fn primitive_rule(type_name: &str) -> Option<&'static PrimitiveRule> {
    model().primitives.get(type_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_elements_include_inherited_ones_in_order() {
        let names: Vec<&str> = elements("Patient")
            .unwrap()
            .iter()
            .map(|element| element.name.as_str())
            .collect();
        assert_eq!(
            &names[..8],
            [
                "id",
                "meta",
                "implicitRules",
                "language",
                "text",
                "contained",
                "extension",
                "modifierExtension"
            ]
        );
        assert!(names.iter().position(|n| *n == "name") < names.iter().position(|n| *n == "link"));
        let id = child("Patient", "id").unwrap();
        assert_eq!(id.types, ["id"]);
        let meta = child("Patient", "meta").unwrap();
        assert_eq!(meta.types, ["Meta"]);
        assert!(!meta.many);
    }

    #[test]
    fn backbone_elements_point_at_their_path() {
        let contact = child("Patient", "contact").unwrap();
        assert!(contact.many);
        assert_eq!(contact.types, ["BackboneElement"]);
        assert_eq!(contact.backbone.as_deref(), Some("Patient.contact"));
        let name = child("Patient.contact", "name").unwrap();
        assert_eq!(name.types, ["HumanName"]);
        assert!(!name.many);
        assert!(child("Patient.contact", "modifierExtension").is_some());
        assert_eq!(base_of("Patient.contact"), Some("BackboneElement"));
        assert_eq!(base_of("Timing.repeat"), Some("Element"));
    }

    #[test]
    fn content_references_resolve_to_the_referenced_backbone() {
        let nested = child("Questionnaire.item", "item").unwrap();
        assert_eq!(nested.backbone.as_deref(), Some("Questionnaire.item"));
        assert_eq!(
            nested.content_reference.as_deref(),
            Some("Questionnaire.item")
        );
        assert_eq!(nested.types, ["BackboneElement"]);
        assert!(nested.many);
        let link = child("Bundle.entry", "link").unwrap();
        assert_eq!(link.backbone.as_deref(), Some("Bundle.link"));
        assert!(child("Bundle.link", "relation").is_some());
    }

    #[test]
    fn choice_elements_resolve_by_suffix() {
        let value = child("Observation", "value").unwrap();
        assert!(value.choice);
        assert!(value.types.iter().any(|t| t == "Quantity"));
        let (element, type_name) = resolve_json_key("Observation", "valueQuantity").unwrap();
        assert_eq!(element.name, "value");
        assert_eq!(type_name, "Quantity");
        let (_, type_name) = resolve_json_key("Observation", "effectiveDateTime").unwrap();
        assert_eq!(type_name, "dateTime");
        assert!(resolve_json_key("Observation", "valueHumanName").is_none());
        assert!(resolve_json_key("Observation", "value").is_none());
        let (_, type_name) = resolve_json_key("Extension", "valueCanonical").unwrap();
        assert_eq!(type_name, "canonical");
    }

    #[test]
    fn plain_and_underscore_keys_resolve() {
        let (element, type_name) = resolve_json_key("Patient", "name").unwrap();
        assert_eq!(element.name, "name");
        assert_eq!(type_name, "HumanName");
        let (_, type_name) = resolve_json_key("Patient", "contact").unwrap();
        assert_eq!(type_name, "Patient.contact");
        let (_, type_name) = resolve_json_key("Patient", "_birthDate").unwrap();
        assert_eq!(type_name, "date");
        assert!(resolve_json_key("Patient", "_name").is_none());
        assert!(resolve_json_key("Patient", "nonsense").is_none());
        assert!(resolve_json_key("NoSuchType", "id").is_none());
    }

    #[test]
    fn datatypes_inherit_element_members() {
        let family = child("HumanName", "family").unwrap();
        assert_eq!(family.types, ["string"]);
        assert!(child("HumanName", "extension").unwrap().many);
        assert_eq!(child("Extension", "url").unwrap().types, ["uri"]);
        assert_eq!(
            child("SimpleQuantity", "value").unwrap().types,
            ["decimal"],
            "constraint profiles share their base type's elements"
        );
        assert_eq!(child("Narrative", "div").unwrap().types, ["xhtml"]);
    }

    #[test]
    fn type_hierarchy() {
        assert_eq!(base_of("Patient"), Some("DomainResource"));
        assert_eq!(base_of("DomainResource"), Some("Resource"));
        assert_eq!(base_of("Resource"), None);
        assert_eq!(base_of("Age"), Some("Quantity"));
        assert_eq!(base_of("BackboneElement"), Some("Element"));
        assert_eq!(base_of("code"), Some("string"));
        assert!(is_a("Bundle", "Resource"));
        assert!(is_a("Age", "Quantity"));
        assert!(!is_a("Quantity", "Age"));
    }

    #[test]
    fn resource_types_are_concrete_and_sorted() {
        let all: Vec<&str> = resource_types().collect();
        assert_eq!(
            all.len(),
            147,
            "R4 4.0.1 defines 147 concrete resource types"
        );
        assert!(all.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(all.contains(&"Patient"));
        assert!(!all.contains(&"DomainResource"));
        assert!(is_resource_type("Observation"));
        assert!(!is_resource_type("Resource"));
        assert!(!is_resource_type("HumanName"));
        assert!(is_type("Resource"));
        assert!(is_abstract("DomainResource"));
    }

    #[test]
    fn primitives_have_rules() {
        assert!(is_primitive("dateTime"));
        assert!(is_primitive("xhtml"));
        assert!(!is_primitive("HumanName"));
        assert_eq!(primitive_rule("boolean").unwrap().json, JsonKind::Boolean);
        assert_eq!(primitive_rule("decimal").unwrap().json, JsonKind::Number);
        assert_eq!(
            primitive_rule("positiveInt").unwrap().json,
            JsonKind::Number
        );
        assert_eq!(primitive_rule("code").unwrap().json, JsonKind::String);
        assert!(primitive_rule("id").unwrap().regex.is_some());
        assert_eq!(type_kind("string"), Some(TypeKind::Primitive));
        assert_eq!(type_kind("Patient"), Some(TypeKind::Resource));
        assert_eq!(type_kind("Coding"), Some(TypeKind::Complex));
    }
}
