//! Reads, history and search, answered as resources and Bundles.

use flare_search::ParsedSearch;
use flare_store::{HistoryQuery, HistoryScope, ResourceKey, StoredVersion};
use serde_json::{Map, Value, json};

use flare_fhir::operation_outcome::{Issue, IssueCode, OperationOutcome};

use crate::{
    Fhir, FhirError, RequestContext,
    time_fmt::{format_instant, now_ms, parse_instant},
    write::{check_id, check_type},
};

/// A Bundle resource as JSON.
pub type Bundle = Value;

/// A successful read: the version asked for.
pub type ReadOutcome = StoredVersion;

/// Parameters understood by the HTTP layer, not by search.
pub(crate) const FORMAT_PARAMS: &[&str] = &["_format", "_pretty"];

/// A search as the client sent it: the type (none for system search) and the parameters in
/// order.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub resource_type: Option<String>,
    pub params: Vec<(String, String)>,
}

impl Fhir {
    /// `GET [type]/[id]`: 404 if it never existed, 410 if deleted. The resource as clients see
    /// it (after the registered [`ReadTransform`](crate::ReadTransform)s).
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<ReadOutcome, FhirError> {
        let version = self.read_stored(resource_type, id).await?;
        Ok(self.present(version))
    }

    /// [`Self::read`] as stored, for components that need what clients may not see.
    pub async fn read_stored(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<ReadOutcome, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        let key = ResourceKey::new(resource_type, id);
        match self.store().current(&key).await? {
            None => Err(FhirError::not_found(format!("{key} does not exist"))),
            Some(v) if v.is_deleted() => Err(FhirError::gone(format!(
                "{key} was deleted (version {})",
                v.version_id
            ))),
            Some(v) => Ok(v),
        }
    }

    /// `GET [type]/[id]/_history/[vid]`: 404 if that version never existed, 410 if it is a
    /// deletion. As clients see it, like [`Self::read`].
    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<ReadOutcome, FhirError> {
        let stored = self.vread_stored(resource_type, id, version).await?;
        Ok(self.present(stored))
    }

