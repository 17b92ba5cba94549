//! Batch and transaction Bundles.
//!
//! A transaction is all-or-nothing: identities are resolved first (server ids for POST,
//! conditional creates, updates and deletes by search), `urn:uuid` and conditional references
//! are rewritten throughout, then every write is planned in the order FHIR prescribes (DELETE,
//! POST, PUT) and committed to the store as one commit, events included. Reads (GET) run
//! after the commit. A batch runs each entry on its own.

use std::collections::{HashMap, HashSet};

use flare_store::{ResourceKey, StoreError, StoredVersion};
use serde_json::{Value, json};

use flare_fhir::operation_outcome::IssueCode;

use crate::{
    Fhir, FhirError, RequestContext, SearchRequest,
    read::parse_query_string,
    time_fmt::{format_instant, now_ms},
    write::{PlannedWrite, WriteKind, WriteOutcome, check_id, check_type, new_id},
};

/// What a client wants back from a write (`Prefer: return=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// How many times a transaction is re-planned after losing a race with another write.
const MAX_ATTEMPTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    // Declared in the order FHIR processes a transaction.
    Delete,
    Post,
    Put,
    Get,
}

/// One parsed `Bundle.entry`.
#[derive(Debug)]
struct Entry {
    index: usize,
    method: Method,
    resource_type: String,
    id: Option<String>,
    version: Option<String>,
    query: Option<String>,
    resource: Option<Value>,
    full_url: Option<String>,
    if_match: Option<u64>,
    if_none_exist: Option<String>,
}

impl Fhir {
    /// `POST [base]` with a batch or transaction Bundle: the response Bundle.
    pub async fn process_bundle(
        &self,
        ctx: &RequestContext,
        mut bundle: Value,
        prefer: ReturnPreference,
    ) -> Result<Value, FhirError> {
        self.check_resource(&bundle, Some("Bundle"))?;
        let kind = bundle
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if kind != "batch" && kind != "transaction" {
            return Err(FhirError::unprocessable(format!(
                "a Bundle posted to the base must be a `batch` or a `transaction`, not `{kind}`; to store the Bundle itself, POST it to /Bundle"
            )));
        }
        let raw_entries = match bundle.get_mut("entry").map(Value::take) {
            Some(Value::Array(entries)) => entries,
            _ => Vec::new(),
        };
        if kind == "batch" {
            return Ok(self.batch(ctx, raw_entries, prefer).await);
        }
        let entries = raw_entries
            .into_iter()
            .enumerate()
            .map(|(index, raw)| parse_entry(ctx, index, raw))
            .collect::<Result<Vec<_>, _>>()?;
        self.transaction(ctx, entries, prefer).await
    }

    async fn batch(
        &self,
        ctx: &RequestContext,
        raw_entries: Vec<Value>,
        prefer: ReturnPreference,
    ) -> Value {
        let mut responses = Vec::with_capacity(raw_entries.len());
        for (index, raw) in raw_entries.into_iter().enumerate() {
            let result = match parse_entry(ctx, index, raw) {
                Ok(entry) => self.batch_entry(ctx, entry, prefer).await,
                Err(err) => Err(err),
            };
            responses.push(result.unwrap_or_else(|err| error_entry(&err)));
        }
        json!({"resourceType": "Bundle", "type": "batch-response", "entry": responses})
    }

    async fn batch_entry(
        &self,
        ctx: &RequestContext,
        entry: Entry,
        prefer: ReturnPreference,
    ) -> Result<Value, FhirError> {
        let t = entry.resource_type.as_str();
        let outcome = match (entry.method, entry.id.as_deref(), entry.query.as_deref()) {
            (Method::Get, ..) => return self.read_entry(ctx, &entry).await,
            (Method::Post, _, _) => {
                let resource = entry
                    .resource
                    .ok_or_else(|| missing_resource(entry.index))?;
                self.create(ctx, t, resource, entry.if_none_exist.as_deref())
                    .await?
            }
            (Method::Put, Some(id), _) => {
                let resource = entry
                    .resource
                    .ok_or_else(|| missing_resource(entry.index))?;
                self.update(ctx, t, id, resource, entry.if_match).await?
            }
            (Method::Put, None, Some(query)) => {
                let resource = entry
                    .resource
                    .ok_or_else(|| missing_resource(entry.index))?;
                self.conditional_update(
                    ctx,
                    t,
                    &parse_query_string(query),
                    resource,
                    entry.if_match,
                )
                .await?
            }
            (Method::Delete, Some(id), _) => self.delete(ctx, t, id, entry.if_match).await?,
            (Method::Delete, None, Some(query)) => {
                self.conditional_delete(ctx, t, &parse_query_string(query))
                    .await?
            }
            _ => {
                return Err(FhirError::bad_request(format!(
                    "entry {}: PUT and DELETE need an id or search criteria in request.url",
                    entry.index
                )));
            }
        };
        Ok(write_entry(self, &ctx.base_url, &outcome, None, prefer))
    }

