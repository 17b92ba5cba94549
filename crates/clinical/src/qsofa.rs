//! The qSOFA engine: per-patient evidence in event time, positive windows, alert episodes.
//!
//! # Definitions
//!
//! - **Evidence**: a counting Observation (see [`crate::vitals`]) whose value meets its
//!   criterion. Evidence is keyed by Observation id: a new version replaces it, a withdrawn or
//!   deleted Observation removes it. Measurements that meet no criterion store nothing (they
//!   only clear what an earlier version of the same Observation contributed).
//! - **Window**: evidence at effective time `e` supports its criterion at every instant
//!   `t` with `e <= t <= e + window` (closed at both ends: two criteria exactly 6 h 00 min
//!   apart are inside one 6-hour window; 6 h 00 min 001 ms apart are not). `P(t)` is the
//!   number of distinct criteria supported at `t`.
//! - **Episode**: a maximal run of milliseconds with `P(t) >= 2`. Its *onset* is the first such
//!   instant, its *end* the last (for an ongoing episode: the instant it will end unless more
//!   evidence arrives), its *score* the maximum of `P` over the run (2 or 3), its *peak* the
//!   first instant reaching that score, and its *basis* the latest evidence of each criterion
//!   supporting the peak.
//!
//! # Event time
//!
//! Each patient has a watermark, the latest effective time of any counting measurement seen.
//! Evidence may arrive in any order as long as it is no older than
//! `watermark - allowed_lateness` (the *frozen boundary*); older input is not applied and is
//! reported as [`Disposition::TooLate`]. Everything before the boundary is final, which is what
//! lets the state forget evidence older than `boundary - window` and stay small.
//!
//! An episode is **active** while `end >= watermark` and resolves ([`ResolveReason::Elapsed`])
//! once the watermark passes its end. Late evidence that creates a positive window in the past
//! still raises the alert (with its effective window), and, when that window has already
//! closed, resolves it in the same batch; the alert record exists, the flag is inactive.
//!
//! Identity: an episode's id is derived from the patient and the onset first seen, so a replay
//! of the same input produces the same ids. Later input that moves the onset (earlier evidence
//! arriving out of order, a retraction) keeps the id and sends [`AlertEvent::Updated`]; input
//! that joins two episodes keeps the earlier id and resolves the other as
//! [`ResolveReason::Merged`]; input that splits one keeps the id for the first part.

use crate::time::{Timestamp, minutes};
use crate::vitals::{self, BorrowedReading, Criterion, Measurement, Rejection, StatusEffect};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{borrow::Cow, collections::HashMap};

/// Patient and Observation ids are hashed on every observation: foldhash is several times
/// faster than the standard SipHash on short keys and still seeded per process.
type IdMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// qSOFA engine settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QsofaConfig {
    /// Width of the window in which two criteria make a patient positive, in minutes.
    /// Default 360 (6 hours, Sepsis-3).
    #[serde(default = "default_window_minutes")]
    pub window_minutes: u32,
    /// How far behind a patient's watermark (latest effective time seen) evidence may still
    /// arrive and be applied, in minutes. Default 120.
    #[serde(default = "default_allowed_lateness_minutes")]
    pub allowed_lateness_minutes: u32,
}

fn default_window_minutes() -> u32 {
    360
}

fn default_allowed_lateness_minutes() -> u32 {
    120
}

impl Default for QsofaConfig {
    fn default() -> Self {
        Self {
            window_minutes: default_window_minutes(),
            allowed_lateness_minutes: default_allowed_lateness_minutes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("qsofa window_minutes must be at least 1")]
    EmptyWindow,
}

impl QsofaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window_minutes == 0 {
            return Err(ConfigError::EmptyWindow);
        }
        Ok(())
    }

    fn window(&self) -> i64 {
        minutes(self.window_minutes)
    }

    fn lateness(&self) -> i64 {
        minutes(self.allowed_lateness_minutes)
    }
}

/// One piece of evidence: an Observation whose value meets its criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRef {
    #[serde(rename = "o")]
    pub observation_id: String,
    #[serde(rename = "c")]
    pub criterion: Criterion,
    #[serde(rename = "t")]
    pub effective: Timestamp,
    #[serde(rename = "v")]
    pub value: f64,
}

