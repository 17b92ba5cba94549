//! In-memory matching of a resource's own index entries against search clauses: the reference
//! semantics the store implements in SQL, and what subscriptions use to match events.
//!
//! Clauses are AND-ed; the predicates of one clause are OR-ed; a predicate matches when any
//! entry of the clause's parameter matches it (except `:not` and `:missing`, below).
//!
//! **Ranges.** A date entry is its range `V = [vl, vh]` (inclusive ms), a date predicate the
//! range `P = [pl, ph]` of the searched value's precision (`2020` is the whole year). As the
//! FHIR R4 search page defines them:
//!
//! | prefix | matches when |
//! |---|---|
//! | `eq` | `V` lies within `P`: `vl >= pl && vh <= ph` |
//! | `ne` | not `eq` |
//! | `gt` | `V` reaches above `P`: `vh > ph` |
//! | `lt` | `V` reaches below `P`: `vl < pl` |
//! | `ge` | `gt` or `eq` |
//! | `le` | `lt` or `eq` |
//! | `sa` | `V` starts after `P`: `vl > ph` |
//! | `eb` | `V` ends before `P`: `vh < pl` |
//! | `ap` | `V` overlaps `P`: `vl <= ph && vh >= pl` (the parser already widened `P` by 10% of its distance from now) |
//!
//! Numbers and quantities compare the entry's exact value `v` with the predicate: `eq` is
//! `low <= v < high` (the searched value's precision range), `ne` its negation, `gt`/`lt`/
//! `ge`/`le` compare `v` with the searched value exactly (`gt100` is "greater than exactly
//! 100"), `sa`/`eb` behave as `gt`/`lt`, and `ap` is `low <= v <= high` over the range the
//! parser widened by 10% of the value. A quantity predicate with a system must match the
//! entry's system and code; without a system its code matches the entry's code or unit. Units
//! are not converted.
//!
//! **Strings** are compared on folded text ([`crate::normalize`]): the parser folds the value
//! of `StartsWith`/`Contains` predicates; `Exact` compares the original text.
//!
//! **Tokens**: `system|code`, `|code` (no system), `system|` (any code of the system), `code`
//! (any system). `:not` clauses match resources that have *no* entry matching any of the
//! values (also resources without the element). `:text` matches the folded display/text by
//! "starts with".
//!
//! **References** match on type and id (`Patient/1`, or `1` with any type), or on the written
//! URL for absolute and canonical references (versions are indexed with and without `|v`).
//!
//! **Uris** match exactly; `:below` when the entry starts with the value, `:above` when the
//! value starts with the entry.
//!
//! `:missing=true` matches when the resource has no entry of the parameter, `false` when it
//! has one. Chained clauses need other resources and never match here.

use crate::{Clause, IndexEntry, IndexValue, Predicate, Prefix, StringMatch};

/// Whether a resource whose index entries are `entries` satisfies every clause.
pub fn matches(clauses: &[Clause], entries: &[IndexEntry]) -> bool {
    clauses.iter().all(|clause| clause_matches(clause, entries))
}

/// Whether any clause (or nested clause) needs a chain, which [`matches`] cannot evaluate.
pub fn has_chain(clauses: &[Clause]) -> bool {
    clauses.iter().any(|clause| clause.chain.is_some())
}

fn clause_matches(clause: &Clause, entries: &[IndexEntry]) -> bool {
    if clause.chain.is_some() {
        return false;
    }
    let mut values = entries
        .iter()
        .filter(|entry| entry.param == clause.param)
        .map(|entry| &entry.value);
    let negated = !clause.predicates.is_empty()
        && clause
            .predicates
            .iter()
            .all(|predicate| matches!(predicate, Predicate::Token { negate: true, .. }));
    if negated {
        return !values.any(|value| {
            clause
                .predicates
                .iter()
                .any(|predicate| token_matches(predicate, value))
        });
    }
    clause.predicates.iter().any(|predicate| match predicate {
        Predicate::Missing(missing) => {
            let has_values = entries.iter().any(|entry| entry.param == clause.param);
            has_values != *missing
        }
        _ => entries
            .iter()
            .filter(|entry| entry.param == clause.param)
            .any(|entry| predicate_matches(predicate, &entry.value)),
    })
}

