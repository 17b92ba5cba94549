//! Translation of a [`SearchQuery`] into SQL over the index tables, and its execution.
//!
//! A query is the AND of its clauses; a clause is the OR of its predicates. Each clause becomes
//! either a *filter* (`EXISTS` probe of the index table's `(rid, param)` primary key for one
//! candidate resource) or, for the most selective positive clause, the *driver* (a scan of the
//! value index producing candidate rids). Two plans:
//! - sorted: candidates come from the driver, the other clauses filter them, the result is
//!   sorted; cost grows with the driver's size, not with the page;
//! - walk: the resources of the type are visited in `(type, id)` order (the default order,
//!   served by an index), every clause filters, and the walk stops once the page (plus one row,
//!   to know whether another page follows) is full; cost grows with page end / match density.
//!   Tried first when the best driver is large and the page is in the default order; a walk
//!   that visits a bounded number of resources without filling the page hands over to the
//!   sorted plan.
//!
//! `Bundle.total` costs a count of every match, so it is only computed when asked for
//! ([`TotalMode::Accurate`], `_summary=count`, `_count=0`); otherwise it is given only when the
//! page shows it for free (the last page, reached without skipping past the end).
//!
//! Values are always bound as parameters; only table and column names (from fixed lists) are
//! formatted into the SQL text.

use std::collections::{HashMap, HashSet};

use flare_search::{Clause, Predicate, Prefix, SearchQuery, SortKey, StringMatch, TotalMode};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::read::{to_limit, version_from_row};
use super::schema::INDEX_TABLES;
use super::writer::{RESOURCE_ID_PARAM, is_resource_column};
use crate::{SearchPage, StoreError, StoredVersion};

/// Candidates counted per drivable clause when choosing the driver.
const DRIVER_PROBE_CAP: usize = 2_000;
/// Deepest chain followed (`a.b.c=x` is depth 2).
const MAX_CHAIN_DEPTH: usize = 2;

/// The value kind of a search parameter, i.e. which index table holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::String,
        Kind::Token,
        Kind::Reference,
        Kind::Date,
        Kind::Number,
        Kind::Quantity,
        Kind::Uri,
    ];

    fn table(self) -> &'static str {
        match self {
            Kind::String => "idx_string",
            Kind::Token => "idx_token",
            Kind::Reference => "idx_reference",
            Kind::Date => "idx_date",
            Kind::Number => "idx_number",
            Kind::Quantity => "idx_quantity",
            Kind::Uri => "idx_uri",
        }
    }

    /// The column a `_sort` on a parameter of this kind orders by.
    fn sort_column(self, descending: bool) -> &'static str {
        match self {
            Kind::String => "norm",
            Kind::Token => "code",
            Kind::Reference => "url",
            // Ascending sorts by where the value starts, descending by where it ends.
            Kind::Date if descending => "high",
            Kind::Date => "low",
            Kind::Number | Kind::Quantity => "value",
            Kind::Uri => "uri",
        }
    }

    fn of(predicate: &Predicate) -> Option<Kind> {
        Some(match predicate {
            Predicate::String { .. } => Kind::String,
            Predicate::Token { .. } | Predicate::TokenText(_) => Kind::Token,
            Predicate::Reference { .. } => Kind::Reference,
            Predicate::Date { .. } => Kind::Date,
            Predicate::Number { .. } => Kind::Number,
            Predicate::Quantity { .. } => Kind::Quantity,
            Predicate::Uri { .. } => Kind::Uri,
            Predicate::Missing(_) => return None,
        })
    }
}

/// Which index table a parameter lives in, learned from the data (a `_sort` key names only the
/// parameter). Only found kinds are remembered: a parameter without data yet is looked up again.
#[derive(Default)]
pub(crate) struct ParamKindCache {
    known: Mutex<HashMap<(Option<String>, String), Kind>>,
}

impl ParamKindCache {
    fn lookup(
        &self,
        conn: &Connection,
        resource_type: Option<&str>,
        param: &str,
    ) -> Result<Option<Kind>, StoreError> {
        let cache_key = (resource_type.map(str::to_owned), param.to_owned());
        if let Some(kind) = self.known.lock().get(&cache_key) {
            return Ok(Some(*kind));
        }
        for kind in Kind::ALL {
            let table = kind.table();
            let found: bool = match resource_type {
                Some(resource_type) => conn
                    .prepare_cached(&format!(
                        "SELECT EXISTS (SELECT 1 FROM {table} WHERE pid = \
                         (SELECT pid FROM search_param WHERE type = ?1 AND param = ?2))"
                    ))?
                    .query_row(params![resource_type, param], |row| row.get(0))?,
                None => conn
                    .prepare_cached(&format!(
                        "SELECT EXISTS (SELECT 1 FROM {table} WHERE pid IN \
                         (SELECT pid FROM search_param WHERE param = ?1))"
                    ))?
                    .query_row(params![param], |row| row.get(0))?,
            };
            if found {
                self.known.lock().insert(cache_key, kind);
                return Ok(Some(kind));
            }
        }
        Ok(None)
    }
}

