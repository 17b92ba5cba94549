//! The oracle test: seeded vital-sign timelines for 10,000 patients (some septic), with
//! corrections, retractions, deletes, unusable units and panels, delivered out of order; the
//! engine's episodes must equal those a SQL window query computes in SQLite from the final
//! evidence.
//!
//! Both sides use the definition in `flare_clinical::qsofa`: evidence at `e` supports its
//! criterion on `[e, e + 6 h]`; an episode is a maximal run of milliseconds where at least two
//! criteria are supported; it is compared as (patient, onset, end, maximum score).

use flare_clinical::{AlertEvent, Disposition, QsofaConfig, QsofaEngine, ResolveReason, Timestamp};
use rusqlite::Connection;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

const PATIENTS: usize = 10_000;
const WINDOW_MS: i64 = 6 * 3_600_000;
const MINUTE: i64 = 60_000;
/// Every delivery is at most this much behind its effective time, under the lateness of 120 min.
const MAX_DELAY_MS: i64 = 100 * MINUTE;

/// splitmix64: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low + 1) as u64) as i64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rr,
    Sbp,
    Gcs,
}

impl Kind {
    fn index(self) -> i64 {
        match self {
            Kind::Rr => 0,
            Kind::Sbp => 1,
            Kind::Gcs => 2,
        }
    }

    fn meets(self, value: i64) -> bool {
        match self {
            Kind::Rr => value >= 22,
            Kind::Sbp => value <= 100,
            Kind::Gcs => value < 15,
        }
    }

    fn value(self, rng: &mut Rng, abnormal: bool) -> i64 {
        // Thresholds themselves come up often: boundaries are where mistakes hide.
        match (self, abnormal) {
            (Kind::Rr, true) => [22, 22, 23, 26, 30, 35][rng.below(6) as usize],
            (Kind::Rr, false) => [12, 16, 20, 21][rng.below(4) as usize],
            (Kind::Sbp, true) => [100, 100, 95, 88, 80, 70][rng.below(6) as usize],
            (Kind::Sbp, false) => [101, 110, 125, 140][rng.below(4) as usize],
            (Kind::Gcs, true) => [14, 14, 13, 11, 9][rng.below(5) as usize],
            (Kind::Gcs, false) => 15,
        }
    }
}

/// One version of one Observation as the generator made it.
#[derive(Clone)]
struct Version {
    kind: Kind,
    value: i64,
    usable_unit: bool,
    status: &'static str,
    as_panel: bool,
}

enum Delivery {
    Upsert(Value),
    Delete(String),
}

struct Generated {
    deliveries: Vec<(i64, u64, Delivery)>,
    /// (patient, criterion index, effective ms) of the final evidence.
    evidence: Vec<(String, i64, i64)>,
}

fn effective_text(rng: &mut Rng, at: i64) -> String {
    if rng.chance(25) {
        // Same instant written with a +02:00 offset.
        let local = Timestamp::from_millis(at + 2 * 3_600_000).to_rfc3339();
        format!("{}+02:00", local.trim_end_matches('Z'))
    } else {
        Timestamp::from_millis(at).to_rfc3339()
    }
}

