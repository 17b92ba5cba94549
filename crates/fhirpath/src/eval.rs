//! Evaluation of the expression tree over items.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::Env;
use crate::error::EvalError;
use crate::model::{ChildInfo, model, type_from_suffix};
use crate::ops::{self, Arith};
use crate::parser::{BinOp, Expr, Literal, TypeSpec};
use crate::value::{Item, ItemValue, Node, primitive_value};

pub(crate) type Items<'a> = Vec<Item<'a>>;

/// The evaluation context: environment, root items and the iteration variables.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'c, 'a> {
    pub env: &'c Env<'a>,
    pub resource: &'c Item<'a>,
    pub context: &'c Item<'a>,
    pub this: Option<&'c Item<'a>>,
    pub index: Option<usize>,
    pub total: Option<&'c [Item<'a>]>,
    pub regexes: &'c crate::RegexCache,
}

pub(crate) fn eval<'a>(
    expr: &'a Expr,
    ctx: Ctx<'_, 'a>,
    input: &[Item<'a>],
) -> Result<Items<'a>, EvalError> {
    match expr {
        Expr::Empty => Ok(Vec::new()),
        Expr::Literal(lit) => Ok(vec![literal(lit)]),
        Expr::This => Ok(ctx
            .this
            .map(|t| vec![t.clone()])
            .unwrap_or_else(|| input.to_vec())),
        Expr::Index => Ok(ctx
            .index
            .map(|i| vec![Item::integer(i as i64)])
            .unwrap_or_default()),
        Expr::Total => Ok(ctx.total.map(<[Item<'a>]>::to_vec).unwrap_or_default()),
        Expr::Variable { name, pos } => variable(name, *pos, ctx),
        Expr::Identifier { name, pos } => {
            // A leading type name filters the context (`Patient.name`); anything else is a child.
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                let matching: Items<'a> = input
                    .iter()
                    .filter(|item| item_is(item, None, name))
                    .cloned()
                    .collect();
                if !matching.is_empty() || model().is_resource_type(name) {
                    return Ok(matching);
                }
            }
            navigate_all(input, name, *pos)
        }
        Expr::Member { target, name, pos } => {
            let targets = eval(target, ctx, input)?;
            navigate_all(&targets, name, *pos)
        }
        Expr::Indexer { target, index, pos } => {
            let targets = eval(target, ctx, input)?;
            let index_items = eval(index, ctx, input)?;
            let Some(index_item) = singleton(&index_items, "indexer", *pos)? else {
                return Ok(Vec::new());
            };
            let ItemValue::Integer(i) = index_item.value else {
                return Err(mismatch("indexer", "a non-integer index", *pos));
            };
            Ok(usize::try_from(i)
                .ok()
                .and_then(|i| targets.into_iter().nth(i))
                .into_iter()
                .collect())
        }
        Expr::Negate { operand, pos } => {
            let items = eval(operand, ctx, input)?;
            let Some(item) = singleton(&items, "unary minus", *pos)? else {
                return Ok(Vec::new());
            };
            let value = match &item.value {
                ItemValue::Integer(i) => match i.checked_neg() {
                    Some(negated) => ItemValue::Integer(negated),
                    None => return Ok(Vec::new()),
                },
                // Zero has no sign to flip.
                ItemValue::Decimal(d) if d.is_zero() => ItemValue::Decimal(*d),
                ItemValue::Decimal(d) => ItemValue::Decimal(-d),
                ItemValue::Quantity(q) => {
                    ItemValue::Quantity(crate::value::Quantity::new(-q.value, q.unit.clone()))
                }
                _ => return Err(mismatch("unary minus", item.bare_type_name(), *pos)),
            };
            Ok(vec![Item::system(value)])
        }
        Expr::Binary {
            op,
            left,
            right,
            pos,
        } => binary(*op, left, right, *pos, ctx, input),
        Expr::Is { operand, spec, pos } => {
            let items = eval(operand, ctx, input)?;
            let Some(item) = singleton(&items, "is", *pos)? else {
                return Ok(Vec::new());
            };
            Ok(vec![Item::boolean(item_is(
                item,
                spec.namespace.as_deref(),
                &spec.name,
            ))])
        }
        Expr::As { operand, spec, .. } => {
            let items = eval(operand, ctx, input)?;
            Ok(items
                .into_iter()
                .filter(|item| item_as(item, spec.namespace.as_deref(), &spec.name))
                .collect())
        }
        Expr::TypeName(spec) => Err(EvalError::Invalid {
            operation: "type name".into(),
            message: format!("'{}' is only valid as a type argument", spec.name),
            position: 0,
        }),
        Expr::Call {
            target,
            func,
            args,
            pos,
        } => {
            let focus = match target {
                Some(t) => eval(t, ctx, input)?,
                None => input.to_vec(),
            };
            crate::functions::call(*func, focus, args, *pos, ctx, input)
        }
    }
}

pub(crate) fn literal(lit: &Literal) -> Item<'_> {
    Item::system(match lit {
        Literal::Boolean(b) => ItemValue::Boolean(*b),
        Literal::String(s) => ItemValue::String(Cow::Borrowed(s)),
        Literal::Integer(i) => ItemValue::Integer(*i),
        Literal::Decimal(d) => ItemValue::Decimal(*d),
        Literal::Temporal(t) => ItemValue::Temporal(*t),
        Literal::Quantity(q) => ItemValue::Quantity(q.clone()),
    })
}

