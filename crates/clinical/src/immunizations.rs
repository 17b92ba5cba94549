//! Immunization counts by vaccine (CVX) and time bucket, exact under updates, deletes and
//! replays.
//!
//! Each Immunization contributes at most one count: (vaccine, occurrence). The contribution is
//! remembered by Immunization id, so a new version moves the count (status, vaccine or date
//! changed), a delete removes it, and applying the same version twice changes nothing.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The R4 CVX system.
pub const CVX_SYSTEM: &str = "http://hl7.org/fhir/sid/cvx";
/// HL7 v2 table 0292 (CVX) as an OID.
pub const CVX_OID: &str = "urn:oid:2.16.840.1.113883.12.292";

/// Whether `system` names CVX: the R4 URL, the OID, or the CDC page URL that older generators
/// (e.g. SMART sample-patients) emit, in any letter case, over http or https.
pub fn is_cvx_system(system: &str) -> bool {
    if system == CVX_SYSTEM || system == CVX_OID {
        return true;
    }
    let lower = system.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .unwrap_or(&lower);
    let rest = rest
        .strip_prefix("www2a.")
        .or_else(|| rest.strip_prefix("www2."))
        .or_else(|| rest.strip_prefix("www."))
        .unwrap_or(rest);
    rest == "hl7.org/fhir/sid/cvx"
        || rest == "cdc.gov/vaccines/iis/iisstandards/vaccines.asp?rpt=cvx"
}

/// Why an Immunization counts for nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCounted {
    #[error("status {0:?} does not count (only completed immunizations do)")]
    Status(String),
    #[error("the vaccine was not given (legacy wasNotGiven/notGiven)")]
    NotGiven,
}

/// Why an Immunization cannot be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImmunizationRejection {
    #[error("the resource is not an Immunization")]
    NotAnImmunization,
    #[error("the Immunization has no id")]
    MissingId,
    #[error("vaccineCode has no CVX coding")]
    NoCvxCode,
    #[error("the Immunization has no occurrenceDateTime (or legacy date)")]
    NoOccurrence,
    #[error("the occurrence {0:?} is not a FHIR dateTime")]
    BadOccurrence(String),
}

/// What one Immunization version contributes.
#[derive(Debug, Clone, PartialEq)]
pub enum ImmunizationReading {
    Counted {
        immunization_id: String,
        vaccine: String,
        display: Option<String>,
        occurred: Timestamp,
    },
    NotCounted {
        immunization_id: String,
        reason: NotCounted,
    },
    Rejected {
        immunization_id: Option<String>,
        reason: ImmunizationRejection,
    },
}

/// Reads one Immunization version as it appears in a change event.
pub fn read_immunization(resource: &Value) -> ImmunizationReading {
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let reject = |immunization_id: Option<String>, reason| ImmunizationReading::Rejected {
        immunization_id,
        reason,
    };
    if resource.get("resourceType").and_then(Value::as_str) != Some("Immunization") {
        return reject(id, ImmunizationRejection::NotAnImmunization);
    }
    let Some(immunization_id) = id else {
        return reject(None, ImmunizationRejection::MissingId);
    };
    match resource.get("status").and_then(Value::as_str) {
        Some("completed") => {}
        Some(other) => {
            return ImmunizationReading::NotCounted {
                immunization_id,
                reason: NotCounted::Status(other.to_owned()),
            };
        }
        // DSTU2/STU3 records carry no status (or a different one) but say whether it was given.
        None => {
            let not_given = ["wasNotGiven", "notGiven"]
                .iter()
                .any(|key| resource.get(*key).and_then(Value::as_bool) == Some(true));
            if not_given {
                return ImmunizationReading::NotCounted {
                    immunization_id,
                    reason: NotCounted::NotGiven,
                };
            }
        }
    }
    let vaccine_code = resource.get("vaccineCode");
    let Some(coding) = vaccine_code
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .and_then(|codings| {
            codings.iter().find(|coding| {
                coding
                    .get("system")
                    .and_then(Value::as_str)
                    .is_some_and(is_cvx_system)
                    && coding.get("code").and_then(Value::as_str).is_some()
            })
        })
    else {
        return reject(Some(immunization_id), ImmunizationRejection::NoCvxCode);
    };
    let code = coding.get("code").and_then(Value::as_str).unwrap_or("");
    let vaccine = normalise_cvx(code);
    if vaccine.is_empty() {
        return reject(Some(immunization_id), ImmunizationRejection::NoCvxCode);
    }
    let display = coding
        .get("display")
        .or_else(|| vaccine_code.and_then(|c| c.get("text")))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(when) = resource
        .get("occurrenceDateTime")
        .or_else(|| resource.get("date"))
    else {
        return reject(Some(immunization_id), ImmunizationRejection::NoOccurrence);
    };
    let Some(occurred) = when.as_str().and_then(Timestamp::parse_fhir) else {
        return reject(
            Some(immunization_id),
            ImmunizationRejection::BadOccurrence(when.to_string()),
        );
    };
    ImmunizationReading::Counted {
        immunization_id,
        vaccine,
        display,
        occurred,
    }
}