/// SQL text under construction with its bound values (`?N` placeholders).
#[derive(Default)]
struct Sql {
    values: Vec<Value>,
    aliases: usize,
}

impl Sql {
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("?{}", self.values.len())
    }

    /// A fresh table alias, so nested subqueries never shadow each other.
    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }
}

/// How expensive a clause is as a driver, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DriverCost {
    /// Equality on the leading columns of a value index.
    Lookup,
    /// A range of a value index.
    Range,
    /// Reads every value of the parameter.
    Scan,
    /// A chain: a subquery on another type first.
    Chain,
}

fn predicate_cost(predicate: &Predicate) -> DriverCost {
    match predicate {
        Predicate::Token { code: Some(_), .. } => DriverCost::Lookup,
        Predicate::Reference {
            target_id: Some(_), ..
        }
        | Predicate::Reference { url: Some(_), .. } => DriverCost::Lookup,
        Predicate::Uri {
            below: false,
            above: false,
            ..
        } => DriverCost::Lookup,
        Predicate::String {
            mode: StringMatch::StartsWith,
            ..
        }
        | Predicate::Uri { below: true, .. } => DriverCost::Range,
        Predicate::Date { prefix, .. } => match prefix {
            Prefix::Eq | Prefix::Gt | Prefix::Ge | Prefix::Sa | Prefix::Eb | Prefix::Ap => {
                DriverCost::Range
            }
            Prefix::Ne | Prefix::Lt | Prefix::Le => DriverCost::Scan,
        },
        Predicate::Number { prefix, .. } | Predicate::Quantity { prefix, .. } => match prefix {
            Prefix::Ne => DriverCost::Scan,
            _ => DriverCost::Range,
        },
        _ => DriverCost::Scan,
    }
}

/// The cost of a clause as a driver, or `None` if it cannot produce candidates (negations and
/// `:missing` match resources that have *no* index row).
fn driver_cost(clause: &Clause) -> Option<DriverCost> {
    if clause.chain.is_some() {
        return Some(DriverCost::Chain);
    }
    if clause.predicates.is_empty() {
        return None;
    }
    let groups = group(&clause.predicates);
    if !groups.negated.is_empty() || !groups.missing.is_empty() {
        return None;
    }
    groups
        .positive
        .iter()
        .flat_map(|(_, predicates)| predicates)
        .map(|p| predicate_cost(p))
        .max()
}

/// The condition a predicate puts on an index row aliased `row`.
fn predicate_condition(sql: &mut Sql, row: &str, predicate: &Predicate) -> String {
    match predicate {
        Predicate::String { mode, value } => match mode {
            // The parser folds `StartsWith`/`Contains` values the way the index is folded.
            StringMatch::Exact => format!("{row}.exact = {}", sql.bind(value.clone())),
            StringMatch::StartsWith => starts_with(sql, &format!("{row}.norm"), value),
            StringMatch::Contains => format!("instr({row}.norm, {}) > 0", sql.bind(value.clone())),
        },
        Predicate::Token {
            system,
            code,
            negate: _,
        } => {
            let mut parts = Vec::new();
            if let Some(code) = code {
                parts.push(format!("{row}.code = {}", sql.bind(code.clone())));
            }
            match system {
                None => {}
                Some(None) => parts.push(format!("{row}.system IS NULL")),
                Some(Some(system)) => {
                    parts.push(format!("{row}.system = {}", sql.bind(system.clone())))
                }
            }
            all_of(parts)
        }
        // Both the index text and the value are folded: "starts with" on the folded text.
        Predicate::TokenText(text) => starts_with(sql, &format!("{row}.text"), text),
        // A URL (absolute or canonical) matches as written; otherwise the id, and the type
        // when given.
        Predicate::Reference {
            target_type,
            target_id,
            url,
        } => match (url, target_id) {
            (Some(url), _) => {
                let lookup = format!("{row}.lookup_url = {}", sql.bind(url.clone()));
                // A relative url is stored as its target columns only.
                match url.split_once('/') {
                    Some((target_type, target_id)) => {
                        let (target_type, target_id) = (
                            sql.bind(target_type.to_owned()),
                            sql.bind(target_id.to_owned()),
                        );
                        format!(
                            "({lookup} OR ({row}.target_id = {target_id} AND \
                             {row}.target_type = {target_type} AND {row}.lookup_url IS NULL))"
                        )
                    }
                    None => lookup,
                }
            }
            (None, Some(id)) => {
                let mut parts = vec![format!("{row}.target_id = {}", sql.bind(id.clone()))];
                if let Some(target_type) = target_type {
                    parts.push(format!(
                        "{row}.target_type = {}",
                        sql.bind(target_type.clone())
                    ));
                }
                all_of(parts)
            }
            (None, None) => "0".to_owned(),
        },
        Predicate::Date {
            prefix,
            low_ms,
            high_ms,
        } => date_condition(
            sql,
            &format!("{row}.low"),
            &format!("{row}.high"),
            *prefix,
            *low_ms,
            *high_ms,
        ),
        Predicate::Number {
            prefix,
            value,
            low,
            high,
        } => number_condition(sql, row, *prefix, *value, *low, *high),
        Predicate::Quantity {
            prefix,
            value,
            low,
            high,
            system,
            code,
        } => {
            let mut parts = vec![number_condition(sql, row, *prefix, *value, *low, *high)];
            match (system, code) {
                (Some(system), Some(code)) => {
                    parts.push(format!("{row}.system = {}", sql.bind(system.clone())));
                    parts.push(format!("{row}.code = {}", sql.bind(code.clone())));
                }
                (Some(system), None) => {
                    parts.push(format!("{row}.system = {}", sql.bind(system.clone())))
                }
                // Without a system, the code may be a UCUM code or the unit as written.
                (None, Some(code)) => {
                    let code = sql.bind(code.clone());
                    parts.push(format!("({row}.code = {code} OR {row}.unit = {code})"));
                }
                (None, None) => {}
            }
            all_of(parts)
        }
        Predicate::Uri {
            value,
            below,
            above,
        } => {
            let column = format!("{row}.uri");
            if *below {
                starts_with(sql, &column, value)
            } else if *above {
                let value = sql.bind(value.clone());
                format!("{column} <= {value} AND substr({value}, 1, length({column})) = {column}")
            } else {
                format!("{column} = {}", sql.bind(value.clone()))
            }
        }
        // Handled per clause (it is about rows of any kind); never reaches here.
        Predicate::Missing(_) => "1".to_owned(),
    }
}

