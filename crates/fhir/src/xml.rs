//! FHIR R4 XML ⇄ JSON, driven by the type model.
//!
//! XML is read with `quick-xml` into a small tree (iteratively, with a depth
//! limit), then mapped with the definitions: primitives carry `value`
//! attributes and their `id`/`extension` go to the `_name` JSON sibling,
//! arrays appear where elements repeat, choice elements keep their suffix,
//! nested resources are wrapped by their element, and the XHTML `div` is kept
//! verbatim as a string. DOCTYPE declarations are refused outright, so no
//! entity is ever expanded.

use std::fmt::Write as _;

use quick_xml::escape::unescape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde_json::{Map, Number, Value};
use thiserror::Error;

use crate::model::{self, ElementInfo, JsonKind};

const FHIR_NS: &str = "http://hl7.org/fhir";
const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
/// Deeper XML than this is refused before any recursive conversion.
const MAX_DEPTH: usize = 100;

/// Why a conversion failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XmlError {
    #[error("XML is not well-formed at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "line {line}: DOCTYPE declarations are not accepted: FHIR XML has no DTD, and entity \
         expansion is a denial-of-service risk; remove the declaration"
    )]
    Doctype { line: usize },
    #[error("line {line}, at {location}: {message}")]
    Content {
        line: usize,
        location: String,
        message: String,
    },
    #[error("at {location}: {message}")]
    Json { location: String, message: String },
}

// ---------------------------------------------------------------- reading

/// One XML element as read: local name, attributes without namespace, child
/// elements, or the verbatim markup of an XHTML `div`.
struct Node {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
    xhtml: Option<String>,
    line: usize,
}

/// Newline offsets, for turning byte offsets into line/column in O(log n).
struct LineIndex<'a> {
    text: &'a str,
    newlines: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|(_, byte)| *byte == b'\n')
            .map(|(offset, _)| offset)
            .collect();
        Self { text, newlines }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let newlines_before = self.newlines.partition_point(|&newline| newline < offset);
        let line_start = match newlines_before {
            0 => 0,
            count => self.newlines[count - 1] + 1,
        };
        (newlines_before + 1, offset - line_start + 1)
    }

    fn line(&self, offset: usize) -> usize {
        self.line_column(offset).0
    }

    fn syntax(&self, offset: usize, message: impl Into<String>) -> XmlError {
        let (line, column) = self.line_column(offset);
        XmlError::Syntax {
            line,
            column,
            message: message.into(),
        }
    }
}

/// XML attribute-value normalisation (XML 1.0 §3.3.3): literal whitespace
/// becomes a space; character references such as `&#10;` survive.
fn attribute_value(raw: &str) -> Result<String, String> {
    let normalised = raw.replace("\r\n", " ").replace(['\t', '\n', '\r'], " ");
    unescape(&normalised)
        .map(|value| value.into_owned())
        .map_err(|error| {
            format!("{error} (only the five predefined entities and character references exist)")
        })
}

fn resolve_namespace(result: &ResolveResult<'_>) -> Option<String> {
    match result {
        ResolveResult::Bound(namespace) => {
            Some(String::from_utf8_lossy(namespace.as_ref()).into_owned())
        }
        ResolveResult::Unbound | ResolveResult::Unknown(_) => None,
    }
}

