//! `flare process`: run stream processors without the HTTP API.
//!
//! The processors write their alerts through the commit path and publish to the log, so this
//! command opens the store and the log as their writer, exactly like `flare serve` (and runs
//! the relay). The embedded log has a single writer: on the same data directory, stop
//! `flare serve` first, or let `flare serve` run the processors itself.

use std::{process::ExitCode, sync::atomic::Ordering};

use anyhow::Context;
use flare_processors::{
    RuntimeOptions,
    builtin::{BuiltinDeps, spawn_builtin},
    state,
};

use crate::{app::App, config::CommonArgs, serve::shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct ProcessArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Processors to run, comma-separated: `qsofa`, `immunizations` [default:
    /// `processors.enabled` of the config].
    #[arg(
        long,
        env = "FLARE_PROCESSORS",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub processors: Option<Vec<String>>,
    /// Where processor state lives: `embedded` (processors.db in the data dir) or
    /// `redis://host:port/db` [default: `processors.state` of the config].
    #[arg(long, env = "FLARE_PROCESSOR_STATE", value_name = "URL")]
    pub state: Option<String>,
}

pub async fn run(args: ProcessArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.common.load()?;
    if let Some(names) = args.processors {
        config.processors.enabled = names;
    }
    if let Some(url) = args.state {
        config.processors.state = url;
    }
    let names: Vec<String> = config
        .processors
        .enabled
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty() && n != "none")
        .collect();
    if names.is_empty() {
        anyhow::bail!("no processors to run: pass --processors qsofa (or set processors.enabled)");
    }
    let app = App::open(&config).await.context(
        "`flare process` writes alerts and events, so it needs the store and the log to itself \
         (the embedded log has one writer): stop `flare serve` on this data directory, or run \
         the processors inside it",
    )?;
    let state_store = state::open(&config.processors.state, &config.data_dir)
        .await
        .with_context(|| {
            format!(
                "cannot open the processor state store `{}`",
                config.processors.state
            )
        })?;
    let deps = BuiltinDeps {
        fhir: app.fhir.clone(),
        log: app.log.clone(),
        state: state_store,
        options: RuntimeOptions::from_config(&config.processors),
    };
    let mut handles = Vec::new();
    for name in &names {
        match spawn_builtin(name, &deps).await {
            Ok(spawned) => handles.push(spawned.handle),
            Err(e) => {
                for handle in handles {
                    let _ = handle.shutdown().await;
                }
                app.shutdown().await;
                return Err(e.into());
            }
        }
    }
    println!(
        "running processors {} on {} (state: {}); Ctrl-C stops",
        names.join(", "),
        config.data_dir.display(),
        config.processors.state
    );
    // Stop on a signal, or when a processor stops on an error.
    let failed = tokio::select! {
        _ = shutdown_signal() => false,
        _ = async {
            loop {
                if handles.iter().any(|h| h.is_finished()) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        } => true,
    };
    let mut code = if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    for handle in handles {
        let metrics = handle.metrics();
        let name = handle.name().to_owned();
        if let Err(e) = handle.shutdown().await {
            eprintln!("error: {e}");
            code = ExitCode::FAILURE;
        }
        println!(
            "{name}: {} in, {} out, {} dead-lettered, lag {}",
            metrics.records_in.load(Ordering::Relaxed),
            metrics.records_out.load(Ordering::Relaxed),
            metrics.dead_lettered.load(Ordering::Relaxed),
            metrics.lag.load(Ordering::Relaxed),
        );
    }
    app.shutdown().await;
    Ok(code)
}