/// FHIR date comparisons between the search range [lo, hi] and a value's range [low, high]
/// (columns or expressions).
fn date_condition(
    sql: &mut Sql,
    low: &str,
    high: &str,
    prefix: Prefix,
    lo: i64,
    hi: i64,
) -> String {
    match prefix {
        // The search range contains the value's range. `high >= lo` is implied, and written
        // out so the (high, low) index narrows the scan.
        Prefix::Eq => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("{high} >= {lo} AND {high} <= {hi} AND {low} >= {lo}")
        }
        Prefix::Ne => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("NOT ({low} >= {lo} AND {high} <= {hi})")
        }
        Prefix::Gt => format!("{high} > {}", sql.bind(hi)),
        Prefix::Lt => format!("{low} < {}", sql.bind(lo)),
        // gt or eq, which simplifies to "ends after the range, or starts inside or after it".
        Prefix::Ge => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("{high} >= {lo} AND ({high} > {hi} OR {low} >= {lo})")
        }
        Prefix::Le => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("({low} < {lo} OR {high} <= {hi})")
        }
        Prefix::Sa => {
            let hi = sql.bind(hi);
            format!("{high} > {hi} AND {low} > {hi}")
        }
        Prefix::Eb => format!("{high} < {}", sql.bind(lo)),
        // Overlaps the search range (which the parser already widened).
        Prefix::Ap => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("{high} >= {lo} AND {low} <= {hi}")
        }
    }
}

/// FHIR number comparisons: `value` as written, [lo, hi) the range its precision implies.
fn number_condition(
    sql: &mut Sql,
    row: &str,
    prefix: Prefix,
    value: f64,
    lo: f64,
    hi: f64,
) -> String {
    let column = format!("{row}.value");
    match prefix {
        Prefix::Eq => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("{column} >= {lo} AND {column} < {hi}")
        }
        Prefix::Ne => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("NOT ({column} >= {lo} AND {column} < {hi})")
        }
        Prefix::Gt | Prefix::Sa => format!("{column} > {}", sql.bind(value)),
        Prefix::Lt | Prefix::Eb => format!("{column} < {}", sql.bind(value)),
        Prefix::Ge => format!("{column} >= {}", sql.bind(value)),
        Prefix::Le => format!("{column} <= {}", sql.bind(value)),
        // The range the parser widened by 10% of the value.
        Prefix::Ap => {
            let (lo, hi) = (sql.bind(lo), sql.bind(hi));
            format!("{column} >= {lo} AND {column} <= {hi}")
        }
    }
}

/// `column` starts with `prefix`, as an index-friendly range.
fn starts_with(sql: &mut Sql, column: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        return "1".to_owned();
    }
    let low = sql.bind(prefix.to_owned());
    match prefix_successor(prefix) {
        Some(successor) => format!("{column} >= {low} AND {column} < {}", sql.bind(successor)),
        None => format!("{column} >= {low}"),
    }
}

/// The smallest string greater than every string starting with `prefix` (in SQLite's binary
/// order, which is code point order for UTF-8), or `None` if there is none.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn all_of(parts: Vec<String>) -> String {
    if parts.is_empty() {
        "1".to_owned()
    } else {
        parts.join(" AND ")
    }
}

fn any_of(parts: Vec<String>) -> String {
    if parts.is_empty() {
        "0".to_owned()
    } else {
        format!("({})", parts.join(" OR "))
    }
}

/// Predicates of a clause grouped by index table, positive and negated (`:not`) apart.
struct Groups<'a> {
    positive: Vec<(Kind, Vec<&'a Predicate>)>,
    negated: Vec<&'a Predicate>,
    missing: Vec<bool>,
}

