//! `flare ingest`: load FHIR files through the commit path.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context;
use flare_legacy::{DeclaredVersion, FhirVersion, Unmapped};
use flare_service::{Fhir, FhirError, RequestContext, ReturnPreference};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::{app::App, config::CommonArgs};

fn parse_version(text: &str) -> Result<DeclaredVersion, String> {
    text.parse()
}

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true
)]
pub struct IngestArgs {
    #[command(subcommand)]
    pub source: Option<IngestSource>,
    /// Files or folders (walked recursively): `.json` (a resource or Bundle), `.ndjson` (one
    /// resource per line) or `.xml`.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Send to a running server's FHIR base instead of writing the data directory, e.g.
    /// `http://127.0.0.1:8080/fhir`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// FHIR version of the files: `auto` detects it per file (DSTU2 and STU3 are mapped to R4,
    /// R4 is loaded unchanged), or `dstu2`, `stu3`, `r4`.
    #[arg(long, default_value = "auto", value_name = "VERSION", value_parser = parse_version)]
    pub from: DeclaredVersion,
    /// Files loaded at the same time.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Sources other than files.
#[derive(Debug, clap::Subcommand)]
pub enum IngestSource {
    /// Consume FHIR messages (resources or Bundles, JSON or XML, R4 or legacy) from a Kafka
    /// topic; messages that cannot be loaded go to the topic `<TOPIC>.dlq`.
    ///
    /// Offsets are committed only after a message is stored (or dead-lettered), so a stopped
    /// ingest resumes where it left off.
    ///
    /// Examples:
    ///   flare ingest kafka --brokers 127.0.0.1:9092 --topic hl7-in --data-dir ./flare-data
    ///   flare ingest kafka --brokers kafka:9092 --topic hl7-in --url http://127.0.0.1:8080/fhir
    #[command(verbatim_doc_comment)]
    Kafka(crate::ingest_kafka::KafkaIngestArgs),
}

/// One thing to write: a resource or a Bundle, and where it came from.
pub(crate) struct Item {
    pub(crate) source: String,
    pub(crate) resource: Value,
}

/// Where writes go.
pub(crate) enum Target {
    Local(Fhir),
    Remote {
        client: reqwest::Client,
        base: String,
    },
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) created: AtomicU64,
    pub(crate) updated: AtomicU64,
    pub(crate) unchanged: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Legacy resources with no R4 mapping, by type: not loaded, counted as failed.
    pub(crate) unmapped: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Legacy elements R4 has no place for, by path: loaded without them.
    pub(crate) dropped: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// What a file holds: the items to write and the legacy resources left out.
#[derive(Default)]
pub(crate) struct FileItems {
    pub(crate) items: Vec<Item>,
    pub(crate) unmapped: Vec<Unmapped>,
    pub(crate) dropped: std::collections::BTreeMap<String, u64>,
}

/// How a file or message body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    /// One resource or Bundle.
    Json,
    /// One resource per line.
    Ndjson,
    Xml,
}

