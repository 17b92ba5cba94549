//! Equality, equivalence, ordering and arithmetic on items.

use std::borrow::Cow;
use std::cmp::Ordering;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::temporal::{Temporal, TemporalKind};
use crate::value::{
    Item, ItemValue, Quantity, canonical_unit, comparable, compare_quantities, convert_quantity,
    json_equal, quantity_of_element,
};

/// A view of an item as a comparable system value.
pub(crate) enum Scalar<'i> {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(&'i str),
    Temporal(Temporal),
    Quantity(Quantity),
    Element(&'i serde_json::Value),
    Absent,
}

pub(crate) fn scalar<'i>(item: &'i Item<'_>) -> Scalar<'i> {
    match &item.value {
        ItemValue::Boolean(b) => Scalar::Boolean(*b),
        ItemValue::Integer(i) => Scalar::Integer(*i),
        ItemValue::Decimal(d) => Scalar::Decimal(*d),
        ItemValue::String(s) => Scalar::String(s),
        ItemValue::Temporal(t) => Scalar::Temporal(*t),
        ItemValue::Quantity(q) => Scalar::Quantity(q.clone()),
        ItemValue::Element(node) => {
            let json = node.json();
            if is_quantity_type(&item.type_name)
                && let Some(q) = quantity_of_element(json)
            {
                return Scalar::Quantity(q);
            }
            Scalar::Element(json)
        }
        ItemValue::Absent => Scalar::Absent,
    }
}

fn is_quantity_type(type_name: &str) -> bool {
    matches!(
        type_name,
        "Quantity" | "Age" | "Distance" | "Duration" | "Count" | "SimpleQuantity" | "MoneyQuantity"
    )
}

/// A string compared with a date/time is read as one (FHIR strings of unknown type).
fn temporal_from_str(s: &str, like: &Temporal) -> Option<Temporal> {
    match like.kind {
        TemporalKind::Time => Temporal::parse_fhir_time(s),
        _ => Temporal::parse_fhir_date_time(s),
    }
}

/// `=`: `None` when the answer is unknown (dates of different precision).
pub(crate) fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    use Scalar as S;
    Some(match (scalar(a), scalar(b)) {
        (S::Boolean(x), S::Boolean(y)) => x == y,
        (S::Integer(x), S::Integer(y)) => x == y,
        (S::Integer(x), S::Decimal(y)) => Decimal::from(x) == y,
        (S::Decimal(x), S::Integer(y)) => x == Decimal::from(y),
        (S::Decimal(x), S::Decimal(y)) => x == y,
        (S::String(x), S::String(y)) => x == y,
        // A time of day is never equal to a date.
        (S::Temporal(x), S::Temporal(y))
            if (x.kind == TemporalKind::Time) != (y.kind == TemporalKind::Time) =>
        {
            false
        }
        (S::Temporal(x), S::Temporal(y)) => return x.compare(&y).map(|o| o == Ordering::Equal),
        (S::String(x), S::Temporal(y)) | (S::Temporal(y), S::String(x)) => {
            let x = temporal_from_str(x, &y)?;
            return x.compare(&y).map(|o| o == Ordering::Equal);
        }
        (S::Quantity(x), S::Quantity(y)) => {
            return compare_quantities(&x, &y).map(|o| o == Ordering::Equal);
        }
        (S::Element(x), S::Element(y)) => json_equal(x, y),
        (S::Absent, S::Absent) => true,
        _ => false,
    })
}