fn group(predicates: &[Predicate]) -> Groups<'_> {
    let mut groups = Groups {
        positive: Vec::new(),
        negated: Vec::new(),
        missing: Vec::new(),
    };
    // `:not` applies to a clause whose values are all negated tokens (as in
    // `flare_search::matcher`); anywhere else the flag is ignored.
    let all_negated = !predicates.is_empty()
        && predicates
            .iter()
            .all(|predicate| matches!(predicate, Predicate::Token { negate: true, .. }));
    for predicate in predicates {
        match predicate {
            Predicate::Missing(missing) => groups.missing.push(*missing),
            Predicate::Token { negate: true, .. } if all_negated => groups.negated.push(predicate),
            _ => {
                let Some(kind) = Kind::of(predicate) else {
                    continue;
                };
                match groups.positive.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, list)) => list.push(predicate),
                    None => groups.positive.push((kind, vec![predicate])),
                }
            }
        }
    }
    groups
}

/// `{row}.pid` is search parameter `param` of `resource_type` (of any type when `None`). The
/// subquery is uncorrelated, so SQLite evaluates it once per statement.
fn param_match(sql: &mut Sql, row: &str, resource_type: Option<&str>, param: &str) -> String {
    match resource_type {
        Some(resource_type) => {
            let (resource_type, param) = (
                sql.bind(resource_type.to_owned()),
                sql.bind(param.to_owned()),
            );
            format!(
                "{row}.pid = (SELECT pid FROM search_param WHERE type = {resource_type} AND param = {param})"
            )
        }
        None => format!(
            "{row}.pid IN (SELECT pid FROM search_param WHERE param = {})",
            sql.bind(param.to_owned())
        ),
    }
}

/// The row alias as the value conditions of a filter name it: `+x.col` keeps SQLite from
/// answering the probe through the value index. With `pid =` and a range on the value, that
/// index looks better to the planner than the `(rid, pid, n)` key, and scans every value in
/// the range for each resource tested instead of reading its few rows (measured: 2 ms per
/// resource walked at 2,600 resources).
fn probe_columns(row: &str) -> String {
    format!("+{row}")
}

/// A boolean SQL expression: the resource whose rid is `rid` matches `clause`.
fn clause_filter(
    sql: &mut Sql,
    clause: &Clause,
    resource_type: Option<&str>,
    rid: &str,
    depth: usize,
) -> Result<String, StoreError> {
    if let Some(chain) = &clause.chain {
        let row = sql.alias("r");
        let param = param_match(sql, &row, resource_type, &clause.param);
        let target_type = sql.bind(chain.target_type.clone());
        let targets = chain_targets(sql, chain, depth)?;
        return Ok(format!(
            "EXISTS (SELECT 1 FROM idx_reference {row} WHERE {row}.rid = {rid} AND {param} \
             AND {row}.target_type = {target_type} AND {row}.target_id IN ({targets}))"
        ));
    }
    if clause.predicates.is_empty() {
        return Ok("1".to_owned());
    }
    if is_resource_column(&clause.param) {
        let row = sql.alias("c");
        let condition = resource_column_condition(sql, &row, clause);
        return Ok(format!(
            "EXISTS (SELECT 1 FROM resource {row} WHERE {row}.rid = {rid} AND {condition})"
        ));
    }
    let groups = group(&clause.predicates);
    let mut alternatives = Vec::new();
    for (kind, predicates) in &groups.positive {
        let row = sql.alias("x");
        let param = param_match(sql, &row, resource_type, &clause.param);
        let conditions: Vec<String> = predicates
            .iter()
            .map(|p| predicate_condition(sql, &probe_columns(&row), p))
            .collect();
        alternatives.push(format!(
            "EXISTS (SELECT 1 FROM {table} {row} WHERE {row}.rid = {rid} AND {param} AND {any})",
            table = kind.table(),
            any = any_of(conditions)
        ));
    }
    if !groups.negated.is_empty() {
        // `:not=a,b`: no token of the parameter is a or b (resources without the parameter
        // match too).
        let row = sql.alias("x");
        let param = param_match(sql, &row, resource_type, &clause.param);
        let conditions: Vec<String> = groups
            .negated
            .iter()
            .map(|p| predicate_condition(sql, &probe_columns(&row), p))
            .collect();
        alternatives.push(format!(
            "NOT EXISTS (SELECT 1 FROM idx_token {row} WHERE {row}.rid = {rid} AND {param} AND {any})",
            any = any_of(conditions)
        ));
    }
    for missing in &groups.missing {
        let mut present = Vec::new();
        for table in INDEX_TABLES {
            let row = sql.alias("m");
            let param = param_match(sql, &row, resource_type, &clause.param);
            present.push(format!(
                "EXISTS (SELECT 1 FROM {table} {row} WHERE {row}.rid = {rid} AND {param})"
            ));
        }
        let present = any_of(present);
        alternatives.push(if *missing {
            format!("NOT {present}")
        } else {
            present
        });
    }
    Ok(any_of(alternatives))
}