    async fn transaction(
        &self,
        ctx: &RequestContext,
        mut entries: Vec<Entry>,
        prefer: ReturnPreference,
    ) -> Result<Value, FhirError> {
        let has_conditionals = entries
            .iter()
            .any(|e| e.if_none_exist.is_some() || (e.method != Method::Get && e.query.is_some()))
            || entries
                .iter()
                .filter_map(|e| e.resource.as_ref())
                .any(has_conditional_reference);
        let _guard = if has_conditionals {
            Some(self.inner.conditional.lock().await)
        } else {
            None
        };

        // 1. Identities: which resource each write entry targets.
        let mut targets: HashMap<usize, Option<ResourceKey>> = HashMap::new();
        let mut existing: HashMap<usize, StoredVersion> = HashMap::new();
        let mut aliases: HashMap<String, String> = HashMap::new();
        let mut fresh: HashSet<usize> = HashSet::new();
        for entry in entries.iter().filter(|e| e.method != Method::Get) {
            let t = &entry.resource_type;
            let target = match (entry.method, &entry.id, &entry.query) {
                (Method::Post, _, _) => {
                    // A server-assigned id is new: nothing to read back when planning.
                    fresh.insert(entry.index);
                    match &entry.if_none_exist {
                        Some(query) => match self
                            .conditional_match(ctx, t, &parse_query_string(query), "If-None-Exist")
                            .await
                            .map_err(|e| e.at_entry(entry.index))?
                        {
                            Some(found) => {
                                let key = found.key.clone();
                                existing.insert(entry.index, found);
                                Some(key)
                            }
                            None => Some(ResourceKey::new(t, new_id())),
                        },
                        None => Some(ResourceKey::new(t, new_id())),
                    }
                }
                (_, Some(id), _) => Some(ResourceKey::new(t, id)),
                (Method::Put, None, Some(query)) => {
                    let found = self
                        .conditional_match(ctx, t, &parse_query_string(query), "conditional update")
                        .await
                        .map_err(|e| e.at_entry(entry.index))?;
                    let body_id = entry
                        .resource
                        .as_ref()
                        .and_then(|r| r.get("id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    Some(ResourceKey::new(
                        t,
                        found.map(|f| f.key.id).or(body_id).unwrap_or_else(new_id),
                    ))
                }
                (Method::Delete, None, Some(query)) => self
                    .conditional_match(ctx, t, &parse_query_string(query), "conditional delete")
                    .await
                    .map_err(|e| e.at_entry(entry.index))?
                    .map(|f| f.key),
                _ => {
                    return Err(FhirError::bad_request(format!(
                        "entry {}: request.url needs an id or search criteria",
                        entry.index
                    )));
                }
            };
            if let (Some(full_url), Some(key)) = (&entry.full_url, &target) {
                aliases.insert(full_url.clone(), key.to_string());
            }
            targets.insert(entry.index, target);
        }
        let mut seen = HashSet::new();
        for (index, key) in targets.iter().filter_map(|(i, k)| Some((i, k.as_ref()?))) {
            if !existing.contains_key(index) && !seen.insert(key.clone()) {
                return Err(FhirError::bad_request(format!(
                    "the transaction writes {key} more than once; combine those entries into one"
                )));
            }
        }

        // 2. References: local aliases and conditional references, rewritten everywhere.
        for entry in entries.iter_mut() {
            if let Some(resource) = entry.resource.as_mut() {
                let mut conditional = Vec::new();
                collect_references(resource, &mut |reference| {
                    if !aliases.contains_key(reference) && is_conditional_reference(reference) {
                        conditional.push(reference.to_owned());
                    }
                });
                for reference in conditional {
                    let (t, query) = reference.split_once('?').unwrap_or_default();
                    let found = self
                        .conditional_match(
                            ctx,
                            t,
                            &parse_query_string(query),
                            "conditional reference",
                        )
                        .await
                        .map_err(|e| e.at_entry(entry.index))?;
                    let Some(found) = found else {
                        return Err(FhirError::precondition_failed(format!(
                            "conditional reference `{reference}` matches no resource"
                        ))
                        .at_entry(entry.index));
                    };
                    aliases.insert(reference, found.key.to_string());
                }
                rewrite_references(resource, &aliases).map_err(|unresolved| {
                    FhirError::bad_request(format!(
                        "entry {}: reference `{unresolved}` names no entry of this transaction (no entry has that fullUrl)",
                        entry.index
                    ))
                })?;
            }
        }

        // 3. Plan and commit, re-planning if a concurrent write changes a target meanwhile.
        let mut order: Vec<&Entry> = entries.iter().filter(|e| e.method != Method::Get).collect();
        order.sort_by_key(|e| (e.method, e.index));
        let mut outcomes: HashMap<usize, WriteOutcome> = HashMap::new();
        // Resources as written, kept parsed for the response.
        let mut written: HashMap<usize, Value> = HashMap::new();
        for attempt in 0.. {
            outcomes.clear();
            written.clear();
            let now = now_ms();
            let mut planned: Vec<PlannedWrite> = Vec::new();
            for entry in &order {
                if let Some(found) = existing.get(&entry.index) {
                    outcomes.insert(
                        entry.index,
                        WriteOutcome {
                            kind: WriteKind::Existing,
                            version: Some(found.clone()),
                        },
                    );
                    continue;
                }
                let Some(key) = targets.get(&entry.index).cloned().flatten() else {
                    outcomes.insert(
                        entry.index,
                        WriteOutcome {
                            kind: WriteKind::NothingToDelete,
                            version: None,
                        },
                    );
                    continue;
                };
                let current = if fresh.contains(&entry.index) {
                    None
                } else {
                    self.store().current(&key).await?
                };
                if let Some(wanted) = entry.if_match
                    && current.as_ref().map(|v| v.version_id) != Some(wanted)
                {
                    return Err(FhirError::precondition_failed(format!(
                        "If-Match asked for version {wanted} of {key}, which is not current"
                    ))
                    .at_entry(entry.index));
                }
                let body = match entry.method {
                    Method::Delete => None,
                    _ => {
                        let mut resource = entry
                            .resource
                            .clone()
                            .ok_or_else(|| missing_resource(entry.index))?;
                        if entry.method == Method::Put
                            && let Some(body_id) = resource.get("id").and_then(Value::as_str)
                            && body_id != key.id
                        {
                            return Err(FhirError::bad_request(format!(
                                "the resource id `{body_id}` does not match {key}"
                            ))
                            .at_entry(entry.index));
                        }
                        resource["id"] = json!(key.id);
                        Some(resource)
                    }
                };
                match (&body, &current) {
                    (None, None) => {
                        return Err(FhirError::not_found(format!("{key} does not exist"))
                            .at_entry(entry.index));
                    }
                    (None, Some(v)) if v.is_deleted() => {
                        outcomes.insert(
                            entry.index,
                            WriteOutcome {
                                kind: WriteKind::NothingToDelete,
                                version: current.clone(),
                            },
                        );
                        continue;
                    }
                    _ => {}
                }
                let mut p = self
                    .plan(ctx, &key, current.as_ref(), body, now)
                    .map_err(|e| e.at_entry(entry.index))?;
                if prefer == ReturnPreference::Representation
                    && let Some(resource) = p.resource.take()
                {
                    written.insert(entry.index, resource);
                }
                outcomes.insert(
                    entry.index,
                    WriteOutcome {
                        kind: p.kind,
                        version: Some(p.write.version.clone()),
                    },
                );
                planned.push(p);
            }
            match self.commit(planned).await {
                Ok(()) => break,
                Err(StoreError::Conflict { .. }) if attempt + 1 < MAX_ATTEMPTS => continue,
                Err(err) => return Err(err.into()),
            }
        }

        // 4. Reads after the writes; the response in the request's order.
        let mut responses = Vec::with_capacity(entries.len());
        for entry in &entries {
            let response = match outcomes.get(&entry.index) {
                Some(outcome) => write_entry(
                    self,
                    &ctx.base_url,
                    outcome,
                    written.remove(&entry.index),
                    prefer,
                ),
                None => self
                    .read_entry(ctx, entry)
                    .await
                    .unwrap_or_else(|err| error_entry(&err)),
            };
            responses.push(response);
        }
        Ok(json!({"resourceType": "Bundle", "type": "transaction-response", "entry": responses}))
    }

