//! The optional components `flare serve` runs beside the FHIR API: stream processors with the
//! dashboard's live feed, subscription delivery, the FHIRcast hub. Each adds routes.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use flare_processors::{
    ProcessorHandle, RuntimeOptions,
    builtin::{BuiltinDeps, immunizations::ImmunizationView, spawn_builtin},
    dashboard::{DashboardFeed, run_feed},
    render_prometheus, state,
};
use flare_server::{DashboardState, Metrics};
use flare_subscriptions::{
    TopicRegistry,
    delivery::{
        Dependencies, MailTransport, SubscriptionCheck, SubscriptionRedaction, SubscriptionRuntime,
    },
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{app::App, config::FlareConfig};

/// What runs beside the API, to stop in order at shutdown.
pub struct Components {
    processors: Vec<ProcessorHandle>,
    subscriptions: Option<SubscriptionRuntime>,
    feed_task: JoinHandle<()>,
    stop_feed: watch::Sender<bool>,
    pub routes: Router,
    /// One line per component for the startup banner.
    pub banner: Vec<String>,
}

impl Components {
    pub async fn start(
        config: &FlareConfig,
        app: &App,
        metrics: &Arc<Metrics>,
        public_base: &str,
    ) -> anyhow::Result<Self> {
        let mut banner = Vec::new();
        let mut routes = Router::new();

        // Processors, and the dashboard feed over their results.
        let names = enabled_processors(config);
        let mut processors = Vec::new();
        let mut immunizations: Option<Arc<ImmunizationView>> = None;
        if !names.is_empty() {
            let state_store = state::open(&config.processors.state, &config.data_dir)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the processor state store `{}` (set processors.state or --processor-state)",
                        config.processors.state
                    )
                })?;
            let deps = BuiltinDeps {
                fhir: app.fhir.clone(),
                log: app.log.clone(),
                state: state_store,
                options: RuntimeOptions::from_config(&config.processors),
            };
            for name in &names {
                let spawned = spawn_builtin(name, &deps)
                    .await
                    .with_context(|| format!("cannot start the processor `{name}`"))?;
                if let Some(view) = spawned.immunizations {
                    immunizations = Some(view);
                }
                processors.push(spawned.handle);
            }
            banner.push(format!(
                "processors    {} (state: {})",
                names.join(", "),
                config.processors.state
            ));
        }
        let processor_metrics: Vec<_> = processors.iter().map(|p| p.metrics()).collect();
        if !processor_metrics.is_empty() {
            let sources = processor_metrics.clone();
            metrics.add_source(Arc::new(move || render_prometheus(&sources)));
        }
        let feed = DashboardFeed::new();
        let (stop_feed, feed_stopped) = watch::channel(false);
        let feed_task = {
            let (feed, log, view) = (feed.clone(), app.log.clone(), immunizations.clone());
            tokio::spawn(async move {
                if let Err(error) = run_feed(feed, log, view, feed_stopped).await {
                    tracing::error!("the dashboard feed stopped: {error}");
                }
            })
        };
        routes = routes.merge(flare_server::dashboard_routes(DashboardState {
            feed,
            immunizations,
            processors: processor_metrics,
            log: app.log.clone(),
        }));

        // Subscriptions.
        let subscriptions = if config.subscriptions.enabled {
            let registry = app.fhir.registry().clone();
            let topics = TopicRegistry::with_builtins(&registry);
            app.fhir.add_write_check(
                "Subscription",
                Arc::new(SubscriptionCheck::new(registry.clone(), topics.clone())),
            );
            // Channel secrets never appear in answers; the store and deliveries keep them.
            app.fhir
                .add_read_transform("Subscription", Arc::new(SubscriptionRedaction));
            let mailer: Option<Arc<dyn MailTransport>> = match &config.subscriptions.smtp {
                Some(smtp) => Some(Arc::new(
                    flare_outbound::Mailer::new(smtp)
                        .context("invalid [subscriptions.smtp] settings")?,
                )),
                None => None,
            };
            let channels = if mailer.is_some() {
                "rest-hook, websocket, message, email and kafka"
            } else {
                "rest-hook, websocket, message and kafka (email needs [subscriptions.smtp])"
            };
            let policy =
                flare_outbound::EndpointPolicy::from_config(&config.subscriptions.endpoints);
            let deliverer =
                flare_outbound::Deliverer::new(policy, flare_outbound::DeliveryConfig::default())
                    .context("cannot set up the HTTP client for subscription deliveries")?;
            let mut delivery = config.subscriptions.delivery.clone();
            let default_cursor =
                flare_subscriptions::delivery::DeliveryConfig::default().cursor_file;
            delivery.cursor_file = if delivery.cursor_file == default_cursor {
                config.data_dir.join("subscriptions.sqlite")
            } else {
                config.data_dir.join(&delivery.cursor_file)
            };
            delivery.base_url = public_base.to_string();
            let runtime = SubscriptionRuntime::start_with_mailer(
                Dependencies {
                    fhir: app.fhir.clone(),
                    log: app.log.clone(),
                    topics,
                    transport: Arc::new(deliverer),
                },
                delivery,
                mailer,
            )
            .await
            .context("cannot start subscription delivery")?;
            routes = routes.merge(flare_server::subscriptions_http::routes(runtime.clone()));
            app.fhir
                .add_capability_extensions(flare_server::subscriptions_http::capability_extensions);
            let allowed = config.subscriptions.endpoints.allow.to_string();
            banner.push(format!(
                "subscriptions {channels} (non-public endpoints allowed: {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed
                }
            ));
            Some(runtime)
        } else {
            None
        };

        // The FHIRcast hub, advertised in the CapabilityStatement.
        if config.fhircast.enabled {
            let hub = if config.fhircast.fan_out == flare_fhircast::FanOut::Log {
                // Every node on this log serves the same hub.
                flare_fhircast::HubHandle::start_on_log(config.fhircast.clone(), app.log.clone())
                    .await
                    .context("cannot start the FHIRcast hub on the event log")?
            } else {
                flare_fhircast::HubHandle::start(config.fhircast.clone())
            };
            let hub_config = config.fhircast.clone();
            app.fhir.add_capability_extensions(move |fhir_base| {
                flare_fhircast::capability_extensions(&hub_config, fhir_base)
            });
            let hub_url = flare_fhircast::hub_url(&config.fhircast, public_base);
            banner.push(format!(
                "FHIRcast hub  {hub_url} (sandbox page: {hub_url}/sandbox)"
            ));
            routes = routes.merge(flare_server::fhircast_routes(hub));
        }

        Ok(Self {
            processors,
            subscriptions,
            feed_task,
            stop_feed,
            routes,
            banner,
        })
    }

    /// Stops deliveries, the feed and the processors (each with a final checkpoint).
    pub async fn shutdown(self) {
        if let Some(runtime) = self.subscriptions {
            runtime.shutdown().await;
        }
        let _ = self.stop_feed.send(true);
        let _ = self.feed_task.await;
        for processor in self.processors {
            let name = processor.name().to_owned();
            if let Err(error) = processor.shutdown().await {
                eprintln!("processor {name} stopped with an error: {error}");
            }
        }
    }
}

fn enabled_processors(config: &FlareConfig) -> Vec<String> {
    config
        .processors
        .enabled
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty() && n != "none")
        .collect()
}
