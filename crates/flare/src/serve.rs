//! `flare serve`.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use flare_server::{AppState, Metrics};
use tokio::net::TcpListener;

use crate::{app::App, config::CommonArgs};

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
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.common.load()?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(url) = args.public_url {
        config.server.public_url = Some(url);
    }
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
    let state = AppState {
        fhir: app.fhir.clone(),
        log: app.log.clone(),
        config: Arc::new(config.server.clone()),
        metrics: Arc::new(Metrics::default()),
        relay: app.relay_stats.clone(),
    };
    println!("Flare is listening on http://{address}");
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
    println!("Press Ctrl-C to stop.");
    // Optional components merge their routes here.
    let mut routes = flare_server::router(state);
    if config.fhircast.enabled {
        let hub = flare_fhircast::HubHandle::start(config.fhircast.clone());
        println!("  FHIRcast hub  http://{address}{}", config.fhircast.path);
        routes = routes.merge(flare_server::fhircast_routes(hub));
    }
    flare_server::serve_router(listener, routes, shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    eprintln!("stopping: relaying the last events…");
    app.shutdown().await;
    Ok(ExitCode::SUCCESS)
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