/// The condition a clause on `_id` or `_lastUpdated` puts on the resource row aliased `row`,
/// with the meaning the index rows `_id` = token (no system, code = id) and `_lastUpdated` =
/// date [last_updated, last_updated] would give.
fn resource_column_condition(sql: &mut Sql, row: &str, clause: &Clause) -> String {
    let is_id = clause.param == RESOURCE_ID_PARAM;
    let groups = group(&clause.predicates);
    let mut alternatives = Vec::new();
    let condition = |sql: &mut Sql, predicate: &Predicate| match predicate {
        Predicate::Token { system, code, .. } if is_id => {
            // The id token has no system.
            if matches!(system, Some(Some(_))) {
                return "0".to_owned();
            }
            match code {
                Some(code) => format!("{row}.id = {}", sql.bind(code.clone())),
                None => "1".to_owned(),
            }
        }
        Predicate::Date {
            prefix,
            low_ms,
            high_ms,
        } if !is_id => {
            let column = format!("{row}.last_updated");
            date_condition(sql, &column, &column, *prefix, *low_ms, *high_ms)
        }
        // A value of another kind never matches (no index row of that kind exists).
        _ => "0".to_owned(),
    };
    for (_, predicates) in &groups.positive {
        for predicate in predicates {
            alternatives.push(condition(sql, predicate));
        }
    }
    if !groups.negated.is_empty() {
        let negated: Vec<String> = groups
            .negated
            .iter()
            .map(|predicate| condition(sql, predicate))
            .collect();
        alternatives.push(format!("NOT {}", any_of(negated)));
    }
    for missing in &groups.missing {
        // Every resource has both values.
        alternatives.push(if *missing { "0" } else { "1" }.to_owned());
    }
    any_of(alternatives)
}

/// `SELECT id FROM resource ...`: ids of live resources of the chain's target type that match
/// the chain's inner clause.
fn chain_targets(
    sql: &mut Sql,
    chain: &flare_search::Chain,
    depth: usize,
) -> Result<String, StoreError> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(StoreError::UnsupportedSearch(format!(
            "chains deeper than {MAX_CHAIN_DEPTH} levels are not supported"
        )));
    }
    let target = sql.alias("t");
    let target_type = sql.bind(chain.target_type.clone());
    let inner = &chain.clause;
    let condition = match driver_cost(inner) {
        Some(_) => {
            let driver = clause_driver(sql, inner, Some(&chain.target_type), depth + 1)?;
            format!("{target}.rid IN ({driver})")
        }
        None => clause_filter(
            sql,
            inner,
            Some(&chain.target_type),
            &format!("{target}.rid"),
            depth + 1,
        )?,
    };
    Ok(format!(
        "SELECT {target}.id FROM resource {target} WHERE {target}.type = {target_type} AND {target}.deleted = 0 \
         AND {condition}"
    ))
}

/// `SELECT rid FROM ...`: rids (maybe repeated) of resources matching a drivable clause.
fn clause_driver(
    sql: &mut Sql,
    clause: &Clause,
    resource_type: Option<&str>,
    depth: usize,
) -> Result<String, StoreError> {
    if let Some(chain) = &clause.chain {
        let row = sql.alias("r");
        let param = param_match(sql, &row, resource_type, &clause.param);
        let target_type = sql.bind(chain.target_type.clone());
        let targets = chain_targets(sql, chain, depth)?;
        return Ok(format!(
            "SELECT {row}.rid FROM idx_reference {row} WHERE {param} \
             AND {row}.target_id IN ({targets}) AND {row}.target_type = {target_type}"
        ));
    }
    if is_resource_column(&clause.param) {
        let row = sql.alias("c");
        let types = match resource_type {
            Some(resource_type) => format!("{row}.type = {}", sql.bind(resource_type.to_owned())),
            // Every written type has an `_id` parameter row: an index-friendly list of types.
            None => format!(
                "{row}.type IN (SELECT type FROM search_param WHERE param = {})",
                sql.bind(RESOURCE_ID_PARAM.to_owned())
            ),
        };
        let condition = resource_column_condition(sql, &row, clause);
        return Ok(format!(
            "SELECT {row}.rid FROM resource {row} WHERE {types} AND {condition}"
        ));
    }
    let groups = group(&clause.predicates);
    let mut selects = Vec::new();
    for (kind, predicates) in &groups.positive {
        let row = sql.alias("x");
        let param = param_match(sql, &row, resource_type, &clause.param);
        let conditions: Vec<String> = predicates
            .iter()
            .map(|p| predicate_condition(sql, &row, p))
            .collect();
        selects.push(format!(
            "SELECT {row}.rid FROM {table} {row} WHERE {param} AND {any}",
            table = kind.table(),
            any = any_of(conditions)
        ));
    }
    Ok(selects.join(" UNION ALL "))
}

/// How many resources a walk may visit per page slot before the search gives up on it and
/// sorts the driver's candidates instead (see [`walk_page`]).
const WALK_BUDGET_FACTOR: usize = 4;

