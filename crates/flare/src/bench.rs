//! `flare bench`: measures a real `flare serve` child process from outside, over HTTP on
//! 127.0.0.1, plus the embedded log in process. Prints one aligned table per measurement and
//! the durability policy it ran under.

mod crud;
mod data;
mod event_latency;
mod ingest;
mod log_append;
mod report;
mod search;
mod server;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;

use self::{
    data::Shape,
    report::{Table, load_average_text},
    server::{LOAD_CORE, SERVER_CORE, ServerProcess, http_client, pin_this_process},
};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Smaller data and shorter runs (10,000 Patients, 100,000 Observations; under 3 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Run only these measurements, e.g. `--only crud,log`.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub only: Vec<Measurement>,
    /// Patients loaded for the search measurement [default: 100000, or 10000 with --quick].
    #[arg(long, value_name = "N")]
    pub patients: Option<usize>,
    /// Observations loaded for the search measurement [default: 1000000, or 100000 with --quick].
    #[arg(long, value_name = "N")]
    pub observations: Option<usize>,
    /// Where the server's data directory and the log files go [default: the system temp dir].
    /// The disk under it is the disk measured.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// The measurements, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Measurement {
    /// Transaction-Bundle ingest (loads the search dataset).
    Ingest,
    /// Search latency on the loaded dataset.
    Search,
    /// Create/read/update/delete mix at 1, 8 and 32 clients.
    Crud,
    /// Write -> event visible to a consumer in another process.
    Latency,
    /// Embedded log append: one sync per append vs group commit.
    Log,
}

/// How long each part runs.
struct Plan {
    step: Duration,
    load_budget: Duration,
    in_flight: usize,
    shape: Shape,
}

/// The durability a server runs under. The HTTP measurements run under the defaults; the
/// CRUD mix, ingest and write -> event latency run again without any fsync beside them, so the
/// share of the disk in each figure is measured rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Default,
    NoSync,
}

impl Policy {
    fn label(self) -> &'static str {
        match self {
            Policy::Default => "fsync (default)",
            Policy::NoSync => "no fsync",
        }
    }

    /// The server's config file for this policy (`None`: the built-in defaults).
    fn config(self) -> Option<&'static str> {
        match self {
            Policy::Default => None,
            Policy::NoSync => {
                Some("[sqlite]\ndurability = \"off\"\n\n[embedded_log]\ndurability = \"none\"\n")
            }
        }
    }
}

