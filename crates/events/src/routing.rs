//! Which topic a change event goes to, and which key keeps one patient's events in order.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Action;

/// How topic names are built when no routing rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicStrategy {
    /// `fhir.Patient`: one topic per resource type (the default).
    #[default]
    Resource,
    /// `fhir.created`: one topic per action.
    Action,
    /// `fhir.Patient.created`: one topic per resource type and action.
    Hybrid,
}

/// A routing rule: events of `resource_type` (with a matching `category`, and one of
/// `actions`) go to `topic` instead of the strategy's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The topic name, e.g. `fhir.observation.vitals`.
    pub topic: String,
    /// The resource type the rule applies to, e.g. `Observation`.
    pub resource_type: String,
    /// A category code the resource must carry in `category` (any coding of any entry), as
    /// `code` or `system|code`. Absent: any category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The actions the rule applies to. Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

/// Topic naming: `[events]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Prefix of every topic name. Default: `fhir`.
    pub prefix: String,
    /// `resource` (default), `action` or `hybrid`.
    pub strategy: TopicStrategy,
    /// Rules checked in order before the strategy; the first match names the topic.
    /// Default: vital-sign Observations to `fhir.observation.vitals`, laboratory ones to
    /// `fhir.observation.labs`.
    pub routes: Vec<Route>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        let observation = |topic: &str, category: &str| Route {
            topic: topic.into(),
            resource_type: "Observation".into(),
            category: Some(category.into()),
            actions: Vec::new(),
        };
        Self {
            prefix: "fhir".into(),
            strategy: TopicStrategy::Resource,
            routes: vec![
                observation("fhir.observation.vitals", "vital-signs"),
                observation("fhir.observation.labs", "laboratory"),
            ],
        }
    }
}

impl RoutingConfig {
    /// The topic for an event. `resource` is the new version, or for a delete the last live
    /// version, so that a retraction travels on the same topic as what it retracts.
    pub fn topic_for(
        &self,
        resource_type: &str,
        action: Action,
        resource: Option<&Value>,
    ) -> String {
        if let Some(route) = self
            .routes
            .iter()
            .find(|r| r.matches(resource_type, action, resource))
        {
            return route.topic.clone();
        }
        match self.strategy {
            TopicStrategy::Resource => format!("{}.{}", self.prefix, resource_type),
            TopicStrategy::Action => format!("{}.{}", self.prefix, action.as_str()),
            TopicStrategy::Hybrid => {
                format!("{}.{}.{}", self.prefix, resource_type, action.as_str())
            }
        }
    }
}

impl Route {
    fn matches(&self, resource_type: &str, action: Action, resource: Option<&Value>) -> bool {
        if self.resource_type != resource_type
            || !(self.actions.is_empty() || self.actions.contains(&action))
        {
            return false;
        }
        let Some(wanted) = &self.category else {
            return true;
        };
        let (system, code) = match wanted.split_once('|') {
            Some((s, c)) => (Some(s), c),
            None => (None, wanted.as_str()),
        };
        let categories = resource.and_then(|r| r.get("category"));
        let concepts: Vec<&Value> = match categories {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(single @ Value::Object(_)) => vec![single],
            _ => Vec::new(),
        };
        concepts
            .iter()
            .filter_map(|concept| concept.get("coding").and_then(Value::as_array))
            .flatten()
            .any(|coding| {
                coding.get("code").and_then(Value::as_str) == Some(code)
                    && system
                        .is_none_or(|s| coding.get("system").and_then(Value::as_str) == Some(s))
            })
    }
}

/// Elements that put a resource in a patient's compartment, in order of preference.
const PATIENT_LINKS: &[&str] = &[
    "patient",
    "subject",
    "beneficiary",
    "individual",
    "who",
    "actor",
];

