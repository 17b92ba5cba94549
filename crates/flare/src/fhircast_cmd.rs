//! `flare fhircast`: a FHIRcast client for any STU3 hub (Flare's or another): subscribe over
//! the WebSocket channel and print events, publish a context change, read the current context.

use std::{io::Read, io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

/// How long Ctrl-C waits for the hub's denial before closing anyway.
const UNSUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Subcommand)]
pub enum FhircastCommand {
    /// Subscribe to a topic over the WebSocket channel and print every event as one JSON
    /// line on stdout.
    ///
    /// Each event is acknowledged (status 200 unless --status says otherwise). The
    /// confirmation and denials go to stderr. Ctrl-C unsubscribes and closes the socket.
    ///
    /// Examples:
    ///   flare fhircast subscribe --hub http://127.0.0.1:8080/fhircast --topic session-1 \
    ///       --events Patient-open,Patient-close
    ///   flare fhircast subscribe --hub https://hub.example.com --topic t --events SyncError --max 1
    #[command(verbatim_doc_comment)]
    Subscribe {
        #[command(flatten)]
        target: Target,
        /// Events to receive, comma-separated (case-insensitive), e.g. Patient-open,SyncError.
        #[arg(long, value_delimiter = ',', required = true, value_name = "EVENTS")]
        events: Vec<String>,
        /// Lease to ask for, in seconds (the hub may grant less).
        #[arg(long, value_name = "SECONDS")]
        lease: Option<u64>,
        /// The `subscriber.name` the hub uses in SyncErrors about this subscriber.
        #[arg(long, default_value = "flare fhircast", value_name = "NAME")]
        name: String,
        /// Status sent in acknowledgements: 200 follows, 409 refuses (the hub then tells
        /// the others with a SyncError).
        #[arg(long, default_value_t = 200, value_name = "STATUS")]
        status: u16,
        /// Unsubscribe and stop after this many events.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
    },
    /// Publish a context change (`POST {hub}`), e.g. open a patient.
    ///
    /// Examples:
    ///   flare fhircast publish --hub http://127.0.0.1:8080/fhircast --topic session-1 \
    ///       --event Patient-open --context patient-context.json
    ///   echo '[{"key":"patient","resource":{"resourceType":"Patient","id":"p1"}}]' |
    ///       flare fhircast publish --hub http://127.0.0.1:8080/fhircast --topic session-1 \
    ///       --event Patient-open --context -
    #[command(verbatim_doc_comment)]
    Publish {
        #[command(flatten)]
        target: Target,
        /// The event name, e.g. Patient-open, DiagnosticReport-update, com.example.my-event.
        #[arg(long, value_name = "EVENT")]
        event: String,
        /// The event's context: a JSON array of `{key, resource|reference}` entries (or one
        /// such entry), from a file or `-` for stdin.
        #[arg(long, value_name = "FILE|-")]
        context: String,
        /// The event id (default: a random UUID); the hub broadcasts the event with it.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// `context.versionId`, needed by `*-update` events.
        #[arg(long, value_name = "VERSION")]
        version_id: Option<String>,
    },
    /// Print the current context of a topic (Get Current Context, `GET {hub}/{topic}`).
    Context {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The hub URL (`hub.url`), e.g. http://127.0.0.1:8080/fhircast.
    #[arg(long, value_name = "URL")]
    hub: String,
    /// The topic (the session id shared by the apps that follow one another).
    #[arg(long, value_name = "TOPIC")]
    topic: String,
}

impl Target {
    fn hub_url(&self) -> anyhow::Result<String> {
        let url = self.hub.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!(
                "--hub must be an http:// or https:// URL, got `{}`",
                self.hub
            );
        }
        if self.topic.trim().is_empty() {
            bail!("--topic must not be empty");
        }
        Ok(url.to_string())
    }
}

pub async fn run(command: FhircastCommand) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot set up the HTTP client")?;
    match command {
        FhircastCommand::Subscribe {
            target,
            events,
            lease,
            name,
            status,
            max,
        } => {
            let options = SubscribeOptions {
                events,
                lease,
                name,
                status,
                max,
            };
            subscribe(&http, &target, options).await
        }
        FhircastCommand::Publish {
            target,
            event,
            context,
            id,
            version_id,
        } => publish(&http, &target, &event, &context, id, version_id).await,
        FhircastCommand::Context { target } => {
            let url = format!("{}/{}", target.hub_url()?, encode_segment(&target.topic));
            let response = http
                .get(&url)
                .header("accept", "application/json")
                .send()
                .await
                .with_context(|| format!("cannot reach the hub at {url}"))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("the hub answered {status}: {}", body.trim());
            }
            println!("{}", body.trim());
            Ok(ExitCode::SUCCESS)
        }
    }
}

struct SubscribeOptions {
    events: Vec<String>,
    lease: Option<u64>,
    name: String,
    status: u16,
    max: Option<u64>,
}

async fn subscription_form(
    http: &reqwest::Client,
    hub: &str,
    fields: &[(&str, &str)],
) -> anyhow::Result<String> {
    let response = http
        .post(hub)
        .form(fields)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {hub}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.as_u16() != 202 {
        bail!("the hub answered {status}: {}", body.trim());
    }
    let answer: Value = serde_json::from_str(&body)
        .with_context(|| format!("the hub's answer is not JSON: {}", body.trim()))?;
    answer["hub.channel.endpoint"]
        .as_str()
        .map(str::to_string)
        .context("the hub's answer has no hub.channel.endpoint")
}

