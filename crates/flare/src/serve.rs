//! `flare serve`.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use flare_commands::{CommandExecutor, CommandRunner, ExecutedRequests};
use flare_server::{AppState, Metrics};
use tokio::net::TcpListener;

use crate::{
    app::App,
    components::Components,
    config::{CommonArgs, FlareConfig},
};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "FLARE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Public base URL of the FHIR API, if clients reach it through a proxy.
    #[arg(long, env = "FLARE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Stream processors to run, comma-separated: `qsofa`, `immunizations`, or `none`
    /// [default: qsofa,immunizations].
    #[arg(
        long,
        env = "FLARE_PROCESSORS",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub processors: Option<Vec<String>>,
    /// Where processor state lives: `embedded` or `redis://host:port/db` [default: embedded].
    #[arg(long, env = "FLARE_PROCESSOR_STATE", value_name = "URL")]
    pub processor_state: Option<String>,
    /// Networks subscriptions may deliver to although not public (and over plain http), e.g.
    /// `127.0.0.0/8` for local development [default: none].
    #[arg(long, env = "FLARE_SUBSCRIPTION_ALLOW", value_name = "CIDRS")]
    pub subscription_allow: Option<String>,
    /// Do not deliver subscription notifications (Subscriptions are stored, nothing more).
    #[arg(long, env = "FLARE_NO_SUBSCRIPTIONS")]
    pub no_subscriptions: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.common.load()?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(url) = args.public_url {
        config.server.public_url = Some(url);
    }
    if let Some(names) = args.processors {
        config.processors.enabled = names;
    }
    if let Some(url) = args.processor_state {
        config.processors.state = url;
    }
    if args.no_subscriptions {
        config.subscriptions.enabled = false;
    }
    if let Some(allow) = args.subscription_allow {
        config.subscriptions.endpoints.allow = allow.parse().map_err(|e| {
            anyhow::anyhow!(
                "--subscription-allow {allow}: {e} (write networks such as 127.0.0.0/8, ::1)"
            )
        })?;
    }
    serve_config(config, shutdown_signal(), None).await
}

/// Runs the server on `config` until `shutdown` resolves; `ready` learns the address once the
/// server accepts requests.
pub async fn serve_config(
    config: FlareConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<ExitCode> {
    let app = App::open(&config).await?;
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (in use? choose another with --listen)",
                config.server.listen
            )
        })?;
    let address = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let relay_stats = app.relay_stats.clone();
    metrics.add_source(Arc::new(move || relay_stats.render_prometheus(now_ms())));
    let public_base = config
        .server
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}/fhir"));
    let components = Components::start(&config, &app, &metrics, &public_base).await?;
    let commands = start_commands(&config, &app, &metrics)?;
    let state = AppState {
        fhir: app.fhir.clone(),
        log: app.log.clone(),
        config: Arc::new(config.server.clone()),
        metrics,
        relay: app.relay_stats.clone(),
    };
    println!("Flare is listening on http://{address}");
    println!("  dashboard     http://{address}/");
    println!("  FHIR API      http://{address}/fhir   (try http://{address}/fhir/metadata)");
    println!("  health        http://{address}/health, metrics http://{address}/metrics");
    println!(
        "  data          {} (store: {}, log: {})",
        config.data_dir.display(),
        config.store,
        config.log
    );
    println!(
        "  follow events flare events tail fhir.Patient --data-dir {}",
        config.data_dir.display()
    );
    for line in &components.banner {
        println!("  {line}");
    }
    if commands.is_some() {
        println!(
            "  commands      {} (rejections on {})",
            config.commands.topic, config.commands.rejected_topic
        );
    }
    println!("Press Ctrl-C to stop.");
    // Optional components merge their routes here.
    let routes = flare_server::router(state).merge(components.routes.clone());
    if let Some(ready) = ready {
        let _ = ready.send(address);
    }
    flare_server::serve_router(listener, routes, shutdown)
        .await
        .context("the HTTP server failed")?;
    eprintln!("stopping: checkpointing processors, relaying the last events…");
    if let Some(commands) = commands {
        commands.shutdown().await;
    }
    components.shutdown().await;
    app.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The command runner over `commands.topic`, unless disabled. Executed request ids are kept
/// beside the store (in memory when the store is).
fn start_commands(
    config: &FlareConfig,
    app: &App,
    metrics: &Metrics,
) -> anyhow::Result<Option<CommandRunner>> {
    if !config.commands.enabled {
        return Ok(None);
    }
    let file = crate::config::sqlite_config(config)?
        .path
        .map(|_| config.data_dir.join("commands.sqlite"));
    let executed = ExecutedRequests::open(file.as_deref()).with_context(|| {
        format!(
            "cannot open the executed-commands database in {}",
            config.data_dir.display()
        )
    })?;
    let executor = CommandExecutor::new(app.fhir.clone(), executed, config.commands.clone());
    let runner = CommandRunner::spawn(executor, app.log.clone());
    let stats = runner.stats();
    metrics.add_source(Arc::new(move || stats.render_prometheus()));
    Ok(Some(runner))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
