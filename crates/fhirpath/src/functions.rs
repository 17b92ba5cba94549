//! The FHIRPath function library.

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;
use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use serde_json::Value as Json;

use crate::error::EvalError;
use crate::eval::{
    Ctx, Items, as_boolean, children, contains_item, eval, make_item, mismatch, navigate,
    singleton, type_info, type_spec_matches, union,
};
use crate::ops;
use crate::parser::{Expr, Func};
use crate::temporal::{Temporal, TemporalKind};
use crate::value::{Item, ItemValue, Node, Quantity, convert_quantity, parse_decimal};

pub(crate) fn call<'a>(
    func: Func,
    focus: Items<'a>,
    args: &'a [Expr],
    pos: usize,
    ctx: Ctx<'_, 'a>,
    input: &[Item<'a>],
) -> Result<Items<'a>, EvalError> {
    let name = func.name();
    // Arguments that are not evaluated per item are evaluated against the caller's focus.
    let arg = |i: usize| -> Result<Items<'a>, EvalError> {
        match args.get(i) {
            Some(expr) => eval(expr, ctx, input),
            None => Ok(Vec::new()),
        }
    };
    let single_focus = || singleton(&focus, name, pos);
    let bool_result = |b: bool| Ok(vec![Item::boolean(b)]);
    match func {
        Func::Empty => bool_result(focus.is_empty()),
        Func::Exists => {
            if args.is_empty() {
                bool_result(!focus.is_empty())
            } else {
                let matching = filter(&focus, &args[0], ctx, pos, name)?;
                bool_result(!matching.is_empty())
            }
        }
        Func::All => {
            for (i, item) in focus.iter().enumerate() {
                let result = eval(
                    &args[0],
                    with_this(ctx, item, i),
                    std::slice::from_ref(item),
                )?;
                if as_boolean(&result, name, pos)? != Some(true) {
                    return bool_result(false);
                }
            }
            bool_result(true)
        }
        Func::AllTrue | Func::AnyTrue | Func::AllFalse | Func::AnyFalse => {
            let mut values = Vec::with_capacity(focus.len());
            for item in &focus {
                values.push(
                    item.as_bool()
                        .ok_or_else(|| mismatch(name, item.bare_type_name(), pos))?,
                );
            }
            bool_result(match func {
                Func::AllTrue => values.iter().all(|b| *b),
                Func::AnyTrue => values.iter().any(|b| *b),
                Func::AllFalse => values.iter().all(|b| !*b),
                _ => values.iter().any(|b| !*b),
            })
        }
        Func::SubsetOf | Func::SupersetOf => {
            let other = arg(0)?;
            let (small, big) = if func == Func::SubsetOf {
                (&focus, &other)
            } else {
                (&other, &focus)
            };
            bool_result(small.iter().all(|item| contains_item(big, item)))
        }
        Func::Count => Ok(vec![Item::integer(focus.len() as i64)]),
        Func::Distinct => Ok(union(focus, Vec::new())),
        Func::IsDistinct => {
            let count = focus.len();
            bool_result(union(focus, Vec::new()).len() == count)
        }
        Func::Where => filter(&focus, &args[0], ctx, pos, name),
        Func::Select => {
            let mut out = Vec::new();
            for (i, item) in focus.iter().enumerate() {
                out.extend(eval(
                    &args[0],
                    with_this(ctx, item, i),
                    std::slice::from_ref(item),
                )?);
            }
            Ok(out)
        }
        Func::Repeat => {
            let mut out: Items<'a> = Vec::new();
            let mut queue = focus;
            while !queue.is_empty() {
                let mut next = Vec::new();
                for (i, item) in queue.iter().enumerate() {
                    for produced in eval(
                        &args[0],
                        with_this(ctx, item, i),
                        std::slice::from_ref(item),
                    )? {
                        if !contains_item(&out, &produced) {
                            out.push(produced.clone());
                            next.push(produced);
                        }
                    }
                }
                queue = next;
            }
            Ok(out)
        }
        Func::OfType | Func::As => {
            let Expr::TypeName(spec) = &args[0] else {
                return Err(mismatch(name, "a non-type argument", pos));
            };
            Ok(focus
                .into_iter()
                .filter(|item| type_spec_matches(item, spec, true))
                .collect())
        }
        Func::Is => {
            let Expr::TypeName(spec) = &args[0] else {
                return Err(mismatch(name, "a non-type argument", pos));
            };
            Ok(single_focus()?
                .map(|item| Item::boolean(type_spec_matches(item, spec, false)))
                .into_iter()
                .collect())
        }
        Func::Single => Ok(single_focus()?.cloned().into_iter().collect()),
        Func::First => Ok(focus.into_iter().take(1).collect()),
        Func::Last => Ok(focus.into_iter().last().into_iter().collect()),
        Func::Tail => Ok(focus.into_iter().skip(1).collect()),
        Func::Skip | Func::Take => {
            let count = integer_arg(&arg(0)?, name, pos)?;
            let Some(count) = count else {
                return Ok(Vec::new());
            };
            let count = usize::try_from(count.max(0)).unwrap_or(0);
            Ok(if func == Func::Skip {
                focus.into_iter().skip(count).collect()
            } else {
                focus.into_iter().take(count).collect()
            })
        }
        Func::Intersect => {
            let other = arg(0)?;
            let mut out: Items<'a> = Vec::new();
            for item in focus {
                if contains_item(&other, &item) && !contains_item(&out, &item) {
                    out.push(item);
                }
            }
            Ok(out)
        }
        Func::Exclude => {
            let other = arg(0)?;
            Ok(focus
                .into_iter()
                .filter(|item| !contains_item(&other, item))
                .collect())
        }
        Func::Union => Ok(union(focus, arg(0)?)),
        Func::Combine => {
            let mut out = focus;
            out.extend(arg(0)?);
            Ok(out)
        }
        Func::Iif => {
            // The criterion is evaluated with the focus as `$this` when a target is given.
            let this = focus.first();
            let inner = match (this, focus.len()) {
                (Some(item), 1) => Ctx {
                    this: Some(item),
                    ..ctx
                },
                (_, 0 | 1) => ctx,
                _ => {
                    return Err(EvalError::NotSingleton {
                        operation: name.into(),
                        count: focus.len(),
                        position: pos,
                    });
                }
            };
            let scope: &[Item<'a>] = if focus.len() == 1 { &focus } else { input };
            let criterion = eval(&args[0], inner, scope)?;
            let truth = match singleton(&criterion, name, pos)? {
                None => None,
                Some(item) => Some(
                    item.as_bool()
                        .ok_or_else(|| mismatch(name, "a non-boolean criterion", pos))?,
                ),
            };
            if truth == Some(true) {
                eval(&args[1], inner, scope)
            } else {
                match args.get(2) {
                    Some(otherwise) => eval(otherwise, inner, scope),
                    None => Ok(Vec::new()),
                }
            }
        }
        Func::ToBoolean
        | Func::ToInteger
        | Func::ToDecimal
        | Func::ToString
        | Func::ToDate
        | Func::ToDateTime
        | Func::ToTime
        | Func::ToQuantity => {
            let Some(item) = single_focus()? else {
                return Ok(Vec::new());
            };
            let unit = match func {
                Func::ToQuantity => string_arg(&arg(0)?, name, pos)?,
                _ => None,
            };
            Ok(convert(func, item, unit.as_deref()).into_iter().collect())
        }
        Func::ConvertsToBoolean
        | Func::ConvertsToInteger
        | Func::ConvertsToDecimal
        | Func::ConvertsToString
        | Func::ConvertsToDate
        | Func::ConvertsToDateTime
        | Func::ConvertsToTime
        | Func::ConvertsToQuantity => {
            let Some(item) = single_focus()? else {
                return Ok(Vec::new());
            };
            let target = match func {
                Func::ConvertsToBoolean => Func::ToBoolean,
                Func::ConvertsToInteger => Func::ToInteger,
                Func::ConvertsToDecimal => Func::ToDecimal,
                Func::ConvertsToString => Func::ToString,
                Func::ConvertsToDate => Func::ToDate,
                Func::ConvertsToDateTime => Func::ToDateTime,
                Func::ConvertsToTime => Func::ToTime,
                _ => Func::ToQuantity,
            };
            let unit = match func {
                Func::ConvertsToQuantity => string_arg(&arg(0)?, name, pos)?,
                _ => None,
            };
            bool_result(convert(target, item, unit.as_deref()).is_some())
        }
        Func::IndexOf
        | Func::Substring
        | Func::StartsWith
        | Func::EndsWith
        | Func::Contains
        | Func::Upper
        | Func::Lower
        | Func::Replace
        | Func::Matches
        | Func::MatchesFull
        | Func::ReplaceMatches
        | Func::Length
        | Func::ToChars
        | Func::Split
        | Func::Trim => string_function(func, &focus, args, pos, ctx, input),
        Func::Join => {
            let separator = string_arg(&arg(0)?, name, pos)?.unwrap_or_default();
            let mut parts = Vec::with_capacity(focus.len());
            for item in &focus {
                parts.push(string_of(item, name, pos)?.to_string());
            }
            Ok(vec![Item::string(parts.join(&separator))])
        }
        Func::Abs
        | Func::Ceiling
        | Func::Exp
        | Func::Floor
        | Func::Ln
        | Func::Log
        | Func::Power
        | Func::Round
        | Func::Sqrt
        | Func::Truncate => math_function(func, &focus, pos, &arg),
        Func::Children => {
            let mut out = Vec::new();
            for item in &focus {
                children(item, &mut out);
            }
            Ok(out)
        }
        Func::Descendants => {
            let mut out = Vec::new();
            let mut level = focus;
            while !level.is_empty() {
                let mut next = Vec::new();
                for item in &level {
                    children(item, &mut next);
                }
                out.extend(next.iter().cloned());
                level = next;
            }
            Ok(out)
        }
        Func::Trace => {
            let label = string_arg(&arg(0)?, name, pos)?.unwrap_or_default();
            if let Some(tracer) = &ctx.env.tracer {
                tracer(&label, &focus);
            }
            Ok(focus)
        }
        Func::Now | Func::Today | Func::TimeOfDay => {
            let now = ctx.env.now();
            let value = match func {
                Func::Now => now,
                Func::Today => now.to_date(),
                _ => {
                    let mut time = now;
                    time.kind = TemporalKind::Time;
                    time.offset_minutes = None;
                    time
                }
            };
            Ok(vec![Item::system(ItemValue::Temporal(value))])
        }
        Func::Not => {
            let truth = as_boolean(&focus, name, pos)?;
            Ok(truth.map(|b| Item::boolean(!b)).into_iter().collect())
        }
        Func::Extension => {
            let url = string_arg(&arg(0)?, name, pos)?;
            let Some(url) = url else {
                return Ok(Vec::new());
            };
            let mut extensions = Vec::new();
            for item in &focus {
                navigate(item, "extension", &mut extensions);
            }
            Ok(extensions
                .into_iter()
                .filter(|ext| {
                    ext.as_json()
                        .and_then(|j| j.get("url"))
                        .and_then(Json::as_str)
                        == Some(url.as_str())
                })
                .collect())
        }
        Func::HasValue => {
            let has = matches!(focus.as_slice(), [item] if item.is_fhir_typed()
                && !matches!(item.value, ItemValue::Element(_) | ItemValue::Absent));
            bool_result(has)
        }
        Func::GetValue => Ok(match focus.as_slice() {
            [item] if !matches!(item.value, ItemValue::Element(_) | ItemValue::Absent) => {
                vec![Item::system(item.value.clone())]
            }
            _ => Vec::new(),
        }),
        Func::Resolve => Ok(focus.iter().filter_map(|item| resolve(item, ctx)).collect()),
        Func::Type => Ok(focus
            .iter()
            .map(|item| {
                let (namespace, type_name) = type_info(item);
                let json = serde_json::json!({ "namespace": namespace, "name": type_name });
                Item {
                    value: ItemValue::Element(Node::Shared(Arc::new(json))),
                    type_name: Cow::Borrowed("TypeInfo"),
                    primitive_extras: None,
                }
            })
            .collect()),
        Func::Aggregate => {
            let mut total = arg(1)?;
            for (i, item) in focus.iter().enumerate() {
                let mut inner = with_this(ctx, item, i);
                inner.total = Some(&total);
                let next = eval(&args[0], inner, std::slice::from_ref(item))?;
                total = next;
            }
            Ok(total)
        }
        Func::HtmlChecks => bool_result(true),
        Func::Comparable => {
            let (Some(left), other) = (single_focus()?, arg(0)?) else {
                return Ok(Vec::new());
            };
            let Some(right) = singleton(&other, name, pos)? else {
                return Ok(Vec::new());
            };
            match (&left.value, &right.value) {
                (ItemValue::Quantity(a), ItemValue::Quantity(b)) => {
                    bool_result(crate::value::comparable(a, b).is_some())
                }
                _ => Err(mismatch(name, "a non-quantity", pos)),
            }
        }
        Func::Encode | Func::Decode | Func::Escape | Func::Unescape => {
            let Some(item) = single_focus()? else {
                return Ok(Vec::new());
            };
            let text = string_of(item, name, pos)?;
            let Some(format) = string_arg(&arg(0)?, name, pos)? else {
                return Ok(Vec::new());
            };
            let converted = match func {
                Func::Encode => crate::codec::encode(text, &format),
                Func::Decode => crate::codec::decode(text, &format),
                Func::Escape => crate::codec::escape(text, &format),
                _ => crate::codec::unescape(text, &format),
            };
            Ok(converted.map(Item::string).into_iter().collect())
        }
        Func::LowBoundary | Func::HighBoundary | Func::Precision => {
            let Some(item) = single_focus()? else {
                return Ok(Vec::new());
            };
            let digits = integer_arg(&arg(0)?, name, pos)?;
            let result = if func == Func::Precision {
                crate::boundary::precision(&item.value).map(Item::integer)
            } else {
                crate::boundary::boundary(&item.value, digits, func == Func::HighBoundary)
                    .map(Item::system)
            };
            Ok(result.into_iter().collect())
        }
        Func::Sort => sort(focus, args, pos, ctx),
        Func::ConformsTo => {
            // Only the base definitions of core types can be checked without a profile registry.
            let Some(url) = string_arg(&arg(0)?, name, pos)? else {
                return Ok(Vec::new());
            };
            let Some(item) = single_focus()? else {
                return Ok(Vec::new());
            };
            match url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                Some(type_name) if crate::model::model().is_type(type_name) => {
                    bool_result(crate::eval::item_is(item, Some("FHIR"), type_name))
                }
                _ => Err(EvalError::Invalid {
                    operation: name.into(),
                    message: format!("profile '{url}' is not known"),
                    position: pos,
                }),
            }
        }
        Func::MemberOf => Err(EvalError::Invalid {
            operation: name.into(),
            message: "this function is not supported".into(),
            position: pos,
        }),
    }
}

