//! Conversion of FHIRPath results to index values, by search parameter kind and by the FHIR
//! type of each result.

use flare_fhir::search_params::SearchParamKind;
use serde_json::Value;

use crate::dates::parse_date_range;
use crate::normalize::normalize;
use crate::numbers::parse_decimal;
use crate::{IndexEntry, IndexValue};

const CURRENCY_SYSTEM: &str = "urn:iso:std:iso:4217";

/// Appends the index values of one FHIRPath result `value` of FHIR type `type_name` for the
/// parameter `code` of kind `kind`. Results that carry nothing searchable add nothing.
pub(crate) fn convert(
    code: &str,
    kind: SearchParamKind,
    type_name: &str,
    value: &Value,
    out: &mut Vec<IndexEntry>,
) {
    let mut push = |value: IndexValue| {
        out.push(IndexEntry {
            param: code.to_owned(),
            value,
        })
    };
    match kind {
        SearchParamKind::String => strings(type_name, value, &mut push),
        SearchParamKind::Token => tokens(type_name, value, &mut push),
        SearchParamKind::Reference => references(value, &mut push),
        SearchParamKind::Date => dates(type_name, value, &mut push),
        SearchParamKind::Number => {
            if let Some((value, low, high)) = decimal_of(value) {
                push(IndexValue::Number { value, low, high });
            }
        }
        SearchParamKind::Quantity => quantities(type_name, value, &mut push),
        SearchParamKind::Uri => {
            if let Some(text) = value.as_str() {
                push_uri(text, &mut push);
            }
        }
        SearchParamKind::Composite | SearchParamKind::Special => {}
    }
}

fn text_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

fn push_string(text: &str, push: &mut impl FnMut(IndexValue)) {
    if !text.is_empty() {
        push(IndexValue::String {
            normalized: normalize(text),
            exact: text.to_owned(),
        });
    }
}

