//! A seeded synthetic patient population, realistic enough to exercise everything downstream:
//! Patients with Encounters, vital signs on a clock (a configurable share of inpatients follow
//! a sepsis course: respiratory rate rising, systolic pressure falling, GCS dropping),
//! immunizations following age-based schedules, a few labs and medication requests.
//!
//! The generator is an iterator of [`Generated`] items in simulated emission order. It does no
//! I/O and reads no clock: the same [`GeneratorConfig`] (seed and start included) yields the
//! same resources, byte for byte once serialised. Sinks and pacing live in the `flare` binary.
//!
//! Architecture invariant: knows nothing of HTTP, storage or the log.

mod catalog;
mod patient;

use std::{cmp::Reverse, collections::BinaryHeap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

pub use catalog::{VACCINES, Vaccine};

/// What to generate. Defaults are documented on each field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Seed of the pseudo-random stream [default: 42].
    pub seed: u64,
    /// Patients to admit; `None` admits patients forever [default: None].
    pub patients: Option<u64>,
    /// Simulated time of the first admission (RFC 3339) [default: 2026-01-01T00:00:00Z].
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Admissions per simulated hour [default: 60].
    pub admissions_per_hour: f64,
    /// Share of patients admitted as inpatients with vitals on a clock [default: 0.6].
    pub inpatient_share: f64,
    /// Share of inpatients who follow a sepsis course [default: 0.1].
    pub sepsis_share: f64,
    /// Minutes between two sets of inpatient vital signs [default: 15].
    pub vitals_every_minutes: u32,
    /// Share of vital-sign Observations sent late, after later ones (out of order) [default: 0.05].
    pub late_share: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            patients: None,
            start: time::macros::datetime!(2026-01-01 00:00 UTC),
            admissions_per_hour: 60.0,
            inpatient_share: 0.6,
            sepsis_share: 0.1,
            vitals_every_minutes: 15,
            late_share: 0.05,
        }
    }
}

/// A configuration the generator cannot honour.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{name} must be between 0 and 1, got {value}")]
    ShareOutOfRange { name: &'static str, value: f64 },
    #[error("admissions_per_hour must be positive, got {0}")]
    NoAdmissions(f64),
    #[error("vitals_every_minutes must be between 1 and 1440, got {0}")]
    VitalsInterval(u32),
}

impl GeneratorConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("inpatient_share", self.inpatient_share),
            ("sepsis_share", self.sepsis_share),
            ("late_share", self.late_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::ShareOutOfRange { name, value });
            }
        }
        if !(self.admissions_per_hour > 0.0 && self.admissions_per_hour.is_finite()) {
            return Err(ConfigError::NoAdmissions(self.admissions_per_hour));
        }
        if !(1..=1440).contains(&self.vitals_every_minutes) {
            return Err(ConfigError::VitalsInterval(self.vitals_every_minutes));
        }
        Ok(())
    }
}

/// How a generated resource is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The first version (written with PUT at its id, so references between resources hold).
    Create,
    /// A later version of a resource already generated (an Encounter finishing, say).
    Update,
}

/// One resource to write, at a simulated time.
#[derive(Debug, Clone)]
pub struct Generated {
    /// When the source system sends it (simulated). Vital signs sent late have an effective
    /// time earlier than later-sent ones.
    pub at: OffsetDateTime,
    pub action: Action,
    pub resource: Value,
}

impl Generated {
    pub fn resource_type(&self) -> &str {
        self.resource["resourceType"].as_str().unwrap_or_default()
    }
}

/// What the generator decided for one patient at admission. It lets a test derive what
/// downstream processors must conclude (which patients a qSOFA screen has to alert on) from the
/// generator's own decisions instead of from hard-coded numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientPlan {
    /// `Patient/<id>`, as the patient's resources refer to it.
    pub patient: String,
    pub admitted: OffsetDateTime,
    /// When the Encounter ends; no vital signs are measured from then on.
    pub discharged: OffsetDateTime,
    /// Inpatients have vital signs on a clock (see [`PatientPlan::vitals_times`]).
    pub inpatient: bool,
    /// The sepsis course, for the inpatients who follow one.
    pub sepsis: Option<SepsisPlan>,
}

impl PatientPlan {
    /// When this inpatient's sets of vital signs are measured (their effective times); empty
    /// for outpatients, whose single set is never on a sepsis course.
    pub fn vitals_times(&self, config: &GeneratorConfig) -> impl Iterator<Item = OffsetDateTime> {
        let every = Duration::minutes(i64::from(config.vitals_every_minutes));
        let first = self.admitted + patient::FIRST_VITALS_AFTER;
        let discharged = self.discharged;
        let inpatient = self.inpatient;
        std::iter::successors(Some(first), move |at| Some(*at + every))
            .take_while(move |at| inpatient && *at < discharged)
    }
}

/// A sepsis course: vital signs deteriorate from `onset` over `ramp`, then stay at their worst.
///
/// At progress `p` (0 to 1) a normal set moves by: respiratory rate +12 p /min, systolic
/// pressure (capped at 128 first) −38 p mmHg, GCS −round(3 p). So from p ≥ 0.74 the systolic
/// pressure is at most 100 mmHg and GCS at most 13 whatever the starting values: two qSOFA
/// criteria hold in every set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SepsisPlan {
    pub onset: OffsetDateTime,
    pub ramp: Duration,
}