fn with_this<'c, 'a>(ctx: Ctx<'c, 'a>, item: &'c Item<'a>, index: usize) -> Ctx<'c, 'a> {
    Ctx {
        this: Some(item),
        index: Some(index),
        ..ctx
    }
}

fn filter<'a>(
    focus: &[Item<'a>],
    criteria: &'a Expr,
    ctx: Ctx<'_, 'a>,
    pos: usize,
    name: &str,
) -> Result<Items<'a>, EvalError> {
    let mut out = Vec::new();
    for (i, item) in focus.iter().enumerate() {
        let result = eval(
            criteria,
            with_this(ctx, item, i),
            std::slice::from_ref(item),
        )?;
        if as_boolean(&result, name, pos)? == Some(true) {
            out.push(item.clone());
        }
    }
    Ok(out)
}

fn integer_arg(items: &[Item<'_>], name: &str, pos: usize) -> Result<Option<i64>, EvalError> {
    match singleton(items, name, pos)? {
        None => Ok(None),
        Some(item) => match item.value {
            ItemValue::Integer(i) => Ok(Some(i)),
            _ => Err(mismatch(name, "a non-integer argument", pos)),
        },
    }
}

fn string_arg(items: &[Item<'_>], name: &str, pos: usize) -> Result<Option<String>, EvalError> {
    match singleton(items, name, pos)? {
        None => Ok(None),
        Some(item) => Ok(Some(string_of(item, name, pos)?.to_string())),
    }
}

fn string_of<'i>(item: &'i Item<'_>, name: &str, pos: usize) -> Result<&'i str, EvalError> {
    match &item.value {
        ItemValue::String(s) => Ok(s),
        _ => Err(mismatch(name, item.bare_type_name(), pos)),
    }
}

fn string_function<'a>(
    func: Func,
    focus: &[Item<'a>],
    args: &'a [Expr],
    pos: usize,
    ctx: Ctx<'_, 'a>,
    input: &[Item<'a>],
) -> Result<Items<'a>, EvalError> {
    let name = func.name();
    let Some(item) = singleton(focus, name, pos)? else {
        return Ok(Vec::new());
    };
    let text = match &item.value {
        ItemValue::String(s) => s.as_ref(),
        // Functions on strings accept any primitive by its string form in practice; keep strict.
        _ => return Err(mismatch(name, item.bare_type_name(), pos)),
    };
    let mut string_args = Vec::with_capacity(args.len());
    for expr in args {
        let items = eval(expr, ctx, input)?;
        match singleton(&items, name, pos)? {
            None => return Ok(Vec::new()),
            Some(arg) => string_args.push(arg.clone()),
        }
    }
    let arg_str = |i: usize| -> Result<&str, EvalError> { string_of(&string_args[i], name, pos) };
    let arg_int = |i: usize| -> Result<i64, EvalError> {
        match string_args[i].value {
            ItemValue::Integer(n) => Ok(n),
            _ => Err(mismatch(name, "a non-integer argument", pos)),
        }
    };
    let out = match func {
        Func::IndexOf => {
            let needle = arg_str(0)?;
            Item::integer(match text.find(needle) {
                Some(byte) => text[..byte].chars().count() as i64,
                None => -1,
            })
        }
        Func::Substring => {
            let start = arg_int(0)?;
            let length = if string_args.len() > 1 {
                Some(arg_int(1)?)
            } else {
                None
            };
            let count = text.chars().count() as i64;
            if start < 0 || start >= count {
                return Ok(Vec::new());
            }
            let take = length.unwrap_or(count).max(0) as usize;
            Item::string(
                text.chars()
                    .skip(start as usize)
                    .take(take)
                    .collect::<String>(),
            )
        }
        Func::StartsWith => Item::boolean(text.starts_with(arg_str(0)?)),
        Func::EndsWith => Item::boolean(text.ends_with(arg_str(0)?)),
        Func::Contains => Item::boolean(text.contains(arg_str(0)?)),
        Func::Upper => Item::string(text.to_uppercase()),
        Func::Lower => Item::string(text.to_lowercase()),
        Func::Replace => {
            let (pattern, substitution) = (arg_str(0)?, arg_str(1)?);
            if pattern.is_empty() {
                // An empty pattern inserts the substitution around every character.
                let mut out = String::from(substitution);
                for ch in text.chars() {
                    out.push(ch);
                    out.push_str(substitution);
                }
                Item::string(out)
            } else {
                Item::string(text.replace(pattern, substitution))
            }
        }
        Func::Matches | Func::MatchesFull => {
            let regex = ctx
                .regexes
                .get(arg_str(0)?, func == Func::MatchesFull, pos)?;
            Item::boolean(regex.is_match(text))
        }
        Func::ReplaceMatches => {
            if arg_str(0)?.is_empty() {
                return Ok(vec![item.clone()]);
            }
            let regex = ctx.regexes.get(arg_str(0)?, false, pos)?;
            Item::string(regex.replace_all(text, arg_str(1)?).into_owned())
        }
        Func::Length => Item::integer(text.chars().count() as i64),
        Func::ToChars => {
            return Ok(text.chars().map(|c| Item::string(c.to_string())).collect());
        }
        Func::Split => {
            let separator = arg_str(0)?;
            return Ok(text
                .split(separator)
                .map(|part| Item::string(part.to_string()))
                .collect());
        }
        _ => Item::string(text.trim().to_string()),
    };
    Ok(vec![out])
}

fn math_function<'a>(
    func: Func,
    focus: &[Item<'a>],
    pos: usize,
    arg: &dyn Fn(usize) -> Result<Items<'a>, EvalError>,
) -> Result<Items<'a>, EvalError> {
    let name = func.name();
    let Some(item) = singleton(focus, name, pos)? else {
        return Ok(Vec::new());
    };
    let number = match &item.value {
        ItemValue::Integer(i) => Decimal::from(*i),
        ItemValue::Decimal(d) => *d,
        ItemValue::Quantity(q) if func == Func::Abs => {
            return Ok(vec![Item::system(ItemValue::Quantity(Quantity::new(
                q.value.abs(),
                q.unit.clone(),
            )))]);
        }
        _ => return Err(mismatch(name, item.bare_type_name(), pos)),
    };
    let is_integer = matches!(item.value, ItemValue::Integer(_));
    let from_f64 = |f: f64| -> Items<'a> {
        if f.is_finite() {
            Decimal::from_f64(f)
                .map(|d| Item::system(ItemValue::Decimal(d.normalize())))
                .into_iter()
                .collect()
        } else {
            Vec::new()
        }
    };
    let as_f64 = number.to_f64().unwrap_or(f64::NAN);
    let integer = |d: Decimal| -> Items<'a> { d.to_i64().map(Item::integer).into_iter().collect() };
    Ok(match func {
        Func::Abs => {
            if is_integer {
                integer(number.abs())
            } else {
                vec![Item::system(ItemValue::Decimal(number.abs()))]
            }
        }
        Func::Ceiling => integer(number.ceil()),
        Func::Floor => integer(number.floor()),
        Func::Truncate => integer(number.trunc()),
        Func::Exp => from_f64(as_f64.exp()),
        Func::Ln => from_f64(as_f64.ln()),
        Func::Sqrt => from_f64(as_f64.sqrt()),
        Func::Log => {
            let Some(base) = number_arg(&arg(0)?, name, pos)? else {
                return Ok(Vec::new());
            };
            from_f64(as_f64.ln() / base.to_f64().unwrap_or(f64::NAN).ln())
        }
        Func::Power => {
            let exponent_items = arg(0)?;
            let Some(exponent) = number_arg(&exponent_items, name, pos)? else {
                return Ok(Vec::new());
            };
            let integer_exponent = matches!(
                exponent_items.first().map(|i| &i.value),
                Some(ItemValue::Integer(_))
            );
            if is_integer && integer_exponent && exponent >= Decimal::ZERO {
                let base = number.to_i64().unwrap_or(0);
                let exp = exponent.to_u32().unwrap_or(u32::MAX);
                base.checked_pow(exp)
                    .map(Item::integer)
                    .into_iter()
                    .collect()
            } else {
                from_f64(as_f64.powf(exponent.to_f64().unwrap_or(f64::NAN)))
            }
        }
        _ => {
            let digits = match integer_arg(&arg(0)?, name, pos)? {
                Some(d) if d < 0 => return Err(mismatch(name, "a negative precision", pos)),
                Some(d) => d as u32,
                None => 0,
            };
            let rounded = number.round_dp_with_strategy(
                digits,
                rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            );
            vec![Item::system(ItemValue::Decimal(rounded))]
        }
    })
}

