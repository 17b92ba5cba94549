//! Store benchmark: commit throughput with group commit, then search latency over a loaded
//! database, printed as a table.
//!
//! `cargo bench -p flare-store --bench store -- [--patients N] [--observations N] [--single-commits N]
//! [--durability full|normal|off] [--db PATH]` (defaults: 100000 patients, 1000000 observations, 12000
//! single-resource commits, full). The
//! database is a file in a temporary directory, opened with the default configuration
//! (`synchronous=FULL`), and a relay task drains the outbox while commits run, as in the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flare_search::{
    Clause, IndexEntry, IndexValue, Predicate, Prefix, SearchQuery, StringMatch, TotalMode,
};
use flare_store::{
    Commit, Durability, Expected, OutboxMessage, ResourceKey, SqliteConfig, SqliteStore, Store,
    StoredVersion, VersionWrite,
};

const END_MS: i64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z
const DAY: i64 = 86_400_000;
/// Observations are spread over two years before END_MS.
const SPAN_MS: i64 = 730 * DAY;
const LOINC: &str = "http://loinc.org";
const MRN: &str = "urn:oid:1.2.36.146.595.217.0.1";
const CODES: [&str; 20] = [
    "8867-4", "9279-1", "8480-6", "8462-4", "8310-5", "2708-6", "29463-7", "8302-2", "39156-5",
    "2339-0", "718-7", "4548-4", "2093-3", "2571-8", "2085-9", "13457-7", "6690-2", "789-8",
    "777-3", "2160-0",
];

struct Settings {
    /// Keep the database at this path instead of a temporary directory.
    db: Option<std::path::PathBuf>,
    durability: Durability,
    patients: usize,
    observations: usize,
    single_commits: usize,
}

fn settings() -> Settings {
    let mut settings = Settings {
        db: None,
        durability: Durability::Full,
        patients: 100_000,
        observations: 1_000_000,
        single_commits: 12_000,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = || {
            pair[1]
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--patients" => settings.patients = value(),
            "--observations" => settings.observations = value(),
            "--single-commits" => settings.single_commits = value(),
            "--db" => settings.db = Some(pair[1].clone().into()),
            "--durability" => {
                settings.durability = match pair[1].as_str() {
                    "full" => Durability::Full,
                    "normal" => Durability::Normal,
                    "off" => Durability::Off,
                    other => panic!("--durability is full, normal or off, not {other}"),
                }
            }
            _ => {}
        }
    }
    settings.single_commits = settings.single_commits.min(settings.patients);
    settings
}

/// A few thousand distinct surnames from syllables, deterministic.
fn family(n: usize) -> String {
    const HEADS: [&str; 40] = [
        "Abr", "Bal", "Car", "Dun", "Eck", "Fer", "Gal", "Har", "Ing", "Jor", "Kel", "Lan", "Mor",
        "Nor", "Oak", "Pel", "Quin", "Ros", "Sal", "Tor", "Ulm", "Van", "Wes", "Yor", "Zel",
        "Bram", "Cort", "Dal", "Ell", "Fitz", "Grim", "Hol", "Ives", "Jen", "Kirk", "Lom", "Mac",
        "Nash", "Orm", "Pry",
    ];
    const TAILS: [&str; 50] = [
        "ams",
        "ley",
        "son",
        "ton",
        "wood",
        "field",
        "man",
        "er",
        "ing",
        "ford",
        "well",
        "by",
        "den",
        "more",
        "ridge",
        "stone",
        "worth",
        "ham",
        "land",
        "ett",
        "ard",
        "ick",
        "ins",
        "ow",
        "ey",
        "ster",
        "ley-Smith",
        "ton-Jones",
        "hurst",
        "croft",
        "dale",
        "mont",
        "court",
        "wick",
        "wright",
        "ard",
        "oni",
        "ez",
        "ova",
        "sen",
        "berg",
        "stein",
        "ski",
        "elli",
        "ano",
        "escu",
        "idis",
        "oglu",
        "yan",
        "vic",
    ];
    format!(
        "{}{}",
        HEADS[n % HEADS.len()],
        TAILS[(n / HEADS.len()) % TAILS.len()]
    )
}