impl Tally {
    fn count(&self, status: u16) {
        let counter = match status {
            201 => &self.created,
            200 => &self.updated,
            204 => &self.unchanged,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    if let Some(IngestSource::Kafka(kafka)) = args.source {
        return crate::ingest_kafka::run(kafka).await;
    }
    let files = collect_files(&args.paths)?;
    if files.is_empty() {
        anyhow::bail!("no .json, .ndjson or .xml files under {:?}", args.paths);
    }
    let (target, app) = open_target(args.url.as_deref(), &args.common).await?;
    let progress = ProgressBar::new(files.len() as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} files  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let tally = Tally::default();
    let started = std::time::Instant::now();
    futures::stream::iter(files)
        .map(|file| {
            let (target, tally, progress) = (&target, &tally, &progress);
            async move {
                match read_items(&file, args.from) {
                    Ok(FileItems {
                        items,
                        unmapped,
                        dropped,
                    }) => {
                        {
                            let mut all_dropped = tally.dropped.lock();
                            for (path, count) in dropped {
                                *all_dropped.entry(path).or_default() += count;
                            }
                        }
                        for message in report_unmapped(&unmapped, items.is_empty(), tally) {
                            progress.suspend(|| eprintln!("failed {}: {message}", file.display()));
                        }
                        for item in items {
                            match write_item(target, &item, tally).await {
                                Ok(entry_failures) => {
                                    for message in entry_failures {
                                        progress.suspend(|| {
                                            eprintln!("failed {}: {message}", item.source)
                                        });
                                    }
                                }
                                Err(message) => {
                                    tally.failed.fetch_add(1, Ordering::Relaxed);
                                    progress
                                        .suspend(|| eprintln!("failed {}: {message}", item.source));
                                }
                            }
                        }
                    }
                    Err(message) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        progress.suspend(|| eprintln!("failed {}: {message}", file.display()));
                    }
                }
                progress.inc(1);
                progress.set_message(format!(
                    "{} created, {} updated, {} failed",
                    tally.created.load(Ordering::Relaxed),
                    tally.updated.load(Ordering::Relaxed),
                    tally.failed.load(Ordering::Relaxed)
                ));
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<()>()
        .await;
    progress.finish_and_clear();
    if let Some(app) = app {
        app.shutdown().await;
    }
    let failed = tally.failed.load(Ordering::Relaxed);
    println!(
        "ingested in {:.1}s: {} created, {} updated, {} unchanged, {} failed",
        started.elapsed().as_secs_f64(),
        tally.created.load(Ordering::Relaxed),
        tally.updated.load(Ordering::Relaxed),
        tally.unchanged.load(Ordering::Relaxed),
        failed
    );
    let unmapped = tally.unmapped.lock();
    if !unmapped.is_empty() {
        let by_type: Vec<String> = unmapped
            .iter()
            .map(|(resource_type, count)| format!("{resource_type} {count}"))
            .collect();
        println!("not loaded, no R4 mapping: {}", by_type.join(", "));
    }
    let dropped = tally.dropped.lock();
    if !dropped.is_empty() {
        let mut by_count: Vec<(&String, &u64)> = dropped.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let most: Vec<String> = by_count
            .iter()
            .take(5)
            .map(|(path, count)| format!("{path} {count}"))
            .collect();
        println!(
            "legacy elements with no R4 place, dropped: {} kinds, most often {}",
            dropped.len(),
            most.join(", ")
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// A running server's FHIR base when `url` is given, else the data directory (the returned
/// `App`, to shut down when done).
pub(crate) async fn open_target(
    url: Option<&str>,
    common: &CommonArgs,
) -> anyhow::Result<(Target, Option<App>)> {
    Ok(match url {
        Some(url) => (
            Target::Remote {
                client: reqwest::Client::new(),
                base: url.trim_end_matches('/').to_owned(),
            },
            None,
        ),
        None => {
            let config = common.load()?;
            let app = App::open(&config).await?;
            (Target::Local(app.fhir.clone()), Some(app))
        }
    })
}

fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            let nested = collect_files(&entries)?;
            files.extend(nested.into_iter().filter(|p| is_fhir_file(p)));
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn is_fhir_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "ndjson" | "xml")
    ) && !path.ends_with("package.json")
}

/// Files are local and trusted more than request bodies: allow large Bundles, keep the depth
/// limit that protects the stack.
fn file_limits() -> flare_fhir::ParseLimits {
    flare_fhir::ParseLimits {
        max_bytes: 1 << 30,
        ..flare_fhir::ParseLimits::default()
    }
}

fn read_items(path: &Path, from: DeclaredVersion) -> Result<FileItems, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let name = path.display().to_string();
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("ndjson") => BodyFormat::Ndjson,
        Some("xml") => BodyFormat::Xml,
        _ => BodyFormat::Json,
    };
    items_from_bytes(&bytes, name, format, from)
}

/// The items of a file or message body named `name`, mapped to R4 as `from` says.
pub(crate) fn items_from_bytes(
    bytes: &[u8],
    name: String,
    format: BodyFormat,
    from: DeclaredVersion,
) -> Result<FileItems, String> {
    match format {
        BodyFormat::Ndjson => {
            let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
            let mut file = FileItems::default();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
            {
                let resource = flare_fhir::parse_json(line.as_bytes())
                    .map_err(|e| format!("line {}: {e}", n + 1))?;
                let source = format!("{name}:{}", n + 1);
                let line_items = to_r4_items(resource, source, from)
                    .map_err(|e| format!("line {}: {e}", n + 1))?;
                file.items.extend(line_items.items);
                file.unmapped.extend(line_items.unmapped);
                for (path, count) in line_items.dropped {
                    *file.dropped.entry(path).or_default() += count;
                }
            }
            Ok(file)
        }
        BodyFormat::Xml if from != DeclaredVersion::Exactly(FhirVersion::R4) => {
            let converted = flare_legacy::convert(bytes, flare_legacy::InputFormat::Xml, from)
                .map_err(|e| e.to_string())?;
            Ok(FileItems {
                items: converted
                    .resources
                    .into_iter()
                    .map(|resource| Item {
                        source: name.clone(),
                        resource,
                    })
                    .collect(),
                unmapped: converted.unmapped,
                dropped: converted.dropped,
            })
        }
        BodyFormat::Xml => {
            let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
            let resource =
                flare_fhir::xml::to_json(text).map_err(|e| format!("not FHIR R4 XML: {e}"))?;
            Ok(FileItems {
                items: vec![Item {
                    source: name,
                    resource,
                }],
                unmapped: Vec::new(),
                dropped: Default::default(),
            })
        }
        BodyFormat::Json => {
            let resource = flare_fhir::parse_json_with(bytes, file_limits())
                .map_err(|e| format!("not JSON: {e}"))?;
            to_r4_items(resource, name, from)
        }
    }
}

/// A parsed JSON document as R4 items: unchanged when it is R4, mapped when it is DSTU2 or
/// STU3 (declared, or detected with `auto`).
fn to_r4_items(
    resource: Value,
    source: String,
    from: DeclaredVersion,
) -> Result<FileItems, String> {
    let version = match from {
        DeclaredVersion::Exactly(version) => version,
        DeclaredVersion::Auto => flare_legacy::detect(&resource),
    };
    if version == FhirVersion::R4 {
        return Ok(FileItems {
            items: vec![Item { source, resource }],
            unmapped: Vec::new(),
            dropped: Default::default(),
        });
    }
    let converted = flare_legacy::to_r4(resource, version).map_err(|e| e.to_string())?;
    Ok(FileItems {
        items: converted
            .resources
            .into_iter()
            .map(|resource| Item {
                source: source.clone(),
                resource,
            })
            .collect(),
        unmapped: converted.unmapped,
        dropped: converted.dropped,
    })
}

/// Counts legacy resources left out of a file as failures and describes them, one line per
/// type and reason. `nothing_else`: the file had nothing that could be loaded.
pub(crate) fn report_unmapped(
    unmapped: &[Unmapped],
    nothing_else: bool,
    tally: &Tally,
) -> Vec<String> {
    let mut groups: std::collections::BTreeMap<(&str, &str), u64> =
        std::collections::BTreeMap::new();
    for item in unmapped {
        *groups
            .entry((item.resource_type.as_str(), item.reason.as_str()))
            .or_default() += 1;
    }
    let mut by_type = tally.unmapped.lock();
    for item in unmapped {
        *by_type.entry(item.resource_type.clone()).or_default() += 1;
    }
    tally
        .failed
        .fetch_add(unmapped.len() as u64, Ordering::Relaxed);
    groups
        .into_iter()
        .map(|((resource_type, reason), count)| {
            let what = if nothing_else {
                "not loaded"
            } else {
                "Bundle entries not loaded"
            };
            format!("{what}: {count} {resource_type}: {reason}")
        })
        .collect()
}

/// Writes one item and counts its outcome. A Bundle counts each entry and returns the
/// failures of its entries (already counted); `Err` is a failure of the whole item.
pub(crate) async fn write_item(
    target: &Target,
    item: &Item,
    tally: &Tally,
) -> Result<Vec<String>, String> {
    let resource_type = item
        .resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let bundle_kind = item
        .resource
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let executes = resource_type == "Bundle" && matches!(bundle_kind, "transaction" | "batch");
    let id = item
        .resource
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match target {
        Target::Local(fhir) => {
            let ctx = RequestContext::new("urn:flare:ingest");
            if executes {
                let response = fhir
                    .process_bundle(&ctx, item.resource.clone(), ReturnPreference::Minimal)
                    .await
                    .map_err(describe)?;
                Ok(count_bundle_response(&response, tally))
            } else {
                let outcome = match id {
                    Some(id) => {
                        fhir.update(&ctx, &resource_type, &id, item.resource.clone(), None)
                            .await
                    }
                    None => {
                        fhir.create(&ctx, &resource_type, item.resource.clone(), None)
                            .await
                    }
                }
                .map_err(describe)?;
                tally.count(outcome.kind.status());
                Ok(Vec::new())
            }
        }
        Target::Remote { client, base } => {
            let request = if executes {
                client.post(base.clone())
            } else {
                match id {
                    Some(id) => client.put(format!("{base}/{resource_type}/{id}")),
                    None => client.post(format!("{base}/{resource_type}")),
                }
            };
            let response = request
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(item.resource.to_string())
                .send()
                .await
                .map_err(|e| format!("cannot reach {base}: {e}"))?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status >= 400 {
                return Err(format!("HTTP {status}: {}", diagnostics(&body)));
            }
            if executes {
                Ok(count_bundle_response(&body, tally))
            } else {
                tally.count(status);
                Ok(Vec::new())
            }
        }
    }
}

fn count_bundle_response(response: &Value, tally: &Tally) -> Vec<String> {
    let mut failures = Vec::new();
    for entry in response
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let status = entry
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let code: u16 = status
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if code >= 400 {
            failures.push(format!(
                "{status}: {}",
                entry
                    .pointer("/response/outcome")
                    .map(diagnostics)
                    .unwrap_or_default()
            ));
        }
        tally.count(code);
    }
    failures
}

fn describe(err: FhirError) -> String {
    format!("HTTP {}: {}", err.status, diagnostics(&err.outcome()))
}

/// The diagnostics of an OperationOutcome, with their locations.
fn diagnostics(outcome: &Value) -> String {
    let issues: Vec<String> = outcome
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|issue| {
            let text = issue
                .get("diagnostics")
                .and_then(Value::as_str)
                .unwrap_or("(no diagnostics)");
            match issue.pointer("/expression/0").and_then(Value::as_str) {
                Some(at) => format!("{at}: {text}"),
                None => text.to_owned(),
            }
        })
        .collect();
    if issues.is_empty() {
        outcome.to_string()
    } else {
        issues.join("; ")
    }
}
