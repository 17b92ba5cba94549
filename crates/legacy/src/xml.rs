//! A schema-free FHIR XML reader for versions Flare has no definitions of.
//!
//! The R4 reader in `flare-fhir` needs the R4 model to know which elements
//! repeat and which values are numbers or booleans. DSTU2 and STU3 documents
//! use elements R4 lacks, so this reader follows only the generic FHIR XML
//! rules: an element with a `value` attribute is a primitive (its `id` and
//! `extension` go to the `_name` sibling), an element holding an upper-case
//! child wraps a resource, the XHTML `div` is kept verbatim, and everything
//! else is an object. A name that occurs once gives a single value, a name
//! that repeats gives an array; every primitive is a string. The mapping reads
//! this loose shape tolerantly and [`crate::conform`] fixes cardinality and
//! primitive types against the R4 model afterwards.

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use serde_json::{Map, Value};

use crate::LegacyError;

/// Deeper XML than this is refused (the stack is the limit being protected).
const MAX_DEPTH: usize = 100;
const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// One element as read.
#[derive(Default)]
struct Node {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
    xhtml: Option<String>,
}

/// Reads a FHIR XML resource of any version into loose JSON (see the module
/// documentation).
pub fn to_loose_json(text: &str) -> Result<Value, LegacyError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = read_tree(text)?;
    if !starts_upper(&root.name) {
        return Err(LegacyError::Xml(format!(
            "the root element <{}> is not a FHIR resource",
            root.name
        )));
    }
    Ok(resource_json(&root))
}

fn syntax_error(
    reader: &Reader<&[u8]>,
    text: &str,
    message: impl std::fmt::Display,
) -> LegacyError {
    let offset = usize::try_from(reader.error_position())
        .unwrap_or(0)
        .min(text.len());
    let line = text.as_bytes()[..offset]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1;
    LegacyError::Xml(format!("XML is not well-formed at line {line}: {message}"))
}

fn local_name(start: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(start.local_name().as_ref()).into_owned()
}