/// A change to what one Observation contributes, for [`PatientQsofa::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum EvidenceChange {
    /// The current version is a counting measurement (it may or may not meet its criterion).
    Measured {
        observation_id: String,
        measurement: Measurement,
        effective: Timestamp,
    },
    /// The Observation contributes nothing from now on (deleted, withdrawn, replaced by an
    /// unusable or unrelated version).
    Cleared { observation_id: String },
}

/// What an input did to the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// The measurement meets its criterion and is now evidence (new, or replacing the
    /// Observation's earlier evidence).
    Recorded,
    /// A counting measurement that meets no criterion; it cleared the Observation's earlier
    /// evidence, if any.
    Normal,
    /// The Observation's evidence was withdrawn.
    Cleared,
    /// Nothing to do.
    Ignored(IgnoreReason),
    /// A qSOFA vital that cannot be used; the Observation's earlier evidence, if any, was
    /// cleared.
    Rejected(Rejection),
    /// Older than the frozen boundary (`watermark - allowed_lateness`): not applied.
    TooLate {
        effective: Timestamp,
        frozen_before: Timestamp,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Not a qSOFA vital sign.
    Unrelated,
    /// A status that neither counts nor withdraws evidence the Observation never had.
    NotCounted,
    /// A retraction or delete of an Observation that contributed no evidence.
    NoEvidence,
}

/// An alert episode as the alert resources and messages present it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Episode {
    /// Deterministic (patient + onset first seen); a valid FHIR id.
    pub id: String,
    pub patient_id: String,
    pub onset: Timestamp,
    pub peak_at: Timestamp,
    /// The last instant of the episode; for an active episode, the instant it ends unless more
    /// evidence arrives.
    pub end: Timestamp,
    /// 2 or 3.
    pub score: u8,
    /// The evidence behind the peak, one per criterion, in criterion order.
    pub basis: Vec<EvidenceRef>,
    pub active: bool,
}

impl Episode {
    pub fn criteria(&self) -> impl Iterator<Item = Criterion> + '_ {
        self.basis.iter().map(|evidence| evidence.criterion)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "reason", content = "into")]
pub enum ResolveReason {
    /// The watermark passed the episode's end: the window no longer holds two criteria.
    Elapsed,
    /// Retractions or corrections removed the evidence the episode stood on.
    Withdrawn,
    /// Late evidence joined it to an earlier episode, whose id is given.
    Merged(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum AlertEvent {
    Raised {
        episode: Episode,
    },
    Updated {
        episode: Episode,
    },
    Resolved {
        episode: Episode,
        reason: ResolveReason,
    },
}

impl AlertEvent {
    pub fn episode(&self) -> &Episode {
        match self {
            AlertEvent::Raised { episode }
            | AlertEvent::Updated { episode }
            | AlertEvent::Resolved { episode, .. } => episode,
        }
    }
}

/// The result of applying one change to a patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub disposition: Disposition,
    pub alerts: Vec<AlertEvent>,
    /// Observations whose evidence was forgotten because it fell behind the horizon (lets an
    /// index from Observation id to patient stay small).
    pub released: Vec<String>,
}

/// The part of an episode before the frozen boundary, which evidence no longer describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FrozenPart {
    #[serde(rename = "n")]
    score: u8,
    #[serde(rename = "p")]
    peak_at: Timestamp,
    #[serde(rename = "b")]
    basis: Vec<EvidenceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KnownEpisode {
    #[serde(rename = "i")]
    id: String,
    #[serde(rename = "s")]
    onset: Timestamp,
    #[serde(rename = "e")]
    end: Timestamp,
    #[serde(rename = "n")]
    score: u8,
    #[serde(rename = "p")]
    peak_at: Timestamp,
    #[serde(rename = "b")]
    basis: Vec<EvidenceRef>,
    #[serde(rename = "x", default, skip_serializing_if = "std::ops::Not::not")]
    closed: bool,
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    frozen: Option<FrozenPart>,
}

/// The qSOFA state of one patient: what the runtime checkpoints per key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientQsofa {
    #[serde(rename = "p")]
    patient_id: String,
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    watermark: Option<Timestamp>,
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    frozen_before: Option<Timestamp>,
    /// Evidence sorted by (effective, observation id).
    #[serde(rename = "e", default, skip_serializing_if = "Vec::is_empty")]
    evidence: Vec<EvidenceRef>,
    /// Episodes that may still change, sorted by onset, disjoint.
    #[serde(rename = "k", default, skip_serializing_if = "Vec::is_empty")]
    episodes: Vec<KnownEpisode>,
}

