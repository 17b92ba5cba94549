//! The dashboard's front end, embedded: `web/` is built with npm when this crate compiles
//! (see `build.rs`), and its files are served from memory by the server.
//!
//! Architecture invariant: knows nothing of HTTP frameworks; it hands out bytes and a content
//! type for a path.

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
    /// Whether the file name is stable across builds (index.html) rather than a static asset
    /// that may be cached for a while.
    pub is_page: bool,
}

/// The asset at `path` (`/` means the dashboard page); `None` when there is no such file.
pub fn asset(path: &str) -> Option<Asset> {
    let path = if path == "/" || path.is_empty() {
        "/index.html"
    } else {
        path
    };
    if let Some((_, bytes, content_type)) = ASSETS.iter().find(|(route, _, _)| *route == path) {
        return Some(Asset {
            bytes,
            content_type,
            is_page: path.ends_with(".html"),
        });
    }
    (!BUILT && path == "/index.html").then_some(Asset {
        bytes: FALLBACK_PAGE.as_bytes(),
        content_type: "text/html; charset=utf-8",
        is_page: true,
    })
}

/// Whether the real dashboard is embedded (false when npm was unavailable at build time).
pub fn is_built() -> bool {
    BUILT
}

const FALLBACK_PAGE: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Flare</title>\
<body style=\"font-family:system-ui;max-width:40rem;margin:3rem auto\"><h1>Flare</h1>\
<p>The dashboard was not built into this binary because npm was not available when it was compiled.\
Install Node.js and npm, then rebuild (<code>cargo build --release</code>).</p>\
<p>The FHIR API is at <a href=\"/fhir/metadata\">/fhir</a>.</p></body></html>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_serves_a_page_and_unknown_paths_nothing() {
        let page = asset("/").expect("a page at /");
        assert!(page.is_page);
        assert!(page.content_type.starts_with("text/html"));
        assert!(std::str::from_utf8(page.bytes).unwrap().contains("Flare"));
        assert!(asset("/no/such/file.js").is_none());
    }

    #[test]
    fn the_built_dashboard_references_only_embedded_assets() {
        assert!(
            is_built(),
            "the dashboard was not built: npm failed or was missing at compile time (see the build warnings)"
        );
        let page = std::str::from_utf8(asset("/").unwrap().bytes).unwrap();
        for reference in page
            .split(['"', '\''])
            .filter(|s| s.starts_with("/assets/"))
        {
            assert!(
                asset(reference).is_some(),
                "{reference} is referenced but not embedded"
            );
        }
    }
}