pub(crate) fn search(
    conn: &Connection,
    kinds: &ParamKindCache,
    query: &SearchQuery,
    scan_threshold: usize,
) -> Result<SearchPage, StoreError> {
    let driver = choose_driver(conn, query)?;
    let asked_for_total =
        query.count_only || query.count == 0 || query.total == TotalMode::Accurate;
    if query.count_only || query.count == 0 {
        let total = count_matches(conn, query, driver.map(|(index, _)| index))?;
        return Ok(SearchPage {
            matches: Vec::new(),
            included: Vec::new(),
            total: Some(total),
        });
    }

    // One row past the page tells whether another page follows, without counting.
    let wanted = query.count.saturating_add(1);
    let default_order = query.sort.is_empty();
    let large_driver = match driver {
        Some((_, size)) if size <= scan_threshold.min(DRIVER_PROBE_CAP) => false,
        Some((index, _)) if scan_threshold > DRIVER_PROBE_CAP => {
            driver_size(conn, query, index, scan_threshold)? > scan_threshold
        }
        Some(_) => true,
        None => false,
    };
    let walked = if default_order && large_driver {
        let budget = WALK_BUDGET_FACTOR
            .saturating_mul(scan_threshold.max(query.offset.saturating_add(wanted)));
        walk_page(conn, query, wanted, budget)?
    } else {
        None
    };
    let mut rids = match walked {
        Some(rids) => rids,
        None => sorted_page(conn, kinds, query, driver.map(|(index, _)| index), wanted)?,
    };
    let more = rids.len() > query.count;
    rids.truncate(query.count);

    let total = if asked_for_total {
        match free_total(query, rids.len(), more) {
            Some(total) => Some(total),
            None => Some(count_matches(conn, query, driver.map(|(index, _)| index))?),
        }
    } else {
        free_total(query, rids.len(), more)
    };
    let mut matches = Vec::with_capacity(rids.len());
    for rid in &rids {
        if let Some(found) = live_by_rid(conn, *rid)? {
            matches.push(found);
        }
    }
    let included = includes(conn, query, &rids, &matches)?;
    Ok(SearchPage {
        matches,
        included,
        total,
    })
}

/// The total when the page itself shows it: nothing follows the page, and the page is not
/// past the end (then the matches before it are unknown).
fn free_total(query: &SearchQuery, returned: usize, more: bool) -> Option<u64> {
    if more || (returned == 0 && query.offset > 0) {
        return None;
    }
    Some((query.offset + returned) as u64)
}

