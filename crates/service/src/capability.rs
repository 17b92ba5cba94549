//! The CapabilityStatement: exactly what this server supports.

use serde_json::{Value, json};

use crate::Fhir;

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
        json!({
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
                    {"name": "_count", "type": "number", "documentation": "Page size; default and maximum are set in the [fhir] config."},
                    {"name": "_sort", "type": "string"},
                    {"name": "_summary", "type": "token", "documentation": "count, data, false"},
                    {"name": "_elements", "type": "string"},
                    {"name": "_include", "type": "special"},
                    {"name": "_revinclude", "type": "special"},
                ],
            }],
        })
    }
}