const DEFAULT_POLICY: &str = "fsync (default): store SQLite WAL synchronous=FULL with group commit (a write is acknowledged once its version and outbox event are fsynced), log fsync with group commit (the relay appends events after the store commit)";
const NO_SYNC_POLICY: &str = "no fsync: store synchronous=OFF, log durability none (same data directory, server restarted): acknowledged writes can be lost on power failure";
const CRUD_CLIENTS: [usize; 3] = [1, 8, 32];

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let selected =
        |measurement: Measurement| args.only.is_empty() || args.only.contains(&measurement);
    let (patients, observations) = if args.quick {
        (10_000, 100_000)
    } else {
        (100_000, 1_000_000)
    };
    let plan = Plan {
        step: Duration::from_secs(if args.quick { 3 } else { 5 }),
        load_budget: Duration::from_secs(if args.quick { 90 } else { 540 }),
        in_flight: 4,
        shape: Shape::new(
            args.patients.unwrap_or(patients),
            args.observations.unwrap_or(observations),
        ),
    };
    let (cpu_model, processors) = report::cpu();
    let pinned = pin_this_process().await;
    println!(
        "flare bench{}: {processors} CPUs ({cpu_model}), load average {} at start",
        if args.quick { " --quick" } else { "" },
        load_average_text()
    );
    if pinned {
        println!(
            "load generator pinned to core {LOAD_CORE}, server to core {SERVER_CORE} (taskset)\n"
        );
    } else {
        println!("taskset is unavailable: load generator and server share all cores\n");
    }
    let work_dir = match &args.work_dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("flare-bench-")
            .tempdir_in(dir),
        None => tempfile::Builder::new().prefix("flare-bench-").tempdir(),
    }
    .context("cannot create a scratch directory for the benchmark")?;
    let mut missed = Vec::new();

    let http = [
        Measurement::Ingest,
        Measurement::Search,
        Measurement::Crud,
        Measurement::Latency,
    ];
    if http.iter().any(|m| selected(*m)) {
        http_measurements(work_dir.path(), &plan, &selected, &mut missed).await?;
    }
    if selected(Measurement::Log) {
        log_measurement(&work_dir.path().join("log-append"), &plan, &mut missed).await?;
    }
    println!("load average {} at the end", load_average_text());
    if missed.is_empty() {
        println!("every target measured was met");
    } else {
        println!("targets missed: {}", missed.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(table: &Table, policies: &[&str]) {
    println!("{}", table.render());
    for policy in policies {
        println!("durability {policy}");
    }
    println!("load average {}\n", load_average_text());
}

/// Results of the HTTP measurements, per durability policy.
#[derive(Default)]
struct HttpResults {
    ingest: Vec<(String, ingest::IngestOutcome)>,
    search: Option<(Vec<search::SearchOutcome>, usize, usize)>,
    crud: Vec<(&'static str, crud::CrudOutcome)>,
    latency: Vec<(&'static str, event_latency::LatencyOutcome)>,
    stored: usize,
}

/// Runs the HTTP measurements against a server under the default policy, then restarts it on
/// the same data without fsync for the side-by-side rows, then prints the tables.
async fn http_measurements(
    work_dir: &Path,
    plan: &Plan,
    selected: &impl Fn(Measurement) -> bool,
    missed: &mut Vec<String>,
) -> anyhow::Result<()> {
    let data_dir = work_dir.join("server");
    let mut results = HttpResults::default();
    for policy in [Policy::Default, Policy::NoSync] {
        if policy == Policy::NoSync
            && ![Measurement::Ingest, Measurement::Crud, Measurement::Latency]
                .iter()
                .any(|m| selected(*m))
        {
            continue;
        }
        let config = match policy.config() {
            Some(text) => {
                let path = work_dir.join("no-sync.toml");
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        eprintln!("starting flare serve ({})", policy.label());
        let server = ServerProcess::start(&data_dir, config.as_deref()).await?;
        if !server.pinned {
            eprintln!("taskset is unavailable: the server is not pinned to a core");
        }
        let result = run_against(&server, policy, plan, selected, &mut results).await;
        let server_log = server.stderr_file.clone();
        server.stop().await;
        result.with_context(|| {
            format!("the server's own messages are in {}", server_log.display())
        })?;
    }
    let both = [DEFAULT_POLICY, NO_SYNC_POLICY];
    if !results.ingest.is_empty() {
        let rows: Vec<(String, &ingest::IngestOutcome)> = results
            .ingest
            .iter()
            .map(|(name, outcome)| (name.clone(), outcome))
            .collect();
        print_table(&ingest::table(&rows), &both);
        if let Some((_, outcome)) = results.ingest.first()
            && outcome.resources_per_second() < ingest::TARGET_RESOURCES_PER_SECOND
        {
            missed.push(format!(
                "ingest {} resources/s",
                report::rate(outcome.resources_per_second())
            ));
        }
    }
    if let Some((outcomes, patients, observations)) = &results.search {
        print_table(
            &search::table(outcomes, *patients, *observations),
            &[DEFAULT_POLICY],
        );
        for outcome in outcomes {
            if outcome.latency.quantile(0.5) >= search::TARGET_P50 {
                missed.push(format!(
                    "search {} p50 {}",
                    outcome.query,
                    outcome.latency.p50()
                ));
            }
        }
    }
    if !results.crud.is_empty() {
        let rows: Vec<(&str, &crud::CrudOutcome)> = results
            .crud
            .iter()
            .map(|(policy, outcome)| (*policy, outcome))
            .collect();
        print_table(&crud::table(&rows, results.stored), &both);
        if let Some((_, outcome)) = results.crud.iter().find(|(policy, o)| {
            *policy == Policy::Default.label() && o.clients == crud::TARGET_CLIENTS
        }) && !outcome.meets_target()
        {
            missed.push(format!(
                "crud at {} clients {} ops/s, p99 {}",
                outcome.clients,
                report::rate(outcome.ops_per_second()),
                outcome.all.p99()
            ));
        }
    }
    if !results.latency.is_empty() {
        let rows: Vec<(&str, &event_latency::LatencyOutcome)> = results
            .latency
            .iter()
            .map(|(policy, outcome)| (*policy, outcome))
            .collect();
        print_table(&event_latency::table(&rows), &both);
        if let Some((_, outcome)) = results.latency.first()
            && !outcome.meets_target()
        {
            missed.push(format!("write->event p99 {}", outcome.visible.p99()));
        }
    }
    Ok(())
}

/// The measurements one server runs: everything under the default policy; ingest (bounded),
/// CRUD at the target's client count and write -> event latency without fsync.
async fn run_against(
    server: &ServerProcess,
    policy: Policy,
    plan: &Plan,
    selected: &impl Fn(Measurement) -> bool,
    results: &mut HttpResults,
) -> anyhow::Result<()> {
    let client = http_client()?;
    let base = &server.fhir_base;
    let label = policy.label();
    let full = policy == Policy::Default;
    if full && (selected(Measurement::Ingest) || selected(Measurement::Search)) {
        eprintln!(
            "loading {} Patients and {} Observations in {} Bundles, {} in flight",
            plan.shape.patients,
            plan.shape.observations,
            plan.shape.bundles(),
            plan.in_flight
        );
        let loaded = ingest::load(
            &client,
            base,
            plan.shape,
            plan.in_flight,
            plan.load_budget,
            ingest::Return::Representation,
        )
        .await?;
        results.stored += loaded.outcome.resources;
        if selected(Measurement::Ingest) {
            let name = if loaded.outcome.cut_short {
                format!(
                    "{label}, search dataset (stopped at the {} s budget)",
                    plan.load_budget.as_secs()
                )
            } else {
                format!("{label}, search dataset")
            };
            results.ingest.push((name, loaded.outcome));
        }
        if selected(Measurement::Search) {
            let outcomes = search::run(&client, base, &loaded.patient_ids, plan.step).await?;
            results.search = Some((outcomes, loaded.patient_ids.len(), loaded.observations));
        }
        if selected(Measurement::Ingest) {
            // The same Bundles as a bulk loader sends them, to show what the response costs.
            let budget = plan.step * 3;
            eprintln!(
                "loading Bundles for {} s with Prefer: return=minimal",
                budget.as_secs()
            );
            let minimal = ingest::load(
                &client,
                base,
                plan.shape,
                plan.in_flight,
                budget,
                ingest::Return::Minimal,
            )
            .await?;
            results.stored += minimal.outcome.resources;
            results.ingest.push((
                format!(
                    "{label}, Prefer: return=minimal, same dataset again (at most {} s)",
                    budget.as_secs()
                ),
                minimal.outcome,
            ));
        }
    } else if !full && selected(Measurement::Ingest) {
        let budget = plan.step * 3;
        eprintln!("loading Bundles for {} s without fsync", budget.as_secs());
        let loaded = ingest::load(
            &client,
            base,
            plan.shape,
            plan.in_flight,
            budget,
            ingest::Return::Representation,
        )
        .await?;
        results.ingest.push((
            format!(
                "{label}, same dataset again (at most {} s)",
                budget.as_secs()
            ),
            loaded.outcome,
        ));
    }
    if selected(Measurement::Crud) {
        let levels: &[usize] = if full {
            &CRUD_CLIENTS
        } else {
            &[crud::TARGET_CLIENTS]
        };
        for &clients in levels {
            eprintln!(
                "crud ({label}): {clients} clients for {} s",
                plan.step.as_secs()
            );
            results
                .crud
                .push((label, crud::run(base, clients, plan.step).await?));
        }
    }
    if selected(Measurement::Latency) {
        eprintln!(
            "latency ({label}): {} writes/s for {} s",
            event_latency::WRITES_PER_SECOND,
            plan.step.as_secs()
        );
        let outcome =
            event_latency::run(&client, base, &server.data_dir.join("log"), plan.step).await?;
        results.latency.push((label, outcome));
    }
    Ok(())
}

async fn log_measurement(
    dir: &std::path::Path,
    plan: &Plan,
    missed: &mut Vec<String>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!("log: disk sync ceiling");
    let ceiling_dir = dir.to_owned();
    let ceiling = tokio::task::spawn_blocking(move || {
        log_append::sync_ceiling(&ceiling_dir, Duration::from_secs(2))
    })
    .await
    .context("the sync-ceiling loop failed")??;
    let step = if plan.step > Duration::from_secs(3) {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(2)
    };
    let mut outcomes = Vec::new();
    for case in log_append::CASES {
        eprintln!(
            "log: {}, {} appenders for {} s",
            case.name,
            case.appenders,
            step.as_secs()
        );
        outcomes.push(log_append::run(&dir.join("log"), case, step).await?);
    }
    print_table(
        &log_append::table(&outcomes, ceiling),
        &[
            "per row: fsync acknowledges after fdatasync (shared by concurrent appends in group commit); interval and none acknowledge after write(2)",
        ],
    );
    let best = outcomes
        .iter()
        .filter(|o| o.case.group_commit && o.case.durability == flare_log::Durability::Fsync)
        .map(log_append::AppendOutcome::events_per_second)
        .fold(0.0, f64::max);
    if best < log_append::TARGET_EVENTS_PER_SECOND {
        missed.push(format!(
            "log group commit best {} events/s",
            report::rate(best)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FlareConfig;

    #[test]
    fn the_no_sync_config_turns_off_every_sync_and_nothing_else() {
        let text = Policy::NoSync
            .config()
            .expect("the no-sync policy has a config file");
        let config: FlareConfig = toml::from_str(text).expect("a valid Flare config");
        assert_eq!(
            config.sqlite.durability,
            flare_store::sqlite::Durability::Off
        );
        assert_eq!(config.embedded_log.durability, flare_log::Durability::None);
        let defaults = FlareConfig::default();
        assert_eq!(config.server, defaults.server);
        assert_eq!(config.fhir, defaults.fhir);
        assert!(Policy::Default.config().is_none());
    }
}
