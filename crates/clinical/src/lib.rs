//! Sans-I/O clinical logic: qSOFA sepsis windows and immunization counts.
//!
//! Pure functions and state machines over FHIR R4 resources as `serde_json::Value` (as they
//! travel in change events). No I/O, no clock: time is always a value passed in, so the
//! processor runtime decides where input comes from, where state is checkpointed and where
//! alerts go.
//!
//! - [`vitals`]: what one Observation says about qSOFA ([`vitals::read_observation`]).
//! - [`qsofa`]: per-patient event-time windows and alert episodes ([`QsofaEngine`],
//!   [`PatientQsofa`]).
//! - [`alerts`]: the FHIR resources and messages for an episode (`RiskAssessment`, `Flag`,
//!   the alert topic payload, a PagerDuty Events API v2 body).
//! - [`immunizations`]: counts by vaccine and time bucket, exact under updates and deletes.
//! - [`time`]: FHIR date/time values as UTC instants.

pub mod alerts;
pub mod immunizations;
pub mod qsofa;
pub mod time;
pub mod vitals;

pub use immunizations::{ImmunizationCounts, ImmunizationReading};
pub use qsofa::{
    AlertEvent, Applied, Disposition, Episode, EvidenceChange, EvidenceRef, Outcome, PatientQsofa,
    QsofaConfig, QsofaEngine, ResolveReason,
};
pub use time::Timestamp;
pub use vitals::{Criterion, Rejection, VitalReading};