    /// A GET entry: read, vread or search.
    async fn read_entry(&self, ctx: &RequestContext, entry: &Entry) -> Result<Value, FhirError> {
        let t = &entry.resource_type;
        let version = match (&entry.id, &entry.version) {
            (Some(id), Some(v)) => self.vread(t, id, v).await?,
            (Some(id), None) => self.read(t, id).await?,
            (None, _) => {
                let params = entry
                    .query
                    .as_deref()
                    .map(parse_query_string)
                    .unwrap_or_default();
                let bundle = self
                    .search(
                        ctx,
                        &SearchRequest {
                            resource_type: Some(t.clone()),
                            params,
                        },
                    )
                    .await?;
                return Ok(json!({"resource": bundle, "response": {"status": "200 OK"}}));
            }
        };
        let resource: Value = version
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        Ok(json!({
            "fullUrl": format!("{}/{}", ctx.base_url, version.key),
            "resource": resource,
            "response": {"status": "200 OK", "etag": format!("W/\"{}\"", version.version_id), "lastModified": format_instant(version.last_updated_ms)},
        }))
    }
}

fn parse_entry(ctx: &RequestContext, index: usize, raw: Value) -> Result<Entry, FhirError> {
    let request = raw.get("request").ok_or_else(|| {
        FhirError::bad_request(format!(
            "entry {index} has no `request`: say what to do with it (method and url)"
        ))
    })?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("GET" | "HEAD") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some(other) => {
            return Err(FhirError::new(
                405,
                IssueCode::NotSupported,
                format!(
                    "entry {index}: method {other} is not supported in a Bundle; use GET, POST, PUT or DELETE"
                ),
            ));
        }
        None => {
            return Err(FhirError::new(
                400,
                IssueCode::Required,
                format!("entry {index}: request.method is missing"),
            ));
        }
    };
    let url = request.get("url").and_then(Value::as_str).ok_or_else(|| {
        FhirError::new(
            400,
            IssueCode::Required,
            format!("entry {index}: request.url is missing"),
        )
    })?;
    let url = url
        .strip_prefix(&ctx.base_url)
        .unwrap_or(url)
        .trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (resource_type, id, version) = match segments.as_slice() {
        [t] => (*t, None, None),
        [t, id] => (*t, Some((*id).to_owned()), None),
        [t, id, "_history", v] if method == Method::Get => {
            (*t, Some((*id).to_owned()), Some((*v).to_owned()))
        }
        _ => {
            return Err(FhirError::bad_request(format!(
                "entry {index}: request.url `{url}` is not of the form Type, Type/id or Type?criteria"
            )));
        }
    };
    check_type(resource_type).map_err(|e| e.at_entry(index))?;
    if let Some(id) = &id {
        check_id(id).map_err(|e| e.at_entry(index))?;
    }
    let resource = raw.get("resource").cloned();
    if let Some(r) = &resource {
        let actual = r
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if actual != resource_type {
            return Err(FhirError::bad_request(format!(
                "entry {index}: the resource is a {actual} but request.url names {resource_type}"
            )));
        }
    }
    if matches!(method, Method::Post | Method::Put) && resource.is_none() {
        return Err(missing_resource(index));
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(tag) => Some(parse_etag(tag).ok_or_else(|| {
            FhirError::bad_request(format!(
                "entry {index}: ifMatch `{tag}` is not a version tag like W/\"3\""
            ))
        })?),
        None => None,
    };
    Ok(Entry {
        index,
        method,
        resource_type: resource_type.to_owned(),
        id,
        version,
        query,
        resource,
        full_url: raw
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned),
        if_match,
        // The query part; some clients send the whole `Type?query`.
        if_none_exist: request.get("ifNoneExist").and_then(Value::as_str).map(|q| {
            q.strip_prefix(&format!("{resource_type}?"))
                .unwrap_or(q)
                .trim_start_matches('?')
                .to_owned()
        }),
    })
}