fn variable<'a>(name: &str, pos: usize, ctx: Ctx<'_, 'a>) -> Result<Items<'a>, EvalError> {
    let constant = |s: &'static str| Ok(vec![Item::string(s)]);
    match name {
        "resource" | "rootResource" => Ok(vec![ctx.resource.clone()]),
        "context" => Ok(vec![ctx.context.clone()]),
        "ucum" => constant("http://unitsofmeasure.org"),
        "sct" => constant("http://snomed.info/sct"),
        "loinc" => constant("http://loinc.org"),
        _ => {
            if let Some(items) = ctx.env.variable(name) {
                return Ok(items.to_vec());
            }
            if let Some(id) = name.strip_prefix("vs-") {
                return Ok(vec![Item::string(format!(
                    "http://hl7.org/fhir/ValueSet/{id}"
                ))]);
            }
            if let Some(id) = name.strip_prefix("ext-") {
                return Ok(vec![Item::string(format!(
                    "http://hl7.org/fhir/StructureDefinition/{id}"
                ))]);
            }
            Err(EvalError::UnknownVariable {
                name: name.to_string(),
                position: pos,
            })
        }
    }
}

pub(crate) fn mismatch(operation: &str, detail: &str, pos: usize) -> EvalError {
    EvalError::TypeMismatch {
        operation: operation.to_string(),
        detail: detail.to_string(),
        position: pos,
    }
}

/// The single item of a collection; `None` when empty; an error for more than one.
pub(crate) fn singleton<'i, 'a>(
    items: &'i [Item<'a>],
    operation: &str,
    pos: usize,
) -> Result<Option<&'i Item<'a>>, EvalError> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(EvalError::NotSingleton {
            operation: operation.to_string(),
            count: items.len(),
            position: pos,
        }),
    }
}