fn number_arg(items: &[Item<'_>], name: &str, pos: usize) -> Result<Option<Decimal>, EvalError> {
    match singleton(items, name, pos)? {
        None => Ok(None),
        Some(item) => match item.value {
            ItemValue::Integer(i) => Ok(Some(Decimal::from(i))),
            ItemValue::Decimal(d) => Ok(Some(d)),
            _ => Err(mismatch(name, "a non-numeric argument", pos)),
        },
    }
}

/// The conversion functions (`toInteger()` …); `None` when the value does not convert.
fn convert<'a>(func: Func, item: &Item<'a>, unit: Option<&str>) -> Option<Item<'a>> {
    let value = &item.value;
    let converted = match func {
        Func::ToBoolean => ItemValue::Boolean(match value {
            ItemValue::Boolean(b) => *b,
            ItemValue::Integer(1) => true,
            ItemValue::Integer(0) => false,
            ItemValue::Decimal(d) if *d == Decimal::ONE => true,
            ItemValue::Decimal(d) if d.is_zero() => false,
            ItemValue::String(s) => match s.to_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" | "1.0" => true,
                "false" | "f" | "no" | "n" | "0" | "0.0" => false,
                _ => return None,
            },
            _ => return None,
        }),
        Func::ToInteger => ItemValue::Integer(match value {
            ItemValue::Integer(i) => *i,
            ItemValue::Boolean(b) => i64::from(*b),
            ItemValue::String(s) => {
                let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                s.parse().ok()?
            }
            _ => return None,
        }),
        Func::ToDecimal => ItemValue::Decimal(match value {
            ItemValue::Integer(i) => Decimal::from(*i),
            ItemValue::Decimal(d) => *d,
            ItemValue::Boolean(b) => {
                if *b {
                    Decimal::ONE
                } else {
                    Decimal::ZERO
                }
            }
            ItemValue::String(s) => {
                let body = s.strip_prefix(['+', '-']).unwrap_or(s);
                let valid = !body.is_empty()
                    && body.split_once('.').map_or(
                        body.bytes().all(|b| b.is_ascii_digit()),
                        |(w, f)| {
                            !w.is_empty()
                                && !f.is_empty()
                                && (w.bytes().chain(f.bytes())).all(|b| b.is_ascii_digit())
                        },
                    );
                if !valid {
                    return None;
                }
                parse_decimal(s)?
            }
            _ => return None,
        }),
        Func::ToString => ItemValue::String(Cow::Owned(match value {
            ItemValue::String(s) => s.to_string(),
            ItemValue::Boolean(b) => b.to_string(),
            ItemValue::Integer(i) => i.to_string(),
            ItemValue::Decimal(d) => d.to_string(),
            ItemValue::Temporal(t) => t.to_string(),
            ItemValue::Quantity(q) if is_calendar_unit(&q.unit) => {
                format!("{} {}", q.value, q.unit)
            }
            ItemValue::Quantity(q) => format!("{} '{}'", q.value, q.unit),
            _ => return None,
        })),
        Func::ToDate => ItemValue::Temporal(match value {
            ItemValue::Temporal(t) if t.kind != TemporalKind::Time => t.to_date(),
            ItemValue::String(s) => Temporal::parse_fhir_date_time(s)?.to_date(),
            _ => return None,
        }),
        Func::ToDateTime => ItemValue::Temporal(match value {
            ItemValue::Temporal(t) if t.kind != TemporalKind::Time => {
                t.with_kind(TemporalKind::DateTime)
            }
            ItemValue::String(s) => {
                Temporal::parse_fhir_date_time(s)?.with_kind(TemporalKind::DateTime)
            }
            _ => return None,
        }),
        Func::ToTime => ItemValue::Temporal(match value {
            ItemValue::Temporal(t) if t.kind == TemporalKind::Time => *t,
            ItemValue::String(s) => Temporal::parse_fhir_time(s)?,
            _ => return None,
        }),
        _ => {
            let quantity = match value {
                ItemValue::Integer(i) => Quantity::new(Decimal::from(*i), "1"),
                ItemValue::Decimal(d) => Quantity::new(*d, "1"),
                ItemValue::Boolean(b) => {
                    Quantity::new(if *b { Decimal::ONE } else { Decimal::ZERO }, "1")
                }
                ItemValue::Quantity(q) => q.clone(),
                ItemValue::String(s) => parse_quantity_string(s)?,
                ItemValue::Element(_) => match ops::scalar(item) {
                    ops::Scalar::Quantity(q) => q,
                    _ => return None,
                },
                _ => return None,
            };
            let quantity = match unit {
                Some(unit) => convert_quantity(&quantity, unit)?,
                None => quantity,
            };
            ItemValue::Quantity(quantity)
        }
    };
    Some(Item::system(converted))
}