impl SepsisPlan {
    /// Progress at which every set of vital signs meets at least two qSOFA criteria.
    pub const TWO_CRITERIA_CERTAIN: f64 = 0.74;

    /// 0 before onset, rising linearly to 1 over the ramp, then staying there.
    pub fn progress(&self, at: OffsetDateTime) -> f64 {
        if at <= self.onset {
            return 0.0;
        }
        ((at - self.onset).as_seconds_f64() / self.ramp.as_seconds_f64()).min(1.0)
    }
}

/// Totals of what was generated so far, for progress lines and summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub patients: u64,
    pub septic_patients: u64,
    pub resources: u64,
}

/// The population: an iterator of resources in simulated emission order.
pub struct Generator {
    config: GeneratorConfig,
    rng: ChaCha8Rng,
    /// What is due, ordered by (time, sequence) so ties keep their order.
    queue: BinaryHeap<Reverse<(i128, u64, usize)>>,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    sequence: u64,
    admitted: u64,
    tally: Tally,
    /// Plans of admitted patients, kept only when asked for (an endless run would grow).
    plans: Option<Vec<PatientPlan>>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("tally", &self.tally)
            .finish()
    }
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut generator = Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            sequence: 0,
            admitted: 0,
            tally: Tally::default(),
            plans: None,
            config,
        };
        if generator.more_admissions() {
            generator.schedule(generator.config.start, Pending::Admission);
        }
        Ok(generator)
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Keeps the [`PatientPlan`] of every patient admitted from now on, for
    /// [`Generator::take_plans`].
    pub fn keep_plans(mut self) -> Self {
        self.plans.get_or_insert_with(Vec::new);
        self
    }

    /// The plans kept since the last call (empty unless [`Generator::keep_plans`] was called).
    /// Patients are admitted as the iteration reaches their admission time.
    pub fn take_plans(&mut self) -> Vec<PatientPlan> {
        self.plans.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn schedule(&mut self, at: OffsetDateTime, pending: Pending) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(pending);
                slot
            }
            None => {
                self.slots.push(Some(pending));
                self.slots.len() - 1
            }
        };
        self.queue
            .push(Reverse((at.unix_timestamp_nanos(), self.sequence, slot)));
        self.sequence += 1;
    }

    fn more_admissions(&self) -> bool {
        self.config
            .patients
            .is_none_or(|limit| self.admitted < limit)
    }

    /// Admits the next patient and schedules the admission after it.
    fn admit(&mut self, at: OffsetDateTime) {
        let index = self.admitted;
        self.admitted += 1;
        let inpatient = self.rng.random_bool(self.config.inpatient_share);
        let septic = inpatient && self.rng.random_bool(self.config.sepsis_share);
        let patient_rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let (items, stay, plan) =
            patient::generate(patient_rng, &self.config, index, at, inpatient, septic);
        if let Some(plans) = &mut self.plans {
            plans.push(plan);
        }
        self.tally.patients += 1;
        self.tally.septic_patients += u64::from(septic);
        for item in items {
            self.schedule(item.at, Pending::Item(item));
        }
        if let Some(stay) = stay
            && let Some(due) = stay.vitals_due()
        {
            self.schedule(due, Pending::Vitals(Box::new(stay)));
        }
        if self.more_admissions() {
            // Poisson arrivals: exponential gaps with the configured mean.
            let mean_seconds = 3600.0 / self.config.admissions_per_hour;
            let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
            let gap = (-uniform.ln() * mean_seconds).min(mean_seconds * 20.0);
            self.schedule(at + Duration::seconds_f64(gap), Pending::Admission);
        }
    }
}

/// Something due at a simulated time.
enum Pending {
    Item(Generated),
    Vitals(Box<patient::Stay>),
    Admission,
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        loop {
            let Reverse((key, _, slot)) = self.queue.pop()?;
            let pending = self.slots[slot].take()?;
            self.free.push(slot);
            let at = OffsetDateTime::from_unix_timestamp_nanos(key).unwrap_or(self.config.start);
            match pending {
                Pending::Item(item) => {
                    self.tally.resources += 1;
                    return Some(item);
                }
                Pending::Vitals(mut stay) => {
                    for item in stay.next_vitals(&self.config) {
                        self.schedule(item.at, Pending::Item(item));
                    }
                    if let Some(due) = stay.vitals_due() {
                        self.schedule(due, Pending::Vitals(stay));
                    }
                }
                Pending::Admission => self.admit(at),
            }
        }
    }
}

/// Formats an instant as FHIR `dateTime`/`instant` text (UTC, seconds precision).
pub(crate) fn fhir_time(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A deterministic id: 32 hex digits from the seeded stream, shaped like a UUID.
pub(crate) fn new_id(rng: &mut ChaCha8Rng) -> String {
    let bytes: [u8; 16] = rng.random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
}