fn patient_family(n: usize) -> String {
    family((n * 2_654_435_761) % 2_000)
}

fn string(param: &str, text: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::String {
            normalized: text.to_lowercase(),
            exact: text.into(),
        },
    }
}

fn token(param: &str, system: Option<&str>, code: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Token {
            system: system.map(Into::into),
            code: Some(code.into()),
            text: None,
        },
    }
}

fn reference(param: &str, target_type: &str, id: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Reference {
            target_type: Some(target_type.into()),
            target_id: Some(id.into()),
            url: format!("{target_type}/{id}"),
        },
    }
}

fn date(param: &str, low_ms: i64, high_ms: i64) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Date { low_ms, high_ms },
    }
}

fn outbox(resource_type: &str, id: &str, body: &str, at_ms: i64) -> OutboxMessage {
    OutboxMessage {
        topic: format!("fhir.{resource_type}"),
        key: Some(format!("{resource_type}/{id}").into_bytes()),
        headers: vec![("content-type".into(), b"application/fhir+json".to_vec())],
        payload: body.as_bytes().to_vec(),
        timestamp_ms: at_ms,
    }
}

fn patient(n: usize, at_ms: i64) -> (VersionWrite, OutboxMessage) {
    let id = format!("pat{n}");
    let family = patient_family(n);
    let given = [
        "Anna", "Ben", "Carla", "Dev", "Eve", "Farid", "Gita", "Hugo",
    ][n % 8];
    let gender = if n.is_multiple_of(2) {
        "female"
    } else {
        "male"
    };
    let birth = END_MS - ((n as i64 * 7_919) % 30_000) * DAY;
    let body = format!(
        r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"1"}},"identifier":[{{"system":"{MRN}","value":"MRN{n}"}}],"name":[{{"family":"{family}","given":["{given}"]}}],"gender":"{gender}","birthDate":"{birth}","address":[{{"city":"Springfield","postalCode":"{zip}"}}]}}"#,
        zip = 10_000 + n % 900
    );
    let index = vec![
        token("_id", None, &id),
        date("_lastUpdated", at_ms, at_ms),
        token("identifier", Some(MRN), &format!("MRN{n}")),
        string("family", &family),
        string("given", given),
        string("name", &family),
        string("name", given),
        token(
            "gender",
            Some("http://hl7.org/fhir/administrative-gender"),
            gender,
        ),
        date("birthdate", birth, birth + DAY - 1),
        string("address-city", "Springfield"),
        string("address-postalcode", &format!("{}", 10_000 + n % 900)),
    ];
    let message = outbox("Patient", &id, &body, at_ms);
    let write = VersionWrite {
        version: StoredVersion {
            key: ResourceKey::new("Patient", &id),
            version_id: 1,
            last_updated_ms: at_ms,
            body: Some(body),
        },
        expected: Expected::Absent,
        index,
    };
    (write, message)
}

fn observation_patient(n: usize, patients: usize) -> usize {
    (n * 7_919) % patients
}

fn observation_code(n: usize) -> &'static str {
    CODES[(n * 31 + n / 7) % CODES.len()]
}

fn observation_time(n: usize, observations: usize) -> i64 {
    END_MS - SPAN_MS + (n as i64) * (SPAN_MS / observations.max(1) as i64)
}