/// Rids of up to `limit` matches from `query.offset` on, in the query's order: the driver's
/// candidates (or the type's resources) filtered by every other clause, then sorted. Costs
/// as many steps as there are candidates, whatever the page.
fn sorted_page(
    conn: &Connection,
    kinds: &ParamKindCache,
    query: &SearchQuery,
    driver: Option<usize>,
    limit: usize,
) -> Result<Vec<i64>, StoreError> {
    let resource_type = query.resource_type.as_deref();
    let mut sql = Sql::default();
    let mut conditions = vec!["c.deleted = 0".to_owned()];
    match driver {
        Some(driver) => {
            let driver_sql = clause_driver(&mut sql, &query.clauses[driver], resource_type, 0)?;
            conditions.push(format!("c.rid IN ({driver_sql})"));
        }
        None => {
            if let Some(resource_type) = resource_type {
                conditions.push(format!("c.type = {}", sql.bind(resource_type.to_owned())));
            }
        }
    }
    for (index, clause) in query.clauses.iter().enumerate() {
        if Some(index) != driver {
            conditions.push(clause_filter(&mut sql, clause, resource_type, "c.rid", 0)?);
        }
    }
    let order = order_by(conn, kinds, &mut sql, resource_type, &query.sort)?;
    let limit = sql.bind(to_limit(limit));
    let offset = sql.bind(to_limit(query.offset));
    let page_sql = format!(
        "SELECT c.rid FROM resource c WHERE {} ORDER BY {order} LIMIT {limit} OFFSET {offset}",
        conditions.join(" AND ")
    );
    tracing::trace!(sql = %page_sql, "search page");
    let mut statement = conn.prepare_cached(&page_sql)?;
    let rows = statement.query_map(params_from_iter(&sql.values), |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rids of up to `limit` matches from `query.offset` on, in the default (type, id) order,
/// found by walking the resources in that order (their index serves it, so nothing is
/// sorted) and testing every clause on each. Stops as soon as the page is full: cheap when
/// matches are common, whatever their number. `None` when `budget` resources were visited
/// first: the matches are sparse (or bunched late in the id order), and sorting the
/// driver's candidates is cheaper.
fn walk_page(
    conn: &Connection,
    query: &SearchQuery,
    limit: usize,
    budget: usize,
) -> Result<Option<Vec<i64>>, StoreError> {
    let resource_type = query.resource_type.as_deref();
    let mut sql = Sql::default();
    let mut conditions = Vec::with_capacity(query.clauses.len());
    for clause in &query.clauses {
        conditions.push(clause_filter(&mut sql, clause, resource_type, "c.rid", 0)?);
    }
    let scope = match resource_type {
        Some(resource_type) => format!("AND c.type = {}", sql.bind(resource_type.to_owned())),
        None => String::new(),
    };
    let walk_sql = format!(
        "SELECT c.rid, ({}) FROM resource c WHERE c.deleted = 0 {scope} ORDER BY c.type, c.id",
        all_of(conditions)
    );
    tracing::trace!(sql = %walk_sql, "search walk");
    let mut statement = conn.prepare_cached(&walk_sql)?;
    let mut rows = statement.query(params_from_iter(&sql.values))?;
    let mut to_skip = query.offset;
    let mut rids = Vec::with_capacity(limit.min(1_024));
    let mut visited = 0usize;
    while let Some(row) = rows.next()? {
        visited += 1;
        if row.get::<_, bool>(1)? {
            if to_skip > 0 {
                to_skip -= 1;
            } else {
                rids.push(row.get(0)?);
                if rids.len() >= limit {
                    return Ok(Some(rids));
                }
            }
        }
        if visited >= budget {
            return Ok(None);
        }
    }
    Ok(Some(rids))
}

/// The drivable clause expected to yield the fewest candidates, with its size (measured up to
/// just past [`DRIVER_PROBE_CAP`]).
fn choose_driver(
    conn: &Connection,
    query: &SearchQuery,
) -> Result<Option<(usize, usize)>, StoreError> {
    let costs: Vec<(usize, DriverCost)> = query
        .clauses
        .iter()
        .enumerate()
        .filter_map(|(index, clause)| Some((index, driver_cost(clause)?)))
        .collect();
    let Some(cheapest) = costs.iter().map(|(_, cost)| *cost).min() else {
        return Ok(None);
    };
    // Only clauses of the cheapest kind are measured: measuring a scan-kind clause can cost
    // as much as the search.
    let mut best: Option<(usize, usize)> = None;
    for (index, _) in costs.iter().filter(|(_, cost)| *cost == cheapest) {
        let size = driver_size(conn, query, *index, DRIVER_PROBE_CAP)?;
        if best.is_none_or(|(_, best_size)| size < best_size) {
            best = Some((*index, size));
        }
    }
    Ok(best)
}

/// How many candidates a drivable clause yields, counted up to just past `cap`.
fn driver_size(
    conn: &Connection,
    query: &SearchQuery,
    index: usize,
    cap: usize,
) -> Result<usize, StoreError> {
    let mut sql = Sql::default();
    let driver = clause_driver(
        &mut sql,
        &query.clauses[index],
        query.resource_type.as_deref(),
        0,
    )?;
    let cap = sql.bind(to_limit(cap + 1));
    let count: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM ({driver} LIMIT {cap})"))?
        .query_row(params_from_iter(&sql.values), |row| row.get(0))?;
    Ok(count as usize)
}

fn count_matches(
    conn: &Connection,
    query: &SearchQuery,
    driver: Option<usize>,
) -> Result<u64, StoreError> {
    let resource_type = query.resource_type.as_deref();
    let mut sql = Sql::default();
    let mut conditions = vec!["c.deleted = 0".to_owned()];
    match driver {
        Some(driver) => {
            let driver_sql = clause_driver(
                &mut sql,
                &query.clauses[driver],
                query.resource_type.as_deref(),
                0,
            )?;
            conditions.push(format!("c.rid IN ({driver_sql})"));
        }
        None => {
            if let Some(resource_type) = &query.resource_type {
                conditions.push(format!("c.type = {}", sql.bind(resource_type.clone())));
            }
        }
    }
    for (index, clause) in query.clauses.iter().enumerate() {
        if Some(index) != driver {
            conditions.push(clause_filter(&mut sql, clause, resource_type, "c.rid", 0)?);
        }
    }
    let count_sql = format!(
        "SELECT count(*) FROM resource c WHERE {}",
        conditions.join(" AND ")
    );
    let total: i64 = conn
        .prepare_cached(&count_sql)?
        .query_row(params_from_iter(&sql.values), |row| row.get(0))?;
    Ok(total as u64)
}

/// The ORDER BY list: the requested keys, then type and id so equal keys page stably.
fn order_by(
    conn: &Connection,
    kinds: &ParamKindCache,
    sql: &mut Sql,
    resource_type: Option<&str>,
    sort: &[SortKey],
) -> Result<String, StoreError> {
    let mut keys = Vec::new();
    for key in sort {
        let direction = if key.descending { "DESC" } else { "ASC" };
        let expression = match key.param.as_str() {
            "_id" => "c.id".to_owned(),
            "_lastUpdated" => "c.last_updated".to_owned(),
            param => {
                // A parameter nobody has a value for yet sorts nothing.
                let Some(kind) = kinds.lookup(conn, resource_type, param)? else {
                    continue;
                };
                let row = sql.alias("s");
                let aggregate = if key.descending { "max" } else { "min" };
                let param = param_match(sql, &row, resource_type, param);
                format!(
                    "(SELECT {aggregate}({row}.{column}) FROM {table} {row} WHERE {row}.rid = c.rid AND {param})",
                    column = kind.sort_column(key.descending),
                    table = kind.table(),
                )
            }
        };
        // Resources without a value come last in both directions.
        keys.push(format!("{expression} {direction} NULLS LAST"));
    }
    keys.push("c.type ASC".to_owned());
    keys.push("c.id ASC".to_owned());
    Ok(keys.join(", "))
}

fn live_by_rid(conn: &Connection, rid: i64) -> Result<Option<StoredVersion>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT c.type, c.id, v.version, v.last_updated, v.body FROM resource c \
             JOIN resource_version v ON v.rid = c.rid AND v.version = c.version \
             WHERE c.rid = ?1 AND c.deleted = 0",
        )?
        .query_row([rid], version_from_row)
        .optional()?)
}

