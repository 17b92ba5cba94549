//! `immunizations`: live immunization counts by vaccine (CVX), per day and hour.
//!
//! The whole aggregate, `flare_clinical::ImmunizationCounts`, is one state under the key
//! [`STATE_KEY`] (counts are global, not per patient). An [`ImmunizationView`] mirrors it for
//! readers (`GET /api/stats/immunizations`) and broadcasts the changed counts (the WebSocket
//! stream); it is seeded from the checkpoint at start and fed the same changes, so after a
//! restart it shows the checkpointed counts plus the replayed records, as the state does.
//!
//! Nothing can fail after the state changes, so the runtime skips the copy it would keep to
//! roll back a failed attempt ([`Processor::ROLLBACK`] is `false`): copying the aggregate per
//! record would cost more than counting.

use std::sync::Arc;

use async_trait::async_trait;
use flare_clinical::{
    ImmunizationCounts, Timestamp,
    immunizations::{Bucket, CountDelta, SeriesPoint, VaccineTotal},
};
use flare_events::{Action, ChangeEvent};
use flare_log::Record;
use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::{Context, Outcome, ProcessError, Processor, StateError, StateStore};

/// The processor's name and consumer group.
pub const NAME: &str = "immunizations";
/// The key of the one aggregate state.
pub const STATE_KEY: &str = "counts";
/// Input topics under the default routing.
pub const DEFAULT_TOPICS: &[&str] = &["fhir.Immunization"];

/// Read access to the live counts, and a stream of the counts that change.
pub struct ImmunizationView {
    counts: RwLock<ImmunizationCounts>,
    updates: broadcast::Sender<Vec<CountDelta>>,
}

impl ImmunizationView {
    fn new(counts: ImmunizationCounts) -> Self {
        Self {
            counts: RwLock::new(counts),
            updates: broadcast::channel(1024).0,
        }
    }

    /// All-time totals per vaccine.
    pub fn totals(&self) -> Vec<VaccineTotal> {
        self.counts.read().totals()
    }

    /// Counts per vaccine and bucket for buckets starting in `[from, to)`.
    pub fn series(&self, from: Timestamp, to: Timestamp, bucket: Bucket) -> Vec<SeriesPoint> {
        self.counts.read().series(from, to, bucket)
    }

    /// Changed counts, one message per processed change event that moved any. A slow receiver
    /// misses messages (`RecvError::Lagged`) and should re-read [`totals`](Self::totals).
    pub fn subscribe(&self) -> broadcast::Receiver<Vec<CountDelta>> {
        self.updates.subscribe()
    }
}

pub struct ImmunizationsProcessor {
    view: Arc<ImmunizationView>,
    topics: Vec<String>,
    /// Reads the resources of events that carry a `dataRef` instead of `data`.
    fhir: Option<flare_service::Fhir>,
}

impl ImmunizationsProcessor {
    /// Seeds the view from the checkpointed counts in `state`.
    pub async fn open(state: &Arc<dyn StateStore>) -> Result<Self, StateError> {
        let counts = match state.load(NAME, STATE_KEY).await? {
            // An undecodable state is reported by the runtime on the first record.
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => ImmunizationCounts::default(),
        };
        Ok(Self {
            view: Arc::new(ImmunizationView::new(counts)),
            topics: DEFAULT_TOPICS.iter().map(|t| (*t).to_owned()).collect(),
            fhir: None,
        })
    }

    /// Resolves `dataRef` events (resources too large for a log record) through `fhir`;
    /// without it they go to the dead-letter topic.
    pub fn with_fhir(mut self, fhir: flare_service::Fhir) -> Self {
        self.fhir = Some(fhir);
        self
    }

    pub fn with_topics(mut self, topics: Vec<String>) -> Self {
        self.topics = topics;
        self
    }

    pub fn view(&self) -> Arc<ImmunizationView> {
        self.view.clone()
    }
}

#[async_trait]
impl Processor for ImmunizationsProcessor {
    type State = ImmunizationCounts;

    const ROLLBACK: bool = false;

    fn name(&self) -> &str {
        NAME
    }

    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    fn state_key(&self, _record: &Record) -> String {
        STATE_KEY.to_owned()
    }

    async fn process(
        &self,
        _key: &str,
        counts: &mut ImmunizationCounts,
        record: &Record,
        _ctx: &mut Context<'_>,
    ) -> Result<Outcome, ProcessError> {
        let event = ChangeEvent::from_json_bytes(&record.payload).map_err(|e| {
            ProcessError::permanent(format!("the payload is not a change event: {e}"))
        })?;
        if event.metadata.resource_type != "Immunization" {
            return Ok(Outcome::Unchanged);
        }
        let id = &event.metadata.resource_id;
        let resource = match event.metadata.action {
            Action::Deleted => None,
            _ => super::event_resource(self.fhir.as_ref(), &event).await?,
        };
        let outcome = match (event.metadata.action, &resource) {
            (Action::Deleted, _) => {
                let outcome = counts.observe_deleted(id);
                self.view.counts.write().observe_deleted(id);
                outcome
            }
            (_, None) => {
                return Err(ProcessError::permanent(format!(
                    "the event of Immunization/{id} carries neither data nor dataRef"
                )));
            }
            (_, Some(resource)) => {
                let outcome = counts.observe(resource);
                self.view.counts.write().observe(resource);
                outcome
            }
        };
        if outcome.deltas.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        // No receiver is fine: the stream is for whoever listens now.
        let _ = self.view.updates.send(outcome.deltas);
        Ok(Outcome::Updated)
    }
}