fn observation(
    n: usize,
    patients: usize,
    observations: usize,
    at_ms: i64,
) -> (VersionWrite, OutboxMessage) {
    let id = format!("obs{n}");
    let patient = format!("pat{}", observation_patient(n, patients));
    let code = observation_code(n);
    let effective = observation_time(n, observations);
    let value = 40.0 + (n % 1_200) as f64 / 10.0;
    let body = format!(
        r#"{{"resourceType":"Observation","id":"{id}","meta":{{"versionId":"1"}},"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}}]}}],"code":{{"coding":[{{"system":"{LOINC}","code":"{code}"}}]}},"subject":{{"reference":"Patient/{patient}"}},"effectiveDateTime":"{effective}","valueQuantity":{{"value":{value},"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}}}"#
    );
    let index = vec![
        token("_id", None, &id),
        date("_lastUpdated", at_ms, at_ms),
        token(
            "status",
            Some("http://hl7.org/fhir/observation-status"),
            "final",
        ),
        token(
            "category",
            Some("http://terminology.hl7.org/CodeSystem/observation-category"),
            "vital-signs",
        ),
        token("code", Some(LOINC), code),
        reference("subject", "Patient", &patient),
        reference("patient", "Patient", &patient),
        date("date", effective, effective),
        IndexEntry {
            param: "value-quantity".into(),
            value: IndexValue::Quantity {
                value,
                low: value - 0.05,
                high: value + 0.05,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("/min".into()),
                unit: Some("/min".into()),
            },
        },
    ];
    let message = outbox("Observation", &id, &body, at_ms);
    let write = VersionWrite {
        version: StoredVersion {
            key: ResourceKey::new("Observation", &id),
            version_id: 1,
            last_updated_ms: at_ms,
            body: Some(body),
        },
        expected: Expected::Absent,
        index,
    };
    (write, message)
}

/// Drains the outbox like the relay does, until `stop` is set.
fn spawn_relay(
    store: Arc<dyn Store>,
    stop: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut relayed = 0u64;
        loop {
            loop {
                let batch = store.outbox_after(last, 5_000).await.expect("outbox_after");
                let Some(end) = batch.last().map(|entry| entry.seq) else {
                    break;
                };
                relayed += batch.len() as u64;
                last = end;
                store.outbox_ack(last).await.expect("ack");
            }
            tokio::select! {
                _ = store.outbox_changed() => {}
                _ = stop.notified() => return relayed,
            }
        }
    })
}

/// Commits `total` resources made by `make(n)`, `per_commit` per commit, from `tasks` tasks.
async fn load(
    store: &Arc<dyn Store>,
    range: std::ops::Range<usize>,
    per_commit: usize,
    tasks: usize,
    make: Arc<dyn Fn(usize) -> (VersionWrite, OutboxMessage) + Send + Sync>,
) -> Duration {
    let started = Instant::now();
    let chunks: Vec<std::ops::Range<usize>> = range
        .clone()
        .step_by(per_commit)
        .map(|start| start..(start + per_commit).min(range.end))
        .collect();
    let chunks = Arc::new(chunks);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, chunks, next, make) =
            (store.clone(), chunks.clone(), next.clone(), make.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(chunk) = chunks.get(index) else {
                    break;
                };
                let (writes, outbox): (Vec<_>, Vec<_>) = chunk.clone().map(|n| make(n)).unzip();
                store
                    .commit(Commit { writes, outbox })
                    .await
                    .expect("commit");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("load task");
    }
    started.elapsed()
}

fn clause(param: &str, predicates: Vec<Predicate>) -> Clause {
    Clause {
        param: param.into(),
        chain: None,
        predicates,
    }
}

fn token_predicate(system: &str, code: &str) -> Predicate {
    Predicate::Token {
        system: Some(Some(system.into())),
        code: Some(code.into()),
        negate: false,
    }
}

struct Latency {
    name: String,
    runs: usize,
    matches: usize,
    total: Option<u64>,
    p50: Duration,
    p99: Duration,
}