/// CVX codes are at least two digits (`03` is MMR); some senders drop the leading zero.
fn normalise_cvx(code: &str) -> String {
    let code = code.trim();
    if code.len() == 1 && code.bytes().all(|b| b.is_ascii_digit()) {
        format!("0{code}")
    } else {
        code.to_owned()
    }
}

/// Time bucket of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Day,
    Hour,
}

impl Bucket {
    pub fn start_of(self, at: Timestamp) -> Timestamp {
        match self {
            Bucket::Day => at.start_of_day(),
            Bucket::Hour => at.start_of_hour(),
        }
    }
}

/// Which count changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "bucket", content = "start", rename_all = "lowercase")]
pub enum CountScope {
    /// All time.
    Total,
    Day(Timestamp),
    Hour(Timestamp),
}

/// A count that changed, with its new value: what a live stream sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountDelta {
    pub vaccine: String,
    #[serde(flatten)]
    pub scope: CountScope,
    pub count: u64,
}

/// A total per vaccine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaccineTotal {
    pub vaccine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    pub count: u64,
}

/// One point of a time series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub vaccine: String,
    pub start: Timestamp,
    pub count: u64,
}

/// What one change event did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImmunizationOutcome {
    /// The reading of the new version (`None` for a delete).
    pub reading: Option<ImmunizationReading>,
    /// Counts that changed, in (vaccine, scope) order; empty when nothing moved.
    pub deltas: Vec<CountDelta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Contribution {
    #[serde(rename = "v")]
    vaccine: String,
    #[serde(rename = "t")]
    occurred: Timestamp,
}

impl Contribution {
    fn scopes(&self) -> impl Iterator<Item = CountScope> {
        [
            CountScope::Total,
            CountScope::Day(self.occurred.start_of_day()),
            CountScope::Hour(self.occurred.start_of_hour()),
        ]
        .into_iter()
    }
}

/// Immunization counts: the state the runtime checkpoints (serde).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImmunizationCounts {
    contributions: HashMap<String, Contribution>,
    displays: BTreeMap<String, String>,
    totals: BTreeMap<String, u64>,
    /// vaccine -> bucket start (ms) -> count
    days: BTreeMap<String, BTreeMap<i64, u64>>,
    hours: BTreeMap<String, BTreeMap<i64, u64>>,
}