/// The version number in an ETag: `W/"3"`, `"3"` or `3`.
pub fn parse_etag(tag: &str) -> Option<u64> {
    tag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

fn missing_resource(index: usize) -> FhirError {
    FhirError::new(
        400,
        IssueCode::Required,
        format!("entry {index}: POST and PUT entries need a `resource`"),
    )
}

fn status_line(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        _ => "",
    };
    format!("{status} {reason}").trim_end().to_owned()
}

/// The response entry of a write. `written` is the version's resource when the caller still
/// has it parsed (otherwise the stored text is parsed for a representation).
fn write_entry(
    fhir: &Fhir,
    base: &str,
    outcome: &WriteOutcome,
    written: Option<Value>,
    prefer: ReturnPreference,
) -> Value {
    let mut response = json!({"status": status_line(outcome.kind.status())});
    let mut entry = json!({});
    if let Some(v) = &outcome.version {
        response["location"] = json!(format!("{}/_history/{}", v.key, v.version_id));
        response["etag"] = json!(format!("W/\"{}\"", v.version_id));
        response["lastModified"] = json!(format_instant(v.last_updated_ms));
        entry["fullUrl"] = json!(format!("{base}/{}", v.key));
        if prefer == ReturnPreference::Representation
            && let Some(resource) = written.or_else(|| {
                v.body
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
            })
        {
            entry["resource"] = fhir.present_value(&v.key.resource_type, resource);
        }
    }
    entry["response"] = response;
    entry
}