fn read_tree(xml: &str) -> Result<Node, XmlError> {
    let index = LineIndex::new(xml);
    let mut reader = NsReader::from_str(xml);
    let config = reader.config_mut();
    config.trim_text(false);
    config.check_end_names = true;
    config.expand_empty_elements = false;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let (namespace, event) = match reader.read_resolved_event() {
            Ok((namespace, event)) => (resolve_namespace(&namespace), event),
            Err(error) => {
                let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                return Err(index.syntax(at, error.to_string()));
            }
        };
        match event {
            Event::Start(ref start) | Event::Empty(ref start)
                if namespace.as_deref() == Some(XHTML_NS) =>
            {
                let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                let Some(parent) = stack.last_mut() else {
                    return Err(content_error(
                        &index,
                        before,
                        &local,
                        "the root element must be a FHIR resource, not XHTML",
                    ));
                };
                if local != "div" {
                    return Err(content_error(
                        &index,
                        before,
                        &parent.name,
                        format!("XHTML element <{local}> outside a narrative <div>"),
                    ));
                }
                if matches!(event, Event::Start(_)) {
                    let end = start.to_end().into_owned();
                    if let Err(error) = reader.read_to_end(end.name()) {
                        let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                        return Err(index.syntax(at, error.to_string()));
                    }
                }
                let after = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
                let markup = xml.get(before..after).unwrap_or_default().to_owned();
                parent.children.push(Node {
                    name: "div".into(),
                    attributes: Vec::new(),
                    children: Vec::new(),
                    xhtml: Some(markup),
                    line: index.line(before),
                });
            }
            Event::Start(ref start) | Event::Empty(ref start) => {
                let is_empty = matches!(event, Event::Empty(_));
                let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                if root.is_some() {
                    return Err(index.syntax(
                        before,
                        format!("<{local}> after the root element has ended"),
                    ));
                }
                if namespace.as_deref() != Some(FHIR_NS) {
                    let found = namespace
                        .map_or_else(|| "no namespace".to_owned(), |ns| format!("namespace {ns}"));
                    return Err(content_error(
                        &index,
                        before,
                        &local,
                        format!(
                            "<{local}> is in {found}; FHIR elements belong to xmlns=\"{FHIR_NS}\""
                        ),
                    ));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(content_error(
                        &index,
                        before,
                        &local,
                        format!("elements nest deeper than {MAX_DEPTH} levels"),
                    ));
                }
                let node = Node {
                    attributes: plain_attributes(&reader, start, &index, before)?,
                    name: local,
                    children: Vec::new(),
                    xhtml: None,
                    line: index.line(before),
                };
                if is_empty {
                    attach(&mut stack, &mut root, node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let Some(node) = stack.pop() else {
                    return Err(index.syntax(before, "closing tag without an open element"));
                };
                attach(&mut stack, &mut root, node);
            }
            Event::Text(text) => {
                let raw = String::from_utf8_lossy(text.as_ref());
                if !raw.trim().is_empty() {
                    let inside = stack
                        .last()
                        .map_or("the document", |node| node.name.as_str());
                    return Err(content_error(
                        &index,
                        before,
                        inside,
                        format!(
                            "unexpected text {:?}: FHIR XML carries values in value attributes",
                            shorten(raw.trim())
                        ),
                    ));
                }
            }
            Event::CData(_) | Event::GeneralRef(_) => {
                let inside = stack
                    .last()
                    .map_or("the document", |node| node.name.as_str());
                return Err(content_error(
                    &index,
                    before,
                    inside,
                    "unexpected character data: FHIR XML carries values in value attributes",
                ));
            }
            Event::DocType(_) => {
                return Err(XmlError::Doctype {
                    line: index.line(before),
                });
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(index.syntax(
                        xml.len(),
                        format!(
                            "the document ends inside <{}> (opened on line {}): close it",
                            open.name, open.line
                        ),
                    ));
                }
                break;
            }
        }
    }
    root.ok_or_else(|| index.syntax(0, "no root element: send a FHIR resource"))
}

fn attach(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

fn plain_attributes(
    reader: &NsReader<&[u8]>,
    start: &BytesStart<'_>,
    index: &LineIndex<'_>,
    offset: usize,
) -> Result<Vec<(String, String)>, XmlError> {
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|error| index.syntax(offset, error.to_string()))?;
        if attribute.key.as_namespace_binding().is_some() {
            continue;
        }
        let (namespace, local) = reader.resolve_attribute(attribute.key);
        if !matches!(namespace, ResolveResult::Unbound) {
            // xsi:schemaLocation and other foreign attributes carry no content.
            continue;
        }
        let raw = String::from_utf8_lossy(&attribute.value);
        let value = attribute_value(&raw).map_err(|message| index.syntax(offset, message))?;
        attributes.push((String::from_utf8_lossy(local.as_ref()).into_owned(), value));
    }
    Ok(attributes)
}

fn content_error(
    index: &LineIndex<'_>,
    offset: usize,
    location: &str,
    message: impl Into<String>,
) -> XmlError {
    XmlError::Content {
        line: index.line(offset),
        location: location.to_owned(),
        message: message.into(),
    }
}

fn shorten(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        format!("{short}…")
    } else {
        short
    }
}

// ---------------------------------------------------------- XML → JSON

/// Converts an R4 XML resource to its JSON form.
pub fn to_json(xml: &str) -> Result<Value, XmlError> {
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let root = read_tree(xml)?;
    resource_to_json(&root, &root.name)
}

