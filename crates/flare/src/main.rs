//! `flare`: the command line of the Flare FHIR event platform.

mod app;
mod bench;
mod components;
mod config;
mod demo_cmd;
mod dlq_cmd;
mod events_cmd;
mod fhircast_cmd;
mod generate_cmd;
mod ingest;
mod ingest_kafka;
mod process_cmd;
mod serve;

use clap::{Parser, Subcommand};

/// Flare: a FHIR R4 server whose every write is an event on a durable log.
///
/// Start with `flare serve`, then open http://127.0.0.1:8080/fhir/metadata. Data lives in
/// `./flare-data` unless `--data-dir` says otherwise.
#[derive(Debug, Parser)]
#[command(name = "flare", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the FHIR server (and the relay that turns writes into log events).
    ///
    /// Examples:
    ///   flare serve
    ///   flare serve --listen 0.0.0.0:8080 --data-dir /var/lib/flare
    ///   FLARE_STORE=sqlite::memory: flare serve      # nothing kept on disk but the log
    Serve(serve::ServeArgs),
    /// The whole thing on a laptop: the server on embedded defaults with its processors, fed
    /// by a synthetic population; open the printed dashboard URL.
    ///
    /// Data goes to a temporary folder (removed at exit) unless --data-dir names one.
    ///
    /// Examples:
    ///   flare demo
    ///   flare demo --listen 127.0.0.1:9090 --data-dir ./demo-data --speed 60x
    #[command(verbatim_doc_comment)]
    Demo(demo_cmd::DemoArgs),
    /// Read the event log: follow a topic, list topics.
    ///
    /// Works while `flare serve` runs on the same data directory.
    Events {
        #[command(subcommand)]
        command: events_cmd::EventsCommand,
    },
    /// Load FHIR files through the commit path: Bundles, single resources or NDJSON, as JSON
    /// or XML; folders are walked.
    ///
    /// Transaction and batch Bundles are executed; other resources are stored with their ids
    /// (update-as-create) or get new ones. Writes go straight into the data directory, or to a
    /// running server with `--url`.
    ///
    /// Examples:
    ///   flare ingest ./bundles/
    ///   flare ingest --url http://127.0.0.1:8080/fhir patients.ndjson
    Ingest(ingest::IngestArgs),
    /// Generate a seeded synthetic population (vital signs with sepsis courses, immunizations,
    /// labs, medications) into a Flare server, NDJSON files or stdout.
    ///
    /// The same seed and --start give the same data, byte for byte.
    ///
    /// Examples:
    ///   flare generate --patients 1000 --url http://127.0.0.1:8080/fhir
    ///   flare generate --url http://127.0.0.1:8080/fhir --start now --speed 60x --rate 200/s
    ///   flare generate --patients 100 --out ./population
    #[command(verbatim_doc_comment)]
    Generate(generate_cmd::GenerateArgs),
    /// Run stream processors (e.g. qSOFA sepsis alerts) without the HTTP API.
    ///
    /// Examples:
    ///   flare process --processors qsofa
    ///   flare process --processors qsofa --state redis://127.0.0.1:6379/0
    #[command(verbatim_doc_comment)]
    Process(process_cmd::ProcessArgs),
    /// Inspect, replay and purge dead letters: records processors gave up on.
    Dlq {
        #[command(subcommand)]
        command: dlq_cmd::DlqCommand,
    },
    /// A FHIRcast client for any hub: subscribe and print events, publish a context change,
    /// read the current context.
    Fhircast {
        #[command(subcommand)]
        command: fhircast_cmd::FhircastCommand,
    },
    /// Print an annotated config file with every default.
    ConfigExample,
    /// Measure a `flare serve` child process (CRUD mix, Bundle ingest, search, write -> event
    /// latency) and the embedded log, and print one table per measurement.
    ///
    /// Examples:
    ///   flare bench --quick
    ///   flare bench --only crud,log
    ///   flare bench --patients 20000 --observations 200000
    #[command(verbatim_doc_comment)]
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Batch commands keep the terminal for their progress and summary.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLARE_LOG_LEVEL")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Demo(args) => demo_cmd::run(args).await,
            Command::Events { command } => events_cmd::run(command).await,
            Command::Ingest(args) => ingest::run(args).await,
            Command::Generate(args) => generate_cmd::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Process(args) => process_cmd::run(args).await,
            Command::Dlq { command } => dlq_cmd::run(command).await,
            Command::Fhircast { command } => fhircast_cmd::run(command).await,
            Command::ConfigExample => {
                print!("{}", config::example());
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