/// `P(t)` as a step function: `(t, p)` means `P = p` from `t` until the next step; `P = 0`
/// before the first step.
type Steps = Vec<(i64, u8)>;

impl PatientQsofa {
    pub fn new(patient_id: impl Into<String>) -> Self {
        Self {
            patient_id: patient_id.into(),
            watermark: None,
            frozen_before: None,
            evidence: Vec::new(),
            episodes: Vec::new(),
        }
    }

    pub fn patient_id(&self) -> &str {
        &self.patient_id
    }

    /// The latest effective time of a counting measurement seen.
    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark
    }

    /// Input older than this is not applied.
    pub fn frozen_before(&self) -> Option<Timestamp> {
        self.frozen_before
    }

    /// Observations currently held as evidence.
    pub fn observation_ids(&self) -> impl Iterator<Item = &str> {
        self.evidence.iter().map(|e| e.observation_id.as_str())
    }

    pub fn holds(&self, observation_id: &str) -> bool {
        self.evidence
            .iter()
            .any(|e| e.observation_id == observation_id)
    }

    /// The episodes that are active now.
    pub fn active_episodes(&self) -> impl Iterator<Item = Episode> + '_ {
        self.episodes
            .iter()
            .filter(|known| !known.closed)
            .map(|known| self.snapshot(known))
    }

    /// Whether the state holds nothing worth keeping (the runtime may delete it).
    pub fn is_idle(&self) -> bool {
        self.evidence.is_empty() && self.episodes.is_empty()
    }

    /// Applies one change and returns the alert events it causes.
    pub fn apply(&mut self, config: &QsofaConfig, change: EvidenceChange) -> Applied {
        match change {
            EvidenceChange::Measured {
                observation_id,
                measurement,
                effective,
            } => self.apply_change(
                config,
                Cow::Owned(observation_id),
                Some((measurement, effective)),
            ),
            EvidenceChange::Cleared { observation_id } => {
                self.apply_change(config, Cow::Owned(observation_id), None)
            }
        }
    }

    /// [`apply`](Self::apply) with the Observation id borrowed when it need not be kept: a
    /// measurement that meets no criterion, or a retraction, only looks it up.
    fn apply_change(
        &mut self,
        config: &QsofaConfig,
        observation_id: Cow<'_, str>,
        measured: Option<(Measurement, Timestamp)>,
    ) -> Applied {
        let frozen_before = self.frozen_before;
        let too_late = |effective: Timestamp| frozen_before.is_some_and(|f| effective < f);
        let existing = |this: &Self, id: &str| {
            this.evidence
                .iter()
                .position(|evidence| evidence.observation_id == id)
        };
        let (disposition, changed, new_watermark) = match measured {
            Some((measurement, effective)) => {
                let previous = existing(self, &observation_id);
                let previous_time = previous.map(|index| self.evidence[index].effective);
                if let Some(late) = [Some(effective), previous_time]
                    .into_iter()
                    .flatten()
                    .find(|t| too_late(*t))
                {
                    return self.too_late(late);
                }
                let mut changed = false;
                if let Some(index) = previous {
                    self.evidence.remove(index);
                    changed = true;
                }
                let meets = measurement.criterion.is_met(measurement.value);
                if meets {
                    self.insert_evidence(EvidenceRef {
                        observation_id: observation_id.into_owned(),
                        criterion: measurement.criterion,
                        effective,
                        value: measurement.value,
                    });
                    changed = true;
                }
                let watermark = self.watermark.map_or(effective, |w| w.max(effective));
                let disposition = if meets {
                    Disposition::Recorded
                } else {
                    Disposition::Normal
                };
                (disposition, changed, watermark)
            }
            None => {
                let Some(index) = existing(self, &observation_id) else {
                    return Applied {
                        disposition: Disposition::Ignored(IgnoreReason::NoEvidence),
                        alerts: Vec::new(),
                        released: Vec::new(),
                    };
                };
                let effective = self.evidence[index].effective;
                if too_late(effective) {
                    return self.too_late(effective);
                }
                self.evidence.remove(index);
                // Evidence exists only after a measurement set the watermark.
                let watermark = self.watermark.unwrap_or(effective);
                (Disposition::Cleared, true, watermark)
            }
        };
        let (alerts, released) = self.settle(config, new_watermark, changed);
        Applied {
            disposition,
            alerts,
            released,
        }
    }

    /// Moves the watermark forward to `to` without new evidence (e.g. a clock the runtime
    /// trusts, or the end of a replay), resolving episodes that elapse.
    pub fn advance_watermark(&mut self, config: &QsofaConfig, to: Timestamp) -> Applied {
        let target = self.watermark.map_or(to, |w| w.max(to));
        let (alerts, released) = self.settle(config, target, false);
        Applied {
            disposition: Disposition::Ignored(IgnoreReason::NoEvidence),
            alerts,
            released,
        }
    }

    fn too_late(&self, effective: Timestamp) -> Applied {
        Applied {
            disposition: Disposition::TooLate {
                effective,
                frozen_before: self.frozen_before.unwrap_or(effective),
            },
            alerts: Vec::new(),
            released: Vec::new(),
        }
    }

    fn insert_evidence(&mut self, evidence: EvidenceRef) {
        let key = (evidence.effective, evidence.observation_id.as_str());
        let index = self
            .evidence
            .partition_point(|e| (e.effective, e.observation_id.as_str()) < key);
        self.evidence.insert(index, evidence);
    }

    /// Recomputes episodes after a change and/or a watermark advance, emits the differences,
    /// then forgets what the frozen boundary makes final.
    fn settle(
        &mut self,
        config: &QsofaConfig,
        watermark: Timestamp,
        changed: bool,
    ) -> (Vec<AlertEvent>, Vec<String>) {
        let window = config.window();
        let old_boundary = self
            .frozen_before
            .map_or(i64::MIN / 4, Timestamp::as_millis);
        let new_boundary = old_boundary.max(watermark.as_millis() - config.lateness());
        self.watermark = Some(watermark);
        let mut alerts = Vec::new();
        // Without known episodes, only a change of evidence can create one.
        if changed || !self.episodes.is_empty() {
            alerts = self.reconcile(window, watermark.as_millis(), old_boundary, new_boundary);
        }
        self.frozen_before = Some(Timestamp::from_millis(new_boundary));
        // Episodes wholly before the boundary are final and, by then, closed.
        self.episodes
            .retain(|known| known.end.as_millis() >= new_boundary - 1);
        let horizon = new_boundary - window;
        let stale = self
            .evidence
            .partition_point(|e| e.effective.as_millis() < horizon);
        let released = self
            .evidence
            .drain(..stale)
            .map(|e| e.observation_id)
            .collect();
        (alerts, released)
    }

    fn reconcile(
        &mut self,
        window: i64,
        watermark: i64,
        old_boundary: i64,
        new_boundary: i64,
    ) -> Vec<AlertEvent> {
        let steps = compute_steps(&self.evidence, window);
        let horizon = old_boundary - window;
        let candidates = self.candidates(&steps, window, old_boundary, new_boundary);
        let known = std::mem::take(&mut self.episodes);
        let mut claimed = vec![false; known.len()];
        let mut alerts = Vec::new();
        let mut next = Vec::with_capacity(candidates.len());
        for mut candidate in candidates {
            let overlapping: Vec<usize> = (0..known.len())
                .filter(|&j| known[j].onset <= candidate.end && candidate.onset <= known[j].end)
                .collect();
            let identity = overlapping.iter().copied().find(|&j| !claimed[j]);
            if let Some(kept) = identity {
                candidate.id.clone_from(&known[kept].id);
                for &j in &overlapping {
                    if !claimed[j] && j != kept {
                        claimed[j] = true;
                        alerts.push(AlertEvent::Resolved {
                            episode: self.snapshot_closed(&known[j]),
                            reason: ResolveReason::Merged(candidate.id.clone()),
                        });
                    }
                }
                claimed[kept] = true;
            } else {
                candidate.id = episode_id(&self.patient_id, candidate.onset);
            }
            let open_now = candidate.end.as_millis() >= watermark;
            match identity.map(|j| &known[j]) {
                None => {
                    alerts.push(AlertEvent::Raised {
                        episode: self.snapshot_with(&candidate, true),
                    });
                    if !open_now {
                        candidate.closed = true;
                        alerts.push(AlertEvent::Resolved {
                            episode: self.snapshot_with(&candidate, false),
                            reason: ResolveReason::Elapsed,
                        });
                    }
                }
                Some(previous) => {
                    // A new basis alone is no news unless the old one names withdrawn evidence:
                    // that keeps a septic patient's stream of vitals from re-sending the alert.
                    // An elapsed episode's end is part of what its record presents.
                    let presented_changed = previous.score != candidate.score
                        || previous.onset != candidate.onset
                        || (previous.closed && previous.end != candidate.end)
                        || self.basis_withdrawn(&previous.basis, &candidate.basis, horizon);
                    candidate.closed = previous.closed;
                    if previous.closed && open_now {
                        candidate.closed = false;
                        alerts.push(AlertEvent::Raised {
                            episode: self.snapshot_with(&candidate, true),
                        });
                    } else if presented_changed {
                        alerts.push(AlertEvent::Updated {
                            episode: self.snapshot_with(&candidate, !previous.closed),
                        });
                    }
                    if !candidate.closed && !open_now {
                        candidate.closed = true;
                        alerts.push(AlertEvent::Resolved {
                            episode: self.snapshot_with(&candidate, false),
                            reason: ResolveReason::Elapsed,
                        });
                    }
                }
            }
            next.push(candidate);
        }
        for (j, previous) in known.iter().enumerate() {
            if !claimed[j] {
                alerts.push(AlertEvent::Resolved {
                    episode: self.snapshot_closed(previous),
                    reason: ResolveReason::Withdrawn,
                });
            }
        }
        self.episodes = next;
        alerts
    }

    /// The episodes the evidence describes from the old boundary on, joined to the frozen part
    /// of the episode that straddles it.
    fn candidates(
        &self,
        steps: &Steps,
        window: i64,
        old_boundary: i64,
        new_boundary: i64,
    ) -> Vec<KnownEpisode> {
        let mut segments = segments_from(steps, old_boundary);
        let carried = self
            .episodes
            .iter()
            .find(|known| known.onset.as_millis() < old_boundary);
        let mut candidates = Vec::with_capacity(segments.len() + 1);
        if let Some(carried) = carried {
            // The carried episode was positive up to old_boundary - 1; it continues into the
            // first live segment when that starts at the boundary.
            let (end, live) = match segments.first() {
                Some(&(start, end)) if start == old_boundary => {
                    segments.remove(0);
                    (end, Some((start, end)))
                }
                _ => (old_boundary - 1, None),
            };
            candidates.push(self.build(
                steps,
                window,
                carried.onset.as_millis(),
                end,
                live,
                carried.frozen.clone(),
                new_boundary,
            ));
        }
        for (start, end) in segments {
            candidates.push(self.build(
                steps,
                window,
                start,
                end,
                Some((start, end)),
                None,
                new_boundary,
            ));
        }
        candidates
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        steps: &Steps,
        window: i64,
        onset: i64,
        end: i64,
        live: Option<(i64, i64)>,
        frozen: Option<FrozenPart>,
        new_boundary: i64,
    ) -> KnownEpisode {
        let live_peak = live.map(|(from, to)| max_in(steps, from, to));
        let frozen_score = frozen.as_ref().map_or(0, |f| f.score);
        let (score, peak_at, basis) = match (&frozen, live_peak) {
            (Some(f), Some((live_score, _))) if f.score >= live_score => {
                (f.score, f.peak_at, f.basis.clone())
            }
            (Some(f), None) => (f.score, f.peak_at, f.basis.clone()),
            (_, Some((live_score, at))) => (
                live_score,
                Timestamp::from_millis(at),
                basis_at(&self.evidence, at, window),
            ),
            (None, None) => (0, Timestamp::from_millis(onset), Vec::new()),
        };
        // The part of the live run that the new boundary freezes.
        let mut frozen = frozen;
        if let Some((from, to)) = live {
            let frozen_to = to.min(new_boundary - 1);
            if from <= frozen_to {
                let (part_score, at) = max_in(steps, from, frozen_to);
                if part_score > frozen_score {
                    frozen = Some(FrozenPart {
                        score: part_score,
                        peak_at: Timestamp::from_millis(at),
                        basis: basis_at(&self.evidence, at, window),
                    });
                }
            }
        }
        KnownEpisode {
            id: String::new(),
            onset: Timestamp::from_millis(onset),
            end: Timestamp::from_millis(end),
            score,
            peak_at,
            basis,
            closed: false,
            frozen,
        }
    }

    /// Whether `old` names evidence that is no longer held although the horizon still keeps
    /// its time (so it was withdrawn, not forgotten), and `new` does not name the same.
    fn basis_withdrawn(&self, old: &[EvidenceRef], new: &[EvidenceRef], horizon: i64) -> bool {
        old.iter().any(|item| {
            item.effective.as_millis() >= horizon
                && !new.iter().any(|n| n.observation_id == item.observation_id)
                && !self.holds(&item.observation_id)
        })
    }

    fn snapshot(&self, known: &KnownEpisode) -> Episode {
        self.snapshot_with(known, !known.closed)
    }

    fn snapshot_closed(&self, known: &KnownEpisode) -> Episode {
        self.snapshot_with(known, false)
    }

    fn snapshot_with(&self, known: &KnownEpisode, active: bool) -> Episode {
        Episode {
            id: known.id.clone(),
            patient_id: self.patient_id.clone(),
            onset: known.onset,
            peak_at: known.peak_at,
            end: known.end,
            score: known.score,
            basis: known.basis.clone(),
            active,
        }
    }
}