fn attributes_of(
    start: &BytesStart<'_>,
    reader: &Reader<&[u8]>,
    text: &str,
) -> Result<Vec<(String, String)>, LegacyError> {
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| syntax_error(reader, text, e))?;
        let key = attribute.key;
        // Namespace declarations and foreign attributes (xsi:schemaLocation) carry no content.
        if key.as_ref().starts_with(b"xmlns") || key.prefix().is_some() {
            continue;
        }
        let value = attribute
            .unescape_value()
            .map_err(|e| syntax_error(reader, text, e))?;
        attributes.push((
            String::from_utf8_lossy(key.local_name().as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(attributes)
}

fn read_tree(text: &str) -> Result<Node, LegacyError> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Node> = vec![Node::default()];
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(0);
        let event = reader
            .read_event()
            .map_err(|e| syntax_error(&reader, text, e))?;
        match event {
            Event::DocType(_) => {
                return Err(LegacyError::Xml(
                    "DOCTYPE declarations are not accepted: FHIR XML has no DTD".into(),
                ));
            }
            Event::Start(start) if start.local_name().as_ref() == b"div" => {
                let name = start.name().as_ref().to_vec();
                reader
                    .read_to_end(quick_xml::name::QName(&name))
                    .map_err(|e| syntax_error(&reader, text, e))?;
                let after = usize::try_from(reader.buffer_position()).unwrap_or(0);
                let markup = text.get(before..after).unwrap_or_default().trim_start();
                push_child(&mut stack, xhtml_node(markup))?;
            }
            Event::Empty(start) if start.local_name().as_ref() == b"div" => {
                let after = usize::try_from(reader.buffer_position()).unwrap_or(0);
                let markup = text.get(before..after).unwrap_or_default().trim_start();
                push_child(&mut stack, xhtml_node(markup))?;
            }
            Event::Start(start) => {
                if stack.len() > MAX_DEPTH {
                    return Err(LegacyError::Xml(format!(
                        "XML nested deeper than {MAX_DEPTH} elements"
                    )));
                }
                stack.push(Node {
                    name: local_name(&start),
                    attributes: attributes_of(&start, &reader, text)?,
                    ..Node::default()
                });
            }
            Event::Empty(start) => {
                let node = Node {
                    name: local_name(&start),
                    attributes: attributes_of(&start, &reader, text)?,
                    ..Node::default()
                };
                push_child(&mut stack, node)?;
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| LegacyError::Xml("unbalanced end tag".into()))?;
                push_child(&mut stack, node)?;
            }
            Event::Text(content) if !content.iter().all(u8::is_ascii_whitespace) => {
                return Err(syntax_error(
                    &reader,
                    text,
                    "text outside a value attribute (FHIR XML keeps values in attributes)",
                ));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut document = stack
        .pop()
        .ok_or_else(|| LegacyError::Xml("empty document".into()))?;
    if !stack.is_empty() || document.children.len() != 1 {
        return Err(LegacyError::Xml(
            "the document must hold exactly one root element".into(),
        ));
    }
    document
        .children
        .pop()
        .ok_or_else(|| LegacyError::Xml("empty document".into()))
}

fn xhtml_node(markup: &str) -> Node {
    // JSON `div` must declare the XHTML namespace itself; in XML it may be inherited.
    let markup = if markup.contains("xmlns") {
        markup.to_owned()
    } else {
        markup.replacen("<div", &format!("<div xmlns=\"{XHTML_NS}\""), 1)
    };
    Node {
        name: "div".into(),
        xhtml: Some(markup),
        ..Node::default()
    }
}

fn push_child(stack: &mut [Node], node: Node) -> Result<(), LegacyError> {
    match stack.last_mut() {
        Some(parent) => {
            parent.children.push(node);
            Ok(())
        }
        None => Err(LegacyError::Xml("unbalanced end tag".into())),
    }
}

fn starts_upper(name: &str) -> bool {
    name.chars().next().is_some_and(char::is_uppercase)
}

fn resource_json(node: &Node) -> Value {
    let mut object = Map::new();
    object.insert("resourceType".into(), Value::String(node.name.clone()));
    fill(node, &mut object);
    Value::Object(object)
}

/// One JSON property being collected: values and the `_name` parts of primitives.
struct Slot {
    key: String,
    values: Vec<Value>,
    extras: Vec<Option<Value>>,
}

fn fill(node: &Node, object: &mut Map<String, Value>) {
    for (name, value) in &node.attributes {
        object.insert(name.clone(), Value::String(value.clone()));
    }
    fill_children(&node.children, object);
}

fn fill_children(children: &[Node], object: &mut Map<String, Value>) {
    let mut slots: Vec<Slot> = Vec::new();
    for child in children {
        let (value, extra) = element_json(child);
        match slots.iter_mut().find(|slot| slot.key == child.name) {
            Some(slot) => {
                slot.values.push(value);
                slot.extras.push(extra);
            }
            None => slots.push(Slot {
                key: child.name.clone(),
                values: vec![value],
                extras: vec![extra],
            }),
        }
    }
    for mut slot in slots {
        let has_extras = slot.extras.iter().any(Option::is_some);
        if has_extras {
            let extras: Vec<Value> = slot
                .extras
                .into_iter()
                .map(|extra| extra.unwrap_or(Value::Null))
                .collect();
            object.insert(format!("_{}", slot.key), single_or_array(extras));
        }
        // Primitives that only carry extensions have no value; keep them aligned with nulls.
        let values = std::mem::take(&mut slot.values);
        if values.iter().any(|value| !value.is_null()) {
            object.insert(slot.key, single_or_array(values));
        }
    }
}

fn single_or_array(mut values: Vec<Value>) -> Value {
    if values.len() == 1 {
        values.pop().unwrap_or(Value::Null)
    } else {
        Value::Array(values)
    }
}

/// The JSON value of one element and, for primitives, its `_name` part.
fn element_json(node: &Node) -> (Value, Option<Value>) {
    if let Some(markup) = &node.xhtml {
        return (Value::String(markup.clone()), None);
    }
    if let [only] = node.children.as_slice()
        && starts_upper(&only.name)
        && node.attributes.is_empty()
    {
        return (resource_json(only), None);
    }
    let value = node
        .attributes
        .iter()
        .find(|(name, _)| name == "value")
        .map(|(_, value)| value.clone());
    let is_primitive = value.is_some()
        || (!node.children.is_empty()
            && node.children.iter().all(|c| c.name == "extension")
            && node.attributes.iter().all(|(name, _)| name == "id"));
    if is_primitive && !is_extension_holder(node) {
        let mut extra = Map::new();
        for (name, text) in node.attributes.iter().filter(|(name, _)| name != "value") {
            extra.insert(name.clone(), Value::String(text.clone()));
        }
        fill_children(&node.children, &mut extra);
        let extra = (!extra.is_empty()).then_some(Value::Object(extra));
        return (value.map(Value::String).unwrap_or(Value::Null), extra);
    }
    let mut object = Map::new();
    fill(node, &mut object);
    (Value::Object(object), None)
}

/// `extension` elements themselves hold only extensions when nested; they are objects.
fn is_extension_holder(node: &Node) -> bool {
    node.name == "extension" || node.name == "modifierExtension"
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn primitives_repeats_resources_and_xhtml() {
        let xml = r#"<?xml version="1.0"?>
<Bundle xmlns="http://hl7.org/fhir">
  <type value="transaction"/>
  <entry><resource><Patient>
    <id value="p1"/>
    <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Amy &amp; co</p></div></text>
    <name><given value="Amy"/><given value="V."/></name>
    <birthDate value="2007-03-20"><extension url="http://example.org/x"><valueString value="e"/></extension></birthDate>
  </Patient></resource></entry>
</Bundle>"#;
        let value = to_loose_json(xml).unwrap();
        assert_eq!(value["type"], "transaction");
        let patient = &value["entry"]["resource"];
        assert_eq!(patient["resourceType"], "Patient");
        assert_eq!(patient["name"]["given"], json!(["Amy", "V."]));
        assert_eq!(patient["birthDate"], "2007-03-20");
        assert_eq!(
            patient["_birthDate"]["extension"]["url"],
            "http://example.org/x"
        );
        assert_eq!(
            patient["text"]["div"],
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Amy &amp; co</p></div>"#
        );
    }

    #[test]
    fn malformed_xml_and_doctype_are_errors_with_a_reason() {
        let error =
            to_loose_json("<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"1\"></Patient>")
                .unwrap_err();
        assert!(error.to_string().contains("not well-formed"), "{error}");
        let error = to_loose_json("<!DOCTYPE x [<!ENTITY a \"b\">]><Patient/>").unwrap_err();
        assert!(error.to_string().contains("DOCTYPE"), "{error}");
    }
}