fn live_by_key(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<Option<(i64, StoredVersion)>, StoreError> {
    let rid: Option<i64> = conn
        .prepare_cached("SELECT rid FROM resource WHERE type = ?1 AND id = ?2 AND deleted = 0")?
        .query_row(params![resource_type, id], |row| row.get(0))
        .optional()?;
    match rid {
        Some(rid) => Ok(live_by_rid(conn, rid)?.map(|version| (rid, version))),
        None => Ok(None),
    }
}

/// `_include` and `_revinclude`, one level, without repeating matches or each other.
fn includes(
    conn: &Connection,
    query: &SearchQuery,
    rids: &[i64],
    matches: &[StoredVersion],
) -> Result<Vec<StoredVersion>, StoreError> {
    if query.includes.is_empty() && query.revincludes.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: HashSet<i64> = rids.iter().copied().collect();
    let mut included = Vec::new();
    for include in &query.includes {
        let any_param = include.param == "*";
        for (rid, found) in rids.iter().zip(matches) {
            if found.key.resource_type != include.source_type {
                continue;
            }
            let mut statement = conn.prepare_cached(
                "SELECT DISTINCT target_type, target_id FROM idx_reference \
                 WHERE rid = ?1 AND (?2 OR pid IN (SELECT pid FROM search_param WHERE param = ?3)) \
                 AND target_type IS NOT NULL AND target_id IS NOT NULL",
            )?;
            let targets: Vec<(String, String)> = statement
                .query_map(params![rid, any_param, include.param], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            for (target_type, target_id) in targets {
                if include
                    .target_type
                    .as_ref()
                    .is_some_and(|wanted| *wanted != target_type)
                {
                    continue;
                }
                if let Some((target_rid, version)) = live_by_key(conn, &target_type, &target_id)?
                    && seen.insert(target_rid)
                {
                    included.push(version);
                }
            }
        }
    }
    for include in &query.revincludes {
        for found in matches {
            if include
                .target_type
                .as_ref()
                .is_some_and(|wanted| *wanted != found.key.resource_type)
            {
                continue;
            }
            let sources: Vec<i64> = if include.param == "*" {
                let mut statement = conn.prepare_cached(
                    "SELECT DISTINCT rid FROM idx_reference \
                     WHERE pid IN (SELECT pid FROM search_param WHERE type = ?1) \
                     AND target_id = ?2 AND target_type = ?3",
                )?;
                statement
                    .query_map(
                        params![include.source_type, found.key.id, found.key.resource_type],
                        |row| row.get(0),
                    )?
                    .collect::<Result<_, _>>()?
            } else {
                let mut statement = conn.prepare_cached(
                    "SELECT DISTINCT rid FROM idx_reference \
                     WHERE pid = (SELECT pid FROM search_param WHERE type = ?1 AND param = ?2) \
                     AND target_id = ?3 AND target_type = ?4",
                )?;
                statement
                    .query_map(
                        params![
                            include.source_type,
                            include.param,
                            found.key.id,
                            found.key.resource_type
                        ],
                        |row| row.get(0),
                    )?
                    .collect::<Result<_, _>>()?
            };
            for source in sources {
                if seen.insert(source)
                    && let Some(version) = live_by_rid(conn, source)?
                {
                    included.push(version);
                }
            }
        }
    }
    Ok(included)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_bounds_exactly_the_strings_with_the_prefix() {
        assert_eq!(prefix_successor("smi").as_deref(), Some("smj"));
        // Skips the surrogate gap, which has no chars.
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        let successor = prefix_successor("smi").unwrap_or_default();
        for candidate in ["smi", "smith", "smi\u{10FFFF}x"] {
            assert!(
                candidate >= "smi" && candidate < successor.as_str(),
                "{candidate}"
            );
        }
        assert!("smj" >= successor.as_str());
    }

    #[test]
    fn negations_and_missing_never_drive() {
        let not = Clause {
            param: "code".into(),
            chain: None,
            predicates: vec![Predicate::Token {
                system: None,
                code: Some("x".into()),
                negate: true,
            }],
        };
        let missing = Clause {
            param: "code".into(),
            chain: None,
            predicates: vec![Predicate::Missing(false)],
        };
        let code = Clause {
            param: "code".into(),
            chain: None,
            predicates: vec![Predicate::Token {
                system: None,
                code: Some("x".into()),
                negate: false,
            }],
        };
        assert_eq!(driver_cost(&not), None);
        assert_eq!(driver_cost(&missing), None);
        assert_eq!(driver_cost(&code), Some(DriverCost::Lookup));
    }
}