fn resource(id: &str, patient: &str, effective: &str, version: &Version) -> Value {
    let (code, unit) = match (version.kind, version.usable_unit) {
        (Kind::Rr, true) => ("9279-1", json!("/min")),
        (Kind::Rr, false) => ("9279-1", json!("/h")),
        (Kind::Sbp, true) => ("8480-6", json!("mm[Hg]")),
        (Kind::Sbp, false) => ("8480-6", json!("kPa")),
        (Kind::Gcs, true) => ("9269-2", json!("{score}")),
        (Kind::Gcs, false) => ("9269-2", json!("%")),
    };
    let quantity =
        json!({"value": version.value, "system": "http://unitsofmeasure.org", "code": unit});
    let loinc = |code: &str| json!({"coding": [{"system": "http://loinc.org", "code": code}]});
    let mut observation = json!({
        "resourceType": "Observation", "id": id, "status": version.status,
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": effective,
    });
    if version.as_panel {
        observation["code"] = loinc("85354-9");
        observation["component"] = json!([
            {"code": loinc("8462-4"), "valueQuantity": {"value": 60, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": loinc("8480-6"), "valueQuantity": quantity},
        ]);
    } else {
        observation["code"] = loinc(code);
        observation["valueQuantity"] = quantity;
    }
    observation
}

fn generate(seed: u64) -> Generated {
    let mut rng = Rng(seed);
    let mut deliveries = Vec::new();
    let mut evidence = Vec::new();
    let start_of_2026 = Timestamp::parse_fhir("2026-01-01").unwrap().as_millis();
    for p in 0..PATIENTS {
        let patient = format!("pt{p}");
        let septic = rng.chance(30);
        let on_grid = rng.chance(30);
        let start = start_of_2026 + rng.range(0, 3 * 24 * 60) * MINUTE;
        let hours = rng.range(4, 14);
        let spacing = [15, 30, 60, 60][rng.below(4) as usize] * MINUTE;
        // Abnormal phases per criterion: (from, to) offsets.
        let phases: Vec<(Kind, i64, i64)> = if septic {
            (0..rng.range(1, 5))
                .map(|_| {
                    let kind = [Kind::Rr, Kind::Sbp, Kind::Gcs][rng.below(3) as usize];
                    let from = rng.range(0, hours * 60) * MINUTE;
                    (kind, from, from + rng.range(0, 240) * MINUTE)
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut set = 0;
        let mut offset = 0;
        while offset <= hours * 3_600_000 {
            for kind in [Kind::Rr, Kind::Sbp, Kind::Gcs] {
                if kind == Kind::Gcs && !rng.chance(50) {
                    continue;
                }
                let jitter = if on_grid {
                    0
                } else {
                    rng.range(-300, 300) * 1000
                };
                let at = start + offset + jitter;
                let abnormal = phases
                    .iter()
                    .any(|&(k, from, to)| k == kind && (from..=to).contains(&(offset + jitter)))
                    || (!septic && rng.chance(2));
                let id = format!("{patient}-{set}-{}", kind.index());
                let mut version = Version {
                    kind,
                    value: kind.value(&mut rng, abnormal),
                    usable_unit: !rng.chance(2),
                    status: if rng.chance(10) {
                        "preliminary"
                    } else {
                        "final"
                    },
                    as_panel: kind == Kind::Sbp && rng.chance(30),
                };
                let mut delay = rng.range(0, MAX_DELAY_MS / 2);
                deliveries.push((
                    at + delay,
                    rng.next(),
                    Delivery::Upsert(resource(
                        &id,
                        &patient,
                        &effective_text(&mut rng, at),
                        &version,
                    )),
                ));
                let mut deleted = false;
                let change = rng.below(100);
                if change < 12 {
                    delay = rng.range(delay + 1, MAX_DELAY_MS);
                    if change < 6 {
                        version.status = if rng.chance(50) {
                            "amended"
                        } else {
                            "corrected"
                        };
                        let abnormal = rng.chance(50);
                        version.value = kind.value(&mut rng, abnormal);
                    } else if change < 9 {
                        version.status = if rng.chance(80) {
                            "entered-in-error"
                        } else {
                            "cancelled"
                        };
                    } else {
                        deleted = true;
                    }
                    let delivery = if deleted {
                        Delivery::Delete(id.clone())
                    } else {
                        Delivery::Upsert(resource(
                            &id,
                            &patient,
                            &effective_text(&mut rng, at),
                            &version,
                        ))
                    };
                    deliveries.push((at + delay, rng.next(), delivery));
                }
                let counts = matches!(
                    version.status,
                    "final" | "preliminary" | "amended" | "corrected"
                );
                if !deleted && counts && version.usable_unit && kind.meets(version.value) {
                    evidence.push((patient.clone(), kind.index(), at));
                }
            }
            set += 1;
            offset += spacing;
        }
    }
    // Arrival order: by delivery time across all patients, ties broken at random; versions of
    // one Observation keep their order because each comes strictly later.
    deliveries.sort_by_key(|(arrival, tie, _)| (*arrival, *tie));
    Generated {
        deliveries,
        evidence,
    }
}

type EpisodeKey = (String, i64, i64, i64);

fn engine_episodes(generated: &Generated) -> (BTreeSet<EpisodeKey>, usize) {
    let mut engine = QsofaEngine::new(QsofaConfig::default()).unwrap();
    let mut episodes: HashMap<String, EpisodeKey> = HashMap::new();
    let mut too_late = 0;
    let mut fold = |alerts: Vec<AlertEvent>| {
        for alert in alerts {
            let e = alert.episode();
            let key = (
                e.patient_id.clone(),
                e.onset.as_millis(),
                e.end.as_millis(),
                i64::from(e.score),
            );
            match &alert {
                AlertEvent::Resolved {
                    reason: ResolveReason::Withdrawn | ResolveReason::Merged(_),
                    ..
                } => {
                    episodes.remove(&e.id);
                }
                _ => {
                    episodes.insert(e.id.clone(), key);
                }
            }
        }
    };
    for (_, _, delivery) in &generated.deliveries {
        let outcome = match delivery {
            Delivery::Upsert(resource) => engine.observe(resource),
            Delivery::Delete(id) => engine.observe_deleted(id),
        };
        if matches!(outcome.disposition, Disposition::TooLate { .. }) {
            too_late += 1;
        }
        fold(outcome.alerts);
    }
    fold(engine.advance_all(Timestamp::FAR_FUTURE));
    // Nothing may be left active, or held, once every episode has elapsed.
    assert!(engine.patients().all(|p| p.active_episodes().count() == 0));
    (episodes.into_values().collect(), too_late)
}

fn sql_episodes(generated: &Generated) -> BTreeSet<EpisodeKey> {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch("CREATE TABLE evidence (patient TEXT, criterion INTEGER, t INTEGER)")
        .unwrap();
    {
        let mut insert = db
            .prepare("INSERT INTO evidence VALUES (?1, ?2, ?3)")
            .unwrap();
        for (patient, criterion, t) in &generated.evidence {
            insert.execute((patient, criterion, t)).unwrap();
        }
    }
    // Per criterion, evidence intervals [t, t + W] merged into islands (gaps-and-islands);
    // then a running count of supported criteria over the islands' edges; episodes are runs
    // where the count is at least 2.
    let query = "
        WITH spans AS (
            SELECT patient, criterion, t, t + :w AS e,
                   MAX(t + :w) OVER (PARTITION BY patient, criterion ORDER BY t
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
            FROM evidence),
        numbered AS (
            SELECT *, SUM(CASE WHEN prev_end IS NULL OR t > prev_end + 1 THEN 1 ELSE 0 END)
                      OVER (PARTITION BY patient, criterion ORDER BY t ROWS UNBOUNDED PRECEDING) AS island
            FROM spans),
        islands AS (
            SELECT patient, MIN(t) AS s, MAX(e) AS e FROM numbered GROUP BY patient, criterion, island),
        edges AS (
            SELECT patient, s AS at, 1 AS d FROM islands
            UNION ALL SELECT patient, e + 1, -1 FROM islands),
        steps AS (SELECT patient, at, SUM(d) AS d FROM edges GROUP BY patient, at),
        levels AS (
            SELECT patient, at,
                   SUM(d) OVER (PARTITION BY patient ORDER BY at ROWS UNBOUNDED PRECEDING) AS level,
                   LEAD(at) OVER (PARTITION BY patient ORDER BY at) AS next_at
            FROM steps),
        marked AS (
            SELECT *, LAG(level, 1, 0) OVER (PARTITION BY patient ORDER BY at) AS prev_level FROM levels),
        positive AS (
            SELECT patient, at, next_at, level,
                   SUM(CASE WHEN prev_level < 2 THEN 1 ELSE 0 END)
                       OVER (PARTITION BY patient ORDER BY at ROWS UNBOUNDED PRECEDING) AS episode
            FROM marked WHERE level >= 2)
        SELECT patient, MIN(at), MAX(next_at) - 1, MAX(level)
        FROM positive GROUP BY patient, episode";
    let mut statement = db.prepare(query).unwrap();
    statement
        .query_map(rusqlite::named_params! {":w": WINDOW_MS}, |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn engine_episodes_match_a_sql_window_query() {
    let generated = generate(0x0005_eed0_f9e5);
    assert!(generated.deliveries.len() > 100_000);
    let expected = sql_episodes(&generated);
    let (actual, too_late) = engine_episodes(&generated);
    assert_eq!(
        too_late, 0,
        "the generator stays inside the allowed lateness"
    );
    let patients_with_episodes: BTreeSet<_> = expected.iter().map(|e| e.0.clone()).collect();
    assert!(
        patients_with_episodes.len() > PATIENTS / 10,
        "only {} patients positive",
        patients_with_episodes.len()
    );
    assert!(expected.iter().any(|e| e.3 == 3), "some episodes reach 3");
    let missing: Vec<_> = expected.difference(&actual).take(5).collect();
    let extra: Vec<_> = actual.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} expected, {} from the engine; missing {missing:?}; extra {extra:?}",
        expected.len(),
        actual.len()
    );
}
