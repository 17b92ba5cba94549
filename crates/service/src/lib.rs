//! FHIR interactions without HTTP: create, read, update, delete (plain, conditional and
//! version-aware), history, search, batch and transaction Bundles, and the CapabilityStatement.
//!
//! Every write goes through one commit path ([`write`]): the new version, its search index
//! entries and its change event (an outbox message) are committed to the store in one
//! transaction. The relay in `flare-events` moves the event onto the log afterwards.
//!
//! Architecture invariant: nothing here knows HTTP. The server maps [`FhirError::status`] to a
//! response; the ingest command and (later) the command topic call the same functions.

mod bundle;
mod capability;
mod context;
mod error;
mod read;
mod time_fmt;
mod write;

use std::sync::Arc;

use flare_events::RoutingConfig;
use flare_search::Registry;
use flare_store::Store;
use serde::{Deserialize, Serialize};

pub use bundle::{ReturnPreference, parse_etag};
pub use context::RequestContext;
pub use error::FhirError;
pub use read::parse_query_string;
pub use read::{Bundle, ReadOutcome, SearchRequest};
pub use time_fmt::{format_instant, parse_instant};
pub use write::{WriteKind, WriteOutcome};

/// Settings of the FHIR service: `[fhir]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// `metadata.source` of change events. Default: `flare`.
    pub source: String,
    /// Page size of searches and history without `_count`. Default: 20.
    pub default_count: usize,
    /// The largest `_count` honoured (larger values are clamped). Default: 1000.
    pub max_count: usize,
    /// Largest change-event payload, in bytes; a resource that would make an event larger
    /// travels as a `dataRef` instead of inline `data`. Keep it below the log's record limit
    /// (1 MiB on the embedded log and on Kafka by default). Default: 1,000,000.
    pub max_event_bytes: usize,
    /// Topic naming of change events.
    pub events: RoutingConfig,
}

impl Default for FhirConfig {
    fn default() -> Self {
        Self {
            source: "flare".into(),
            default_count: 20,
            max_count: 1000,
            max_event_bytes: 1_000_000,
            events: RoutingConfig::default(),
        }
    }
}

/// The FHIR service: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Fhir {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    config: FhirConfig,
    /// Conditional creates and updates search, then write; serialising them on this node keeps
    /// two concurrent `If-None-Exist` creates from both creating.
    conditional: tokio::sync::Mutex<()>,
    /// Checks other components registered for writes of one resource type.
    write_checks: std::sync::RwLock<Vec<(String, Arc<dyn WriteCheck>)>>,
    /// Extensions other components add to the CapabilityStatement's `rest` entry.
    capability_extensions: std::sync::RwLock<Vec<capability::CapabilityExtension>>,
    /// How clients see resources of one type, registered by other components.
    read_transforms: std::sync::RwLock<Vec<(String, Arc<dyn ReadTransform>)>>,
}

/// A check run before every create or update of one resource type (plain, conditional or in a
/// Bundle), registered by a component that gives the type a meaning, e.g. the subscription
/// runtime refusing a Subscription it cannot honour. An `Err` rejects the write as is.
pub trait WriteCheck: Send + Sync {
    fn check(&self, resource: &serde_json::Value) -> Result<(), FhirError>;
}

/// How clients see resources of one type, registered by a component that gives the type a
/// meaning, e.g. the subscription runtime masking channel secrets. Applied to every answer
/// that carries a resource (read, vread, search matches and includes, history, batch and
/// transaction responses, the body returned by a create or update); the stored resource and
/// its change event stay as written. Both methods must be idempotent: an answer may pass
/// through them twice.
pub trait ReadTransform: Send + Sync {
    /// The resource as a client may see it.
    fn for_read(&self, resource: &serde_json::Value) -> serde_json::Value;

    /// On a write, before checks and storage: puts back into `incoming` what
    /// [`for_read`](Self::for_read) masked and the client sent back unchanged, taken from the
    /// version now `stored`, so a read-modify-write keeps it.
    fn restore(&self, _incoming: &mut serde_json::Value, _stored: &serde_json::Value) {}
}

impl Fhir {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>, config: FhirConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                registry,
                config,
                conditional: tokio::sync::Mutex::new(()),
                write_checks: std::sync::RwLock::new(Vec::new()),
                capability_extensions: std::sync::RwLock::new(Vec::new()),
                read_transforms: std::sync::RwLock::new(Vec::new()),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    pub fn config(&self) -> &FhirConfig {
        &self.inner.config
    }

    /// Registers `check` for every later write of `resource_type`.
    pub fn add_write_check(&self, resource_type: &str, check: Arc<dyn WriteCheck>) {
        if let Ok(mut checks) = self.inner.write_checks.write() {
            checks.push((resource_type.to_owned(), check));
        }
    }

    pub(crate) fn run_write_checks(
        &self,
        resource_type: &str,
        resource: &serde_json::Value,
    ) -> Result<(), FhirError> {
        let Ok(checks) = self.inner.write_checks.read() else {
            return Ok(());
        };
        checks
            .iter()
            .filter(|(t, _)| t == resource_type)
            .try_for_each(|(_, check)| check.check(resource))
    }

    /// Registers `transform` for every later answer carrying a `resource_type` resource.
    pub fn add_read_transform(&self, resource_type: &str, transform: Arc<dyn ReadTransform>) {
        if let Ok(mut transforms) = self.inner.read_transforms.write() {
            transforms.push((resource_type.to_owned(), transform));
        }
    }

    fn read_transforms_for(&self, resource_type: &str) -> Vec<Arc<dyn ReadTransform>> {
        let Ok(transforms) = self.inner.read_transforms.read() else {
            return Vec::new();
        };
        transforms
            .iter()
            .filter(|(t, _)| t == resource_type)
            .map(|(_, transform)| transform.clone())
            .collect()
    }

    /// A resource as clients see it (see [`ReadTransform`]).
    pub(crate) fn present_value(
        &self,
        resource_type: &str,
        resource: serde_json::Value,
    ) -> serde_json::Value {
        self.read_transforms_for(resource_type)
            .iter()
            .fold(resource, |resource, transform| {
                transform.for_read(&resource)
            })
    }

    /// A stored version as clients see it; untouched (not even parsed) for types without
    /// transforms.
    pub(crate) fn present(
        &self,
        mut version: flare_store::StoredVersion,
    ) -> flare_store::StoredVersion {
        let transforms = self.read_transforms_for(&version.key.resource_type);
        if transforms.is_empty() {
            return version;
        }
        if let Some(Ok(resource)) = version
            .body
            .as_deref()
            .map(serde_json::from_str::<serde_json::Value>)
        {
            let shown = transforms.iter().fold(resource, |resource, transform| {
                transform.for_read(&resource)
            });
            version.body = Some(shown.to_string());
        }
        version
    }

    pub(crate) fn present_outcome(&self, outcome: WriteOutcome) -> WriteOutcome {
        WriteOutcome {
            kind: outcome.kind,
            version: outcome.version.map(|version| self.present(version)),
        }
    }

    /// Puts back what reads masked (see [`ReadTransform::restore`]).
    pub(crate) fn restore_masked(
        &self,
        resource_type: &str,
        incoming: &mut serde_json::Value,
        stored: Option<&flare_store::StoredVersion>,
    ) {
        let transforms = self.read_transforms_for(resource_type);
        if transforms.is_empty() {
            return;
        }
        let Some(Ok(stored)) = stored
            .and_then(|v| v.body.as_deref())
            .map(serde_json::from_str::<serde_json::Value>)
        else {
            return;
        };
        for transform in &transforms {
            transform.restore(incoming, &stored);
        }
    }
}