    /// [`Self::vread`] as stored.
    pub async fn vread_stored(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<ReadOutcome, FhirError> {
        check_type(resource_type)?;
        check_id(id)?;
        let key = ResourceKey::new(resource_type, id);
        let Ok(version_id) = version.parse::<u64>() else {
            return Err(FhirError::not_found(format!(
                "`{version}` is not a version of {key}: versions are numbers 1, 2, 3…"
            )));
        };
        match self.store().version(&key, version_id).await? {
            None => Err(FhirError::not_found(format!(
                "{key} has no version {version_id}"
            ))),
            Some(v) if v.is_deleted() => Err(FhirError::gone(format!(
                "version {version_id} of {key} is its deletion"
            ))),
            Some(v) => Ok(v),
        }
    }

    /// History at system (`resource_type = None`), type or instance level, newest first.
    pub async fn history(
        &self,
        ctx: &RequestContext,
        resource_type: Option<&str>,
        id: Option<&str>,
        params: &[(String, String)],
    ) -> Result<Bundle, FhirError> {
        let scope = match (resource_type, id) {
            (None, _) => HistoryScope::System,
            (Some(t), None) => {
                check_type(t)?;
                HistoryScope::Type(t.to_owned())
            }
            (Some(t), Some(id)) => {
                check_type(t)?;
                check_id(id)?;
                let key = ResourceKey::new(t, id);
                if self.store().current(&key).await?.is_none() {
                    return Err(FhirError::not_found(format!("{key} does not exist")));
                }
                HistoryScope::Instance(key)
            }
        };
        let mut since_ms = None;
        let mut before_ms = None;
        let mut count = self.config().default_count;
        let mut offset = 0;
        for (name, value) in params {
            match name.as_str() {
                "_since" => since_ms = Some(instant_param(name, value)?),
                "_at" | "_before" => before_ms = Some(instant_param(name, value)?),
                "_count" => count = self.count_param(value)?,
                "_offset" => offset = usize_param(name, value)?,
                n if FORMAT_PARAMS.contains(&n) => {}
                other => {
                    if ctx.strict {
                        return Err(FhirError::new(
                            400,
                            IssueCode::NotSupported,
                            format!(
                                "history does not support the parameter `{other}`; use _since, _count"
                            ),
                        ));
                    }
                }
            }
        }
        // Pin the page set to what existed at the first page so paging does not shift.
        let before_ms = before_ms.unwrap_or_else(|| now_ms() + 1);
        let page = self
            .store()
            .history(&HistoryQuery {
                scope,
                since_ms,
                before_ms: Some(before_ms),
                count,
                offset,
            })
            .await?;
        let path = match (resource_type, id) {
            (None, _) => "_history".to_owned(),
            (Some(t), None) => format!("{t}/_history"),
            (Some(t), Some(id)) => format!("{t}/{id}/_history"),
        };
        let mut link_params: Vec<(String, String)> = Vec::new();
        if let Some(since) = since_ms {
            link_params.push(("_since".into(), format_instant(since)));
        }
        link_params.push(("_before".into(), format_instant(before_ms)));
        let links = page_links(
            &ctx.base_url,
            &path,
            &link_params,
            count,
            offset,
            page.versions.len(),
            Some(page.total),
        );
        let entries: Vec<Value> = page
            .versions
            .iter()
            .map(|v| history_entry(self, &ctx.base_url, v))
            .collect();
        Ok(json!({
            "resourceType": "Bundle",
            "type": "history",
            "total": page.total,
            "link": links,
            "entry": entries,
        }))
    }

    /// Parses search parameters; ignored ones fail the request when `strict`.
    pub(crate) fn parse_search(
        &self,
        ctx: &RequestContext,
        resource_type: Option<&str>,
        params: &[(String, String)],
        strict: bool,
    ) -> Result<ParsedSearch, FhirError> {
        if let Some(t) = resource_type {
            check_type(t)?;
        }
        let params: Vec<(String, String)> = params
            .iter()
            .filter(|(n, _)| !FORMAT_PARAMS.contains(&n.as_str()))
            .cloned()
            .collect();
        let mut parsed = self
            .registry()
            .parse(resource_type, &params)
            .map_err(|err| FhirError::new(400, IssueCode::Invalid, err.to_string()))?;
        if (strict || ctx.strict) && !parsed.ignored.is_empty() {
            let issues = parsed
                .ignored
                .iter()
                .map(|(name, reason)| {
                    Issue::error(
                        IssueCode::NotSupported,
                        format!("search parameter `{name}`: {reason}"),
                        "",
                    )
                })
                .collect();
            return Err(FhirError::with_issues(400, issues));
        }
        parsed.query.count = parsed.query.count.min(self.config().max_count);
        if parsed.query.count == 0 && !parsed.query.count_only {
            parsed.query.count = self.config().default_count;
        }
        Ok(parsed)
    }

    /// `GET [type]?…` / `POST [type]/_search` / system search: a searchset Bundle.
    pub async fn search(
        &self,
        ctx: &RequestContext,
        request: &SearchRequest,
    ) -> Result<Bundle, FhirError> {
        let resource_type = request.resource_type.as_deref();
        let mut summary_data = false;
        let mut params = Vec::with_capacity(request.params.len());
        for (name, value) in &request.params {
            match (name.as_str(), value.as_str()) {
                ("_summary", "data") => summary_data = true,
                ("_summary", "false") => {}
                _ => params.push((name.clone(), value.clone())),
            }
        }
        let mut parsed = self.parse_search(ctx, resource_type, &params, false)?;
        // `_count=0` asks for the total alone (parse_search reads 0 as "the default page").
        if params.iter().any(|(n, v)| n == "_count" && v.trim() == "0") {
            parsed.query.count_only = true;
        }
        // Counting every match costs as much as the search itself on large results: the total
        // is counted only when asked for, and otherwise given when the page shows it (see the
        // store's search documentation).
        if !parsed.query.count_only && !params.iter().any(|(n, _)| n == "_total") {
            parsed.query.total = flare_search::TotalMode::None;
        }
        let query = &parsed.query;
        let elements = Some(&parsed.elements).filter(|e| !e.is_empty());
        let page = self.store().search(query).await?;
        let path = resource_type.unwrap_or("");
        let mut link_params: Vec<(String, String)> = params
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "_count" | "_offset" | "_format" | "_pretty"))
            .cloned()
            .collect();
        if summary_data {
            link_params.push(("_summary".into(), "data".into()));
        }
        let mut bundle = Map::new();
        bundle.insert("resourceType".into(), json!("Bundle"));
        bundle.insert("type".into(), json!("searchset"));
        if let Some(total) = page.total {
            bundle.insert("total".into(), json!(total));
        }
        if query.count_only {
            bundle.insert(
                "link".into(),
                json!([{"relation": "self", "url": url_with(&ctx.base_url, path, &link_params)}]),
            );
            return Ok(Value::Object(bundle));
        }
        let links = page_links(
            &ctx.base_url,
            path,
            &link_params,
            query.count,
            query.offset,
            page.matches.len(),
            page.total,
        );
        bundle.insert("link".into(), json!(links));
        let shape = |v: &StoredVersion| -> Option<Value> {
            let stored: Value = serde_json::from_str(v.body.as_deref()?).ok()?;
            let mut resource = self.present_value(&v.key.resource_type, stored);
            if let Some(elements) = elements {
                resource = keep_elements(resource, elements);
            } else if summary_data {
                resource.as_object_mut().map(|r| r.remove("text"));
                mark_subsetted(&mut resource);
            }
            Some(resource)
        };
        let mut entries: Vec<Value> =
            Vec::with_capacity(page.matches.len() + page.included.len() + 1);
        for (mode, versions) in [("match", &page.matches), ("include", &page.included)] {
            for v in versions {
                if let Some(resource) = shape(v) {
                    entries.push(json!({
                        "fullUrl": format!("{}/{}", ctx.base_url, v.key),
                        "resource": resource,
                        "search": {"mode": mode},
                    }));
                }
            }
        }
        if !parsed.ignored.is_empty() {
            let issues: Vec<Issue> = parsed
                .ignored
                .iter()
                .map(|(name, reason)| {
                    Issue::warning(
                        IssueCode::NotSupported,
                        format!("search parameter `{name}` was ignored: {reason}"),
                        "",
                    )
                })
                .collect();
            entries.push(json!({"resource": OperationOutcome::from_issues(issues).to_json(), "search": {"mode": "outcome"}}));
        }
        bundle.insert("entry".into(), Value::Array(entries));
        Ok(Value::Object(bundle))
    }

    fn count_param(&self, value: &str) -> Result<usize, FhirError> {
        Ok(usize_param("_count", value)?.min(self.config().max_count))
    }
}

