//! The built-in processors, adapters from the log to the sans-I/O logic of `flare-clinical`.
//!
//! - [`qsofa::QsofaProcessor`] (`qsofa`): sepsis screening over vital-sign Observations.
//!
//! [`spawn_builtin`] starts one by name, for `flare serve` and `flare process`.

pub mod qsofa;

use std::sync::Arc;

use flare_log::EventLog;
use flare_service::Fhir;

use crate::{ProcessorHandle, RuntimeOptions, StateStore, spawn};

/// Names [`spawn_builtin`] knows.
pub const BUILTIN_PROCESSORS: &[&str] = &["qsofa"];

/// What the built-in processors run on.
#[derive(Clone)]
pub struct BuiltinDeps {
    /// The commit path, for the resources processors write (alerts).
    pub fhir: Fhir,
    pub log: Arc<dyn EventLog>,
    pub state: Arc<dyn StateStore>,
    pub options: RuntimeOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("unknown processor `{name}`: choose from {}", BUILTIN_PROCESSORS.join(", "))]
    Unknown { name: String },
}

/// Starts the built-in processor called `name`.
pub fn spawn_builtin(name: &str, deps: &BuiltinDeps) -> Result<ProcessorHandle, BuiltinError> {
    match name {
        "qsofa" => Ok(spawn(
            qsofa::QsofaProcessor::new(deps.fhir.clone()),
            deps.log.clone(),
            deps.state.clone(),
            deps.options.clone(),
        )),
        other => Err(BuiltinError::Unknown {
            name: other.to_owned(),
        }),
    }
}
