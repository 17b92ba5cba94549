//! `flare demo`: the server on embedded defaults with its processors, fed by the synthetic
//! population generator, so the dashboard fills within seconds.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use flare_generator::Generator;
use indicatif::ProgressBar;
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use crate::{
    config::CommonArgs,
    generate_cmd::{self, Pace, Sink, parse_rate, parse_speed},
    serve::{serve_config, shutdown_signal},
};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "FLARE_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: String,
    /// Keep the demo's data in this folder (reused next time); without it a temporary folder
    /// is used and removed at exit.
    #[arg(long, env = "FLARE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seed of the generated population.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Simulated time runs this many times faster than the clock: at 600x a 6-hour sepsis
    /// course unfolds in 36 seconds.
    #[arg(long, default_value = "600x", value_parser = parse_speed, value_name = "Nx")]
    pub speed: f64,
    /// At most this many resources per second.
    #[arg(long, default_value = "500/s", value_parser = parse_rate, value_name = "N/s")]
    pub rate: f64,
    /// Share of inpatients who follow a sepsis course.
    #[arg(long, default_value_t = 0.15, value_name = "SHARE")]
    pub sepsis_share: f64,
    /// Stop generating after this many patients (the server keeps running).
    #[arg(long, value_name = "N")]
    pub patients: Option<u64>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("flare-demo-")
                .tempdir()
                .context("cannot create a temporary data folder (choose one with --data-dir)")?,
        ),
    };
    let common = CommonArgs {
        config: None,
        data_dir: args
            .data_dir
            .clone()
            .or_else(|| temporary.as_ref().map(|temp| temp.path().to_path_buf())),
        store: None,
        log: None,
    };
    let mut config = common.load()?;
    config.server.listen = args.listen.clone();

    let (stop, stopped) = watch::channel(false);
    let (ready, address) = oneshot::channel();
    let server = {
        let mut stopped = stopped.clone();
        tokio::spawn(serve_config(
            config,
            async move {
                let _ = stopped.changed().await;
            },
            Some(ready),
        ))
    };
    let Ok(address) = address.await else {
        // The server stopped before listening: its error says why.
        return server.await.context("the server task failed")?;
    };
    println!();
    println!("Open the dashboard: http://{address}/");
    println!(
        "Generating patients at {}x speed, at most {}/s (seed {}); Ctrl-C stops.",
        args.speed, args.rate, args.seed
    );

    let generator = Generator::new(flare_generator::GeneratorConfig {
        seed: args.seed,
        patients: args.patients,
        start: OffsetDateTime::now_utc(),
        sepsis_share: args.sepsis_share,
        // Sized so that at 600x the hospital holds ~150 inpatients and the stream stays near
        // 300 resources/s on a laptop, with the first alerts about a minute in.
        admissions_per_hour: 6.0,
        vitals_every_minutes: 30,
        ..flare_generator::GeneratorConfig::default()
    })?;
    let mut sink = Sink::server(&format!("http://{address}/fhir"), 50)?;
    let pace = Pace::new(OffsetDateTime::now_utc(), Some(args.rate), Some(args.speed));
    let generated = generate_cmd::generate(
        generator,
        &mut sink,
        pace,
        &ProgressBar::hidden(),
        shutdown_signal(),
    )
    .await;
    let outcome = match generated {
        Ok(summary) if !summary.interrupted => {
            println!("{summary}The server keeps running; Ctrl-C stops it.");
            shutdown_signal().await;
            Ok(ExitCode::SUCCESS)
        }
        Ok(summary) => {
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error),
    };
    let _ = stop.send(true);
    let served = server.await.context("the server task failed")?;
    if let Some(temp) = temporary {
        println!("removing the demo data in {}", temp.path().display());
    }
    served?;
    outcome
}