async fn measure(
    store: &Arc<dyn Store>,
    name: &str,
    runs: usize,
    make: impl Fn(usize) -> SearchQuery,
) -> Latency {
    for warm in 0..runs.min(20) {
        store.search(&make(warm + 1_000_000)).await.expect("search");
    }
    let mut times = Vec::with_capacity(runs);
    let (mut matches, mut total) = (0, None);
    for run in 0..runs {
        let query = make(run);
        let started = Instant::now();
        let page = store.search(&query).await.expect("search");
        times.push(started.elapsed());
        matches += page.matches.len();
        total = page.total;
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Latency {
        name: name.to_owned(),
        runs,
        matches: matches / runs.max(1),
        total,
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// CPU time (user + system) used so far by the store's writer thread, from /proc (Linux; the
/// machine may be shared, so this shows what the single writer costs apart from waiting).
fn writer_cpu_time() -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("flare-store-wri") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on Linux.
        return Some(Duration::from_millis(ticks * 10));
    }
    None
}

fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(writer_cpu_time()?.saturating_sub(before?))
}

fn rate(count: usize, took: Duration) -> String {
    format!("{:>9.0}/s", count as f64 / took.as_secs_f64())
}

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(settings));
}

async fn run(settings: Settings) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = settings
        .db
        .clone()
        .unwrap_or_else(|| dir.path().join("bench.db"));
    let sqlite = Arc::new(
        SqliteStore::open(SqliteConfig {
            durability: settings.durability,
            ..SqliteConfig::file(&path)
        })
        .expect("open"),
    );
    let store: Arc<dyn Store> = sqlite.clone();
    let stop_relay = Arc::new(tokio::sync::Notify::new());
    let relay = spawn_relay(store.clone(), stop_relay.clone());
    let (patients, observations) = (settings.patients, settings.observations);
    println!(
        "flare-store benchmark: {patients} patients, {observations} observations, SQLite file, durability {:?}",
        settings.durability
    );
    println!();
    println!(
        "{:<50} {:>9} {:>12} {:>16}",
        "commit phase", "resources", "wall rate", "per writer CPU·s"
    );
    let phase =
        |label: &'static str, count: usize, took: Duration, writer_cpu: Option<Duration>| {
            let per_cpu = writer_cpu
                .filter(|cpu| !cpu.is_zero())
                .map_or("-".to_owned(), |cpu| {
                    format!("{:.0}/s", count as f64 / cpu.as_secs_f64())
                });
            println!(
                "{label:<50} {count:>9} {:>12} {per_cpu:>16}",
                rate(count, took)
            );
        };

    // 1. Single-resource commits from 8 concurrent tasks.
    let single = settings.single_commits;
    let cpu_before = writer_cpu_time();
    let took = load(
        &store,
        0..single,
        1,
        8,
        Arc::new(|n| patient(n, END_MS + n as i64)),
    )
    .await;
    phase(
        "Patient, 1 per commit, 8 tasks",
        single,
        took,
        cpu_since(cpu_before),
    );

    // 2. 200-resource commits.
    let cpu_before = writer_cpu_time();
    let took = load(
        &store,
        single..patients,
        200,
        4,
        Arc::new(|n| patient(n, END_MS + n as i64)),
    )
    .await;
    phase(
        "Patient, 200 per commit, 4 tasks",
        patients - single,
        took,
        cpu_since(cpu_before),
    );
    let cpu_before = writer_cpu_time();
    let took = load(
        &store,
        0..observations,
        200,
        4,
        Arc::new(move |n| observation(n, patients, observations, END_MS + n as i64)),
    )
    .await;
    phase(
        "Observation, 200 per commit, 4 tasks",
        observations,
        took,
        cpu_since(cpu_before),
    );
    stop_relay.notify_one();
    let relayed = relay.await.expect("relay");
    println!("(a relay task drained and acknowledged {relayed} outbox messages meanwhile)");
    let size_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) / 1_000_000;
    println!("database file: {size_mb} MB");

    // As an operator would after a bulk load: refresh the planner statistics.
    let started = Instant::now();
    sqlite.optimize().await.expect("optimize");
    println!(
        "PRAGMA optimize after the load: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The same searches under the plan and total rule before the page walk (every candidate
    // sorted, every match counted), then under the defaults, on the same database.
    drop(store);
    drop(sqlite);
    for (label, scan_threshold, total) in [
        (
            "sorted candidates, counted total (scan threshold unbounded, _total=accurate)",
            usize::MAX,
            TotalMode::Accurate,
        ),
        (
            "defaults (walk first, total only when free)",
            SqliteConfig::default().search_scan_threshold,
            TotalMode::None,
        ),
    ] {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(SqliteConfig {
                durability: settings.durability,
                search_scan_threshold: scan_threshold,
                ..SqliteConfig::file(&path)
            })
            .expect("reopen"),
        );
        println!();
        println!("plan: {label}");
        searches(&store, patients, observations, total).await;
    }
}