fn error_entry(err: &FhirError) -> Value {
    json!({"response": {"status": status_line(err.status), "outcome": err.outcome()}})
}

/// Calls `f` with every `reference` string in the resource.
fn collect_references(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::Object(map) => {
            for (name, child) in map {
                match (name.as_str(), child) {
                    ("reference", Value::String(r)) => f(r),
                    _ => collect_references(child, f),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, f)),
        _ => {}
    }
}

/// Rewrites references found in `aliases`; a `urn:` reference with no alias is an error.
fn rewrite_references(value: &mut Value, aliases: &HashMap<String, String>) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (name, child) in map.iter_mut() {
                match (name.as_str(), child) {
                    ("reference", Value::String(r)) => {
                        if let Some(target) = aliases.get(r.as_str()) {
                            *r = target.clone();
                        } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                            return Err(r.clone());
                        }
                    }
                    (_, child) => rewrite_references(child, aliases)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| rewrite_references(v, aliases)),
        _ => Ok(()),
    }
}

/// `Patient?identifier=…`: a type, then search criteria, no id.
fn is_conditional_reference(reference: &str) -> bool {
    reference
        .split_once('?')
        .is_some_and(|(t, q)| !t.contains('/') && !t.contains(':') && !q.is_empty())
}

fn has_conditional_reference(resource: &Value) -> bool {
    let mut found = false;
    collect_references(resource, &mut |r| found |= is_conditional_reference(r));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_parse_weak_and_strong() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("7"), Some(7));
        assert_eq!(parse_etag("W/\"x\""), None);
    }

    #[test]
    fn references_are_rewritten_and_unknown_urns_refused() {
        let aliases = HashMap::from([("urn:uuid:1".to_owned(), "Patient/abc".to_owned())]);
        let mut obs = json!({"subject": {"reference": "urn:uuid:1"}, "performer": [{"reference": "Practitioner/9"}]});
        rewrite_references(&mut obs, &aliases).unwrap();
        assert_eq!(obs["subject"]["reference"], "Patient/abc");
        assert_eq!(obs["performer"][0]["reference"], "Practitioner/9");
        let mut dangling = json!({"subject": {"reference": "urn:uuid:2"}});
        assert_eq!(
            rewrite_references(&mut dangling, &aliases),
            Err("urn:uuid:2".to_owned())
        );
    }

    #[test]
    fn conditional_references_are_recognised() {
        assert!(is_conditional_reference("Patient?identifier=x|1"));
        assert!(!is_conditional_reference("Patient/1"));
        assert!(!is_conditional_reference("http://x/Patient?a=b"));
    }
}
