//! The commit path: every new version, its search index entries and its change event go to the
//! store in one commit.

use flare_events::{Action, ChangeEvent, EventMetadata, partition_key};
use flare_store::{
    Commit, Expected, OutboxMessage, ResourceKey, StoreError, StoredVersion, VersionWrite,
};
use serde_json::{Value, json};

use flare_fhir::operation_outcome::IssueCode;

use crate::{
    Fhir, FhirError, RequestContext,
    read::{FORMAT_PARAMS, parse_query_string},
    time_fmt::{format_instant, now_ms},
};

/// How often a write is re-planned after losing a race with a concurrent write.
const MAX_ATTEMPTS: usize = 8;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A new resource (or a deleted one brought back): 201.
    Created,
    /// A new version of a live resource: 200.
    Updated,
    /// The update changed nothing but `meta.versionId`/`lastUpdated`: no new version, 200.
    Unchanged,
    /// A conditional create matched an existing resource: nothing written, 200.
    Existing,
    /// A tombstone version was written: 204.
    Deleted,
    /// The resource was already deleted, or a conditional delete matched nothing: 204.
    NothingToDelete,
}

impl WriteKind {
    pub fn status(self) -> u16 {
        match self {
            WriteKind::Created => 201,
            WriteKind::Updated | WriteKind::Unchanged | WriteKind::Existing => 200,
            WriteKind::Deleted | WriteKind::NothingToDelete => 204,
        }
    }
}

/// The result of a write: the version now current (absent when nothing ever existed).
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub kind: WriteKind,
    pub version: Option<StoredVersion>,
}

impl WriteOutcome {
    /// `Type/id/_history/n`, the `Location` of a created or updated version.
    pub fn location(&self) -> Option<String> {
        self.version
            .as_ref()
            .map(|v| format!("{}/_history/{}", v.key, v.version_id))
    }
}

/// A version ready to commit, with the event that announces it.
pub(crate) struct PlannedWrite {
    pub write: VersionWrite,
    pub event: OutboxMessage,
    pub kind: WriteKind,
    /// The new version as parsed (`None` for a delete), so a response need not parse the
    /// stored text again.
    pub resource: Option<Value>,
}