/// `~`: never unknown.
pub(crate) fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    use Scalar as S;
    match (scalar(a), scalar(b)) {
        (S::String(x), S::String(y)) => normalize_ws(x) == normalize_ws(y),
        (S::Integer(x), S::Integer(y)) => x == y,
        (S::Integer(x), S::Decimal(y)) => decimal_equivalent(Decimal::from(x), y),
        (S::Decimal(x), S::Integer(y)) => decimal_equivalent(x, Decimal::from(y)),
        (S::Decimal(x), S::Decimal(y)) => decimal_equivalent(x, y),
        (S::Temporal(x), S::Temporal(y)) => {
            x.same_precision(&y) && x.compare(&y) == Some(Ordering::Equal)
        }
        (S::Quantity(x), S::Quantity(y)) => match comparable(&x, &y) {
            Some((p, q)) => decimal_equivalent(p, q),
            None => false,
        },
        _ => equal(a, b).unwrap_or(false),
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Decimals are equivalent when equal at the precision of the less precise one.
fn decimal_equivalent(x: Decimal, y: Decimal) -> bool {
    let scale = x.scale().min(y.scale());
    x.round_dp(scale) == y.round_dp(scale)
}

/// Ordering for `<` `>` `<=` `>=`: `Err` for values that cannot be compared at all,
/// `Ok(None)` when unknown.
pub(crate) fn compare(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, String> {
    use Scalar as S;
    Ok(match (scalar(a), scalar(b)) {
        (S::Integer(x), S::Integer(y)) => Some(x.cmp(&y)),
        (S::Integer(x), S::Decimal(y)) => Some(Decimal::from(x).cmp(&y)),
        (S::Decimal(x), S::Integer(y)) => Some(x.cmp(&Decimal::from(y))),
        (S::Decimal(x), S::Decimal(y)) => Some(x.cmp(&y)),
        (S::String(x), S::String(y)) => Some(x.cmp(y)),
        (S::Temporal(x), S::Temporal(y)) => x.compare(&y),
        (S::String(x), S::Temporal(y)) => temporal_from_str(x, &y).and_then(|x| x.compare(&y)),
        (S::Temporal(x), S::String(y)) => temporal_from_str(y, &x).and_then(|y| x.compare(&y)),
        (S::Quantity(x), S::Quantity(y)) => compare_quantities(&x, &y),
        _ => return Err(format!("{} and {}", a.bare_type_name(), b.bare_type_name())),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
}

/// Arithmetic on two singletons: `Ok(None)` for an empty result (division by zero, overflow).
pub(crate) fn arithmetic<'a>(
    op: Arith,
    a: &Item<'a>,
    b: &Item<'a>,
) -> Result<Option<Item<'a>>, String> {
    use Scalar as S;
    let mismatch = || format!("{} and {}", a.bare_type_name(), b.bare_type_name());
    let result = match (scalar(a), scalar(b)) {
        (S::Integer(x), S::Integer(y)) => match op {
            Arith::Add => x.checked_add(y).map(ItemValue::Integer),
            Arith::Sub => x.checked_sub(y).map(ItemValue::Integer),
            Arith::Mul => x.checked_mul(y).map(ItemValue::Integer),
            Arith::Div => decimal_op(op, Decimal::from(x), Decimal::from(y)),
            Arith::IntDiv => x.checked_div(y).map(ItemValue::Integer),
            Arith::Mod => x.checked_rem(y).map(ItemValue::Integer),
        },
        (S::Integer(x), S::Decimal(y)) => decimal_op(op, Decimal::from(x), y),
        (S::Decimal(x), S::Integer(y)) => decimal_op(op, x, Decimal::from(y)),
        (S::Decimal(x), S::Decimal(y)) => decimal_op(op, x, y),
        (S::String(x), S::String(y)) if op == Arith::Add => {
            Some(ItemValue::String(Cow::Owned(format!("{x}{y}"))))
        }
        (S::Temporal(t), S::Quantity(q)) if matches!(op, Arith::Add | Arith::Sub) => {
            return temporal_add(&t, &q, op == Arith::Sub)
                .map(|t| t.map(|t| Item::system(ItemValue::Temporal(t))));
        }
        (S::Quantity(x), S::Quantity(y)) => match op {
            Arith::Add | Arith::Sub => {
                let y_in_x_unit = convert_quantity(&y, &x.unit).ok_or_else(mismatch)?;
                let value = if op == Arith::Add {
                    x.value.checked_add(y_in_x_unit.value)
                } else {
                    x.value.checked_sub(y_in_x_unit.value)
                };
                value.map(|v| ItemValue::Quantity(Quantity::new(v, x.unit)))
            }
            Arith::Mul => match crate::value::same_dimension_product(&x, &y) {
                // `cm * m`: both in the base unit of their dimension, squared.
                Some(product) => Some(ItemValue::Quantity(product)),
                None => x.value.checked_mul(y.value).map(|v| {
                    ItemValue::Quantity(Quantity::new(v, combine_units(&x.unit, &y.unit, '.')))
                }),
            },
            Arith::Div => {
                if y.value.is_zero() {
                    None
                } else if canonical_unit(&x.unit) == canonical_unit(&y.unit) {
                    x.value
                        .checked_div(y.value)
                        .map(|v| ItemValue::Quantity(Quantity::new(v.normalize(), "1")))
                } else {
                    x.value.checked_div(y.value).map(|v| {
                        ItemValue::Quantity(Quantity::new(
                            v.normalize(),
                            combine_units(&x.unit, &y.unit, '/'),
                        ))
                    })
                }
            }
            _ => return Err(mismatch()),
        },
        (S::Quantity(x), S::Integer(_) | S::Decimal(_))
            if matches!(op, Arith::Mul | Arith::Div) =>
        {
            let factor = number_of(b).ok_or_else(mismatch)?;
            let value = if op == Arith::Mul {
                x.value.checked_mul(factor)
            } else {
                x.value.checked_div(factor)
            };
            value.map(|v| ItemValue::Quantity(Quantity::new(v, x.unit)))
        }
        (S::Integer(_) | S::Decimal(_), S::Quantity(y)) if op == Arith::Mul => {
            let factor = number_of(a).ok_or_else(mismatch)?;
            y.value
                .checked_mul(factor)
                .map(|v| ItemValue::Quantity(Quantity::new(v, y.unit)))
        }
        _ => return Err(mismatch()),
    };
    Ok(result.map(Item::system))
}

fn combine_units(a: &str, b: &str, sep: char) -> String {
    match (a, b) {
        ("1", other) if sep == '.' => other.to_string(),
        (other, "1") => other.to_string(),
        _ => format!("{a}{sep}{b}"),
    }
}

fn number_of(item: &Item<'_>) -> Option<Decimal> {
    match item.value {
        ItemValue::Integer(i) => Some(Decimal::from(i)),
        ItemValue::Decimal(d) => Some(d),
        _ => None,
    }
}

fn decimal_op(op: Arith, x: Decimal, y: Decimal) -> Option<ItemValue<'static>> {
    match op {
        Arith::Add => x.checked_add(y).map(ItemValue::Decimal),
        Arith::Sub => x.checked_sub(y).map(ItemValue::Decimal),
        Arith::Mul => x.checked_mul(y).map(ItemValue::Decimal),
        Arith::Div => {
            if y.is_zero() {
                None
            } else {
                x.checked_div(y).map(|d| ItemValue::Decimal(d.normalize()))
            }
        }
        Arith::IntDiv => {
            if y.is_zero() {
                None
            } else {
                x.checked_div(y)
                    .and_then(|d| d.trunc().to_i64())
                    .map(ItemValue::Integer)
            }
        }
        Arith::Mod => {
            if y.is_zero() {
                None
            } else {
                x.checked_rem(y).map(ItemValue::Decimal)
            }
        }
    }
}

fn temporal_add(t: &Temporal, q: &Quantity, subtract: bool) -> Result<Option<Temporal>, String> {
    let unit = q.unit.as_str();
    let value = if subtract { -q.value } else { q.value };
    let whole = value.trunc().to_i64().ok_or("duration out of range")?;
    // Fractions of any unit are dropped, as the official suite expects (`+ 0.1 's'` is a no-op).
    let fraction_millis = 0;
    if matches!(unit, "a" | "mo") {
        // UCUM years and months are not calendar durations.
        return Err(format!("a date and the UCUM duration '{unit}'"));
    }
    match t.add(whole, unit, fraction_millis) {
        Some(result) => Ok(Some(result)),
        None => Err(format!("a date/time and a quantity in '{unit}'")),
    }
}
