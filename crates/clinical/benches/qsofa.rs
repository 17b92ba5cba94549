//! The pure qSOFA engine on one thread: observations per second, and checkpoint bytes per
//! patient. `cargo bench -p flare-clinical` prints a table.
//!
//! Input is ICU-style vitals, one set (RR, blood-pressure panel, GCS) every 15 minutes for 24
//! hours, 10% of patients septic for part of the day; resources are built before timing, as
//! the runtime hands the engine already-parsed change events.

use flare_clinical::immunizations::ImmunizationCounts;
use flare_clinical::{QsofaConfig, QsofaEngine, Timestamp, vitals};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Instant;

const PATIENTS: usize = 2_000;
const SETS_PER_DAY: usize = 96;
const QUARTER_HOUR_MS: i64 = 15 * 60_000;

/// CPU time of this thread in seconds (`/proc/thread-self/schedstat`): the machine is shared,
/// and wall time would charge other processes' work to the engine. Falls back to wall time.
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(nanos / 1e9)
}

/// Runs `work` and returns (CPU seconds, wall seconds).
fn timed(work: impl FnOnce()) -> (f64, f64) {
    let cpu_before = thread_cpu_seconds();
    let wall = Instant::now();
    work();
    let wall = wall.elapsed().as_secs_f64();
    let cpu = match (cpu_before, thread_cpu_seconds()) {
        (Some(before), Some(after)) => after - before,
        _ => wall,
    };
    (cpu, wall)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn loinc(code: &str) -> Value {
    json!({"coding": [{"system": "http://loinc.org", "code": code}]})
}

fn quantity(value: f64, unit: &str) -> Value {
    json!({"value": value, "system": "http://unitsofmeasure.org", "code": unit})
}

/// One set of vitals for `patient` at `at`, abnormal when `septic`.
fn vital_set(patient: usize, set: usize, at: Timestamp, septic: bool) -> [Value; 3] {
    let (rr, sbp, gcs) = if septic {
        (26.0, 92.0, 13.0)
    } else {
        (16.0, 122.0, 15.0)
    };
    let base = |id: String, code: &str| {
        json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": loinc(code),
            "subject": {"reference": format!("Patient/pt-{patient:06}")},
            "effectiveDateTime": at.to_rfc3339(),
        })
    };
    let id = |kind: &str| format!("{kind}-{patient:06}-{set:04}");
    let mut rr_obs = base(id("rr"), "9279-1");
    rr_obs["valueQuantity"] = quantity(rr, "/min");
    let mut bp = base(id("bp"), "85354-9");
    bp["component"] = json!([
        {"code": loinc("8480-6"), "valueQuantity": quantity(sbp, "mm[Hg]")},
        {"code": loinc("8462-4"), "valueQuantity": quantity(70.0, "mm[Hg]")},
    ]);
    let mut gcs_obs = base(id("gcs"), "9269-2");
    gcs_obs["valueQuantity"] = quantity(gcs, "{score}");
    [rr_obs, bp, gcs_obs]
}

fn population(rng: &mut Rng) -> Vec<Value> {
    let start = Timestamp::parse_fhir("2026-03-14T00:00:00Z").unwrap();
    let mut sets: Vec<(usize, usize, [Value; 3])> = Vec::with_capacity(PATIENTS * SETS_PER_DAY);
    for patient in 0..PATIENTS {
        let septic_from = (patient % 10 == 0).then(|| (rng.next() % 48) as usize);
        for set in 0..SETS_PER_DAY {
            let septic = septic_from.is_some_and(|from| (from..from + 24).contains(&set));
            let at = start.saturating_add_millis(set as i64 * QUARTER_HOUR_MS);
            sets.push((set, patient, vital_set(patient, set, at, septic)));
        }
    }
    // Patients interleaved in time order, as a partition of the log delivers them.
    sets.sort_by_key(|(set, patient, _)| (*set, *patient));
    sets.into_iter().flat_map(|(_, _, set)| set).collect()
}

/// Swaps each observation with one up to `distance` places later: out-of-order arrival well
/// inside the allowed lateness.
fn disorder(observations: &mut [Value], rng: &mut Rng, distance: usize) {
    for index in 0..observations.len() {
        let other = index + (rng.next() as usize % distance);
        if other < observations.len() {
            observations.swap(index, other);
        }
    }
}

