//! A FHIRPath (N1, as used by FHIR R4) engine over `serde_json::Value` resources.
//!
//! Parse once, evaluate many times:
//!
//! ```
//! use flare_fhirpath::{Env, Expression};
//! let patient = serde_json::json!({"resourceType": "Patient", "name": [{"given": ["Ann", "Bo"]}]});
//! let expr = Expression::parse("Patient.name.given.first()").unwrap();
//! let items = expr.evaluate(&patient, &Env::new()).unwrap();
//! assert_eq!(items[0].as_str(), Some("Ann"));
//! ```
//!
//! Items borrow from the resource and the expression; types come from the `flare-fhir` model so
//! that `is`, `as`, `ofType` and `resolve() is Patient` work.

mod boundary;
mod codec;
mod error;
mod eval;
mod functions;
mod lexer;
mod model;
mod ops;
mod parser;
mod temporal;
mod value;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

pub use error::{EvalError, ParseError};
pub use temporal::{Precision, Temporal, TemporalKind};
pub use value::{Item, ItemValue, Node, Quantity};

/// A parsed FHIRPath expression, ready to be evaluated many times.
pub struct Expression {
    text: String,
    root: parser::Expr,
    regexes: RegexCache,
}

/// Compiled regular expressions used by one expression (`matches`, `replaceMatches`).
#[derive(Debug, Default)]
pub(crate) struct RegexCache(functions::RegexCacheInner);

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expression")
            .field("text", &self.text)
            .finish()
    }
}

impl Expression {
    /// Parses an expression; unknown functions and wrong argument counts are parse errors.
    pub fn parse(text: &str) -> Result<Expression, ParseError> {
        let root = parser::parse(text)?;
        Ok(Expression {
            text: text.to_string(),
            root,
            regexes: RegexCache::default(),
        })
    }

    /// The expression text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression with `resource` as the context (`%resource`, `%context`).
    pub fn evaluate<'a>(
        &'a self,
        resource: &'a Json,
        env: &Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        let root = eval::make_item(Node::Borrowed(resource), None, None);
        self.evaluate_items(&root, &root, env)
    }

    /// Evaluates with an explicit `%resource` and context item (for expressions on elements).
    pub fn evaluate_items<'a>(
        &'a self,
        resource: &Item<'a>,
        context: &Item<'a>,
        env: &Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        let ctx = eval::Ctx {
            env,
            resource,
            context,
            this: None,
            index: None,
            total: None,
            regexes: &self.regexes,
        };
        eval::eval(&self.root, ctx, std::slice::from_ref(context))
    }

    /// Evaluates and reads the result as a boolean: `None` when empty; a single non-boolean item
    /// counts as true (FHIRPath singleton evaluation).
    pub fn evaluate_bool<'a>(
        &'a self,
        resource: &'a Json,
        env: &Env<'a>,
    ) -> Result<Option<bool>, EvalError> {
        let items = self.evaluate(resource, env)?;
        eval::as_boolean(&items, "boolean result", 0)
    }
}

/// A resolver for `resolve()`: given the reference text, the referenced resource.
pub type Resolver<'a> = Box<dyn Fn(&str) -> Option<Json> + Send + Sync + 'a>;
/// A receiver for `trace(name)`: the label and the traced items.
pub type Tracer<'a> = Box<dyn Fn(&str, &[Item<'_>]) + Send + Sync + 'a>;

/// The environment of an evaluation: user variables (`%previous`, `%current`), the `resolve()`
/// callback, a `trace()` receiver and a fixed clock for `now()`.
#[derive(Default)]
pub struct Env<'a> {
    variables: HashMap<String, Vec<Item<'a>>>,
    pub(crate) resolver: Option<Arc<Resolver<'a>>>,
    pub(crate) tracer: Option<Arc<Tracer<'a>>>,
    now: Option<Temporal>,
}

impl fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("resolver", &self.resolver.is_some())
            .field("now", &self.now)
            .finish()
    }
}

impl<'a> Env<'a> {
    pub fn new() -> Self {
        Env::default()
    }

    /// Binds `%name` to a resource or element (typed by its `resourceType` when it has one).
    pub fn with_resource(mut self, name: &str, json: &'a Json) -> Self {
        self.variables.insert(
            name.to_string(),
            vec![eval::make_item(Node::Borrowed(json), None, None)],
        );
        self
    }

    /// Binds `%name` to a collection of items (possibly empty).
    pub fn with_items(mut self, name: &str, items: Vec<Item<'a>>) -> Self {
        self.variables.insert(name.to_string(), items);
        self
    }

    /// Binds `%name` to a string.
    pub fn with_string(self, name: &str, value: impl Into<String>) -> Self {
        let value: String = value.into();
        self.with_items(name, vec![Item::string(value)])
    }

    /// Resolves references in `resolve()`. Without one, `resolve()` yields a contained resource
    /// for `#id` and otherwise a stub `{"resourceType": T, "id": id}` for `T/id` references.
    pub fn with_resolver(
        mut self,
        resolver: impl Fn(&str) -> Option<Json> + Send + Sync + 'a,
    ) -> Self {
        self.resolver = Some(Arc::new(Box::new(resolver)));
        self
    }

    /// Receives `trace()` calls (ignored by default).
    pub fn with_tracer(mut self, tracer: impl Fn(&str, &[Item<'_>]) + Send + Sync + 'a) -> Self {
        self.tracer = Some(Arc::new(Box::new(tracer)));
        self
    }

    /// Fixes the clock of `now()`, `today()` and `timeOfDay()`.
    pub fn with_now(mut self, now: Temporal) -> Self {
        self.now = Some(now);
        self
    }

    pub(crate) fn variable(&self, name: &str) -> Option<&[Item<'a>]> {
        self.variables.get(name).map(Vec::as_slice)
    }

    pub(crate) fn now(&self) -> Temporal {
        self.now.unwrap_or_else(current_time)
    }
}

fn current_time() -> Temporal {
    let now = time::OffsetDateTime::now_utc();
    Temporal {
        kind: TemporalKind::DateTime,
        precision: Precision::Millisecond,
        year: now.year(),
        month: u8::from(now.month()),
        day: now.day(),
        hour: now.hour(),
        minute: now.minute(),
        second: now.second(),
        millis: now.millisecond(),
        offset_minutes: Some(0),
    }
}

/// A thread-safe cache of parsed expressions by text.
#[derive(Debug, Default)]
pub struct ExpressionCache {
    entries: Mutex<HashMap<String, Arc<Expression>>>,
}

impl ExpressionCache {
    pub fn new() -> Self {
        ExpressionCache::default()
    }

    /// The parsed expression for `text`, parsing it on first use.
    pub fn get(&self, text: &str) -> Result<Arc<Expression>, ParseError> {
        if let Some(found) = self.lock().get(text) {
            return Ok(found.clone());
        }
        let parsed = Arc::new(Expression::parse(text)?);
        self.lock().insert(text.to_string(), parsed.clone());
        Ok(parsed)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Expression>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
