//! The built-in processors, adapters from the log to the sans-I/O logic of `flare-clinical`.
//!
//! - [`qsofa::QsofaProcessor`] (`qsofa`): sepsis screening over vital-sign Observations.
//! - [`pager::PagerProcessor`] (`qsofa-pager`): pages qSOFA alerts to a PagerDuty Events API
//!   v2 webhook; needs `[processors.qsofa.pager]`, off unless enabled by name.
//! - [`immunizations::ImmunizationsProcessor`] (`immunizations`): live counts by vaccine.
//!
//! [`spawn_builtin`] starts one by name, for `flare serve` and `flare process`.

pub mod immunizations;
pub mod pager;
pub mod qsofa;
pub mod watermark;

use std::{borrow::Cow, sync::Arc};

use flare_clinical::QsofaConfig;
use flare_events::ChangeEvent;
use flare_log::EventLog;
use flare_service::Fhir;
use serde_json::Value;

use crate::{ProcessError, ProcessorHandle, RuntimeOptions, StateError, StateStore, spawn};

/// The resource of a created or updated change event: inline `data`, or, for a resource too
/// large for a log record, the version its `dataRef` (`Type/id/_history/n`) names, read
/// through the service (the claim check). Reading one named version is not polling the store
/// for changes: the log still says what changed. `Ok(None)` for a delete.
pub async fn event_resource<'a>(
    fhir: Option<&Fhir>,
    event: &'a ChangeEvent,
) -> Result<Option<Cow<'a, Value>>, ProcessError> {
    if let Some(data) = &event.data {
        return Ok(Some(Cow::Borrowed(data)));
    }
    let Some(reference) = event.data_ref.as_deref() else {
        return Ok(None);
    };
    let Some(fhir) = fhir else {
        return Err(ProcessError::permanent(format!(
            "the event carries no resource, only dataRef {reference}, and this processor has no              FHIR service to read it through"
        )));
    };
    let parts: Vec<&str> = reference.split('/').collect();
    let [resource_type, id, "_history", version] = parts[..] else {
        return Err(ProcessError::permanent(format!(
            "dataRef {reference} is not Type/id/_history/version"
        )));
    };
    let stored = fhir
        .vread(resource_type, id, version)
        .await
        .map_err(|error| {
            let message = format!("cannot read dataRef {reference}: {error}");
            // A missing version will not appear later; a failing store may recover.
            if error.status >= 500 {
                ProcessError::retryable(message)
            } else {
                ProcessError::permanent(message)
            }
        })?;
    let Some(body) = stored.body else {
        return Err(ProcessError::permanent(format!(
            "dataRef {reference} names a deleted version"
        )));
    };
    serde_json::from_str(&body)
        .map(|resource| Some(Cow::Owned(resource)))
        .map_err(|e| ProcessError::permanent(format!("dataRef {reference}: stored JSON: {e}")))
}

/// Names [`spawn_builtin`] knows.
pub const BUILTIN_PROCESSORS: &[&str] = &["qsofa", "qsofa-pager", "immunizations"];

/// What the built-in processors run on.
#[derive(Clone)]
pub struct BuiltinDeps {
    /// The commit path, for the resources processors write (alerts).
    pub fhir: Fhir,
    pub log: Arc<dyn EventLog>,
    pub state: Arc<dyn StateStore>,
    pub options: RuntimeOptions,
}

/// A started built-in processor, with the read side it offers (if any).
pub struct SpawnedBuiltin {
    pub handle: ProcessorHandle,
    /// Live counts, for `immunizations`.
    pub immunizations: Option<Arc<immunizations::ImmunizationView>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("unknown processor `{name}`: choose from {}", BUILTIN_PROCESSORS.join(", "))]
    Unknown { name: String },
    #[error(
        "processor `{name}` needs its settings: add [processors.qsofa.pager] with a routing_key"
    )]
    NotConfigured { name: String },
    #[error("processor `{name}` cannot start its HTTP client: {source}")]
    Client {
        name: String,
        #[source]
        source: flare_outbound::BuildError,
    },
    #[error("processor `{name}` cannot read its state: {source}")]
    State {
        name: String,
        #[source]
        source: StateError,
    },
}

/// Starts the built-in processor called `name`.
pub async fn spawn_builtin(name: &str, deps: &BuiltinDeps) -> Result<SpawnedBuiltin, BuiltinError> {
    match name {
        "qsofa" => {
            let mut processor =
                qsofa::QsofaProcessor::new(deps.fhir.clone()).with_config(QsofaConfig {
                    allowed_lateness_minutes: u32::try_from(
                        deps.options.allowed_lateness.as_secs() / 60,
                    )
                    .unwrap_or(u32::MAX),
                    ..QsofaConfig::default()
                });
            let idle = deps.options.qsofa.idle;
            if idle.clock != watermark::IdleClock::Off {
                processor = processor.with_idle_clock();
            }
            let clock = watermark::WatermarkClock::new(
                deps.log.clone(),
                idle,
                deps.options.allowed_lateness,
                processor.latest_effective(),
            );
            let handle = spawn(
                processor,
                deps.log.clone(),
                deps.state.clone(),
                deps.options.clone(),
            );
            // The clock stops with the processor (on shutdown or when the handle is dropped).
            tokio::spawn(clock.run(handle.stop_signal()));
            Ok(SpawnedBuiltin {
                handle,
                immunizations: None,
            })
        }
        pager::NAME => {
            let Some(config) = deps.options.qsofa.pager.clone() else {
                return Err(BuiltinError::NotConfigured {
                    name: name.to_owned(),
                });
            };
            let mut options = deps.options.clone();
            options.retry = config.retry;
            let processor =
                pager::PagerProcessor::new(config).map_err(|source| BuiltinError::Client {
                    name: name.to_owned(),
                    source,
                })?;
            Ok(SpawnedBuiltin {
                handle: spawn(processor, deps.log.clone(), deps.state.clone(), options),
                immunizations: None,
            })
        }
        "immunizations" => {
            let processor = immunizations::ImmunizationsProcessor::open(&deps.state)
                .await
                .map_err(|source| BuiltinError::State {
                    name: name.to_owned(),
                    source,
                })?
                .with_fhir(deps.fhir.clone());
            let view = processor.view();
            Ok(SpawnedBuiltin {
                handle: spawn(
                    processor,
                    deps.log.clone(),
                    deps.state.clone(),
                    deps.options.clone(),
                ),
                immunizations: Some(view),
            })
        }
        other => Err(BuiltinError::Unknown {
            name: other.to_owned(),
        }),
    }
}