/// A collection read as a boolean: empty is unknown, a single non-boolean item is true.
pub(crate) fn as_boolean(
    items: &[Item<'_>],
    operation: &str,
    pos: usize,
) -> Result<Option<bool>, EvalError> {
    match singleton(items, operation, pos)? {
        None => Ok(None),
        Some(item) => Ok(Some(item.as_bool().unwrap_or(true))),
    }
}

fn binary<'a>(
    op: BinOp,
    left: &'a Expr,
    right: &'a Expr,
    pos: usize,
    ctx: Ctx<'_, 'a>,
    input: &[Item<'a>],
) -> Result<Items<'a>, EvalError> {
    // Boolean operators short-circuit where three-valued logic allows.
    if matches!(op, BinOp::And | BinOp::Or | BinOp::Implies | BinOp::Xor) {
        let name = binop_name(op);
        let l = as_boolean(&eval(left, ctx, input)?, name, pos)?;
        let short = match (op, l) {
            (BinOp::And, Some(false)) => Some(false),
            (BinOp::Or, Some(true)) => Some(true),
            (BinOp::Implies, Some(false)) => Some(true),
            _ => None,
        };
        if let Some(result) = short {
            return Ok(vec![Item::boolean(result)]);
        }
        let r = as_boolean(&eval(right, ctx, input)?, name, pos)?;
        let result = match op {
            BinOp::And => match (l, r) {
                (Some(true), Some(true)) => Some(true),
                (_, Some(false)) => Some(false),
                _ => None,
            },
            BinOp::Or => match (l, r) {
                (Some(false), Some(false)) => Some(false),
                (_, Some(true)) => Some(true),
                _ => None,
            },
            BinOp::Xor => match (l, r) {
                (Some(a), Some(b)) => Some(a != b),
                _ => None,
            },
            _ => match (l, r) {
                (Some(true), r) => r,
                (None, Some(true)) => Some(true),
                _ => None,
            },
        };
        return Ok(result.map(Item::boolean).into_iter().collect());
    }
    let l = eval(left, ctx, input)?;
    let r = eval(right, ctx, input)?;
    let name = binop_name(op);
    match op {
        BinOp::Union => Ok(union(l, r)),
        BinOp::Eq | BinOp::NotEq => {
            if l.is_empty() || r.is_empty() {
                return Ok(Vec::new());
            }
            let result = collections_equal(&l, &r);
            Ok(result
                .map(|b| Item::boolean(b == (op == BinOp::Eq)))
                .into_iter()
                .collect())
        }
        BinOp::Equiv | BinOp::NotEquiv => {
            let result = collections_equivalent(&l, &r);
            Ok(vec![Item::boolean(result == (op == BinOp::Equiv))])
        }
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            let (Some(a), Some(b)) = (singleton(&l, name, pos)?, singleton(&r, name, pos)?) else {
                return Ok(Vec::new());
            };
            let ordering = ops::compare(a, b).map_err(|detail| mismatch(name, &detail, pos))?;
            Ok(ordering
                .map(|o| {
                    Item::boolean(match op {
                        BinOp::Lt => o == Ordering::Less,
                        BinOp::Gt => o == Ordering::Greater,
                        BinOp::Le => o != Ordering::Greater,
                        _ => o != Ordering::Less,
                    })
                })
                .into_iter()
                .collect())
        }
        BinOp::In | BinOp::Contains => {
            let (element, collection) = if op == BinOp::In { (&l, &r) } else { (&r, &l) };
            let Some(element) = singleton(element, name, pos)? else {
                return Ok(Vec::new());
            };
            let found = collection
                .iter()
                .any(|c| ops::equal(element, c) == Some(true));
            Ok(vec![Item::boolean(found)])
        }
        BinOp::Concat => {
            let text = |items: &[Item<'a>]| -> Result<String, EvalError> {
                match singleton(items, name, pos)? {
                    None => Ok(String::new()),
                    Some(item) => match &item.value {
                        ItemValue::String(s) => Ok(s.to_string()),
                        _ => Err(mismatch(name, item.bare_type_name(), pos)),
                    },
                }
            };
            Ok(vec![Item::string(text(&l)? + &text(&r)?)])
        }
        _ => {
            let arith = match op {
                BinOp::Add => Arith::Add,
                BinOp::Sub => Arith::Sub,
                BinOp::Mul => Arith::Mul,
                BinOp::Div => Arith::Div,
                BinOp::IntDiv => Arith::IntDiv,
                _ => Arith::Mod,
            };
            let (Some(a), Some(b)) = (singleton(&l, name, pos)?, singleton(&r, name, pos)?) else {
                return Ok(Vec::new());
            };
            let result =
                ops::arithmetic(arith, a, b).map_err(|detail| mismatch(name, &detail, pos))?;
            Ok(result.into_iter().collect())
        }
    }
}

fn binop_name(op: BinOp) -> &'static str {
    match op {
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::IntDiv => "div",
        BinOp::Mod => "mod",
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Concat => "&",
        BinOp::Union => "|",
        BinOp::Lt => "<",
        BinOp::Gt => ">",
        BinOp::Le => "<=",
        BinOp::Ge => ">=",
        BinOp::Eq => "=",
        BinOp::Equiv => "~",
        BinOp::NotEq => "!=",
        BinOp::NotEquiv => "!~",
        BinOp::In => "in",
        BinOp::Contains => "contains",
        BinOp::And => "and",
        BinOp::Or => "or",
        BinOp::Xor => "xor",
        BinOp::Implies => "implies",
    }
}