/// `"5.5 'mg'"`, `"4 days"`, `"1"`.
fn parse_quantity_string(s: &str) -> Option<Quantity> {
    let s = s.trim();
    let (number, unit) = match s.find([' ', '\'']) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let body = number.strip_prefix(['+', '-']).unwrap_or(number);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value = parse_decimal(number)?;
    let unit = if unit.is_empty() {
        "1".to_string()
    } else if let Some(quoted) = unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
        quoted.to_string()
    } else if is_calendar_unit(unit) {
        unit.to_string()
    } else {
        return None;
    };
    Some(Quantity::new(value, unit))
}

/// `resolve()`: the environment's resolver, a contained resource, or a typed stub.
fn resolve<'a>(item: &Item<'a>, ctx: Ctx<'_, 'a>) -> Option<Item<'a>> {
    let reference = match &item.value {
        ItemValue::String(s) => s.to_string(),
        ItemValue::Element(node) => node.json().get("reference")?.as_str()?.to_string(),
        _ => return None,
    };
    if let Some(resolver) = &ctx.env.resolver {
        return resolver(&reference)
            .map(|json| make_item(Node::Shared(Arc::new(json)), None, None));
    }
    if let Some(id) = reference.strip_prefix('#') {
        let contained = ctx.resource.as_json()?.get("contained")?.as_array()?;
        let index = contained
            .iter()
            .position(|r| r.get("id").and_then(Json::as_str) == Some(id))?;
        let mut out = Vec::new();
        navigate(ctx.resource, "contained", &mut out);
        return out.into_iter().nth(index);
    }
    // `Patient/123`, `http://server/fhir/Patient/123/_history/2`: the type is the segment before
    // the id.
    let path = reference.split("/_history/").next().unwrap_or(&reference);
    let mut segments = path.rsplit('/');
    let id = segments.next()?;
    let resource_type = segments.next()?;
    if !crate::model::model().is_resource_type(resource_type) {
        return None;
    }
    let stub = serde_json::json!({ "resourceType": resource_type, "id": id });
    Some(make_item(Node::Shared(Arc::new(stub)), None, None))
}

