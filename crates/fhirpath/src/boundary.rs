//! `lowBoundary()`, `highBoundary()` and `precision()`: the range a value of limited precision
//! stands for.

use rust_decimal::Decimal;

use crate::temporal::{Precision, Temporal, TemporalKind, days_in_month};
use crate::value::{ItemValue, Quantity};

/// Digits of precision: decimals by their scale; dates and times by digit count
/// (`@2014` is 4, `@2014-01-05T10:30:00.000` is 17, `@T10:30` is 4).
pub(crate) fn precision(value: &ItemValue<'_>) -> Option<i64> {
    match value {
        ItemValue::Decimal(d) => Some(i64::from(d.scale())),
        ItemValue::Integer(_) => Some(0),
        ItemValue::Temporal(t) => Some(temporal_digits(t.kind, t.precision)),
        _ => None,
    }
}

fn temporal_digits(kind: TemporalKind, precision: Precision) -> i64 {
    let date_digits = match precision {
        Precision::Year => 4,
        Precision::Month => 6,
        Precision::Day => 8,
        Precision::Hour => 10,
        Precision::Minute => 12,
        Precision::Second => 14,
        Precision::Millisecond => 17,
    };
    if kind == TemporalKind::Time {
        date_digits - 8
    } else {
        date_digits
    }
}

fn precision_of_digits(kind: TemporalKind, digits: i64) -> Option<Precision> {
    let digits = if kind == TemporalKind::Time {
        digits + 8
    } else {
        digits
    };
    let precision = match digits {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        10 => Precision::Hour,
        12 => Precision::Minute,
        14 => Precision::Second,
        17 => Precision::Millisecond,
        _ => return None,
    };
    let allowed = match kind {
        TemporalKind::Date => precision <= Precision::Day,
        TemporalKind::DateTime => true,
        TemporalKind::Time => precision >= Precision::Hour,
    };
    allowed.then_some(precision)
}

pub(crate) fn boundary(
    value: &ItemValue<'_>,
    digits: Option<i64>,
    high: bool,
) -> Option<ItemValue<'static>> {
    match value {
        ItemValue::Integer(i) => {
            decimal_boundary(Decimal::from(*i), digits, high).map(ItemValue::Decimal)
        }
        ItemValue::Decimal(d) => decimal_boundary(*d, digits, high).map(ItemValue::Decimal),
        ItemValue::Quantity(q) => decimal_boundary(q.value, digits, high)
            .map(|v| ItemValue::Quantity(Quantity::new(v, q.unit.clone()))),
        ItemValue::Temporal(t) => temporal_boundary(t, digits, high).map(ItemValue::Temporal),
        _ => None,
    }
}

fn decimal_boundary(value: Decimal, digits: Option<i64>, high: bool) -> Option<Decimal> {
    let digits = u32::try_from(digits.unwrap_or(8))
        .ok()
        .filter(|d| *d <= 28)?;
    // Half a unit of the last given digit either side of the value.
    let half = Decimal::new(5, value.scale().checked_add(1)?);
    let edge = if high {
        value.checked_add(half)?
    } else {
        value.checked_sub(half)?
    };
    // Moving towards zero truncates; moving away from zero rounds half away from zero (the
    // behaviour the official suite pins down, including `-0.0`).
    let away_from_zero = high == edge.is_sign_positive();
    let mut result = if away_from_zero {
        edge.round_dp_with_strategy(digits, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
    } else {
        edge.trunc_with_scale(digits)
    };
    result.rescale(digits);
    // A negative value whose boundary rounds to zero keeps its sign (`-0.0`).
    if result.is_zero() {
        result.set_sign_negative(edge.is_sign_negative());
    }
    Some(result)
}

fn temporal_boundary(t: &Temporal, digits: Option<i64>, high: bool) -> Option<Temporal> {
    let target = match digits {
        Some(d) => precision_of_digits(t.kind, d)?,
        None => match t.kind {
            TemporalKind::Date => Precision::Day,
            _ => Precision::Millisecond,
        },
    };
    let mut out = *t;
    // An hour alone is not a valid FHIR time: it is read as hh:00.
    let given = if t.kind == TemporalKind::DateTime && t.precision == Precision::Hour {
        Precision::Minute
    } else {
        t.precision
    };
    if given < Precision::Month {
        out.month = if high { 12 } else { 1 };
    }
    if given < Precision::Day {
        out.day = if high {
            days_in_month(out.year, out.month as u32) as u8
        } else {
            1
        };
    }
    if given < Precision::Hour {
        out.hour = if high { 23 } else { 0 };
    }
    if given < Precision::Minute {
        out.minute = if high { 59 } else { 0 };
    }
    if given < Precision::Second {
        out.second = if high { 59 } else { 0 };
    }
    if given < Precision::Millisecond {
        out.millis = if high { 999 } else { 0 };
    }
    // An unknown offset spans the earliest and latest zones.
    if t.kind == TemporalKind::DateTime && out.offset_minutes.is_none() && target >= Precision::Hour
    {
        out.offset_minutes = Some(if high { -12 * 60 } else { 14 * 60 });
    }
    out.precision = target;
    Some(out.truncate_to_precision())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn decimal_boundaries_span_half_a_unit_of_the_last_digit() {
        assert_eq!(
            decimal_boundary(dec("1.587"), None, false)
                .unwrap()
                .to_string(),
            "1.58650000"
        );
        assert_eq!(
            decimal_boundary(dec("1.587"), Some(2), true)
                .unwrap()
                .to_string(),
            "1.59"
        );
        assert_eq!(
            decimal_boundary(dec("-1.587"), Some(2), false)
                .unwrap()
                .to_string(),
            "-1.59"
        );
        assert_eq!(
            decimal_boundary(dec("120"), Some(2), false)
                .unwrap()
                .to_string(),
            "119.50"
        );
        assert!(decimal_boundary(dec("1.587"), Some(-1), false).is_none());
    }
}