pub(crate) fn collections_equal(l: &[Item<'_>], r: &[Item<'_>]) -> Option<bool> {
    if l.len() != r.len() {
        return Some(false);
    }
    let mut unknown = false;
    for (a, b) in l.iter().zip(r) {
        match ops::equal(a, b) {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

fn collections_equivalent(l: &[Item<'_>], r: &[Item<'_>]) -> bool {
    l.len() == r.len()
        && l.iter().all(|a| r.iter().any(|b| ops::equivalent(a, b)))
        && r.iter().all(|b| l.iter().any(|a| ops::equivalent(a, b)))
}

/// Whether `items` already holds an item equal to `item` (same JSON node, or equal value).
pub(crate) fn contains_item(items: &[Item<'_>], item: &Item<'_>) -> bool {
    items.iter().any(|existing| same_item(existing, item))
}

fn same_item(a: &Item<'_>, b: &Item<'_>) -> bool {
    if let (ItemValue::Element(Node::Borrowed(x)), ItemValue::Element(Node::Borrowed(y))) =
        (&a.value, &b.value)
        && std::ptr::eq(*x, *y)
    {
        return true;
    }
    ops::equal(a, b) == Some(true)
}

pub(crate) fn union<'a>(l: Items<'a>, r: Items<'a>) -> Items<'a> {
    let mut out: Items<'a> = Vec::with_capacity(l.len() + r.len());
    for item in l.into_iter().chain(r) {
        if !contains_item(&out, &item) {
            out.push(item);
        }
    }
    out
}

/// `is` semantics: the item's type is the named type or derives from it.
pub(crate) fn item_is(item: &Item<'_>, namespace: Option<&str>, name: &str) -> bool {
    item_is_with(item, namespace, name, true)
}

/// `as`/`ofType` semantics: like `is`, except that primitive specialisations do not match their
/// base (`code` is not `as(string)`).
pub(crate) fn item_as(item: &Item<'_>, namespace: Option<&str>, name: &str) -> bool {
    item_is_with(item, namespace, name, false)
}

fn item_is_with(
    item: &Item<'_>,
    namespace: Option<&str>,
    name: &str,
    primitive_inheritance: bool,
) -> bool {
    let system = !item.is_fhir_typed();
    match namespace {
        Some("System") => system && item.bare_type_name() == name,
        Some("FHIR") => !system && fhir_type_is(&item.type_name, name, primitive_inheritance),
        _ => {
            if system {
                item.bare_type_name() == name
            } else {
                fhir_type_is(&item.type_name, name, primitive_inheritance)
            }
        }
    }
}

fn fhir_type_is(type_name: &str, ancestor: &str, primitive_inheritance: bool) -> bool {
    if !primitive_inheritance && model().is_primitive(type_name) {
        return type_name == ancestor;
    }
    let mut current = Some(type_name);
    let mut depth = 0;
    while let Some(name) = current {
        if name == ancestor {
            return true;
        }
        depth += 1;
        if depth > 16 {
            return false;
        }
        current = model().base_of(name);
    }
    false
}

/// The type name of a JSON value whose element type is not known.
fn guessed_type(json: &Json) -> &'static str {
    match json {
        Json::Bool(_) => "boolean",
        Json::Number(n) if n.to_string().contains(['.', 'e', 'E']) => "decimal",
        Json::Number(_) => "integer",
        Json::String(_) => "string",
        _ => "Element",
    }
}

/// A key of a JSON object: FHIR elements have few keys, where a scan beats hashing the key.
fn field<'j>(json: &'j Json, key: &str) -> Option<&'j Json> {
    match json {
        Json::Object(object) if object.len() <= 12 => {
            object.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
        }
        Json::Object(object) => object.get(key),
        _ => None,
    }
}

fn child_node<'a>(parent: &Node<'a>, key: &str) -> Option<Node<'a>> {
    match parent {
        Node::Borrowed(json) => field(json, key).map(Node::Borrowed),
        Node::Shared(json) => json.get(key).map(|v| Node::Shared(Arc::new(v.clone()))),
    }
}

fn index_node<'a>(parent: &Node<'a>, index: usize) -> Option<Node<'a>> {
    match parent {
        Node::Borrowed(json) => json.get(index).map(Node::Borrowed),
        Node::Shared(json) => json.get(index).map(|v| Node::Shared(Arc::new(v.clone()))),
    }
}

/// A FHIR type name: static from the model, owned only for names derived from data.
pub(crate) type TypeName = Cow<'static, str>;

/// Runs `f` with `_key` (a primitive's extension sibling) without allocating for usual keys.
fn with_underscore<R>(key: &str, f: impl FnOnce(&str) -> R) -> R {
    let mut buffer = [0u8; 64];
    if key.len() < buffer.len() {
        buffer[0] = b'_';
        buffer[1..=key.len()].copy_from_slice(key.as_bytes());
        if let Ok(prefixed) = std::str::from_utf8(&buffer[..=key.len()]) {
            return f(prefixed);
        }
    }
    f(&format!("_{key}"))
}

