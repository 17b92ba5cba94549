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

use std::{path::PathBuf, process::ExitCode, time::Duration};

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

const HTTP_DURABILITY: &str = "durability: defaults - store SQLite WAL synchronous=FULL with group commit (a write is acknowledged once its version and outbox event are fsynced), log fsync with group commit (the relay appends events after the store commit)";
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
        load_budget: Duration::from_secs(if args.quick { 90 } else { 600 }),
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
        let server = ServerProcess::start(&work_dir.path().join("server")).await?;
        if !server.pinned {
            println!("(server not pinned)");
        }
        let result = http_measurements(&server, &plan, &selected, &mut missed).await;
        let server_log = server.stderr_file.clone();
        server.stop().await;
        result.with_context(|| {
            format!("the server's own messages are in {}", server_log.display())
        })?;
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

fn print_table(table: &Table, policy: &str) {
    println!("{}", table.render());
    println!("{policy}; load average {}\n", load_average_text());
}

async fn http_measurements(
    server: &ServerProcess,
    plan: &Plan,
    selected: &impl Fn(Measurement) -> bool,
    missed: &mut Vec<String>,
) -> anyhow::Result<()> {
    let client = http_client()?;
    let base = &server.fhir_base;
    let mut stored = 0;
    if selected(Measurement::Ingest) || selected(Measurement::Search) {
        eprintln!(
            "loading {} Patients and {} Observations in {} Bundles, {} in flight",
            plan.shape.patients,
            plan.shape.observations,
            plan.shape.bundles(),
            plan.in_flight
        );
        let loaded =
            ingest::load(&client, base, plan.shape, plan.in_flight, plan.load_budget).await?;
        stored += loaded.outcome.resources;
        if selected(Measurement::Ingest) {
            let name = if loaded.outcome.cut_short {
                format!(
                    "search dataset (stopped at the {} s budget)",
                    plan.load_budget.as_secs()
                )
            } else {
                "search dataset".to_owned()
            };
            print_table(&ingest::table(&[(name, &loaded.outcome)]), HTTP_DURABILITY);
            if loaded.outcome.resources_per_second() < ingest::TARGET_RESOURCES_PER_SECOND {
                missed.push(format!(
                    "ingest {} resources/s",
                    report::rate(loaded.outcome.resources_per_second())
                ));
            }
        }
        if selected(Measurement::Search) {
            let outcomes = search::run(&client, base, &loaded.patient_ids, plan.step).await?;
            print_table(
                &search::table(&outcomes, loaded.patient_ids.len(), loaded.observations),
                HTTP_DURABILITY,
            );
            for outcome in &outcomes {
                if outcome.latency.quantile(0.5) >= search::TARGET_P50 {
                    missed.push(format!(
                        "search {} p50 {}",
                        outcome.query,
                        outcome.latency.p50()
                    ));
                }
            }
        }
    }
    if selected(Measurement::Crud) {
        let mut outcomes = Vec::new();
        for clients in CRUD_CLIENTS {
            eprintln!("crud: {clients} clients for {} s", plan.step.as_secs());
            outcomes.push(crud::run(base, clients, plan.step).await?);
        }
        print_table(&crud::table(&outcomes, stored), HTTP_DURABILITY);
        if let Some(outcome) = outcomes.iter().find(|o| o.clients == crud::TARGET_CLIENTS)
            && !outcome.meets_target()
        {
            missed.push(format!(
                "crud at {} clients {} ops/s, p99 {}",
                outcome.clients,
                report::rate(outcome.ops_per_second()),
                outcome.all.p99()
            ));
        }
    }
    if selected(Measurement::Latency) {
        eprintln!(
            "latency: {} writes/s for {} s",
            event_latency::WRITES_PER_SECOND,
            plan.step.as_secs()
        );
        let outcome =
            event_latency::run(&client, base, &server.data_dir.join("log"), plan.step).await?;
        print_table(&event_latency::table(&outcome), HTTP_DURABILITY);
        if outcome.visible.quantile(0.99) >= event_latency::TARGET_P99 || outcome.never_seen > 0 {
            missed.push(format!("write->event p99 {}", outcome.visible.p99()));
        }
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
        "durability: per row - fsync acknowledges after fdatasync (shared by concurrent appends in group commit); interval and none acknowledge after write(2)",
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