fn usize_param(name: &str, value: &str) -> Result<usize, FhirError> {
    value.parse().map_err(|_| {
        FhirError::new(
            400,
            IssueCode::Value,
            format!("`{name}={value}` is not valid: {name} takes a whole number ≥ 0"),
        )
    })
}

fn instant_param(name: &str, value: &str) -> Result<i64, FhirError> {
    parse_instant(value).ok_or_else(|| {
        FhirError::new(
            400,
            IssueCode::Value,
            format!("`{name}={value}` is not an instant: use e.g. 2024-01-31T12:00:00Z"),
        )
    })
}

/// The history entry of one version, as clients see it.
fn history_entry(fhir: &Fhir, base: &str, v: &StoredVersion) -> Value {
    let etag = format!("W/\"{}\"", v.version_id);
    let last_modified = format_instant(v.last_updated_ms);
    let mut entry = json!({"fullUrl": format!("{base}/{}", v.key)});
    match v
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
    {
        Some(resource) => {
            let (method, url, status) = if v.version_id == 1 {
                ("POST", v.key.resource_type.clone(), "201 Created")
            } else {
                ("PUT", v.key.to_string(), "200 OK")
            };
            entry["resource"] = fhir.present_value(&v.key.resource_type, resource);
            entry["request"] = json!({"method": method, "url": url});
            entry["response"] =
                json!({"status": status, "etag": etag, "lastModified": last_modified});
        }
        None => {
            entry["request"] = json!({"method": "DELETE", "url": v.key.to_string()});
            entry["response"] =
                json!({"status": "204 No Content", "etag": etag, "lastModified": last_modified});
        }
    }
    entry
}