/// Builds the item for a JSON node of a known or guessed type.
pub(crate) fn make_item<'a>(
    node: Node<'a>,
    type_name: Option<TypeName>,
    extras: Option<Node<'a>>,
) -> Item<'a> {
    if node.json().is_object() {
        let type_name: Cow<'a, str> = match &node {
            Node::Borrowed(json) => match json.get("resourceType").and_then(Json::as_str) {
                Some(rt) => Cow::Borrowed(rt),
                None => type_name.unwrap_or(Cow::Borrowed("Element")),
            },
            Node::Shared(json) => match json.get("resourceType").and_then(Json::as_str) {
                Some(rt) => Cow::Owned(rt.to_string()),
                None => type_name.unwrap_or(Cow::Borrowed("Element")),
            },
        };
        return Item {
            value: ItemValue::Element(node),
            type_name,
            primitive_extras: extras,
        };
    }
    let type_name = type_name.unwrap_or_else(|| Cow::Borrowed(guessed_type(node.json())));
    let value = match &node {
        Node::Borrowed(json) => primitive_value(json, &type_name),
        Node::Shared(json) => owned_value(primitive_value(json, &type_name)),
    };
    Item {
        value,
        type_name,
        primitive_extras: extras,
    }
}

fn owned_value(value: ItemValue<'_>) -> ItemValue<'static> {
    match value {
        ItemValue::Boolean(b) => ItemValue::Boolean(b),
        ItemValue::Integer(i) => ItemValue::Integer(i),
        ItemValue::Decimal(d) => ItemValue::Decimal(d),
        ItemValue::String(s) => ItemValue::String(Cow::Owned(s.into_owned())),
        ItemValue::Temporal(t) => ItemValue::Temporal(t),
        ItemValue::Quantity(q) => ItemValue::Quantity(q),
        ItemValue::Element(_) | ItemValue::Absent => ItemValue::Absent,
    }
}

/// Appends the children called `name` of the items. An error when the model knows the types of
/// all the items and none of them has such an element (a misspelt path, or a choice element
/// named with its type suffix); mixed collections (`descendants()`) navigate leniently.
pub(crate) fn navigate_all<'a>(
    items: &[Item<'a>],
    name: &str,
    pos: usize,
) -> Result<Items<'a>, EvalError> {
    let mut out = Vec::with_capacity(items.len());
    let types = model();
    let mut undeclared: Option<&str> = None;
    let mut declared = false;
    for item in items {
        if let ItemValue::Element(_) = item.value {
            let parent: &str = &item.type_name;
            let info = types.child(parent, name);
            if info.is_none() && parent != "Element" && types.knows(parent) {
                undeclared = Some(parent);
            } else {
                declared = true;
            }
            navigate_resolved(item, name, info, &mut out);
        } else {
            declared = true;
            navigate(item, name, &mut out);
        }
    }
    match undeclared {
        Some(parent) if !declared => Err(EvalError::UnknownElement {
            name: name.to_string(),
            parent: parent.to_string(),
            position: pos,
        }),
        _ => Ok(out),
    }
}

/// Appends the children called `name` of `item`.
pub(crate) fn navigate<'a>(item: &Item<'a>, name: &str, out: &mut Items<'a>) {
    match (&item.value, &item.primitive_extras) {
        (ItemValue::Element(_), _) => {}
        // A primitive's `id` and `extension` live in its `_name` sibling.
        (_, Some(extras)) => {
            push_key(extras, name, None, "Element", out);
            return;
        }
        _ => return,
    }
    let info = model().child(&item.type_name, name);
    navigate_resolved(item, name, info, out);
}

/// `navigate` with the model's entry for `name` already looked up.
fn navigate_resolved<'a>(
    item: &Item<'a>,
    name: &str,
    info: Option<ChildInfo>,
    out: &mut Items<'a>,
) {
    let ItemValue::Element(node) = &item.value else {
        return navigate(item, name, out);
    };
    let Json::Object(object) = node.json() else {
        return;
    };
    let parent: &str = &item.type_name;
    let types = model();
    match info {
        Some(info) if !info.choice => {
            push_key(node, name, info.type_name.map(Cow::Borrowed), parent, out)
        }
        Some(_) => {
            let key = object.keys().find(|k| is_choice_key(k, name));
            if let Some(key) = key {
                let type_name = match types.json_key_type(parent, key) {
                    Some(t) => Cow::Borrowed(t),
                    None => Cow::Owned(type_from_suffix(&key[name.len()..])),
                };
                push_key(node, key, Some(type_name), parent, out);
            }
        }
        None => {
            if object.contains_key(name) || with_underscore(name, |k| object.contains_key(k)) {
                push_key(node, name, None, parent, out);
            } else if let Some(key) = object.keys().find(|k| is_choice_key(k, name)) {
                let type_name = type_from_suffix(&key[name.len()..]);
                push_key(node, key, Some(Cow::Owned(type_name)), parent, out);
            }
        }
    }
}

