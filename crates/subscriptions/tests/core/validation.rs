//! Creation: what is accepted, and what is refused with an issue naming the problem.

use flare_subscriptions::{
    ChannelType, ContentLevel, NotificationVersion, Topic, Trigger, builtin_topics,
    redact_for_read, restore_redacted,
};
use serde_json::{Value, json};

use crate::{CONTENT, FILTER, TOPIC, backport, classic, parse, registry};

/// Runs `(case name, subscription, expected)`: `Ok(())` to be accepted, `Err(words)` to be
/// refused with an issue whose text contains `words`.
fn check(cases: Vec<(&str, Value, Result<(), &str>)>) {
    let mut failures = Vec::new();
    for (name, subscription, expected) in cases {
        let outcome = parse(&subscription);
        match (&expected, &outcome) {
            (Ok(()), Ok(_)) => {}
            (Err(words), Err(message)) if message.contains(words) => {}
            _ => failures.push(format!(
                "{name}: expected {expected:?}, got {:?}",
                outcome.map(|_| ())
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn with(mut subscription: Value, pointer: &str, value: Value) -> Value {
    if let Some(slot) = subscription.pointer_mut(pointer) {
        *slot = value;
    } else {
        let (parent, name) = pointer.rsplit_once('/').unwrap();
        subscription.pointer_mut(parent).unwrap()[name] = value;
    }
    subscription
}

#[test]
fn c1_9_05_creation_rejects_what_cannot_be_honoured() {
    let ok = backport(
        "observation-created",
        &["code=http://loinc.org|8867-4"],
        "id-only",
    );
    check(vec![
        ("valid", ok.clone(), Ok(())),
        (
            "unknown topic",
            with(
                ok.clone(),
                "/criteria",
                json!("http://example.org/topics/nope"),
            ),
            Err("unknown topic"),
        ),
        (
            "filter parameter the topic does not offer",
            backport("observation-created", &["value-quantity=5"], "id-only"),
            Err("'value-quantity' is not supported by topic"),
        ),
        (
            "modifier the topic does not allow",
            backport(
                "observation-created",
                &["patient:identifier=x|1"],
                "id-only",
            ),
            Err("modifier ':identifier'"),
        ),
        (
            "unknown content level",
            backport("observation-created", &[], "everything"),
            Err("unsupported content level 'everything'"),
        ),
        (
            "custom channel type we do not deliver",
            with(
                ok.clone(),
                "/channel/_type",
                json!({"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type",
                    "valueCoding": {"system": "http://example.org/channels", "code": "zulip"}}]}),
            ),
            Err("unsupported channel type"),
        ),
        (
            "R4 channel type sms",
            with(ok.clone(), "/channel/type", json!("sms")),
            Err("unsupported channel type 'sms'"),
        ),
        (
            "endpoint that is not a URL",
            with(ok.clone(), "/channel/endpoint", json!("adfdf")),
            Err("is not a URL"),
        ),
        (
            "rest-hook endpoint with another scheme",
            with(
                ok.clone(),
                "/channel/endpoint",
                json!("ftp://example.org/x"),
            ),
            Err("must be an http(s) URL"),
        ),
        (
            "rest-hook without endpoint",
            with(ok.clone(), "/channel/endpoint", Value::Null),
            Err("needs an endpoint"),
        ),
        (
            "email endpoint must be mailto",
            with(
                with(ok.clone(), "/channel/type", json!("email")),
                "/channel/endpoint",
                json!("https://example.org"),
            ),
            Err("mailto:"),
        ),
        (
            "unsupported fhirVersion",
            with(
                ok.clone(),
                "/channel/payload",
                json!("application/fhir+json;fhirVersion=3.0"),
            ),
            Err("unsupported fhirVersion '3.0'"),
        ),
        (
            "unsupported MIME type",
            with(ok.clone(), "/channel/payload", json!("text/csv")),
            Err("unsupported payload MIME type"),
        ),
        (
            "filter in the 5.0 cross-version URL (Inferno)",
            with(
                ok.clone(),
                "/_criteria",
                json!({"extension": [{"url": "http://hl7.org/fhir/5.0/subscriptions-backport/StructureDefinition/backport-filter-criteria",
                    "valueString": "code=1234-5"}]}),
            ),
            Err("unsupported extension"),
        ),
        (
            "header injection",
            with(ok.clone(), "/channel/header", json!(["X-A: 1\r\nX-B: 2"])),
            Err("line break"),
        ),
        (
            "status missing",
            with(ok.clone(), "/status", Value::Null),
            Err("status is required"),
        ),
        (
            "max count zero",
            with(
                ok.clone(),
                "/channel/extension",
                json!([{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count", "valuePositiveInt": 0}]),
            ),
            Err("at least 1"),
        ),
        (
            "Kafka custom channel",
            with(
                with(
                    ok.clone(),
                    "/channel/_type",
                    json!({"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type",
                        "valueCoding": {"system": "http://flare.dev/fhir/CodeSystem/subscription-channel-type", "code": "kafka"}}]}),
                ),
                "/channel/endpoint",
                json!("kafka:notifications"),
            ),
            Ok(()),
        ),
        (
            "websocket needs no endpoint",
            with(
                with(ok.clone(), "/channel/type", json!("websocket")),
                "/channel/endpoint",
                Value::Null,
            ),
            Ok(()),
        ),
    ]);
}

#[test]
fn c1_9_42_classic_criteria_that_cannot_be_evaluated_exactly_are_rejected_not_matched_all() {
    check(vec![
        (
            "plain",
            classic("Observation?code=http://loinc.org|8867-4"),
            Ok(()),
        ),
        ("type only", classic("Patient"), Ok(())),
        (
            "several parameters",
            classic("Observation?status=final&subject=Patient/1&date=ge2020"),
            Ok(()),
        ),
        (
            "chain",
            classic("Observation?subject:Patient.name=smith"),
            Err("chained"),
        ),
        (
            "_has",
            classic("Patient?_has:Observation:patient:code=1234"),
            Err("cannot be evaluated exactly"),
        ),
        (
            "_filter",
            classic("Patient?_filter=name eq smith"),
            Err("cannot be evaluated exactly"),
        ),
        (
            "unknown parameter",
            classic("Patient?shoe-size=42"),
            Err("cannot be evaluated exactly"),
        ),
        (
            "unsupported modifier",
            classic("Patient?name:phonetic=smith"),
            Err("cannot be evaluated exactly"),
        ),
        (
            "composite",
            classic("Observation?code-value-quantity=1234$5"),
            Err("cannot be evaluated exactly"),
        ),
        ("paging", classic("Patient?_count=10"), Err("_count")),
        ("sorting", classic("Patient?_sort=name"), Err("_sort")),
        (
            "include",
            classic("Observation?_include=Observation:subject"),
            Err("_include"),
        ),
        (
            "unknown type",
            classic("Shoe?size=1"),
            Err("not an R4 resource type"),
        ),
        (
            "bad value",
            classic("Observation?date=yesterday"),
            Err("invalid value"),
        ),
        ("empty", classic(""), Err("criteria is required")),
    ]);
}

#[test]
fn c1_9_07_filter_strings_accept_the_four_ig_forms_and_several_are_anded() {
    let subscription = backport(
        "observation-changed",
        &[
            "code=http://loinc.org|8867-4",
            "category:not=laboratory",
            "Observation.patient=Patient/1",
            "Observation.status:not=cancelled",
        ],
        "full-resource",
    );
    let spec = parse(&subscription).unwrap();
    let Trigger::Topic { url, filters } = &spec.trigger else {
        panic!("a topic subscription");
    };
    assert_eq!(url, &format!("{TOPIC}observation-changed"));
    let params: Vec<&str> = filters
        .iter()
        .map(|filter| filter.clauses[0].param.as_str())
        .collect();
    assert_eq!(params, ["code", "category", "patient", "status"]);
    assert!(
        filters
            .iter()
            .all(|filter| filter.resource_type == "Observation")
    );
    // The search-URL form of the R4 example: several parameters in one string.
    let spec = parse(&backport(
        "encounter-admission",
        &["Encounter?patient=Patient/123&class=IMP"],
        "id-only",
    ))
    .unwrap();
    let Trigger::Topic { filters, .. } = &spec.trigger else {
        panic!("a topic subscription");
    };
    assert_eq!(filters.len(), 2);
    // A type the topic is not about.
    let refused = parse(&backport(
        "encounter-admission",
        &["Patient.name=x"],
        "id-only",
    ));
    assert!(refused.unwrap_err().contains("not about Patient"));
}

#[test]
fn backport_channel_fields_are_read() {
    let subscription = json!({
        "resourceType": "Subscription",
        "id": "s1",
        "status": "requested",
        "end": "2030-12-31T12:00:00Z",
        "reason": "admissions",
        "criteria": format!("{TOPIC}encounter-admission"),
        "_criteria": {"extension": [{"url": FILTER, "valueString": "Encounter?patient=Patient/123"}]},
        "channel": {
            "extension": [
                {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period", "valueUnsignedInt": 86400},
                {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout", "valueUnsignedInt": 60},
                {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count", "valuePositiveInt": 20},
                {"url": "http://flare.dev/fhir/StructureDefinition/subscription-hmac-secret", "valueString": "s3cret"}
            ],
            "type": "rest-hook",
            "endpoint": "https://client.example.org/hook",
            "header": ["Authorization: Bearer secret-token", "X-Tenant: a"],
            "payload": "application/fhir+json;fhirVersion=4.3",
            "_payload": {"extension": [{"url": CONTENT, "valueCode": "id-only"}]}
        }
    });
    let spec = parse(&subscription).unwrap();
    let channel = &spec.channel;
    assert_eq!(channel.channel_type, ChannelType::RestHook);
    assert_eq!(channel.heartbeat_period, Some(86400));
    assert_eq!(channel.timeout, Some(60));
    assert_eq!(channel.max_count, Some(20));
    assert_eq!(channel.content, ContentLevel::IdOnly);
    assert_eq!(channel.hmac_secret.as_deref(), Some("s3cret"));
    assert_eq!(channel.headers[0].name, "Authorization");
    assert_eq!(channel.headers[0].value, "Bearer secret-token");
    let payload = channel.payload.as_ref().unwrap();
    assert_eq!(payload.version, NotificationVersion::R4B);
    assert_eq!(payload.mime, "application/fhir+json;fhirVersion=4.3");
    assert_eq!(spec.end.as_deref(), Some("2030-12-31T12:00:00Z"));
    assert_eq!(
        spec.topic_url(),
        Some(format!("{TOPIC}encounter-admission").as_str())
    );
}

#[test]
fn classic_payload_decides_the_content() {
    let without = parse(&classic("Observation?code=1234-5")).unwrap();
    assert!(without.is_classic());
    assert_eq!(without.channel.payload, None);
    assert_eq!(without.channel.content, ContentLevel::Empty);
    let mut with_payload = classic("Observation?code=1234-5");
    with_payload["channel"]["payload"] = json!("application/fhir+json");
    let spec = parse(&with_payload).unwrap();
    assert_eq!(spec.channel.content, ContentLevel::FullResource);
    // A classic subscription cannot ask for R5 bodies.
    with_payload["channel"]["payload"] = json!("application/fhir+json;fhirVersion=5.0");
    assert!(parse(&with_payload).unwrap_err().contains("fhirVersion"));
}

#[test]
fn c1_9_52_secrets_are_not_echoed_on_read_and_survive_an_update_that_echoes_the_mask() {
    let stored = json!({
        "resourceType": "Subscription",
        "channel": {
            "type": "rest-hook",
            "header": ["Authorization: Bearer secret-token", "X-Tenant: a"],
            "extension": [{"url": "http://flare.dev/fhir/StructureDefinition/subscription-hmac-secret", "valueString": "s3cret"}]
        }
    });
    let read = redact_for_read(&stored);
    let text = read.to_string();
    assert!(
        !text.contains("secret-token") && !text.contains("s3cret"),
        "{text}"
    );
    assert_eq!(read["channel"]["header"][1], "X-Tenant: a");
    assert!(
        read["channel"]["header"][0]
            .as_str()
            .unwrap()
            .starts_with("Authorization:")
    );
    let mut update = read.clone();
    update["channel"]["header"][1] = json!("X-Tenant: b");
    restore_redacted(&mut update, &stored);
    assert_eq!(
        update["channel"]["header"][0],
        "Authorization: Bearer secret-token"
    );
    assert_eq!(update["channel"]["header"][1], "X-Tenant: b");
    assert_eq!(update["channel"]["extension"][0]["valueString"], "s3cret");
}

#[test]
fn c1_9_47_can_filter_by_of_a_user_topic_is_enforced() {
    let registry = registry();
    let topic = Topic::from_json(
        &json!({
            "resourceType": "SubscriptionTopic",
            "url": "http://example.org/topics/lab",
            "status": "active",
            "resourceTrigger": [{"resource": "Observation", "supportedInteraction": ["create"]}],
            "canFilterBy": [
                {"resource": "Observation", "filterParameter": "code", "modifier": ["in"]},
                {"resource": "Observation", "filterParameter": "value-quantity", "comparator": ["gt", "lt"]}
            ]
        }),
        &registry,
    )
    .unwrap();
    let mut topics = flare_subscriptions::TopicRegistry::new();
    topics.insert(topic);
    let attempt = |filter: &str| {
        let mut subscription = backport("x", &[filter], "id-only");
        subscription["criteria"] = json!("http://example.org/topics/lab");
        flare_subscriptions::parse_subscription(&subscription, &registry, &topics)
            .map(|_| ())
            .map_err(|issues| issues[0].message.clone())
    };
    assert!(attempt("code=1234-5").is_ok());
    assert!(attempt("value-quantity=gt5").is_ok());
    assert!(
        attempt("value-quantity=ge5")
            .unwrap_err()
            .contains("comparator 'ge'")
    );
    assert!(
        attempt("code:text=sodium")
            .unwrap_err()
            .contains("modifier ':text'")
    );
    assert!(
        attempt("status=final")
            .unwrap_err()
            .contains("'status' is not supported")
    );
    // Allowed by the topic but not evaluable here: still refused.
    assert!(
        attempt("code:in=http://example.org/vs")
            .unwrap_err()
            .contains("cannot be evaluated exactly")
    );
}

#[test]
fn topics_parse_from_r5_json_and_from_a_basic_wrapper() {
    let registry = registry();
    let builtins = builtin_topics(&registry);
    assert_eq!(builtins.len(), 7, "every built-in topic parses");
    for topic in &builtins {
        assert!(topic.url.starts_with(TOPIC));
        let basic = topic.to_basic("t1");
        assert!(flare_fhir::validate(&basic).is_ok(), "{basic}");
        let back = Topic::from_json(&basic, &registry).unwrap();
        assert_eq!(back.url, topic.url);
        assert_eq!(back.resource_triggers.len(), topic.resource_triggers.len());
        assert_eq!(back.can_filter_by.len(), topic.can_filter_by.len());
    }
    let sepsis = builtins
        .iter()
        .find(|topic| topic.url.ends_with("sepsis-alert"))
        .unwrap();
    assert_eq!(sepsis.event_triggers[0].resource_type, "RiskAssessment");
    // Problems are named.
    let broken = json!({
        "resourceType": "SubscriptionTopic",
        "url": "http://example.org/t",
        "resourceTrigger": [{
            "resource": "Observation",
            "supportedInteraction": ["read"],
            "queryCriteria": {"current": "subject:Patient.name=x"},
            "fhirPathCriteria": "%current.status = "
        }]
    });
    let issues = Topic::from_json(&broken, &registry).unwrap_err();
    let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    assert!(text.contains("supportedInteraction 'read'"), "{text}");
    assert!(text.contains("chained"), "{text}");
    assert!(text.contains("fhirPathCriteria"), "{text}");
    let not_a_topic = json!({"resourceType": "Basic", "code": {"text": "x"}});
    assert!(Topic::from_json(&not_a_topic, &registry).is_err());
}

#[test]
fn c1_9_23_notification_shape_includes_name_the_references_to_add() {
    let registry = registry();
    let topics = crate::topics();
    let admission = topics.get(&format!("{TOPIC}encounter-admission")).unwrap();
    let encounter = json!({"resourceType": "Encounter", "id": "e1", "status": "in-progress",
        "class": {"code": "IMP"}, "subject": {"reference": "Patient/p1"},
        "participant": [{"individual": {"reference": "Practitioner/d1"}}]});
    assert_eq!(
        admission.include_references(&registry, &encounter),
        ["Patient/p1"]
    );
    let group = json!({"resourceType": "Encounter", "id": "e2", "status": "in-progress",
        "class": {"code": "IMP"}, "subject": {"reference": "Group/g1"}});
    assert!(
        admission.include_references(&registry, &group).is_empty(),
        "Encounter:patient only follows references to a Patient"
    );
    let patient = topics.get(&format!("{TOPIC}patient-changed")).unwrap();
    assert!(
        patient
            .include_references(&registry, &json!({"resourceType": "Patient", "id": "p1"}))
            .is_empty()
    );
}

#[test]
fn malformed_subscriptions_are_issues_not_panics() {
    let topic = format!("{TOPIC}observation-created");
    let cases = [
        json!({}),
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Subscription", "status": 1, "criteria": ["x"], "channel": "rest-hook"}),
        json!({"resourceType": "Subscription", "status": "requested", "criteria": "Observation?code=1", "channel": {"type": 5}}),
        json!({"resourceType": "Subscription", "status": "requested", "criteria": topic, "_criteria": "x",
               "channel": {"type": "rest-hook", "endpoint": "https://a.example", "header": [1, null, "NoColon"],
                           "_payload": {"extension": "x"}, "extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout", "valueUnsignedInt": -1}]}}),
        json!({"resourceType": "Subscription", "status": "requested", "criteria": topic,
               "_criteria": {"extension": [{"url": FILTER, "valueString": "=x"}, {"url": FILTER, "valueString": "é.é:é=é"}, {"url": FILTER}]},
               "channel": {"type": "rest-hook", "endpoint": "https://a.example", "payload": "application/fhir+json;fhirVersion"}}),
        json!({"resourceType": "Subscription", "status": "requested", "criteria": "Observation?%zz=%", "end": "soon",
               "channel": {"type": "email", "endpoint": "mailto:"}}),
    ];
    for case in cases {
        assert!(parse(&case).is_err(), "{case}");
    }
}