/// `self`, `previous` and `next` links for an offset-paged result.
fn page_links(
    base: &str,
    path: &str,
    params: &[(String, String)],
    count: usize,
    offset: usize,
    returned: usize,
    total: Option<u64>,
) -> Vec<Value> {
    let link = |relation: &str, offset: usize| {
        let mut p = params.to_vec();
        p.push(("_count".into(), count.to_string()));
        if offset > 0 {
            p.push(("_offset".into(), offset.to_string()));
        }
        json!({"relation": relation, "url": url_with(base, path, &p)})
    };
    let mut links = vec![link("self", offset)];
    if offset > 0 {
        links.push(link("previous", offset.saturating_sub(count)));
    }
    let more = match total {
        Some(total) => ((offset + returned) as u64) < total,
        None => returned == count && count > 0,
    };
    if more {
        links.push(link("next", offset + count));
    }
    links
}

/// `base/path?a=1&b=2` with values percent-encoded.
fn url_with(base: &str, path: &str, params: &[(String, String)]) -> String {
    let mut url = if path.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{path}")
    };
    for (i, (name, value)) in params.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&encode(name));
        url.push('=');
        url.push_str(&encode(value));
    }
    url
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, QUERY).to_string()
}

/// Characters escaped in query names and values: everything but unreserved characters and the
/// ones FHIR search syntax uses (`|`, `:`, `,`, `$`...) so links stay readable.
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'|')
    .remove(b':')
    .remove(b',')
    .remove(b'$')
    .remove(b'/');

/// Parses `a=1&b=2` (percent-decoded, `+` as space) into ordered pairs.
pub fn parse_query_string(query: &str) -> Vec<(String, String)> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// `_elements`: keeps the listed top-level elements plus the mandatory ones.
fn keep_elements(resource: Value, elements: &[String]) -> Value {
    let Value::Object(map) = resource else {
        return resource;
    };
    let mut kept: Map<String, Value> = map
        .into_iter()
        .filter(|(name, _)| {
            matches!(name.as_str(), "resourceType" | "id" | "meta")
                || elements
                    .iter()
                    .any(|e| e == name || e.strip_prefix('_') == Some(name))
        })
        .collect();
    let mut resource = Value::Object(std::mem::take(&mut kept));
    mark_subsetted(&mut resource);
    resource
}

/// Adds the SUBSETTED security tag, as FHIR requires for summarised resources.
fn mark_subsetted(resource: &mut Value) {
    let Some(map) = resource.as_object_mut() else {
        return;
    };
    let meta = map.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
        match meta.get_mut("tag").and_then(Value::as_array_mut) {
            Some(tags) => tags.push(tag),
            None => {
                meta.insert("tag".into(), json!([tag]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_parse_in_order_and_decode() {
        let params = parse_query_string("?identifier=http%3A%2F%2Fx%7C1&name=a+b&flag");
        assert_eq!(
            params,
            vec![
                ("identifier".into(), "http://x|1".into()),
                ("name".into(), "a b".into()),
                ("flag".into(), String::new())
            ]
        );
    }

    #[test]
    fn links_page_forward_and_back() {
        let links = page_links(
            "http://h/fhir",
            "Patient",
            &[("name".into(), "x y".into())],
            10,
            10,
            10,
            Some(35),
        );
        let urls: Vec<(&str, &str)> = links
            .iter()
            .map(|l| (l["relation"].as_str().unwrap(), l["url"].as_str().unwrap()))
            .collect();
        assert_eq!(
            urls[0],
            (
                "self",
                "http://h/fhir/Patient?name=x%20y&_count=10&_offset=10"
            )
        );
        assert_eq!(
            urls[1],
            ("previous", "http://h/fhir/Patient?name=x%20y&_count=10")
        );
        assert_eq!(
            urls[2],
            (
                "next",
                "http://h/fhir/Patient?name=x%20y&_count=10&_offset=20"
            )
        );
        let last = page_links("http://h/fhir", "Patient", &[], 10, 30, 5, Some(35));
        assert!(last.iter().all(|l| l["relation"] != "next"));
    }

    #[test]
    fn elements_keep_mandatory_ones_and_tag_the_subset() {
        let patient = json!({"resourceType": "Patient", "id": "1", "name": [{"family": "X"}], "gender": "male"});
        let kept = keep_elements(patient, &["gender".to_owned()]);
        assert_eq!(kept["gender"], "male");
        assert!(kept.get("name").is_none());
        assert_eq!(kept["meta"]["tag"][0]["code"], "SUBSETTED");
    }
}
