//! `[server]` settings.

use serde::{Deserialize, Serialize};

/// HTTP server settings: `[server]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080` (env `FLARE_LISTEN`, flag `--listen`).
    pub listen: String,
    /// The public base URL of the FHIR API, used in `Location`, `fullUrl` and paging links.
    /// Default: derived from each request's `Host` header (`http://{host}/fhir`).
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get 413. Default 32 MiB.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}