/// `P(t)` from evidence sorted by time: per criterion, the union of `[e, e + window]`.
fn compute_steps(evidence: &[EvidenceRef], window: i64) -> Steps {
    let mut changes: Vec<(i64, i8)> = Vec::with_capacity(8);
    let mut current: [Option<(i64, i64)>; 3] = [None; 3];
    for item in evidence {
        let start = item.effective.as_millis();
        let slot = &mut current[item.criterion.index()];
        match slot {
            Some((_, end)) if start <= *end + 1 => *end = (*end).max(start + window),
            _ => {
                if let Some((s, e)) = slot.replace((start, start + window)) {
                    changes.push((s, 1));
                    changes.push((e + 1, -1));
                }
            }
        }
    }
    for (s, e) in current.into_iter().flatten() {
        changes.push((s, 1));
        changes.push((e + 1, -1));
    }
    changes.sort_unstable();
    let mut steps: Steps = Vec::with_capacity(changes.len());
    let mut level: i8 = 0;
    let mut index = 0;
    while index < changes.len() {
        let at = changes[index].0;
        while index < changes.len() && changes[index].0 == at {
            level += changes[index].1;
            index += 1;
        }
        // At most three criteria: the level always fits.
        let level_now = u8::try_from(level).unwrap_or(0);
        if steps.last().map(|&(_, p)| p) != Some(level_now) {
            steps.push((at, level_now));
        }
    }
    steps
}