/// The partition key: the patient compartment (`Patient/123`) when the resource has one, so all
/// of one patient's events stay in order; otherwise the resource itself (`Type/id`).
pub fn partition_key(resource_type: &str, id: &str, resource: Option<&Value>) -> String {
    if resource_type == "Patient" {
        return format!("Patient/{id}");
    }
    resource
        .and_then(|r| {
            PATIENT_LINKS.iter().find_map(|element| {
                let reference = r.get(*element)?.get("reference")?.as_str()?;
                let tail = reference
                    .rsplit("Patient/")
                    .next()
                    .filter(|_| reference.contains("Patient/"))?;
                let patient_id = tail.split('/').next().filter(|id| !id.is_empty())?;
                Some(format!("Patient/{patient_id}"))
            })
        })
        .unwrap_or_else(|| format!("{resource_type}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vitals() -> Value {
        json!({"resourceType": "Observation", "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}], "subject": {"reference": "Patient/42"}})
    }

    #[test]
    fn strategies_name_topics() {
        let mut config = RoutingConfig {
            routes: vec![],
            ..Default::default()
        };
        assert_eq!(
            config.topic_for("Patient", Action::Created, None),
            "fhir.Patient"
        );
        config.strategy = TopicStrategy::Action;
        assert_eq!(
            config.topic_for("Patient", Action::Deleted, None),
            "fhir.deleted"
        );
        config.strategy = TopicStrategy::Hybrid;
        assert_eq!(
            config.topic_for("Patient", Action::Updated, None),
            "fhir.Patient.updated"
        );
    }

    #[test]
    fn routes_match_by_category_and_action() {
        let config = RoutingConfig::default();
        assert_eq!(
            config.topic_for("Observation", Action::Created, Some(&vitals())),
            "fhir.observation.vitals"
        );
        let lab = json!({"resourceType": "Observation", "category": [{"coding": [{"code": "laboratory"}]}]});
        assert_eq!(
            config.topic_for("Observation", Action::Deleted, Some(&lab)),
            "fhir.observation.labs"
        );
        let other = json!({"resourceType": "Observation"});
        assert_eq!(
            config.topic_for("Observation", Action::Created, Some(&other)),
            "fhir.Observation"
        );

        let only_creates = RoutingConfig {
            routes: vec![Route {
                topic: "fhir.encounter".into(),
                resource_type: "Encounter".into(),
                category: None,
                actions: vec![Action::Created],
            }],
            ..Default::default()
        };
        assert_eq!(
            only_creates.topic_for("Encounter", Action::Created, None),
            "fhir.encounter"
        );
        assert_eq!(
            only_creates.topic_for("Encounter", Action::Updated, None),
            "fhir.Encounter"
        );
    }

    #[test]
    fn category_with_system_must_match_the_system() {
        let config = RoutingConfig {
            routes: vec![Route {
                topic: "t".into(),
                resource_type: "Observation".into(),
                category: Some("urn:other|vital-signs".into()),
                actions: vec![],
            }],
            ..Default::default()
        };
        assert_eq!(
            config.topic_for("Observation", Action::Created, Some(&vitals())),
            "fhir.Observation"
        );
    }

    #[test]
    fn partition_key_is_the_patient_compartment() {
        assert_eq!(partition_key("Patient", "7", None), "Patient/7");
        assert_eq!(
            partition_key("Observation", "o1", Some(&vitals())),
            "Patient/42"
        );
        let absolute =
            json!({"patient": {"reference": "http://example.org/fhir/Patient/9/_history/2"}});
        assert_eq!(
            partition_key("Immunization", "i1", Some(&absolute)),
            "Patient/9"
        );
        let group = json!({"subject": {"reference": "Group/1"}});
        assert_eq!(
            partition_key("Observation", "o2", Some(&group)),
            "Observation/o2"
        );
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let err =
            serde_json::from_value::<RoutingConfig>(json!({"strategy": "resource", "bogus": 1}));
        assert!(err.is_err());
        let ok: RoutingConfig = serde_json::from_value(json!({"strategy": "hybrid"})).unwrap();
        assert_eq!(ok.strategy, TopicStrategy::Hybrid);
        assert_eq!(ok.prefix, "fhir");
    }
}