async fn subscribe(
    http: &reqwest::Client,
    target: &Target,
    options: SubscribeOptions,
) -> anyhow::Result<ExitCode> {
    let hub = target.hub_url()?;
    let events = options
        .events
        .iter()
        .map(|event| event.trim())
        .filter(|event| !event.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    if events.is_empty() {
        bail!("--events needs at least one event name");
    }
    let lease = options.lease.map(|seconds| seconds.to_string());
    let mut fields = vec![
        ("hub.channel.type", "websocket"),
        ("hub.mode", "subscribe"),
        ("hub.topic", target.topic.as_str()),
        ("hub.events", events.as_str()),
        ("subscriber.name", options.name.as_str()),
    ];
    if let Some(lease) = &lease {
        fields.push(("hub.lease_seconds", lease));
    }
    let endpoint = subscription_form(http, &hub, &fields).await?;
    let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
        .await
        .with_context(|| format!("cannot open the subscription's WebSocket {endpoint}"))?;
    let (mut sink, mut stream) = socket.split();
    let unsubscribe = [
        ("hub.channel.type", "websocket"),
        ("hub.mode", "unsubscribe"),
        ("hub.topic", target.topic.as_str()),
        ("hub.channel.endpoint", endpoint.as_str()),
    ];

    let mut received = 0u64;
    let mut stdout = std::io::stdout();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let frame = tokio::select! {
            _ = &mut interrupted => break,
            frame = stream.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let reason = frame
                    .map(|frame| frame.reason.to_string())
                    .unwrap_or_default();
                eprintln!("the hub closed the subscription {}", reason.trim());
                return Ok(ExitCode::FAILURE);
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => bail!("the subscription's WebSocket failed: {error}"),
            None => bail!("the hub dropped the subscription's WebSocket"),
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match frame.get("hub.mode").and_then(Value::as_str) {
            Some("subscribe") => {
                eprintln!(
                    "subscribed to {} for {} (lease {} s); Ctrl-C unsubscribes",
                    frame["hub.topic"].as_str().unwrap_or_default(),
                    frame["hub.events"].as_str().unwrap_or_default(),
                    frame["hub.lease_seconds"]
                );
                continue;
            }
            Some("denied") => {
                eprintln!(
                    "the hub ended the subscription: {}",
                    frame["hub.reason"].as_str().unwrap_or("no reason given")
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        let Some(id) = frame.get("id").and_then(Value::as_str) else {
            continue;
        };
        if frame.get("event").is_none() {
            continue;
        }
        writeln!(stdout, "{frame}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
        let ack = json!({"id": id, "status": options.status});
        sink.send(Message::Text(ack.to_string().into()))
            .await
            .context("cannot acknowledge an event")?;
        received += 1;
        if options.max.is_some_and(|max| received >= max) {
            break;
        }
    }

    // Unsubscribe, wait for the denial the hub sends on the socket, then close normally.
    subscription_form(http, &hub, &unsubscribe).await?;
    let _ = tokio::time::timeout(UNSUBSCRIBE_WAIT, async {
        while let Some(Ok(frame)) = stream.next().await {
            if let Message::Text(text) = &frame
                && text.as_str().contains("\"denied\"")
            {
                return;
            }
            if let Message::Close(_) = frame {
                return;
            }
        }
    })
    .await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "unsubscribed".into(),
        })))
        .await;
    eprintln!("unsubscribed after {received} event(s)");
    Ok(ExitCode::SUCCESS)
}

async fn publish(
    http: &reqwest::Client,
    target: &Target,
    event: &str,
    context_source: &str,
    id: Option<String>,
    version_id: Option<String>,
) -> anyhow::Result<ExitCode> {
    let hub = target.hub_url()?;
    let text = if context_source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the context from stdin")?;
        text
    } else {
        let path = PathBuf::from(context_source);
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the context file {}", path.display()))?
    };
    let context = match serde_json::from_str::<Value>(&text)
        .with_context(|| format!("the context in {context_source} is not JSON"))?
    {
        Value::Array(entries) => Value::Array(entries),
        entry @ Value::Object(_) => Value::Array(vec![entry]),
        _ => bail!("the context must be a JSON array of {{key, resource}} entries"),
    };
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("cannot format the current time")?;
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut notification = json!({
        "timestamp": timestamp,
        "id": id,
        "event": {"hub.topic": target.topic, "hub.event": event, "context": context},
    });
    if let Some(version_id) = version_id {
        notification["event"]["context.versionId"] = Value::String(version_id);
    }
    let response = http
        .post(&hub)
        .header("content-type", "application/json")
        .body(notification.to_string())
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {hub}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the hub refused the event ({status}): {}", body.trim());
    }
    eprintln!("published {event} {id} to {} ({status})", target.topic);
    Ok(ExitCode::SUCCESS)
}

/// A topic as one URL path segment.
fn encode_segment(topic: &str) -> String {
    topic
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