fn strings(type_name: &str, value: &Value, push: &mut impl FnMut(IndexValue)) {
    match value {
        Value::String(text) => push_string(text, push),
        Value::Object(object) => {
            // HumanName and Address: each part separately (`given=pet` finds "Peter"); other
            // complex types: their direct string elements.
            let parts: &[&str] = match type_name {
                "HumanName" => &["family", "given", "prefix", "suffix", "text"],
                "Address" => &[
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                    "text",
                ],
                _ => &[],
            };
            for (key, child) in object {
                if !parts.is_empty() && !parts.contains(&key.as_str()) {
                    continue;
                }
                match child {
                    Value::String(text) => push_string(text, push),
                    Value::Array(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .for_each(|text| push_string(text, push)),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn push_token(
    system: Option<&str>,
    code: Option<&str>,
    text: Option<&str>,
    push: &mut impl FnMut(IndexValue),
) {
    if system.is_none() && code.is_none() && text.is_none() {
        return;
    }
    push(IndexValue::Token {
        system: system.map(str::to_owned),
        code: code.map(str::to_owned),
        text: text.map(normalize).filter(|text| !text.is_empty()),
    });
}

fn tokens(type_name: &str, value: &Value, push: &mut impl FnMut(IndexValue)) {
    match value {
        Value::String(text) if !text.is_empty() => push_token(None, Some(text), None, push),
        Value::Bool(flag) => {
            push_token(None, Some(if *flag { "true" } else { "false" }), None, push)
        }
        Value::Number(number) => push_token(None, Some(&number.to_string()), None, push),
        Value::Object(_) => match type_name {
            "CodeableConcept" => {
                let concept_text = text_of(value, "text");
                let codings = value
                    .get("coding")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                for coding in codings {
                    let display = text_of(coding, "display").or(concept_text);
                    push_token(
                        text_of(coding, "system"),
                        text_of(coding, "code"),
                        display,
                        push,
                    );
                }
                // The concept's own text, for `:text`, when no coding carries it.
                let text_is_indexed = codings
                    .iter()
                    .any(|coding| text_of(coding, "display").is_none());
                if let Some(text) = concept_text
                    && !text_is_indexed
                {
                    push_token(None, None, Some(text), push);
                }
            }
            "Identifier" => {
                let type_text = value.get("type").and_then(|kind| text_of(kind, "text"));
                push_token(
                    text_of(value, "system"),
                    text_of(value, "value"),
                    type_text,
                    push,
                );
            }
            "ContactPoint" => push_token(
                text_of(value, "system"),
                text_of(value, "value"),
                None,
                push,
            ),
            // Coding and anything shaped like it.
            _ => push_token(
                text_of(value, "system"),
                text_of(value, "code"),
                text_of(value, "display"),
                push,
            ),
        },
        _ => {}
    }
}

fn references(value: &Value, push: &mut impl FnMut(IndexValue)) {
    let written = match value {
        // canonical / uri / url elements used by reference parameters.
        Value::String(text) => text.as_str(),
        Value::Object(_) => match text_of(value, "reference") {
            Some(reference) => reference,
            None => return,
        },
        _ => return,
    };
    // Contained resources are not indexed as references of their own.
    if written.is_empty() || written.starts_with('#') {
        return;
    }
    let is_absolute = written.contains("://") || written.starts_with("urn:");
    let (target_type, target_id) = if is_absolute {
        (None, None)
    } else {
        relative_type_and_id(written)
    };
    push(IndexValue::Reference {
        target_type,
        target_id,
        url: written.to_owned(),
    });
    if let Some((unversioned, _version)) = written.split_once('|') {
        push(IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: unversioned.to_owned(),
        });
    }
}

/// `Patient/1` or `Patient/1/_history/2` → (`Patient`, `1`).
fn relative_type_and_id(reference: &str) -> (Option<String>, Option<String>) {
    let mut segments = reference.split('/');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(kind), Some(id), None, ..)
        | (Some(kind), Some(id), Some("_history"), Some(_), None)
            if !kind.is_empty() && !id.is_empty() =>
        {
            (Some(kind.to_owned()), Some(id.to_owned()))
        }
        _ => (None, None),
    }
}

fn push_uri(text: &str, push: &mut impl FnMut(IndexValue)) {
    if text.is_empty() {
        return;
    }
    push(IndexValue::Uri(text.to_owned()));
    if let Some((unversioned, _version)) = text.split_once('|') {
        push(IndexValue::Uri(unversioned.to_owned()));
    }
}

fn push_date(text: &str, push: &mut impl FnMut(IndexValue)) {
    if let Some((low_ms, high_ms)) = parse_date_range(text) {
        push(IndexValue::Date { low_ms, high_ms });
    }
}

fn dates(type_name: &str, value: &Value, push: &mut impl FnMut(IndexValue)) {
    match value {
        Value::String(text) => push_date(text, push),
        Value::Object(_) if type_name == "Timing" => {
            for event in value
                .get("event")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Some(text) = event.as_str() {
                    push_date(text, push);
                }
            }
            if let Some(bounds) = value
                .get("repeat")
                .and_then(|repeat| repeat.get("boundsPeriod"))
            {
                period(bounds, push);
            }
        }
        Value::Object(_) => period(value, push),
        _ => {}
    }
}

/// A Period: from the start of `start` to the end of `end`; a missing end is open (ongoing).
fn period(value: &Value, push: &mut impl FnMut(IndexValue)) {
    let start = text_of(value, "start").and_then(parse_date_range);
    let end = text_of(value, "end").and_then(parse_date_range);
    if start.is_none() && end.is_none() {
        return;
    }
    let low_ms = start.map_or(i64::MIN, |(low, _)| low);
    let high_ms = end.map_or(i64::MAX, |(_, high)| high);
    push(IndexValue::Date { low_ms, high_ms });
}

fn decimal_of(value: &Value) -> Option<(f64, f64, f64)> {
    match value {
        // With `arbitrary_precision` the number keeps its written digits, hence its precision.
        Value::Number(number) => parse_decimal(&number.to_string()),
        Value::String(text) => parse_decimal(text),
        _ => None,
    }
}

fn quantities(type_name: &str, value: &Value, push: &mut impl FnMut(IndexValue)) {
    match type_name {
        "Range" => {
            for end in ["low", "high"] {
                if let Some(bound) = value.get(end) {
                    quantities("Quantity", bound, push);
                }
            }
        }
        "Money" => {
            if let Some((number, low, high)) = value.get("value").and_then(decimal_of) {
                let currency = text_of(value, "currency").map(str::to_owned);
                push(IndexValue::Quantity {
                    value: number,
                    low,
                    high,
                    system: currency.as_ref().map(|_| CURRENCY_SYSTEM.to_owned()),
                    code: currency.clone(),
                    unit: currency,
                });
            }
        }
        _ => {
            let Some((number, low, high)) = value
                .get("value")
                .and_then(decimal_of)
                .or_else(|| decimal_of(value))
            else {
                return;
            };
            push(IndexValue::Quantity {
                value: number,
                low,
                high,
                system: text_of(value, "system").map(str::to_owned),
                code: text_of(value, "code").map(str::to_owned),
                unit: text_of(value, "unit").map(str::to_owned),
            });
        }
    }
}