/// Whether one entry value satisfies one predicate (ignoring `:not`, which is clause-wide).
pub fn predicate_matches(predicate: &Predicate, value: &IndexValue) -> bool {
    match (predicate, value) {
        (
            Predicate::String {
                mode,
                value: wanted,
            },
            IndexValue::String { normalized, exact },
        ) => match mode {
            StringMatch::StartsWith => normalized.starts_with(wanted.as_str()),
            StringMatch::Contains => normalized.contains(wanted.as_str()),
            StringMatch::Exact => exact == wanted,
        },
        (Predicate::Token { .. }, IndexValue::Token { .. }) => token_matches(predicate, value),
        (
            Predicate::TokenText(wanted),
            IndexValue::Token {
                text: Some(text), ..
            },
        ) => text.starts_with(wanted.as_str()),
        (
            Predicate::Reference {
                target_type,
                target_id,
                url,
            },
            IndexValue::Reference {
                target_type: entry_type,
                target_id: entry_id,
                url: entry_url,
            },
        ) => match url {
            Some(url) => url == entry_url,
            None => {
                target_id.is_some()
                    && *target_id == *entry_id
                    && (target_type.is_none() || *target_type == *entry_type)
            }
        },
        (
            Predicate::Date {
                prefix,
                low_ms,
                high_ms,
            },
            IndexValue::Date {
                low_ms: vl,
                high_ms: vh,
            },
        ) => range_matches(*prefix, (*low_ms, *high_ms), (*vl, *vh)),
        (
            Predicate::Number {
                prefix,
                value,
                low,
                high,
            },
            IndexValue::Number { value: entry, .. },
        ) => number_matches(*prefix, *value, *low, *high, *entry),
        (
            Predicate::Quantity {
                prefix,
                value,
                low,
                high,
                system,
                code,
            },
            IndexValue::Quantity {
                value: entry,
                system: entry_system,
                code: entry_code,
                unit,
                ..
            },
        ) => {
            let unit_matches = match (system, code) {
                (Some(system), Some(code)) => {
                    entry_system.as_deref() == Some(system.as_str())
                        && entry_code.as_deref() == Some(code.as_str())
                }
                (Some(system), None) => entry_system.as_deref() == Some(system.as_str()),
                (None, Some(code)) => {
                    entry_code.as_deref() == Some(code.as_str())
                        || unit.as_deref() == Some(code.as_str())
                }
                (None, None) => true,
            };
            unit_matches && number_matches(*prefix, *value, *low, *high, *entry)
        }
        (
            Predicate::Uri {
                value: wanted,
                below,
                above,
            },
            IndexValue::Uri(entry),
        ) => {
            if *below {
                entry.starts_with(wanted.as_str())
            } else if *above {
                wanted.starts_with(entry.as_str())
            } else {
                entry == wanted
            }
        }
        _ => false,
    }
}

/// Token comparison without `negate` (the caller applies it to the whole clause).
fn token_matches(predicate: &Predicate, value: &IndexValue) -> bool {
    let (
        Predicate::Token { system, code, .. },
        IndexValue::Token {
            system: entry_system,
            code: entry_code,
            ..
        },
    ) = (predicate, value)
    else {
        return false;
    };
    let system_ok = match system {
        None => true,
        Some(None) => entry_system.is_none(),
        Some(Some(system)) => entry_system.as_deref() == Some(system.as_str()),
    };
    let code_ok = match code {
        None => true,
        Some(code) => entry_code.as_deref() == Some(code.as_str()),
    };
    system_ok && code_ok
}

/// The date prefix table at the top of this module.
pub fn range_matches(prefix: Prefix, (pl, ph): (i64, i64), (vl, vh): (i64, i64)) -> bool {
    let within = vl >= pl && vh <= ph;
    match prefix {
        Prefix::Eq => within,
        Prefix::Ne => !within,
        Prefix::Gt => vh > ph,
        Prefix::Lt => vl < pl,
        Prefix::Ge => vh > ph || within,
        Prefix::Le => vl < pl || within,
        Prefix::Sa => vl > ph,
        Prefix::Eb => vh < pl,
        Prefix::Ap => vl <= ph && vh >= pl,
    }
}

/// The number prefix rules at the top of this module.
pub fn number_matches(prefix: Prefix, value: f64, low: f64, high: f64, entry: f64) -> bool {
    match prefix {
        Prefix::Eq => low <= entry && entry < high,
        Prefix::Ne => !(low <= entry && entry < high),
        Prefix::Gt | Prefix::Sa => entry > value,
        Prefix::Lt | Prefix::Eb => entry < value,
        Prefix::Ge => entry >= value,
        Prefix::Le => entry <= value,
        Prefix::Ap => low <= entry && entry <= high,
    }
}
