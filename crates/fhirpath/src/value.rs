//! The items FHIRPath expressions produce: system values and FHIR elements with their types.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::Value as Json;

use crate::temporal::{Temporal, TemporalKind};

/// A JSON node: borrowed from the evaluated resource, or shared when it was produced during
/// evaluation (resolved references, variables built from owned values).
#[derive(Debug, Clone)]
pub enum Node<'a> {
    Borrowed(&'a Json),
    Shared(Arc<Json>),
}

impl Node<'_> {
    pub fn json(&self) -> &Json {
        match self {
            Node::Borrowed(j) => j,
            Node::Shared(j) => j,
        }
    }
}

/// A quantity: a decimal value and a unit (UCUM code or a calendar keyword like `days`).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub value: Decimal,
    pub unit: String,
}

impl Quantity {
    pub fn new(value: Decimal, unit: impl Into<String>) -> Self {
        Quantity {
            value,
            unit: unit.into(),
        }
    }
}

/// The value of an item.
#[derive(Debug, Clone)]
pub enum ItemValue<'a> {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(Cow<'a, str>),
    /// Date, DateTime or Time, by `Temporal::kind`.
    Temporal(Temporal),
    Quantity(Quantity),
    /// A complex FHIR element or a resource (a JSON object).
    Element(Node<'a>),
    /// A primitive element that has no value, only an id or extensions.
    Absent,
}

/// One item of a FHIRPath collection: a value and its type. FHIR types are unqualified (`Patient`,
/// `HumanName`, `date`, `Patient.contact` for backbone elements); system types are qualified
/// (`System.Integer`).
#[derive(Debug, Clone)]
pub struct Item<'a> {
    pub value: ItemValue<'a>,
    pub type_name: Cow<'a, str>,
    /// For primitives read from JSON: the `_name` sibling holding `id` and `extension`.
    pub(crate) primitive_extras: Option<Node<'a>>,
}

impl<'a> Item<'a> {
    pub fn system(value: ItemValue<'a>) -> Item<'a> {
        let type_name = match &value {
            ItemValue::Boolean(_) => "System.Boolean",
            ItemValue::Integer(_) => "System.Integer",
            ItemValue::Decimal(_) => "System.Decimal",
            ItemValue::String(_) => "System.String",
            ItemValue::Temporal(t) => match t.kind {
                TemporalKind::Date => "System.Date",
                TemporalKind::DateTime => "System.DateTime",
                TemporalKind::Time => "System.Time",
            },
            ItemValue::Quantity(_) => "System.Quantity",
            ItemValue::Element(_) | ItemValue::Absent => "System.Any",
        };
        Item {
            value,
            type_name: Cow::Borrowed(type_name),
            primitive_extras: None,
        }
    }

    pub fn boolean(b: bool) -> Item<'a> {
        Item::system(ItemValue::Boolean(b))
    }
    pub fn integer(i: i64) -> Item<'a> {
        Item::system(ItemValue::Integer(i))
    }
    pub fn string(s: impl Into<Cow<'a, str>>) -> Item<'a> {
        Item::system(ItemValue::String(s.into()))
    }

    /// The JSON of a complex element or resource.
    pub fn as_json(&self) -> Option<&Json> {
        match &self.value {
            ItemValue::Element(node) => Some(node.json()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            ItemValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            ItemValue::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// The value as JSON text-like form: primitives as FHIR JSON values, elements as is.
    pub fn to_json(&self) -> Json {
        match &self.value {
            ItemValue::Boolean(b) => Json::Bool(*b),
            ItemValue::Integer(i) => Json::from(*i),
            ItemValue::Decimal(d) => {
                serde_json::from_str(&d.to_string()).unwrap_or_else(|_| Json::String(d.to_string()))
            }
            ItemValue::String(s) => Json::String(s.to_string()),
            ItemValue::Temporal(t) => Json::String(t.to_string()),
            ItemValue::Quantity(q) => serde_json::json!({
                "value": serde_json::from_str::<Json>(&q.value.to_string()).unwrap_or(Json::Null),
                "unit": q.unit,
            }),
            ItemValue::Element(node) => node.json().clone(),
            ItemValue::Absent => Json::Null,
        }
    }

    /// True for FHIR types (`date`, `Patient`), false for `System.*` values.
    pub fn is_fhir_typed(&self) -> bool {
        !self.type_name.starts_with("System.")
    }

    /// The item's type name without its namespace.
    pub fn bare_type_name(&self) -> &str {
        self.type_name
            .strip_prefix("System.")
            .unwrap_or(&self.type_name)
    }
}

/// Converts a JSON primitive to an item value, using the FHIR type when known.
pub(crate) fn primitive_value<'a>(json: &'a Json, fhir_type: &str) -> ItemValue<'a> {
    match json {
        Json::Bool(b) => ItemValue::Boolean(*b),
        Json::Number(n) => {
            let text = n.as_str();
            let integral = matches!(
                fhir_type,
                "integer" | "positiveInt" | "unsignedInt" | "integer64"
            ) || (fhir_type != "decimal" && !text.contains(['.', 'e', 'E']));
            if integral && let Ok(i) = text.parse::<i64>() {
                return ItemValue::Integer(i);
            }
            parse_decimal(text)
                .map(ItemValue::Decimal)
                .unwrap_or(ItemValue::Absent)
        }
        Json::String(s) => match fhir_type {
            "date" | "dateTime" | "instant" => match Temporal::parse_fhir_date_time(s) {
                Some(t) if fhir_type == "date" => {
                    ItemValue::Temporal(t.with_kind(TemporalKind::Date))
                }
                Some(t) => ItemValue::Temporal(t.with_kind(TemporalKind::DateTime)),
                None => ItemValue::String(Cow::Borrowed(s)),
            },
            "time" => match Temporal::parse_fhir_time(s) {
                Some(t) => ItemValue::Temporal(t),
                None => ItemValue::String(Cow::Borrowed(s)),
            },
            _ => ItemValue::String(Cow::Borrowed(s)),
        },
        Json::Null => ItemValue::Absent,
        Json::Array(_) | Json::Object(_) => ItemValue::Absent,
    }
}

pub(crate) fn parse_decimal(text: &str) -> Option<Decimal> {
    text.parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
}

/// Equality of the JSON of two elements, ignoring key order.
pub(crate) fn json_equal(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_equal(v, w))
        }
        (Json::Number(x), Json::Number(y)) => {
            match (parse_decimal(&x.to_string()), parse_decimal(&y.to_string())) {
                (Some(p), Some(q)) => p == q,
                _ => x == y,
            }
        }
        _ => a == b,
    }
}

