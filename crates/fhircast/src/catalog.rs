//! The STU3 event catalog: which event names exist and what their context must hold.
//!
//! Names are compared case-insensitively (`patient-open` is `Patient-open`); the hub
//! forwards the catalog's spelling so subscribers see one spelling whatever peers send.

/// A resource whose `*-open` makes it a context "anchor" on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// FHIR resource type, also the `context.type` of Get Current Context.
    pub resource_type: &'static str,
    /// The context key that names the anchor resource.
    pub key: &'static str,
    /// Context keys an `*-open` or `*-close` must carry.
    pub required_keys: &'static [&'static str],
    /// Whether `*-update` and `*-select` exist for it (content sharing).
    pub shares_content: bool,
}

pub const ANCHORS: &[Anchor] = &[
    Anchor {
        resource_type: "Patient",
        key: "patient",
        required_keys: &["patient"],
        shares_content: false,
    },
    Anchor {
        resource_type: "Encounter",
        key: "encounter",
        required_keys: &["encounter", "patient"],
        shares_content: false,
    },
    Anchor {
        resource_type: "ImagingStudy",
        key: "study",
        required_keys: &["study"],
        shares_content: false,
    },
    Anchor {
        resource_type: "DiagnosticReport",
        key: "report",
        required_keys: &["report", "patient"],
        shares_content: true,
    },
];

/// What an event does to the hub's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Open(&'static Anchor),
    Close(&'static Anchor),
    Update(&'static Anchor),
    Select(&'static Anchor),
    SyncError,
    UserLogout,
    UserHibernate,
    HomeOpen,
    /// A proprietary event in reverse-domain notation (`org.example.foo`).
    Custom,
}

/// A recognised event name with its canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventName {
    /// The catalog spelling (`Patient-open`), or the sender's spelling for custom events.
    pub canonical: String,
    /// The lower-case form subscriptions match on.
    pub key: String,
    pub kind: EventKind,
}

/// The catalog's event names, as `.well-known` advertises them.
pub fn supported_events() -> Vec<String> {
    let mut names = Vec::new();
    for anchor in ANCHORS {
        names.push(format!("{}-open", anchor.resource_type));
        names.push(format!("{}-close", anchor.resource_type));
        if anchor.shares_content {
            names.push(format!("{}-update", anchor.resource_type));
            names.push(format!("{}-select", anchor.resource_type));
        }
    }
    names.extend(
        ["Home-open", "UserLogout", "UserHibernate", "SyncError"]
            .iter()
            .map(|name| name.to_string()),
    );
    names
}

/// Recognises an event name (case-insensitively); `None` when it is neither in the catalog
/// nor a reverse-domain custom name.
pub fn parse_event_name(name: &str) -> Option<EventName> {
    let name = name.trim();
    let key = name.to_ascii_lowercase();
    let simple = |canonical: &str, kind| {
        Some(EventName {
            canonical: canonical.to_string(),
            key: key.clone(),
            kind,
        })
    };
    match key.as_str() {
        "syncerror" => return simple("SyncError", EventKind::SyncError),
        "userlogout" => return simple("UserLogout", EventKind::UserLogout),
        "userhibernate" => return simple("UserHibernate", EventKind::UserHibernate),
        "home-open" => return simple("Home-open", EventKind::HomeOpen),
        _ => {}
    }
    if let Some((resource, action)) = key.split_once('-') {
        let anchor = ANCHORS
            .iter()
            .find(|anchor| anchor.resource_type.eq_ignore_ascii_case(resource))?;
        let kind = match action {
            "open" => EventKind::Open(anchor),
            "close" => EventKind::Close(anchor),
            "update" if anchor.shares_content => EventKind::Update(anchor),
            "select" if anchor.shares_content => EventKind::Select(anchor),
            _ => return None,
        };
        return Some(EventName {
            canonical: format!("{}-{action}", anchor.resource_type),
            key,
            kind,
        });
    }
    if is_reverse_domain(name) {
        return Some(EventName {
            canonical: name.to_string(),
            key,
            kind: EventKind::Custom,
        });
    }
    None
}

/// `org.example.foo`: at least two dot-separated labels of letters, digits and `_`, no `-`.
fn is_reverse_domain(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_canonicalised() {
        let name = parse_event_name("patient-OPEN").unwrap();
        assert_eq!(name.canonical, "Patient-open");
        assert_eq!(name.key, "patient-open");
        assert_eq!(
            parse_event_name("syncerror").unwrap().canonical,
            "SyncError"
        );
        assert_eq!(
            parse_event_name("diagnosticreport-update").unwrap().kind,
            EventKind::Update(&ANCHORS[3])
        );
    }

    #[test]
    fn unknown_and_wildcard_names_are_refused() {
        for name in [
            "*",
            "Patient-*",
            "Patient-update",
            "Observation-open",
            "foo",
            "org.example-x",
        ] {
            assert!(parse_event_name(name).is_none(), "{name}");
        }
    }

    #[test]
    fn reverse_domain_custom_events_keep_their_spelling() {
        let name = parse_event_name("com.Example.researchstudy_transmogrify").unwrap();
        assert_eq!(name.kind, EventKind::Custom);
        assert_eq!(name.canonical, "com.Example.researchstudy_transmogrify");
    }

    #[test]
    fn every_advertised_event_parses() {
        for name in supported_events() {
            assert_eq!(parse_event_name(&name).unwrap().canonical, name);
        }
    }
}