/// One table of search latencies; `total` is the total mode of every query.
async fn searches(store: &Arc<dyn Store>, patients: usize, observations: usize, total: TotalMode) {
    println!();
    println!(
        "{:<58} {:>5} {:>8} {:>8} {:>9} {:>9}",
        "search", "runs", "matches", "total", "p50", "p99"
    );
    let mut results = Vec::new();
    let families: Vec<String> = (0..2_000).map(family).collect();
    results.push(
        measure(
            store,
            "Patient?family=<surname> (~50 matches, _count=20)",
            300,
            |run| SearchQuery {
                resource_type: Some("Patient".into()),
                clauses: vec![clause(
                    "family",
                    vec![Predicate::String {
                        mode: StringMatch::StartsWith,
                        value: families[(run * 37) % families.len()].to_lowercase(),
                    }],
                )],
                count: 20,
                total,
                ..SearchQuery::default()
            },
        )
        .await,
    );
    results.push(
        measure(store, "Patient?identifier=<system>|<mrn>", 300, |run| {
            SearchQuery {
                resource_type: Some("Patient".into()),
                clauses: vec![clause(
                    "identifier",
                    vec![token_predicate(
                        MRN,
                        &format!("MRN{}", (run * 7_717) % patients),
                    )],
                )],
                count: 20,
                total,
                ..SearchQuery::default()
            }
        })
        .await,
    );
    results.push(
        measure(store, "Observation?patient=<id>&code=<loinc>", 300, |run| {
            let n = (run * 104_729) % observations;
            SearchQuery {
                resource_type: Some("Observation".into()),
                clauses: vec![
                    clause(
                        "patient",
                        vec![Predicate::Reference {
                            target_type: Some("Patient".into()),
                            target_id: Some(format!("pat{}", observation_patient(n, patients))),
                            url: None,
                        }],
                    ),
                    clause("code", vec![token_predicate(LOINC, observation_code(n))]),
                ],
                count: 20,
                total,
                ..SearchQuery::default()
            }
        })
        .await,
    );
    // `None`: a day anywhere in the two years, as `flare bench` picks it.
    for (label, days) in [
        ("Observation?date=ge<last 3 days>&_count=50", Some(3)),
        ("Observation?date=ge<last year>&_count=50", Some(365)),
        ("Observation?date=ge<a day in the 2 years>&_count=50", None),
    ] {
        let runs = if days != Some(3) && total == TotalMode::Accurate {
            30
        } else {
            300
        };
        results.push(
            measure(store, label, runs, |run| {
                let low = match days {
                    Some(days) => END_MS - days * DAY + (run as i64 % 60) * 60_000,
                    None => END_MS - SPAN_MS + ((run as i64 * 7_919) % 730) * DAY,
                };
                SearchQuery {
                    resource_type: Some("Observation".into()),
                    clauses: vec![clause(
                        "date",
                        vec![Predicate::Date {
                            prefix: Prefix::Ge,
                            low_ms: low,
                            high_ms: low + 59_999,
                        }],
                    )],
                    count: 50,
                    total,
                    ..SearchQuery::default()
                }
            })
            .await,
        );
    }
    for result in results {
        println!(
            "{:<58} {:>5} {:>8} {:>8} {:>7.2}ms {:>7.2}ms",
            result.name,
            result.runs,
            result.matches,
            result.total.map_or("-".to_owned(), |t| t.to_string()),
            result.p50.as_secs_f64() * 1000.0,
            result.p99.as_secs_f64() * 1000.0
        );
    }
}