/// [`to_json`] for a byte body, which must be UTF-8.
pub fn to_json_bytes(xml: &[u8]) -> Result<Value, XmlError> {
    match std::str::from_utf8(xml) {
        Ok(text) => to_json(text),
        Err(error) => {
            let offset = error.valid_up_to();
            let text = String::from_utf8_lossy(&xml[..offset]);
            let index = LineIndex::new(&text);
            Err(index.syntax(offset, "invalid UTF-8: FHIR XML must be UTF-8 encoded"))
        }
    }
}

fn node_error(node: &Node, location: &str, message: impl Into<String>) -> XmlError {
    XmlError::Content {
        line: node.line,
        location: location.to_owned(),
        message: message.into(),
    }
}

fn resource_to_json(node: &Node, location: &str) -> Result<Value, XmlError> {
    if !model::is_resource_type(&node.name) {
        return Err(node_error(
            node,
            location,
            format!("<{}> is not an R4 resource type", node.name),
        ));
    }
    if let Some((name, _)) = node.attributes.first() {
        return Err(node_error(
            node,
            location,
            format!("unexpected attribute {name} on the resource element"),
        ));
    }
    let mut object = Map::new();
    object.insert("resourceType".into(), Value::String(node.name.clone()));
    fill_object(node, &node.name, true, location, &mut object)?;
    Ok(Value::Object(object))
}

/// Collected values of one JSON property while reading its XML elements.
struct Slot {
    key: String,
    element: &'static ElementInfo,
    values: Vec<Option<Value>>,
    extensions: Vec<Option<Value>>,
}

fn fill_object(
    node: &Node,
    parent: &str,
    is_resource: bool,
    location: &str,
    object: &mut Map<String, Value>,
) -> Result<(), XmlError> {
    for (name, value) in &node.attributes {
        let allowed = match name.as_str() {
            "id" => !is_resource,
            "url" => model::is_a(parent, "Extension"),
            _ => false,
        };
        if !allowed {
            return Err(node_error(
                node,
                location,
                format!("unexpected attribute {name} on <{}>", node.name),
            ));
        }
        object.insert(name.clone(), Value::String(value.clone()));
    }
    let mut slots: Vec<Slot> = Vec::new();
    for child in &node.children {
        let Some((element, type_name)) = model::resolve_json_key(parent, &child.name) else {
            return Err(node_error(
                child,
                &format!("{location}.{}", child.name),
                format!(
                    "unknown element <{}> in {parent}: remove it or check its spelling",
                    child.name
                ),
            ));
        };
        let index = slots
            .iter()
            .filter(|slot| slot.key == child.name)
            .map(|slot| slot.values.len())
            .next()
            .unwrap_or(0);
        let child_location = if element.many {
            format!("{location}.{}[{index}]", element.name)
        } else {
            format!("{location}.{}", element.name)
        };
        let (value, extension) = element_to_json(child, element, type_name, &child_location)?;
        let slot_index = match slots.iter().position(|slot| slot.key == child.name) {
            Some(existing) => existing,
            None => {
                slots.push(Slot {
                    key: child.name.clone(),
                    element,
                    values: Vec::new(),
                    extensions: Vec::new(),
                });
                slots.len() - 1
            }
        };
        let slot = &mut slots[slot_index];
        if !slot.element.many && !slot.values.is_empty() {
            return Err(node_error(
                child,
                &child_location,
                format!(
                    "<{}> appears more than once but does not repeat",
                    child.name
                ),
            ));
        }
        slot.values.push(value);
        slot.extensions.push(extension);
    }
    for slot in slots {
        let many = slot.element.many;
        let has_values = slot.values.iter().any(Option::is_some);
        let has_extensions = slot.extensions.iter().any(Option::is_some);
        if has_values {
            object.insert(slot.key.clone(), collapse(slot.values, many));
        }
        if has_extensions {
            object.insert(format!("_{}", slot.key), collapse(slot.extensions, many));
        }
    }
    Ok(())
}

fn collapse(items: Vec<Option<Value>>, many: bool) -> Value {
    if many {
        Value::Array(
            items
                .into_iter()
                .map(|item| item.unwrap_or(Value::Null))
                .collect(),
        )
    } else {
        items.into_iter().next().flatten().unwrap_or(Value::Null)
    }
}