/// Units we can convert: (unit, dimension, factor to the dimension's base unit).
const UNITS: &[(&str, &str, &str)] = &[
    ("ms", "s", "0.001"),
    ("s", "s", "1"),
    ("min", "s", "60"),
    ("h", "s", "3600"),
    ("d", "s", "86400"),
    ("wk", "s", "604800"),
    ("g", "g", "1"),
    ("mg", "g", "0.001"),
    ("ug", "g", "0.000001"),
    ("kg", "g", "1000"),
    ("[lb_av]", "g", "453.59237"),
    ("[oz_av]", "g", "28.349523125"),
    ("m", "m", "1"),
    ("cm", "m", "0.01"),
    ("mm", "m", "0.001"),
    ("km", "m", "1000"),
    ("[in_i]", "m", "0.0254"),
    ("[ft_i]", "m", "0.3048"),
    ("L", "L", "1"),
    ("l", "L", "1"),
    ("dL", "L", "0.1"),
    ("mL", "L", "0.001"),
    ("uL", "L", "0.000001"),
    ("1", "1", "1"),
];

/// The UCUM code for a calendar keyword that has a definite length.
pub(crate) fn canonical_unit(unit: &str) -> &str {
    match unit {
        "week" | "weeks" => "wk",
        "day" | "days" => "d",
        "hour" | "hours" => "h",
        "minute" | "minutes" => "min",
        "second" | "seconds" => "s",
        "millisecond" | "milliseconds" => "ms",
        // Calendar years and months have no fixed length: not comparable with `a`/`mo`.
        other => other,
    }
}

fn unit_scale(unit: &str) -> Option<(&'static str, Decimal)> {
    let unit = canonical_unit(unit);
    UNITS
        .iter()
        .find(|(u, _, _)| *u == unit)
        .and_then(|(_, dim, factor)| factor.parse().ok().map(|f| (*dim, f)))
}

/// The product of two quantities of one convertible dimension with different units, in the
/// dimension's base unit squared (`2 'cm' * 2 'm'` is `0.04 'm2'`).
pub(crate) fn same_dimension_product(a: &Quantity, b: &Quantity) -> Option<Quantity> {
    if canonical_unit(&a.unit) == canonical_unit(&b.unit) {
        return None;
    }
    let (da, fa) = unit_scale(&a.unit)?;
    let (db, fb) = unit_scale(&b.unit)?;
    if da != db || da == "1" {
        return None;
    }
    let value = a
        .value
        .checked_mul(fa)?
        .checked_mul(b.value.checked_mul(fb)?)?;
    Some(Quantity::new(value, format!("{da}2")))
}

/// Both quantities in one unit, when their units are equal or convertible.
pub(crate) fn comparable(a: &Quantity, b: &Quantity) -> Option<(Decimal, Decimal)> {
    let (ua, ub) = (canonical_unit(&a.unit), canonical_unit(&b.unit));
    if ua == ub {
        return Some((a.value, b.value));
    }
    let (da, fa) = unit_scale(ua)?;
    let (db, fb) = unit_scale(ub)?;
    if da != db {
        return None;
    }
    Some((a.value.checked_mul(fa)?, b.value.checked_mul(fb)?))
}

pub(crate) fn compare_quantities(a: &Quantity, b: &Quantity) -> Option<Ordering> {
    let (x, y) = comparable(a, b)?;
    Some(x.cmp(&y))
}

/// Converts a quantity to another unit (`toQuantity('g')`).
pub(crate) fn convert_quantity(q: &Quantity, unit: &str) -> Option<Quantity> {
    if canonical_unit(&q.unit) == canonical_unit(unit) {
        return Some(Quantity::new(q.value, unit));
    }
    let (da, fa) = unit_scale(&q.unit)?;
    let (db, fb) = unit_scale(unit)?;
    if da != db {
        return None;
    }
    Some(Quantity::new(
        (q.value.checked_mul(fa)?.checked_div(fb)?).normalize(),
        unit,
    ))
}

/// The value of a FHIR `Quantity` element as a system quantity.
pub(crate) fn quantity_of_element(json: &Json) -> Option<Quantity> {
    let value = match json.get("value")? {
        Json::Number(n) => parse_decimal(&n.to_string())?,
        _ => return None,
    };
    let unit = json
        .get("code")
        .filter(|_| {
            json.get("system")
                .and_then(Json::as_str)
                .is_none_or(|s| s == "http://unitsofmeasure.org")
        })
        .or_else(|| json.get("unit"))
        .and_then(Json::as_str)
        .unwrap_or("1");
    Some(Quantity::new(value, unit))
}
