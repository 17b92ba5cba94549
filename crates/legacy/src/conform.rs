//! Brings mapped JSON into R4 shape with the R4 model: arrays where R4
//! repeats, single values where it does not, booleans and numbers where R4
//! primitives are JSON booleans and numbers. Elements R4 does not have are
//! removed and counted, so what a mapping could not place is reported rather
//! than silently lost.

use std::collections::BTreeMap;

use flare_fhir::model::{self, JsonKind};
use serde_json::{Map, Number, Value};

/// Counts of elements removed, by path (`Observation.referenceRange.meaning`).
pub type Dropped = BTreeMap<String, u64>;

/// Conforms a resource (its `resourceType` names the type).
pub fn resource(value: Value, dropped: &mut Dropped) -> Value {
    let Value::Object(object) = value else {
        return value;
    };
    let type_name = object
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Value::Object(object_of(object, &type_name, &type_name, dropped))
}

fn object_of(
    object: Map<String, Value>,
    type_name: &str,
    path: &str,
    dropped: &mut Dropped,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in object {
        if key == "resourceType" {
            out.insert(key, value);
            continue;
        }
        let Some((element, element_type)) = model::resolve_json_key(type_name, &key) else {
            *dropped.entry(format!("{path}.{key}")).or_default() += 1;
            continue;
        };
        let child_path = format!("{path}.{}", key.trim_start_matches('_'));
        let is_extra = key.starts_with('_');
        let mut items: Vec<Value> = match value {
            Value::Array(items) => items,
            single => vec![single],
        }
        .into_iter()
        .map(|item| {
            if is_extra {
                match item {
                    Value::Object(extra) => {
                        Value::Object(object_of(extra, "Element", &child_path, dropped))
                    }
                    _ => Value::Null,
                }
            } else {
                conform_value(item, element_type, &child_path, dropped)
            }
        })
        .collect();
        if !is_extra {
            items.retain(|item| !item.is_null());
        }
        if items.is_empty() {
            continue;
        }
        if element.many {
            out.insert(key, Value::Array(items));
        } else {
            if items.len() > 1 {
                // R4 allows one; the rest has nowhere to go.
                *dropped.entry(format!("{child_path}[1..]")).or_default() += 1;
            }
            out.insert(key, items.swap_remove(0));
        }
    }
    out
}

fn conform_value(value: Value, type_name: &str, path: &str, dropped: &mut Dropped) -> Value {
    if let Some(rule) = model::primitive_rule(type_name) {
        let value = if matches!(type_name, "dateTime" | "instant") {
            with_zone(value)
        } else {
            value
        };
        return primitive(value, rule.json).unwrap_or_else(|| {
            *dropped.entry(path.to_owned()).or_default() += 1;
            Value::Null
        });
    }
    match value {
        Value::Object(object) if type_name == "Resource" => {
            let inner = object
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Value::Object(object_of(object, &inner, &inner, dropped))
        }
        Value::Object(object) => {
            let object = object_of(object, type_name, path, dropped);
            if object.is_empty() {
                // Empty elements (`<timing></timing>`) are invalid in every version.
                *dropped.entry(path.to_owned()).or_default() += 1;
                return Value::Null;
            }
            Value::Object(object)
        }
        _ => {
            *dropped.entry(path.to_owned()).or_default() += 1;
            Value::Null
        }
    }
}

/// R4 requires a zone on a dateTime with a time; legacy feeds often omit it.
/// The time is taken as UTC (README: what is lost).
fn with_zone(value: Value) -> Value {
    match value {
        Value::String(text) => {
            let has_zone = text.split_once('T').is_some_and(|(_, time)| {
                time.ends_with('Z') || time.contains('+') || time.contains('-')
            });
            if text.contains('T') && !has_zone {
                Value::String(format!("{text}Z"))
            } else {
                Value::String(text)
            }
        }
        other => other,
    }
}

fn primitive(value: Value, kind: JsonKind) -> Option<Value> {
    match (kind, value) {
        // Empty values are invalid in every FHIR version; some feeds write them anyway.
        (_, Value::String(text)) if text.trim().is_empty() => None,
        (JsonKind::String, Value::String(text)) => Some(Value::String(text)),
        (JsonKind::String, Value::Number(number)) => Some(Value::String(number.to_string())),
        (JsonKind::String, Value::Bool(flag)) => Some(Value::String(flag.to_string())),
        (JsonKind::Boolean, Value::Bool(flag)) => Some(Value::Bool(flag)),
        (JsonKind::Boolean, Value::String(text)) => match text.as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        (JsonKind::Number, Value::Number(number)) => Some(Value::Number(number)),
        // With arbitrary precision the decimal keeps its written digits ("1.50").
        (JsonKind::Number, Value::String(text)) => {
            text.trim().parse::<Number>().ok().map(Value::Number)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cardinality_and_primitive_kinds_follow_r4() {
        let mut dropped = Dropped::new();
        let value = resource(
            json!({
                "resourceType": "Observation",
                "status": "final",
                "category": {"coding": {"code": "vital-signs"}},
                "code": {"text": "x"},
                "valueQuantity": {"value": "1.50"},
                "component": {"code": {"text": "y"}, "valueBoolean": "true"},
                "comments": "gone"
            }),
            &mut dropped,
        );
        assert_eq!(
            value["category"],
            json!([{"coding": [{"code": "vital-signs"}]}])
        );
        assert_eq!(value["valueQuantity"]["value"].to_string(), "1.50");
        assert_eq!(value["component"][0]["valueBoolean"], json!(true));
        assert_eq!(dropped.get("Observation.comments"), Some(&1));
        let with_local_time = resource(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "effectiveDateTime": "2010-12-16T06:39:00", "issued": "2010-12-16T06:39:00+01:00",
                "valueQuantity": {}}),
            &mut dropped,
        );
        assert_eq!(with_local_time["effectiveDateTime"], "2010-12-16T06:39:00Z");
        assert_eq!(with_local_time["issued"], "2010-12-16T06:39:00+01:00");
        assert!(with_local_time.get("valueQuantity").is_none());
        assert!(flare_fhir::validate(&value).is_ok(), "{value}");
    }
}
