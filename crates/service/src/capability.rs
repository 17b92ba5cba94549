//! The CapabilityStatement: exactly what this server supports.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::Fhir;

/// Builds extensions for `rest[mode=server].extension` from the FHIR base URL of the request
/// (so a component served next to the FHIR API can advertise an absolute URL of its own).
pub type CapabilityExtension = Arc<dyn Fn(&str) -> Vec<Value> + Send + Sync>;

/// Interactions supported on every resource type.
const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

impl Fhir {
    /// Has every later CapabilityStatement carry the extensions `extensions` builds from the
    /// FHIR base URL, in `rest[mode=server].extension`, for components the binary runs beside
    /// the FHIR API (e.g. a FHIRcast hub advertising its `hub.url`).
    pub fn add_capability_extensions(
        &self,
        extensions: impl Fn(&str) -> Vec<Value> + Send + Sync + 'static,
    ) {
        if let Ok(mut registered) = self.inner.capability_extensions.write() {
            registered.push(Arc::new(extensions));
        }
    }

    fn rest_extensions(&self, base_url: &str) -> Vec<Value> {
        let Ok(registered) = self.inner.capability_extensions.read() else {
            return Vec::new();
        };
        registered
            .iter()
            .flat_map(|build| build(base_url))
            .collect()
    }

    /// `GET /metadata`.
    pub fn capability_statement(&self, base_url: &str) -> Value {
        let resources: Vec<Value> = flare_fhir::model::resource_types()
            .map(|resource_type| {
                let search_params: Vec<Value> = self
                    .registry()
                    .capability(resource_type)
                    .into_iter()
                    .map(|p| json!({"name": p.code, "type": p.kind, "definition": p.definition, "documentation": p.documentation}))
                    .collect();
                json!({
                    "type": resource_type,
                    "interaction": TYPE_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": true,
                    "conditionalCreate": true,
                    "conditionalRead": "not-supported",
                    "conditionalUpdate": true,
                    "conditionalDelete": "single",
                    "referencePolicy": ["literal", "logical"],
                    "searchInclude": ["*"],
                    "searchRevInclude": ["*"],
                    "searchParam": search_params,
                })
            })
            .collect();
        let mut statement = json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-21",
            "publisher": "Flare",
            "kind": "instance",
            "software": {"name": "Flare", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {"description": "Flare FHIR R4 server: every write is an event on a durable log", "url": base_url},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
            "patchFormat": [],
            "rest": [{
                "mode": "server",
                "documentation": "Unknown search parameters are ignored and reported in an OperationOutcome entry; send `Prefer: handling=strict` to have them rejected with 400.",
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "search-system"}, {"code": "history-system"}],
                "searchParam": [
                    {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                    {"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"},
                    {"name": "_count", "type": "number", "documentation": "Page size; default and maximum are set in the [fhir] config. `_count=0` returns only Bundle.total."},
                    {"name": "_total", "type": "token", "documentation": "accurate: Bundle.total counts every match (estimate is served as accurate). Without it (or with none), Bundle.total is given only when the page shows it for free (the last page), and omitted otherwise; `_summary=count` and `_count=0` always count."},
                    {"name": "_sort", "type": "string"},
                    {"name": "_summary", "type": "token", "documentation": "count, data, false"},
                    {"name": "_elements", "type": "string"},
                    {"name": "_include", "type": "special"},
                    {"name": "_revinclude", "type": "special"},
                ],
            }],
        });
        let extensions = self.rest_extensions(base_url);
        // FHIR forbids empty arrays, so the key appears only when something registered one.
        if !extensions.is_empty() {
            statement["rest"][0]["extension"] = Value::Array(extensions);
        }
        statement
    }
}