fn is_choice_key(key: &str, name: &str) -> bool {
    key.len() > name.len()
        && key.starts_with(name)
        && key.as_bytes()[name.len()].is_ascii_uppercase()
}

fn push_key<'a>(
    node: &Node<'a>,
    key: &str,
    type_name: Option<TypeName>,
    parent: &str,
    out: &mut Items<'a>,
) {
    let value = child_node(node, key);
    // Only primitives have `_key` siblings; scanning for a `_` is cheaper than a hashed lookup.
    let has_underscored = node
        .json()
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k.starts_with('_')));
    let extras = if has_underscored {
        with_underscore(key, |k| child_node(node, k))
    } else {
        None
    };
    let type_name = type_name.or_else(|| {
        // Without a model entry, ask for the key's type directly (extension elements, etc.).
        model().json_key_type(parent, key).map(Cow::Borrowed)
    });
    match (value, extras) {
        (Some(value), extras) if value.json().is_array() => {
            let len = value.json().as_array().map_or(0, Vec::len);
            for i in 0..len {
                let Some(element) = index_node(&value, i) else {
                    continue;
                };
                let extra = extras
                    .as_ref()
                    .and_then(|e| index_node(e, i))
                    .filter(|e| !e.json().is_null());
                out.push(make_item(element, type_name.clone(), extra));
            }
        }
        (Some(value), extras) => out.push(make_item(value, type_name, extras)),
        (None, Some(extras)) => {
            // Primitives that only have extensions: `"_given": [null, {...}]` or `"_birthDate": {...}`.
            if extras.json().is_array() {
                let len = extras.json().as_array().map_or(0, Vec::len);
                for i in 0..len {
                    if let Some(extra) = index_node(&extras, i).filter(|e| !e.json().is_null()) {
                        out.push(absent_item(type_name.clone(), extra));
                    }
                }
            } else {
                out.push(absent_item(type_name, extras));
            }
        }
        (None, None) => {}
    }
}

fn absent_item<'a>(type_name: Option<TypeName>, extras: Node<'a>) -> Item<'a> {
    Item {
        value: ItemValue::Absent,
        type_name: type_name.unwrap_or(Cow::Borrowed("string")),
        primitive_extras: Some(extras),
    }
}

/// All direct children of an item, in document order.
pub(crate) fn children<'a>(item: &Item<'a>, out: &mut Items<'a>) {
    let node = match &item.value {
        ItemValue::Element(node) => node.clone(),
        _ => {
            if let Some(extras) = &item.primitive_extras
                && let Json::Object(object) = extras.json()
            {
                for key in object.keys() {
                    push_key(extras, key, None, "Element", out);
                }
            }
            return;
        }
    };
    let Json::Object(object) = node.json() else {
        return;
    };
    let parent: &str = &item.type_name;
    for key in object.keys() {
        if key == "resourceType" {
            continue;
        }
        if let Some(plain) = key.strip_prefix('_') {
            // Extension-only primitives; those with a value are reached through their key.
            if !object.contains_key(plain) {
                push_key(&node, plain, None, parent, out);
            }
            continue;
        }
        let type_name = model().json_key_type(parent, key).map(Cow::Borrowed);
        push_key(&node, key, type_name, parent, out);
    }
}

/// Used by `type()`: the namespace and name of an item's type.
pub(crate) fn type_info(item: &Item<'_>) -> (&'static str, String) {
    if item.is_fhir_typed() {
        let name: &str = &item.type_name;
        // Backbone paths report their declared base.
        let name = if name.contains('.') {
            model().base_of(name).unwrap_or("BackboneElement")
        } else {
            name
        };
        ("FHIR", name.to_string())
    } else {
        ("System", item.bare_type_name().to_string())
    }
}

pub(crate) fn type_spec_matches(item: &Item<'_>, spec: &TypeSpec, cast: bool) -> bool {
    if cast {
        item_as(item, spec.namespace.as_deref(), &spec.name)
    } else {
        item_is(item, spec.namespace.as_deref(), &spec.name)
    }
}