/// One XML element as (JSON value, `_` sibling content).
fn element_to_json(
    node: &Node,
    element: &ElementInfo,
    type_name: &str,
    location: &str,
) -> Result<(Option<Value>, Option<Value>), XmlError> {
    if let Some(markup) = &node.xhtml {
        if type_name != "xhtml" {
            return Err(node_error(
                node,
                location,
                format!("XHTML is not allowed in {}", element.name),
            ));
        }
        return Ok((Some(Value::String(markup.clone())), None));
    }
    if let Some(rule) = model::primitive_rule(type_name) {
        let mut value = None;
        let mut extension = Map::new();
        for (name, text) in &node.attributes {
            match name.as_str() {
                "value" => {
                    value = Some(primitive_value(node, location, type_name, rule.json, text)?)
                }
                "id" => {
                    extension.insert("id".into(), Value::String(text.clone()));
                }
                other => {
                    return Err(node_error(
                        node,
                        location,
                        format!("unexpected attribute {other} on <{}>", node.name),
                    ));
                }
            }
        }
        for child in &node.children {
            if child.name != "extension" {
                return Err(node_error(
                    child,
                    location,
                    format!(
                        "<{}> is not allowed inside the primitive <{}>: only extension",
                        child.name, node.name
                    ),
                ));
            }
        }
        if !node.children.is_empty() {
            let mut extensions = Vec::new();
            for (position, child) in node.children.iter().enumerate() {
                let mut object = Map::new();
                let child_location = format!("{location}.extension[{position}]");
                fill_object(child, "Extension", false, &child_location, &mut object)?;
                extensions.push(Value::Object(object));
            }
            extension.insert("extension".into(), Value::Array(extensions));
        }
        if value.is_none() && extension.is_empty() {
            return Err(node_error(
                node,
                location,
                format!(
                    "<{}> has neither a value attribute nor extensions",
                    node.name
                ),
            ));
        }
        let extension = (!extension.is_empty()).then_some(Value::Object(extension));
        return Ok((value, extension));
    }
    if model::is_a(type_name, "Resource") {
        if !node.attributes.is_empty() || node.children.len() != 1 {
            return Err(node_error(
                node,
                location,
                format!("<{}> must hold exactly one resource element", node.name),
            ));
        }
        let inner = &node.children[0];
        return Ok((Some(resource_to_json(inner, location)?), None));
    }
    let mut object = Map::new();
    fill_object(node, type_name, false, location, &mut object)?;
    if object.is_empty() {
        return Err(node_error(
            node,
            location,
            format!("<{}> is empty: remove it", node.name),
        ));
    }
    Ok((Some(Value::Object(object)), None))
}

fn primitive_value(
    node: &Node,
    location: &str,
    type_name: &str,
    json: JsonKind,
    text: &str,
) -> Result<Value, XmlError> {
    match json {
        JsonKind::String => Ok(Value::String(text.to_owned())),
        JsonKind::Boolean => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(node_error(
                node,
                location,
                format!("{text:?} is not a boolean: use true or false"),
            )),
        },
        JsonKind::Number => {
            // positiveInt allows a leading '+', which JSON numbers do not.
            let digits = text.strip_prefix('+').unwrap_or(text);
            let valid = crate::validate::is_valid_primitive_text(type_name, text);
            match digits.parse::<Number>() {
                Ok(number) if valid => Ok(Value::Number(number)),
                _ => Err(node_error(
                    node,
                    location,
                    format!("{text:?} is not a valid {type_name}"),
                )),
            }
        }
    }
}

// ---------------------------------------------------------- JSON → XML

/// Converts an R4 JSON resource to XML (UTF-8, elements in definition order).
pub fn from_json(resource: &Value) -> Result<String, XmlError> {
    let mut out = String::with_capacity(4096);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let mut writer = Writer { out, depth: 0 };
    writer.resource(resource, true, "")?;
    writer.out.push('\n');
    Ok(writer.out)
}

struct Writer {
    out: String,
    depth: usize,
}

fn json_error(location: &str, message: impl Into<String>) -> XmlError {
    XmlError::Json {
        location: location.to_owned(),
        message: message.into(),
    }
}

fn escape_attribute(text: &str, location: &str) -> Result<String, XmlError> {
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\n' => escaped.push_str("&#10;"),
            '\r' => escaped.push_str("&#13;"),
            '\t' => escaped.push_str("&#9;"),
            control if u32::from(control) < 0x20 => {
                return Err(json_error(
                    location,
                    format!(
                        "control character U+{:04X} cannot be written in XML",
                        u32::from(control)
                    ),
                ));
            }
            other => escaped.push(other),
        }
    }
    Ok(escaped)
}