impl ImmunizationCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// An Immunization created or updated.
    pub fn observe(&mut self, resource: &Value) -> ImmunizationOutcome {
        let reading = read_immunization(resource);
        let (id, contribution) = match &reading {
            ImmunizationReading::Counted {
                immunization_id,
                vaccine,
                display,
                occurred,
            } => {
                if let Some(display) = display {
                    self.displays
                        .entry(vaccine.clone())
                        .or_insert_with(|| display.clone());
                }
                (
                    Some(immunization_id.as_str()),
                    Some(Contribution {
                        vaccine: vaccine.clone(),
                        occurred: *occurred,
                    }),
                )
            }
            ImmunizationReading::NotCounted {
                immunization_id, ..
            } => (Some(immunization_id.as_str()), None),
            ImmunizationReading::Rejected {
                immunization_id, ..
            } => (immunization_id.as_deref(), None),
        };
        let deltas = match id {
            Some(id) => self.replace(id, contribution),
            None => Vec::new(),
        };
        ImmunizationOutcome {
            reading: Some(reading),
            deltas,
        }
    }

    /// An Immunization deleted.
    pub fn observe_deleted(&mut self, immunization_id: &str) -> ImmunizationOutcome {
        ImmunizationOutcome {
            reading: None,
            deltas: self.replace(immunization_id, None),
        }
    }

    /// The number of Immunizations currently counted.
    pub fn counted(&self) -> usize {
        self.contributions.len()
    }

    /// All-time totals per vaccine, by CVX code.
    pub fn totals(&self) -> Vec<VaccineTotal> {
        self.totals
            .iter()
            .map(|(vaccine, count)| VaccineTotal {
                vaccine: vaccine.clone(),
                display: self.displays.get(vaccine).cloned(),
                count: *count,
            })
            .collect()
    }

    /// Counts per vaccine and bucket for buckets starting in `[from, to)`, non-zero only,
    /// ordered by vaccine then time.
    pub fn series(&self, from: Timestamp, to: Timestamp, bucket: Bucket) -> Vec<SeriesPoint> {
        let table = match bucket {
            Bucket::Day => &self.days,
            Bucket::Hour => &self.hours,
        };
        let from = bucket.start_of(from).as_millis();
        let to = to.as_millis();
        if from >= to {
            return Vec::new();
        }
        table
            .iter()
            .flat_map(|(vaccine, buckets)| {
                buckets.range(from..to).map(|(start, count)| SeriesPoint {
                    vaccine: vaccine.clone(),
                    start: Timestamp::from_millis(*start),
                    count: *count,
                })
            })
            .collect()
    }

    fn replace(&mut self, id: &str, new: Option<Contribution>) -> Vec<CountDelta> {
        let old = self.contributions.get(id).cloned();
        if old == new {
            return Vec::new();
        }
        let scopes: BTreeSet<(String, CountScope)> = old
            .iter()
            .chain(new.iter())
            .flat_map(|c| c.scopes().map(|scope| (c.vaccine.clone(), scope)))
            .collect();
        let before: Vec<u64> = scopes
            .iter()
            .map(|(vaccine, scope)| self.count(vaccine, *scope))
            .collect();
        if let Some(old) = old {
            self.contributions.remove(id);
            self.adjust(&old, false);
        }
        if let Some(new) = new {
            self.adjust(&new, true);
            self.contributions.insert(id.to_owned(), new);
        }
        // A move within one bucket leaves that count as it was: no delta for it.
        scopes
            .into_iter()
            .zip(before)
            .filter_map(|((vaccine, scope), before)| {
                let count = self.count(&vaccine, scope);
                (count != before).then_some(CountDelta {
                    vaccine,
                    scope,
                    count,
                })
            })
            .collect()
    }

    fn adjust(&mut self, contribution: &Contribution, add: bool) {
        let vaccine = &contribution.vaccine;
        if decrement_or_bump(&mut self.totals, vaccine, add) {
            self.totals.remove(vaccine);
        }
        for (table, at) in [
            (&mut self.days, contribution.occurred.start_of_day()),
            (&mut self.hours, contribution.occurred.start_of_hour()),
        ] {
            let buckets = table.entry(vaccine.clone()).or_default();
            let count = buckets.entry(at.as_millis()).or_default();
            bump(count, add);
            // Zero counts are dropped so the tables hold only what exists.
            if *count == 0 {
                buckets.remove(&at.as_millis());
                if buckets.is_empty() {
                    table.remove(vaccine);
                }
            }
        }
    }

    fn count(&self, vaccine: &str, scope: CountScope) -> u64 {
        let lookup = |table: &BTreeMap<String, BTreeMap<i64, u64>>, at: Timestamp| {
            table
                .get(vaccine)
                .and_then(|buckets| buckets.get(&at.as_millis()))
                .copied()
                .unwrap_or(0)
        };
        match scope {
            CountScope::Total => self.totals.get(vaccine).copied().unwrap_or(0),
            CountScope::Day(at) => lookup(&self.days, at),
            CountScope::Hour(at) => lookup(&self.hours, at),
        }
    }
}

/// Bumps the vaccine's total; true when it dropped to zero.
fn decrement_or_bump(totals: &mut BTreeMap<String, u64>, vaccine: &str, add: bool) -> bool {
    let count = totals.entry(vaccine.to_owned()).or_default();
    bump(count, add);
    *count == 0
}

fn bump(count: &mut u64, add: bool) {
    *count = if add {
        count.saturating_add(1)
    } else {
        count.saturating_sub(1)
    };
}