/// Compiled regular expressions, by pattern, shared by all evaluations of one expression.
#[derive(Debug, Default)]
pub(crate) struct RegexCacheInner {
    pub entries: std::sync::Mutex<Vec<(String, bool, Arc<Regex>)>>,
}

impl crate::RegexCache {
    pub(crate) fn get(
        &self,
        pattern: &str,
        anchored: bool,
        pos: usize,
    ) -> Result<Arc<Regex>, EvalError> {
        let mut entries = self
            .0
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, _, regex)) = entries
            .iter()
            .find(|(p, a, _)| p == pattern && *a == anchored)
        {
            return Ok(regex.clone());
        }
        // `matchesFull` tests the whole string; `(?s)` lets `.` cross line ends as in other engines.
        let source = if anchored {
            format!("(?s)^(?:{pattern})$")
        } else {
            format!("(?s){pattern}")
        };
        let regex = Arc::new(Regex::new(&source).map_err(|e| EvalError::BadRegex {
            message: e.to_string(),
            position: pos,
        })?);
        if entries.len() < 64 {
            entries.push((pattern.to_string(), anchored, regex.clone()));
        }
        Ok(regex)
    }
}

fn is_calendar_unit(unit: &str) -> bool {
    matches!(
        unit,
        "year"
            | "years"
            | "month"
            | "months"
            | "week"
            | "weeks"
            | "day"
            | "days"
            | "hour"
            | "hours"
            | "minute"
            | "minutes"
            | "second"
            | "seconds"
            | "millisecond"
            | "milliseconds"
    )
}