/// Maximal runs with `P >= 2`, clipped to start no earlier than `from`.
fn segments_from(steps: &Steps, from: i64) -> Vec<(i64, i64)> {
    let mut level_at_from = 0;
    let mut index = 0;
    while index < steps.len() && steps[index].0 <= from {
        level_at_from = steps[index].1;
        index += 1;
    }
    let mut segments = Vec::new();
    let mut open = (level_at_from >= 2).then_some(from);
    for &(at, level) in &steps[index..] {
        if level >= 2 {
            open.get_or_insert(at);
        } else if let Some(start) = open.take() {
            segments.push((start, at - 1));
        }
    }
    segments
}

/// The maximum of `P` over `[from, to]` and the first instant reaching it.
fn max_in(steps: &Steps, from: i64, to: i64) -> (u8, i64) {
    let mut best = (0, from);
    let mut index = 0;
    while index < steps.len() && steps[index].0 <= from {
        best = (steps[index].1, from);
        index += 1;
    }
    for &(at, level) in &steps[index..] {
        if at > to {
            break;
        }
        if level > best.0 {
            best = (level, at);
        }
    }
    best
}

/// The latest evidence of each criterion supporting instant `at`.
fn basis_at(evidence: &[EvidenceRef], at: i64, window: i64) -> Vec<EvidenceRef> {
    let mut latest: [Option<&EvidenceRef>; 3] = [None; 3];
    for item in evidence {
        let t = item.effective.as_millis();
        if t > at {
            break;
        }
        if t >= at - window {
            latest[item.criterion.index()] = Some(item);
        }
    }
    latest.into_iter().flatten().cloned().collect()
}