impl Writer {
    fn newline(&mut self) {
        self.out.push('\n');
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    fn resource(&mut self, value: &Value, is_root: bool, location: &str) -> Result<(), XmlError> {
        if self.depth > MAX_DEPTH {
            return Err(json_error(
                location,
                format!("content nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        let Some(object) = value.as_object() else {
            return Err(json_error(location, "a resource must be a JSON object"));
        };
        let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) else {
            return Err(json_error(location, "resourceType is missing"));
        };
        if !model::is_resource_type(resource_type) {
            return Err(json_error(
                location,
                format!("'{resource_type}' is not an R4 resource type"),
            ));
        }
        let location = if location.is_empty() {
            resource_type.to_owned()
        } else {
            location.to_owned()
        };
        self.out.push('<');
        self.out.push_str(resource_type);
        if is_root {
            let _ = write!(self.out, " xmlns=\"{FHIR_NS}\"");
        }
        self.out.push('>');
        self.depth += 1;
        self.members(object, resource_type, true, &location)?;
        self.depth -= 1;
        self.newline();
        let _ = write!(self.out, "</{resource_type}>");
        Ok(())
    }

    /// Writes the child elements of `object` in definition order and checks
    /// that every JSON property was used.
    fn members(
        &mut self,
        object: &Map<String, Value>,
        parent: &str,
        is_resource: bool,
        location: &str,
    ) -> Result<(), XmlError> {
        let Some(elements) = model::elements(parent) else {
            return Err(json_error(location, format!("no definition for {parent}")));
        };
        let mut used = usize::from(is_resource && object.contains_key("resourceType"));
        for element in elements {
            if is_attribute(element, parent, is_resource) {
                used += usize::from(object.contains_key(&element.name));
                continue;
            }
            let keys: Vec<(String, &str)> = if element.choice {
                element
                    .types
                    .iter()
                    .map(|code| {
                        (
                            format!("{}{}", element.name, model::choice_suffix(code)),
                            code.as_str(),
                        )
                    })
                    .filter(|(key, _)| {
                        object.contains_key(key) || object.contains_key(&format!("_{key}"))
                    })
                    .collect()
            } else {
                let type_name = element
                    .backbone
                    .as_deref()
                    .or(element.types.first().map(String::as_str))
                    .unwrap_or("");
                if object.contains_key(&element.name)
                    || object.contains_key(&format!("_{}", element.name))
                {
                    vec![(element.name.clone(), type_name)]
                } else {
                    Vec::new()
                }
            };
            if keys.len() > 1 {
                return Err(json_error(
                    &format!("{location}.{}", element.name),
                    format!("{}[x] is given more than once", element.name),
                ));
            }
            for (key, type_name) in keys {
                let value = object.get(&key);
                let extension = object.get(&format!("_{key}"));
                used += usize::from(value.is_some()) + usize::from(extension.is_some());
                self.element(
                    element,
                    &key,
                    type_name,
                    value,
                    extension,
                    &format!("{location}.{}", element.name),
                )?;
            }
        }
        if used != object.len() {
            let unknown = object
                .keys()
                .find(|key| {
                    let plain = key.strip_prefix('_').unwrap_or(key);
                    !(is_resource && *key == "resourceType")
                        && model::resolve_json_key(parent, plain).is_none()
                })
                .map_or_else(|| "?".to_owned(), Clone::clone);
            return Err(json_error(
                &format!("{location}.{unknown}"),
                format!("unknown property '{unknown}' in {parent}"),
            ));
        }
        Ok(())
    }

    fn element<'v>(
        &mut self,
        element: &ElementInfo,
        key: &str,
        type_name: &str,
        value: Option<&'v Value>,
        extension: Option<&'v Value>,
        location: &str,
    ) -> Result<(), XmlError> {
        let as_items = |item: Option<&'v Value>| -> Result<Vec<&'v Value>, XmlError> {
            match (item, element.many) {
                (None, _) => Ok(Vec::new()),
                (Some(Value::Array(items)), true) => Ok(items.iter().collect()),
                (Some(_), true) => Err(json_error(
                    location,
                    format!("{key} repeats: it must be an array"),
                )),
                (Some(Value::Array(_)), false) => Err(json_error(
                    location,
                    format!("{key} does not repeat: it must not be an array"),
                )),
                (Some(single), false) => Ok(vec![single]),
            }
        };
        let values = as_items(value)?;
        let extensions = as_items(extension)?;
        let count = values.len().max(extensions.len());
        for position in 0..count {
            let item_location = if element.many {
                format!("{location}[{position}]")
            } else {
                location.to_owned()
            };
            let item = values.get(position).copied().filter(|item| !item.is_null());
            let item_extension = extensions
                .get(position)
                .copied()
                .filter(|item| !item.is_null());
            self.newline();
            if model::is_primitive(type_name) {
                self.primitive(key, type_name, item, item_extension, &item_location)?;
                continue;
            }
            if item_extension.is_some() {
                return Err(json_error(
                    &item_location,
                    format!("_{key} is only allowed for primitive elements"),
                ));
            }
            let Some(item) = item else {
                return Err(json_error(
                    &item_location,
                    "null is only allowed in arrays of primitives",
                ));
            };
            if model::is_a(type_name, "Resource") {
                let _ = write!(self.out, "<{key}>");
                self.depth += 1;
                self.newline();
                self.resource(item, false, &item_location)?;
                self.depth -= 1;
                self.newline();
                let _ = write!(self.out, "</{key}>");
                continue;
            }
            let Some(object) = item.as_object() else {
                return Err(json_error(
                    &item_location,
                    format!("{key} must be an object"),
                ));
            };
            self.complex(key, type_name, object, &item_location)?;
        }
        Ok(())
    }

    fn complex(
        &mut self,
        key: &str,
        type_name: &str,
        object: &Map<String, Value>,
        location: &str,
    ) -> Result<(), XmlError> {
        if self.depth > MAX_DEPTH {
            return Err(json_error(
                location,
                format!("content nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        let _ = write!(self.out, "<{key}");
        for attribute in ["id", "url"] {
            let applies = attribute == "id" || model::is_a(type_name, "Extension");
            if !applies {
                continue;
            }
            if let Some(value) = object.get(attribute) {
                let Some(text) = value.as_str() else {
                    return Err(json_error(
                        &format!("{location}.{attribute}"),
                        format!("{attribute} must be a string"),
                    ));
                };
                let _ = write!(
                    self.out,
                    " {attribute}=\"{}\"",
                    escape_attribute(text, location)?
                );
            }
        }
        let has_children = object
            .keys()
            .any(|name| name != "id" && !(name == "url" && model::is_a(type_name, "Extension")));
        if !has_children {
            self.out.push_str("/>");
            return self.members(object, type_name, false, location);
        }
        self.out.push('>');
        self.depth += 1;
        self.members(object, type_name, false, location)?;
        self.depth -= 1;
        self.newline();
        let _ = write!(self.out, "</{key}>");
        Ok(())
    }

    fn primitive(
        &mut self,
        key: &str,
        type_name: &str,
        value: Option<&Value>,
        extension: Option<&Value>,
        location: &str,
    ) -> Result<(), XmlError> {
        if type_name == "xhtml" {
            let Some(Value::String(markup)) = value else {
                return Err(json_error(
                    location,
                    "the narrative div must be a string of XHTML",
                ));
            };
            self.out.push_str(&with_xhtml_namespace(markup));
            return Ok(());
        }
        let _ = write!(self.out, "<{key}");
        if let Some(value) = value {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                _ => {
                    return Err(json_error(
                        location,
                        format!("{key} must be a {type_name} value"),
                    ));
                }
            };
            let _ = write!(
                self.out,
                " value=\"{}\"",
                escape_attribute(&text, location)?
            );
        }
        let Some(extension) = extension else {
            self.out.push_str("/>");
            return Ok(());
        };
        let Some(extension) = extension.as_object() else {
            return Err(json_error(location, format!("_{key} must be an object")));
        };
        if let Some(id) = extension.get("id") {
            let Some(id) = id.as_str() else {
                return Err(json_error(location, "id must be a string"));
            };
            let _ = write!(self.out, " id=\"{}\"", escape_attribute(id, location)?);
        }
        let unknown = extension
            .keys()
            .find(|name| *name != "id" && *name != "extension");
        if let Some(unknown) = unknown {
            return Err(json_error(
                location,
                format!("_{key} may hold only id and extension, not {unknown}"),
            ));
        }
        let Some(list) = extension.get("extension") else {
            self.out.push_str("/>");
            return Ok(());
        };
        let Some(list) = list.as_array() else {
            return Err(json_error(location, "extension must be an array"));
        };
        self.out.push('>');
        self.depth += 1;
        for (position, item) in list.iter().enumerate() {
            let item_location = format!("{location}.extension[{position}]");
            let Some(object) = item.as_object() else {
                return Err(json_error(&item_location, "an extension must be an object"));
            };
            self.newline();
            self.complex("extension", "Extension", object, &item_location)?;
        }
        self.depth -= 1;
        self.newline();
        let _ = write!(self.out, "</{key}>");
        Ok(())
    }
}

/// Whether an element is written as an XML attribute: `id` of everything but
/// resources, and `Extension.url`.
fn is_attribute(element: &ElementInfo, parent: &str, is_resource: bool) -> bool {
    (element.name == "id" && !is_resource)
        || (element.name == "url" && model::is_a(parent, "Extension"))
}

/// The narrative must be in the XHTML namespace in XML; JSON usually says so
/// already, but add the declaration when it does not.
fn with_xhtml_namespace(markup: &str) -> String {
    let trimmed = markup.trim_start();
    let tag_end = trimmed.find('>').unwrap_or(trimmed.len());
    if trimmed[..tag_end].contains("xmlns") || !trimmed.starts_with("<div") {
        markup.to_owned()
    } else {
        format!("<div xmlns=\"{XHTML_NS}\"{}", &trimmed[4..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PATIENT_XML: &str = r##"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment -->
<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="x">
  <id value="p1"/>
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p>Peter &amp; <b>James</b></p></div>
  </text>
  <contained>
    <Organization>
      <id value="org"/>
      <name value="Acme"/>
    </Organization>
  </contained>
  <extension url="http://example.org/rank">
    <valueDecimal value="1.50"/>
  </extension>
  <active value="true"/>
  <name id="n1">
    <family value="Chalmers"/>
    <given value="Peter"/>
    <given id="g2">
      <extension url="http://example.org/x"><valueString value="a&#10;b"/></extension>
    </given>
  </name>
  <birthDate id="bd" value="1974-12-25"/>
  <multipleBirthInteger value="2"/>
  <managingOrganization>
    <reference value="#org"/>
  </managingOrganization>
</Patient>"##;

    #[test]
    fn reads_primitives_extensions_choices_and_contained_resources() {
        let json = to_json(PATIENT_XML).unwrap();
        let expected = json!({
            "resourceType": "Patient",
            "id": "p1",
            "text": {
                "status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter &amp; <b>James</b></p></div>"
            },
            "contained": [{"resourceType": "Organization", "id": "org", "name": "Acme"}],
            "extension": [{"url": "http://example.org/rank", "valueDecimal": serde_json::from_str::<Value>("1.50").unwrap()}],
            "active": true,
            "name": [{
                "id": "n1",
                "family": "Chalmers",
                "given": ["Peter", null],
                "_given": [null, {"id": "g2", "extension": [{"url": "http://example.org/x", "valueString": "a\nb"}]}]
            }],
            "birthDate": "1974-12-25",
            "_birthDate": {"id": "bd"},
            "multipleBirthInteger": 2,
            "managingOrganization": {"reference": "#org"}
        });
        assert_eq!(json, expected);
        assert_eq!(
            json["extension"][0]["valueDecimal"].to_string(),
            "1.50",
            "decimal text kept"
        );
        assert_eq!(crate::validate(&json), Ok(()));
    }

    #[test]
    fn writes_definition_order_and_reads_back() {
        // JSON key order differs from the definition order on purpose.
        let resource = json!({
            "managingOrganization": {"reference": "Organization/1"},
            "name": [{"given": ["A", "B"], "family": "Z"}],
            "resourceType": "Patient",
            "gender": "female",
            "id": "x",
            "_gender": {"extension": [{"url": "http://e/x", "valueCode": "f"}]}
        });
        let xml = from_json(&resource).unwrap();
        let id = xml.find("<id value=\"x\"/>").unwrap();
        let name = xml.find("<name>").unwrap();
        let gender = xml.find("<gender value=\"female\">").unwrap();
        let organization = xml.find("<managingOrganization>").unwrap();
        assert!(id < name && name < gender && gender < organization, "{xml}");
        let family = xml.find("<family").unwrap();
        assert!(
            family < xml.find("<given").unwrap(),
            "HumanName.family precedes given"
        );
        assert!(xml.contains("<extension url=\"http://e/x\">"));
        assert_eq!(to_json(&xml).unwrap(), resource);
    }

    #[test]
    fn escapes_attribute_text_and_adds_the_xhtml_namespace() {
        let resource = json!({"resourceType": "Basic", "code": {"text": "a<b & \"c\"\n\td"},
            "text": {"status": "generated", "div": "<div>plain</div>"}});
        let xml = from_json(&resource).unwrap();
        assert!(
            xml.contains(r#"<text value="a&lt;b &amp; &quot;c&quot;&#10;&#9;d"/>"#),
            "{xml}"
        );
        let back = to_json(&xml).unwrap();
        assert_eq!(back["code"], resource["code"]);
        assert_eq!(
            back["text"]["div"],
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">plain</div>"
        );
    }

    #[test]
    fn bundle_entries_are_wrapped_by_their_element() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "active": false}}]});
        let xml = from_json(&bundle).unwrap();
        assert!(xml.contains("<resource>"), "{xml}");
        assert_eq!(to_json(&xml).unwrap(), bundle);
    }

    fn content_message(result: Result<Value, XmlError>) -> (String, String) {
        match result {
            Err(XmlError::Content {
                location, message, ..
            }) => (location, message),
            other => panic!("expected a content error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_xml_is_rejected_with_a_position() {
        let unclosed =
            "<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\">\n</Patient>";
        match to_json(unclosed) {
            Err(XmlError::Syntax { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a syntax error, got {other:?}"),
        }
        match to_json("<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\"/>") {
            Err(XmlError::Syntax { message, .. }) => {
                assert!(message.contains("<Patient>"), "{message}")
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
        assert!(matches!(to_json(""), Err(XmlError::Syntax { .. })));
        assert!(matches!(
            to_json("<Patient xmlns=\"http://hl7.org/fhir\"/><Patient/>"),
            Err(XmlError::Syntax { .. })
        ));
        assert!(matches!(
            to_json("<Patient xmlns=\"http://hl7.org/fhir\" a=\"1\" a=\"2\"/>"),
            Err(XmlError::Syntax { .. })
        ));
    }

    #[test]
    fn wrong_namespace_and_unknown_content_are_named() {
        let (location, message) =
            content_message(to_json("<Patient><active value=\"true\"/></Patient>"));
        assert_eq!(location, "Patient");
        assert!(
            message.contains("xmlns=\"http://hl7.org/fhir\""),
            "{message}"
        );
        let (_, message) = content_message(to_json("<Patient xmlns=\"http://hl7.org/fhir/\"/>"));
        assert!(
            message.contains("namespace http://hl7.org/fhir/"),
            "{message}"
        );
        let (location, message) = content_message(to_json(
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><given value=\"a\"/><giv value=\"b\"/></name></Patient>",
        ));
        assert_eq!(location, "Patient.name[0].giv");
        assert!(message.contains("unknown element <giv>"), "{message}");
        let (_, message) = content_message(to_json("<Patinet xmlns=\"http://hl7.org/fhir\"/>"));
        assert!(message.contains("not an R4 resource type"));
        let (_, message) = content_message(to_json(
            "<Patient xmlns=\"http://hl7.org/fhir\"><active>true</active></Patient>",
        ));
        assert!(message.contains("value attributes"), "{message}");
        let (_, message) = content_message(to_json(
            "<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"male\"/><gender value=\"female\"/></Patient>",
        ));
        assert!(message.contains("does not repeat"), "{message}");
        let (_, message) = content_message(to_json(
            "<Patient xmlns=\"http://hl7.org/fhir\"><multipleBirthInteger value=\"1.5\"/></Patient>",
        ));
        assert!(message.contains("not a valid integer"), "{message}");
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let billion_laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol3;"/></name></Patient>"#;
        assert_eq!(to_json(billion_laughs), Err(XmlError::Doctype { line: 2 }));
        let external = "<!DOCTYPE Patient SYSTEM \"file:///etc/passwd\"><Patient xmlns=\"http://hl7.org/fhir\"/>";
        assert!(matches!(to_json(external), Err(XmlError::Doctype { .. })));
        let undefined = "<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"&lol;\"/></name></Patient>";
        assert!(matches!(to_json(undefined), Err(XmlError::Syntax { .. })));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let depth = 50_000;
        let xml = format!(
            "<Questionnaire xmlns=\"http://hl7.org/fhir\">{}{}</Questionnaire>",
            "<item>".repeat(depth),
            "</item>".repeat(depth)
        );
        let (_, message) = content_message(to_json(&xml));
        assert!(message.contains("deeper than"), "{message}");
    }

    #[test]
    fn json_errors_name_the_property() {
        let error = from_json(&json!({"resourceType": "Patient", "nmae": []})).unwrap_err();
        assert_eq!(
            error,
            XmlError::Json {
                location: "Patient.nmae".into(),
                message: "unknown property 'nmae' in Patient".into()
            }
        );
        assert!(from_json(&json!({"resourceType": "Patient", "name": {"family": "x"}})).is_err());
        assert!(from_json(&json!({"id": "x"})).is_err());
        assert!(
            to_json_bytes(b"<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"\xff\"/></Patient>")
                .is_err()
        );
    }
}