/// (observations/s on CPU time, on wall time, alert events). With `cache_hot`, each chunk of
/// 1,024 resources is cloned (untimed) just before it is observed, as the runtime hands over a
/// freshly parsed resource; otherwise the engine reads the whole pre-built population, which
/// is far larger than the caches.
fn run_engine(observations: &[Value], cache_hot: bool) -> (f64, f64, usize) {
    let mut engine = QsofaEngine::new(QsofaConfig::default()).unwrap();
    let mut alerts = 0;
    let (mut cpu, mut wall) = (0.0, 0.0);
    for chunk in observations.chunks(1024) {
        let copy;
        let batch = if cache_hot {
            copy = chunk.to_vec();
            &copy[..]
        } else {
            chunk
        };
        let (chunk_cpu, chunk_wall) = timed(|| {
            for observation in batch {
                alerts += engine.observe(black_box(observation)).alerts.len();
            }
        });
        cpu += chunk_cpu;
        wall += chunk_wall;
    }
    let count = observations.len() as f64;
    (count / cpu, count / wall, alerts)
}

/// Extraction alone, cache-hot as in [`run_engine`].
fn run_extraction(observations: &[Value]) -> (f64, f64) {
    let (mut cpu, mut wall) = (0.0, 0.0);
    for chunk in observations.chunks(1024) {
        let batch = chunk.to_vec();
        let (chunk_cpu, chunk_wall) = timed(|| {
            for observation in &batch {
                black_box(vitals::read_observation(black_box(observation)));
            }
        });
        cpu += chunk_cpu;
        wall += chunk_wall;
    }
    let count = observations.len() as f64;
    (count / cpu, count / wall)
}

fn state_bytes(septic: bool) -> usize {
    let mut engine = QsofaEngine::new(QsofaConfig::default()).unwrap();
    let start = Timestamp::parse_fhir("2026-03-14T00:00:00Z").unwrap();
    // Six hours of vitals, one set every 15 minutes (25 sets, both ends included).
    for set in 0..=24 {
        let at = start.saturating_add_millis(set as i64 * QUARTER_HOUR_MS);
        for observation in vital_set(7, set, at, septic) {
            engine.observe(&observation);
        }
    }
    engine
        .patient("pt-000007")
        .map(|state| serde_json::to_vec(state).map_or(0, |bytes| bytes.len()))
        .unwrap_or(0)
}

fn main() {
    let mut rng = Rng(42);
    let ordered = population(&mut rng);
    let mut shuffled = ordered.clone();
    disorder(&mut shuffled, &mut rng, 3 * PATIENTS);

    let extraction = run_extraction(&ordered);
    // Warm-up pass, then the measured passes.
    run_engine(&ordered, true);
    let (in_order_cpu, in_order_wall, alerts_in_order) = run_engine(&ordered, true);
    let (out_of_order_cpu, out_of_order_wall, alerts_out_of_order) = run_engine(&shuffled, true);
    let (cold_cpu, cold_wall, _) = run_engine(&ordered, false);

    let immunizations: Vec<Value> = (0..200_000)
        .map(|i| {
            json!({"resourceType": "Immunization", "id": format!("imm-{i}"), "status": "completed",
                   "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": format!("{}", 100 + i % 40)}]},
                   "patient": {"reference": format!("Patient/pt-{}", i % 5000)},
                   "occurrenceDateTime": Timestamp::from_millis(1_767_225_600_000 + i as i64 * 60_000).to_rfc3339()})
        })
        .collect();
    let mut counts = ImmunizationCounts::new();
    let (cpu, wall) = timed(|| {
        for immunization in &immunizations {
            black_box(counts.observe(black_box(immunization)));
        }
    });
    let count = immunizations.len() as f64;
    let immunization_rate = (count / cpu, count / wall);

    println!(
        "qSOFA engine, one thread, {} observations ({PATIENTS} patients x 24 h x 3 vitals every 15 min, 10% septic)",
        ordered.len()
    );
    println!("(rates per second of this thread's CPU time; per second of wall time in brackets)");
    let rate = |(cpu, wall): (f64, f64)| format!("{cpu:.0} ({wall:.0})");
    let rows = [
        ("extraction only, observations/s", rate(extraction)),
        (
            "engine in time order, observations/s",
            rate((in_order_cpu, in_order_wall)),
        ),
        (
            "engine out of order, observations/s",
            rate((out_of_order_cpu, out_of_order_wall)),
        ),
        (
            "engine in time order, cache-cold input, obs/s",
            rate((cold_cpu, cold_wall)),
        ),
        (
            "alert events (in order / out of order)",
            format!("{alerts_in_order} / {alerts_out_of_order}"),
        ),
        (
            "state bytes, 6 h of normal vitals (JSON)",
            state_bytes(false).to_string(),
        ),
        (
            "state bytes, 6 h of septic vitals (JSON)",
            state_bytes(true).to_string(),
        ),
        (
            "immunization counting, resources/s",
            rate(immunization_rate),
        ),
    ];
    println!("{:<44} {:>22}", "measure", "value");
    for (measure, value) in rows {
        println!("{measure:<44} {value:>22}");
    }
}