/// `sort(key, -key…)`: stable, by each key in turn; a leading `-` sorts that key descending.
fn sort<'a>(
    focus: Items<'a>,
    args: &'a [Expr],
    pos: usize,
    ctx: Ctx<'_, 'a>,
) -> Result<Items<'a>, EvalError> {
    let keys: Vec<(&'a Expr, bool)> = args
        .iter()
        .map(|arg| match arg {
            Expr::Negate { operand, .. } => (operand.as_ref(), true),
            other => (other, false),
        })
        .collect();
    let mut keyed = Vec::with_capacity(focus.len());
    for (i, item) in focus.iter().enumerate() {
        let mut values = Vec::with_capacity(keys.len().max(1));
        if keys.is_empty() {
            values.push(Some(item.clone()));
        }
        for (key, _) in &keys {
            let result = eval(key, with_this(ctx, item, i), std::slice::from_ref(item))?;
            values.push(singleton(&result, "sort", pos)?.cloned());
        }
        keyed.push((values, item.clone()));
    }
    let mut failure = None;
    keyed.sort_by(|(a, _), (b, _)| {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            let descending = keys.get(k).is_some_and(|(_, d)| *d);
            // Items without a key come first in either direction.
            let ordering = match (x, y) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => return std::cmp::Ordering::Less,
                (Some(_), None) => return std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => match ops::compare(x, y) {
                    Ok(o) => o.unwrap_or(std::cmp::Ordering::Equal),
                    Err(detail) => {
                        failure.get_or_insert(detail);
                        std::cmp::Ordering::Equal
                    }
                },
            };
            let ordering = if descending {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering != std::cmp::Ordering::Equal {
                return ordering;
            }
        }
        std::cmp::Ordering::Equal
    });
    if let Some(detail) = failure {
        return Err(mismatch("sort", &detail, pos));
    }
    Ok(keyed.into_iter().map(|(_, item)| item).collect())
}