impl Fhir {
    /// Checks a resource body against the R4 definitions and the type the URL names.
    pub(crate) fn check_resource(
        &self,
        resource: &Value,
        expected_type: Option<&str>,
    ) -> Result<String, FhirError> {
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
            return Err(FhirError::new(
                400,
                IssueCode::Required,
                "the body is not a FHIR resource: `resourceType` is missing",
            ));
        };
        if let Some(expected) = expected_type
            && resource_type != expected
        {
            return Err(FhirError::bad_request(format!(
                "the body is a {resource_type} but the URL names {expected}; send a {expected} or use the {resource_type} endpoint"
            )));
        }
        if let Err(issues) = flare_fhir::validate(resource) {
            return Err(FhirError::with_issues(400, issues));
        }
        Ok(resource_type.to_owned())
    }

    /// Plans the next version of `key` after `current` (`None`: never existed). `body` is the
    /// new content (`None`: delete).
    pub(crate) fn plan(
        &self,
        ctx: &RequestContext,
        key: &ResourceKey,
        current: Option<&StoredVersion>,
        body: Option<Value>,
        now_ms: i64,
    ) -> Result<PlannedWrite, FhirError> {
        let body = body.map(|mut resource| {
            self.restore_masked(&key.resource_type, &mut resource, current);
            resource
        });
        if let Some(resource) = &body {
            self.run_write_checks(&key.resource_type, resource)?;
        }
        let version_id = current.map_or(1, |v| v.version_id + 1);
        let expected = current.map_or(Expected::Absent, |v| Expected::Version(v.version_id));
        let live_before = current.is_some_and(|v| !v.is_deleted());
        let (action, kind) = match (&body, live_before) {
            (None, _) => (Action::Deleted, WriteKind::Deleted),
            (Some(_), true) => (Action::Updated, WriteKind::Updated),
            (Some(_), false) => (Action::Created, WriteKind::Created),
        };
        let last_updated = format_instant(now_ms);
        let body = body.map(|mut resource| {
            resource["id"] = json!(key.id);
            let meta = resource.as_object_mut().and_then(|r| {
                r.entry("meta").or_insert_with(|| json!({}));
                r.get_mut("meta").and_then(Value::as_object_mut)
            });
            if let Some(meta) = meta {
                meta.insert("versionId".into(), json!(version_id.to_string()));
                meta.insert("lastUpdated".into(), json!(last_updated));
            }
            resource
        });
        // A delete's event travels on the topic of what it retracts.
        let previous: Option<Value> = match (&body, current.and_then(|v| v.body.as_deref())) {
            (None, Some(text)) => serde_json::from_str(text).ok(),
            _ => None,
        };
        let routed = body.as_ref().or(previous.as_ref());
        let config = self.config();
        let topic = config.events.topic_for(&key.resource_type, action, routed);
        let partition_key = partition_key(&key.resource_type, &key.id, routed);
        let index = body
            .as_ref()
            .map(|r| self.registry().extract(r))
            .unwrap_or_default();
        // Serialised once: the stored text is also the event's `data`.
        let body_text = body.as_ref().map(Value::to_string);
        let mut event = ChangeEvent::new(
            EventMetadata {
                event_id: uuid::Uuid::now_v7().to_string(),
                timestamp: last_updated,
                source: config.source.clone(),
                correlation_id: ctx.correlation_id.clone(),
                resource_type: key.resource_type.clone(),
                resource_id: key.id.clone(),
                version_id: version_id.to_string(),
                action,
            },
            None,
        );
        let payload = match &body_text {
            Some(text) => event.to_bounded_json_bytes_with_data(text, config.max_event_bytes),
            None => event.to_json_bytes(),
        };
        let event = OutboxMessage {
            topic,
            key: Some(partition_key.into_bytes()),
            headers: event.headers(ctx.traceparent.as_deref()),
            payload,
            timestamp_ms: now_ms,
        };
        let version = StoredVersion {
            key: key.clone(),
            version_id,
            last_updated_ms: now_ms,
            body: body_text,
        };
        Ok(PlannedWrite {
            write: VersionWrite {
                version,
                expected,
                index,
            },
            event,
            kind,
            resource: body,
        })
    }

    /// Commits planned writes atomically.
    pub(crate) async fn commit(&self, planned: Vec<PlannedWrite>) -> Result<(), StoreError> {
        let mut commit = Commit::default();
        for p in planned {
            commit.writes.push(p.write);
            commit.outbox.push(p.event);
        }
        self.store().commit(commit).await
    }

    /// Creates a resource with a server-assigned id (`POST [type]`), or, with `if_none_exist`,
    /// returns the one existing match instead.
    pub async fn create(
        &self,
        ctx: &RequestContext,
        resource_type: &str,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> Result<WriteOutcome, FhirError> {
        self.check_resource(&resource, Some(resource_type))?;
        let _guard = match if_none_exist {
            Some(query) => {
                let guard = self.inner.conditional.lock().await;
                if let Some(existing) = self
                    .conditional_match(
                        ctx,
                        resource_type,
                        &parse_query_string(query),
                        "If-None-Exist",
                    )
                    .await?
                {
                    return Ok(self.present_outcome(WriteOutcome {
                        kind: WriteKind::Existing,
                        version: Some(existing),
                    }));
                }
                Some(guard)
            }
            None => None,
        };
        let key = ResourceKey::new(resource_type, new_id());
        let planned = self.plan(ctx, &key, None, Some(resource), now_ms())?;
        let version = planned.write.version.clone();
        self.commit(vec![planned]).await?;
        Ok(self.present_outcome(WriteOutcome {
            kind: WriteKind::Created,
            version: Some(version),
        }))
    }

    /// Updates (or creates) `[type]/[id]` (`PUT`). `if_match` is the version the client read
    /// (`If-Match: W/"n"`); a different current version is a 412.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        resource_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, FhirError> {
        check_id(id)?;
        self.check_resource(&resource, Some(resource_type))?;
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(FhirError::bad_request(format!(
                    "the resource id `{body_id}` does not match the id `{id}` in the URL; make them equal"
                )));
            }
            None => {
                return Err(FhirError::new(
                    400,
                    IssueCode::Required,
                    format!("an update must carry the id: add \"id\": \"{id}\" to the resource"),
                ));
            }
        }
        let key = ResourceKey::new(resource_type, id);
        self.write_with_retries(ctx, &key, Some(resource), if_match)
            .await
    }

    /// Deletes `[type]/[id]`: a tombstone version; reads then answer 410.
    pub async fn delete(
        &self,
        ctx: &RequestContext,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, FhirError> {
        check_id(id)?;
        check_type(resource_type)?;
        let key = ResourceKey::new(resource_type, id);
        self.write_with_retries(ctx, &key, None, if_match).await
    }

    /// `PUT [type]?query`: updates the one match, creates when there is none, 412 when
    /// several match.
    pub async fn conditional_update(
        &self,
        ctx: &RequestContext,
        resource_type: &str,
        criteria: &[(String, String)],
        resource: Value,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, FhirError> {
        self.check_resource(&resource, Some(resource_type))?;
        let _guard = self.inner.conditional.lock().await;
        let body_id = resource
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let id = match self
            .conditional_match(ctx, resource_type, criteria, "conditional update")
            .await?
        {
            Some(found) => {
                if let Some(body_id) = &body_id
                    && *body_id != found.key.id
                {
                    return Err(FhirError::bad_request(format!(
                        "the resource id `{body_id}` differs from the id `{}` of the resource the search matched; drop the id or make it match",
                        found.key.id
                    )));
                }
                found.key.id
            }
            None => match body_id {
                Some(id) => id,
                None => new_id(),
            },
        };
        check_id(&id)?;
        let key = ResourceKey::new(resource_type, &id);
        self.write_with_retries(ctx, &key, Some(resource), if_match)
            .await
    }

    /// `DELETE [type]?query`: deletes the one match; nothing matching is not an error; several
    /// matches are a 412 (Flare supports single conditional deletes).
    pub async fn conditional_delete(
        &self,
        ctx: &RequestContext,
        resource_type: &str,
        criteria: &[(String, String)],
    ) -> Result<WriteOutcome, FhirError> {
        check_type(resource_type)?;
        let _guard = self.inner.conditional.lock().await;
        match self
            .conditional_match(ctx, resource_type, criteria, "conditional delete")
            .await?
        {
            Some(found) => self.write_with_retries(ctx, &found.key, None, None).await,
            None => Ok(WriteOutcome {
                kind: WriteKind::NothingToDelete,
                version: None,
            }),
        }
    }

    /// Writes a version of `key`, re-reading and re-planning when a concurrent write wins the
    /// race (unless the client pinned the version with `If-Match`). The outcome as clients see
    /// it.
    async fn write_with_retries(
        &self,
        ctx: &RequestContext,
        key: &ResourceKey,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, FhirError> {
        self.write_stored_with_retries(ctx, key, body, if_match)
            .await
            .map(|outcome| self.present_outcome(outcome))
    }

    async fn write_stored_with_retries(
        &self,
        ctx: &RequestContext,
        key: &ResourceKey,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, FhirError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store().current(key).await?;
            // What a read masked and the client sent back counts as unchanged.
            let body = body.clone().map(|mut resource| {
                self.restore_masked(&key.resource_type, &mut resource, current.as_ref());
                resource
            });
            if let Some(wanted) = if_match {
                let actual = current.as_ref().map(|v| v.version_id);
                if actual != Some(wanted) {
                    return Err(FhirError::precondition_failed(format!(
                        "If-Match asked for version {wanted} of {key} but the current version is {}; read it again and retry",
                        actual.map_or("none (it does not exist)".to_owned(), |v| v.to_string())
                    )));
                }
            }
            match (&body, &current) {
                (None, None) => return Err(FhirError::not_found(format!("{key} does not exist"))),
                (None, Some(v)) if v.is_deleted() => {
                    return Ok(WriteOutcome {
                        kind: WriteKind::NothingToDelete,
                        version: current,
                    });
                }
                (Some(new), Some(v)) if !v.is_deleted() && same_content(new, v) => {
                    return Ok(WriteOutcome {
                        kind: WriteKind::Unchanged,
                        version: current,
                    });
                }
                _ => {}
            }
            let planned = self.plan(ctx, key, current.as_ref(), body, now_ms())?;
            let (kind, version) = (planned.kind, planned.write.version.clone());
            match self.commit(vec![planned]).await {
                Ok(()) => {
                    return Ok(WriteOutcome {
                        kind,
                        version: Some(version),
                    });
                }
                Err(StoreError::Conflict { .. }) if if_match.is_none() => continue,
                Err(StoreError::Conflict { .. }) => {
                    return Err(FhirError::precondition_failed(format!(
                        "{key} changed while the request ran; read it again and retry"
                    )));
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(FhirError::conflict(format!(
            "{key} is being changed by many requests at once; retry later"
        )))
    }

    /// The single resource a conditional interaction's query selects: `None` for no match,
    /// 412 for several.
    pub(crate) async fn conditional_match(
        &self,
        ctx: &RequestContext,
        resource_type: &str,
        params: &[(String, String)],
        what: &str,
    ) -> Result<Option<StoredVersion>, FhirError> {
        let criteria: Vec<String> = params
            .iter()
            .filter(|(name, _)| !FORMAT_PARAMS.contains(&name.as_str()))
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if criteria.is_empty() {
            return Err(FhirError::bad_request(format!(
                "{what} needs search parameters, e.g. identifier=system|value"
            )));
        }
        let mut parsed = self.parse_search(ctx, Some(resource_type), params, true)?;
        parsed.query.count = 2;
        parsed.query.offset = 0;
        let page = self.store().search(&parsed.query).await?;
        match page.matches.len() {
            0 => Ok(None),
            1 => Ok(page.matches.into_iter().next()),
            _ => Err(FhirError::new(
                412,
                IssueCode::MultipleMatches,
                format!(
                    "{what} `{resource_type}?{}` matches more than one resource; make the criteria select exactly one",
                    criteria.join("&")
                ),
            )),
        }
    }
}

/// True when `new` equals the stored version apart from `meta.versionId` / `lastUpdated`.
fn same_content(new: &Value, current: &StoredVersion) -> bool {
    let Some(Ok(old)) = current.body.as_deref().map(serde_json::from_str::<Value>) else {
        return false;
    };
    strip_volatile_meta(new.clone()) == strip_volatile_meta(old)
}

fn strip_volatile_meta(mut resource: Value) -> Value {
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            resource.as_object_mut().map(|r| r.remove("meta"));
        }
    }
    resource
}

/// A new server-assigned id: time-ordered, so new rows land at the end of indexes.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// FHIR ids: 1–64 characters from `[A-Za-z0-9\-\.]`.
pub(crate) fn check_id(id: &str) -> Result<(), FhirError> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(FhirError::new(
            400,
            IssueCode::Value,
            format!(
                "`{id}` is not a valid FHIR id: use 1-64 characters from A-Z, a-z, 0-9, '-' and '.'"
            ),
        ))
    }
}

pub(crate) fn check_type(resource_type: &str) -> Result<(), FhirError> {
    if flare_fhir::model::is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::not_found(format!(
            "`{resource_type}` is not a FHIR R4 resource type"
        )))
    }
}