/// `qsofa-` and 32 hex digits from the patient id and onset: stable across runs and
/// platforms (FNV-1a, two bases), a valid FHIR id.
pub fn episode_id(patient_id: &str, onset: Timestamp) -> String {
    let mut text = Vec::with_capacity(patient_id.len() + 24);
    text.extend_from_slice(patient_id.as_bytes());
    text.push(b'|');
    text.extend_from_slice(onset.as_millis().to_string().as_bytes());
    let fnv = |basis: u64| {
        text.iter().fold(basis, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "qsofa-{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    )
}

/// The result of one change event.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub disposition: Disposition,
    pub alerts: Vec<AlertEvent>,
    /// Patients whose state changed (to checkpoint); two when an update moved an Observation
    /// to another subject.
    pub touched: Vec<String>,
}

/// Every patient's qSOFA state, with an index from Observation id to patient so deletes (which
/// carry no resource) find their evidence.
#[derive(Debug, Clone, Default)]
pub struct QsofaEngine {
    config: QsofaConfig,
    patients: IdMap<PatientQsofa>,
    observation_patient: IdMap<String>,
}

impl QsofaEngine {
    pub fn new(config: QsofaConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            patients: IdMap::default(),
            observation_patient: IdMap::default(),
        })
    }

    pub fn config(&self) -> &QsofaConfig {
        &self.config
    }

    /// An Observation created or updated (the resource of the change event).
    pub fn observe(&mut self, observation: &Value) -> Outcome {
        match vitals::read_borrowed(observation) {
            BorrowedReading::Measured {
                observation_id,
                patient_id,
                measurement,
                effective,
            } => {
                // One index lookup serves both the move check and the index update.
                let mut indexed = self
                    .observation_patient
                    .get(observation_id)
                    .map(|owner| owner == patient_id);
                let mut outcome = Outcome::nothing(IgnoreReason::NoEvidence);
                if indexed == Some(false) {
                    // Moved to another subject: withdraw it from the previous one.
                    outcome = self.observe_deleted(observation_id);
                    indexed = None;
                }
                let applied = self.apply_to(
                    patient_id,
                    observation_id,
                    indexed.is_some(),
                    Some((measurement, effective)),
                );
                outcome.disposition = applied.disposition;
                outcome.alerts.extend(applied.alerts);
                outcome.touched.push(patient_id.to_owned());
                outcome
            }
            BorrowedReading::Withdrawn {
                observation_id,
                status,
                ..
            } => {
                let fallback = match status {
                    StatusEffect::DoesNotCount => IgnoreReason::NotCounted,
                    _ => IgnoreReason::NoEvidence,
                };
                let mut outcome = self.observe_deleted(observation_id);
                if outcome.disposition == Disposition::Ignored(IgnoreReason::NoEvidence) {
                    outcome.disposition = Disposition::Ignored(fallback);
                }
                outcome
            }
            BorrowedReading::Unrelated { observation_id } => {
                let mut outcome = match observation_id {
                    Some(id) => self.observe_deleted(id),
                    None => Outcome::nothing(IgnoreReason::Unrelated),
                };
                if outcome.disposition == Disposition::Ignored(IgnoreReason::NoEvidence) {
                    outcome.disposition = Disposition::Ignored(IgnoreReason::Unrelated);
                }
                outcome
            }
            BorrowedReading::Rejected {
                observation_id,
                reason,
                ..
            } => {
                let mut outcome = match observation_id {
                    Some(id) => self.observe_deleted(id),
                    None => Outcome::nothing(IgnoreReason::NoEvidence),
                };
                if !matches!(outcome.disposition, Disposition::TooLate { .. }) {
                    outcome.disposition = Disposition::Rejected(reason);
                }
                outcome
            }
        }
    }

    /// An Observation deleted: whatever it contributed is withdrawn.
    pub fn observe_deleted(&mut self, observation_id: &str) -> Outcome {
        let Some(patient_id) = self.observation_patient.get(observation_id).cloned() else {
            return Outcome::nothing(IgnoreReason::NoEvidence);
        };
        let applied = self.apply_to(&patient_id, observation_id, true, None);
        Outcome {
            disposition: applied.disposition,
            alerts: applied.alerts,
            touched: vec![patient_id],
        }
    }

    /// Advances every patient's watermark to at least `to` (for example at the end of a
    /// replay, or from a clock the deployment trusts), resolving episodes that elapse.
    pub fn advance_all(&mut self, to: Timestamp) -> Vec<AlertEvent> {
        let mut ids: Vec<String> = self.patients.keys().cloned().collect();
        ids.sort();
        let mut alerts = Vec::new();
        for id in ids {
            if let Some(state) = self.patients.get_mut(&id) {
                let applied = state.advance_watermark(&self.config, to);
                for released in applied.released {
                    self.observation_patient.remove(&released);
                }
                alerts.extend(applied.alerts);
            }
        }
        alerts
    }

    pub fn patient(&self, patient_id: &str) -> Option<&PatientQsofa> {
        self.patients.get(patient_id)
    }

    pub fn patients(&self) -> impl Iterator<Item = &PatientQsofa> {
        self.patients.values()
    }

    /// Restores a checkpointed patient state (replacing any held for that patient).
    pub fn restore_patient(&mut self, state: PatientQsofa) {
        if let Some(previous) = self.patients.get(state.patient_id()) {
            for id in previous.observation_ids() {
                self.observation_patient.remove(id);
            }
        }
        for id in state.observation_ids() {
            self.observation_patient
                .insert(id.to_owned(), state.patient_id().to_owned());
        }
        self.patients.insert(state.patient_id().to_owned(), state);
    }

    /// Applies a measurement (`Some`) or a withdrawal (`None`) of `observation_id` to the
    /// patient, and keeps the index in step; `indexed` says whether the index holds the
    /// Observation for this patient (saves a lookup on the common path).
    fn apply_to(
        &mut self,
        patient_id: &str,
        observation_id: &str,
        indexed: bool,
        measured: Option<(Measurement, Timestamp)>,
    ) -> Applied {
        let observation = Cow::Borrowed(observation_id);
        // `get_mut` first: `entry` would allocate the key on every observation.
        let applied = match self.patients.get_mut(patient_id) {
            Some(state) => state.apply_change(&self.config, observation, measured),
            None => {
                let mut state = PatientQsofa::new(patient_id);
                let applied = state.apply_change(&self.config, observation, measured);
                self.patients.insert(patient_id.to_owned(), state);
                applied
            }
        };
        match applied.disposition {
            Disposition::Recorded if !indexed => {
                self.observation_patient
                    .insert(observation_id.to_owned(), patient_id.to_owned());
            }
            // Only these remove evidence; anything else left the index as it was.
            Disposition::Normal | Disposition::Cleared | Disposition::Rejected(_) if indexed => {
                self.observation_patient.remove(observation_id);
            }
            _ => {}
        }
        for released in &applied.released {
            self.observation_patient.remove(released);
        }
        applied
    }
}

impl Outcome {
    fn nothing(reason: IgnoreReason) -> Self {
        Outcome {
            disposition: Disposition::Ignored(reason),
            alerts: Vec::new(),
            touched: Vec::new(),
        }
    }
}
