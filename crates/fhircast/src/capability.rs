//! The hub's entry in a co-located FHIR server's CapabilityStatement (checklist point 4).

use serde_json::{Value, json};

use crate::HubConfig;

/// STU3's discovery extension, holding a `hub.url` sub-extension (`valueUrl`).
pub const CONFIGURATION_EXTENSION: &str =
    "http://fhircast.hl7.org/StructureDefinition/fhircast-configuration-extension";
/// STU2's spelling of the same extension (`valueUri`), still read by STU2-era clients.
pub const STU2_CONFIGURATION_EXTENSION: &str =
    "http://fhircast.hl7.org/StructureDefinition/fhircast-configuration";

/// The absolute `hub.url`: the hub's path under `public_url` when configured, else under the
/// origin (scheme and authority) of the FHIR server's base URL, which serves both.
pub fn hub_url(config: &HubConfig, fhir_base_url: &str) -> String {
    let path = config.path.trim_end_matches('/');
    if let Some(public_url) = &config.public_url {
        return format!("{}{path}", public_url.trim_end_matches('/'));
    }
    let origin = match url::Url::parse(fhir_base_url) {
        Ok(base) => base.origin().ascii_serialization(),
        // Not an absolute URL: the best we can offer is the path alone.
        Err(_) => String::new(),
    };
    format!("{origin}{path}")
}

/// The `rest[mode=server].extension` entries advertising the hub: STU3's, then STU2's, both
/// with the same `hub.url`.
pub fn capability_extensions(config: &HubConfig, fhir_base_url: &str) -> Vec<Value> {
    let hub_url = hub_url(config, fhir_base_url);
    vec![
        json!({
            "url": CONFIGURATION_EXTENSION,
            "extension": [{"url": "hub.url", "valueUrl": hub_url}],
        }),
        json!({
            "url": STU2_CONFIGURATION_EXTENSION,
            "extension": [{"url": "hub.url", "valueUri": hub_url}],
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_url_of(extensions: &[Value], url: &str, value_key: &str) -> Option<String> {
        let extension = extensions.iter().find(|e| e["url"] == url)?;
        let entry = extension["extension"]
            .as_array()?
            .iter()
            .find(|e| e["url"] == "hub.url")?;
        entry[value_key].as_str().map(str::to_owned)
    }

    #[test]
    fn hub_url_follows_the_fhir_servers_origin() {
        let config = HubConfig::default();
        let extensions = capability_extensions(&config, "http://127.0.0.1:8080/fhir");
        assert_eq!(
            hub_url_of(&extensions, CONFIGURATION_EXTENSION, "valueUrl").as_deref(),
            Some("http://127.0.0.1:8080/fhircast")
        );
        assert_eq!(
            hub_url_of(&extensions, STU2_CONFIGURATION_EXTENSION, "valueUri").as_deref(),
            Some("http://127.0.0.1:8080/fhircast")
        );
    }

    #[test]
    fn hub_url_prefers_the_hubs_public_url_and_its_path() {
        let config = HubConfig {
            path: "/api/hub/".into(),
            public_url: Some("https://hub.example.com/".into()),
            ..HubConfig::default()
        };
        assert_eq!(
            hub_url(&config, "http://10.0.0.1/fhir"),
            "https://hub.example.com/api/hub"
        );
    }

    #[test]
    fn hub_url_drops_the_fhir_bases_path() {
        let config = HubConfig::default();
        assert_eq!(
            hub_url(&config, "https://ehr.example.org:8443/r4/fhir"),
            "https://ehr.example.org:8443/fhircast"
        );
    }
}
