//! Behaviour of the public API beyond the conformance suite: errors with positions, the
//! environment, the cache and primitive extensions.

use flare_fhirpath::{
    Env, EvalError, Expression, ExpressionCache, ItemValue, ParseError, Temporal,
};
use serde_json::json;

#[test]
fn parse_errors_name_the_position() {
    match Expression::parse("name.given.frobnicate()") {
        Err(ParseError::UnknownFunction { name, position }) => {
            assert_eq!(name, "frobnicate");
            assert_eq!(position, 11);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        Expression::parse("2 + "),
        Err(ParseError::Expected { position: 4, .. })
    ));
    assert!(matches!(
        Expression::parse("'open"),
        Err(ParseError::Unterminated { position: 0, .. })
    ));
    assert!(matches!(
        Expression::parse("substring()"),
        Err(ParseError::Arity { .. })
    ));
    assert!(matches!(
        Expression::parse("value as Quantityy"),
        Err(ParseError::UnknownType { .. })
    ));
}

#[test]
fn evaluation_errors_are_values_with_positions() {
    let patient = json!({"resourceType": "Patient", "name": [{"given": ["A", "B"]}]});
    let expr = Expression::parse("name.given + 'x'").unwrap();
    assert!(matches!(
        expr.evaluate(&patient, &Env::new()),
        Err(EvalError::NotSingleton {
            position: 11,
            count: 2,
            ..
        })
    ));
    let expr = Expression::parse("name.givn").unwrap();
    assert!(matches!(
        expr.evaluate(&patient, &Env::new()),
        Err(EvalError::UnknownElement { position: 5, .. })
    ));
}

#[test]
fn three_valued_logic_keeps_unknown_distinct_from_false() {
    let resource = json!({"resourceType": "Patient"});
    let eval = |text: &str| {
        Expression::parse(text)
            .unwrap()
            .evaluate_bool(&resource, &Env::new())
            .unwrap()
    };
    assert_eq!(eval("{} and true"), None);
    assert_eq!(eval("{} and false"), Some(false));
    assert_eq!(eval("{} or true"), Some(true));
    assert_eq!(eval("false implies {}"), Some(true));
    assert_eq!(eval("@2012-04-15 = @2012-04-15T10:00"), None);
    assert_eq!(eval("@2012-04-15 ~ @2012-04-15T10:00"), Some(false));
}

#[test]
fn the_clock_can_be_fixed() {
    let now = Temporal::parse_literal("2024-02-29T12:00:00Z").unwrap();
    let env = Env::new().with_now(now);
    let resource = json!({"resourceType": "Patient", "birthDate": "2000-02-29"});
    let expr = Expression::parse("today() - 24 years = birthDate").unwrap();
    assert_eq!(expr.evaluate_bool(&resource, &env).unwrap(), Some(true));
}

#[test]
fn primitive_extensions_and_values_are_both_reachable() {
    let patient = json!({
        "resourceType": "Patient",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "name": [{"given": ["Jim", "Peter"], "_given": [null, {"extension": [{"url": "http://example.org/nick", "valueBoolean": true}]}]}]
    });
    let env = Env::new();
    let expr = Expression::parse(
        "birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime').value",
    )
    .unwrap();
    let items = expr.evaluate(&patient, &env).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].type_name, "dateTime");
    let expr = Expression::parse("name.given.where(extension('http://example.org/nick').exists())")
        .unwrap();
    let items = expr.evaluate(&patient, &env).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_str(), Some("Peter"));
    let expr = Expression::parse("birthDate").unwrap();
    assert!(matches!(
        expr.evaluate(&patient, &env).unwrap()[0].value,
        ItemValue::Temporal(_)
    ));
}

#[test]
fn the_cache_parses_each_text_once() {
    let cache = ExpressionCache::new();
    let first = cache.get("Patient.name").unwrap();
    let second = cache.get("Patient.name").unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    assert_eq!(cache.len(), 1);
    assert!(cache.get("Patient.(").is_err());
    assert_eq!(cache.len(), 1);
}

#[test]
fn default_resolve_types_references_and_finds_contained_resources() {
    let observation = json!({
        "resourceType": "Observation",
        "contained": [{"resourceType": "Practitioner", "id": "dr"}],
        "performer": [{"reference": "#dr"}, {"reference": "https://example.org/fhir/Organization/o1/_history/3"}],
        "subject": {"reference": "Patient/123"}
    });
    let env = Env::new();
    let eval = |text: &str| {
        Expression::parse(text)
            .unwrap()
            .evaluate_bool(&observation, &env)
            .unwrap()
    };
    assert_eq!(eval("subject.resolve() is Patient"), Some(true));
    assert_eq!(eval("performer[0].resolve() is Practitioner"), Some(true));
    assert_eq!(eval("performer[1].resolve().id = 'o1'"), Some(true));
    assert_eq!(
        eval("performer.resolve().ofType(Organization).count() = 1"),
        Some(true)
    );
}

#[test]
fn hostile_nesting_is_refused_not_a_crash() {
    let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(matches!(
        Expression::parse(&deep),
        Err(ParseError::TooDeep { .. })
    ));
    let negations = format!("{}1", "-".repeat(100_000));
    assert!(Expression::parse(&negations).is_err());
}

#[test]
fn expressions_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Expression>();
    assert_send_sync::<ExpressionCache>();
}

#[test]
fn arithmetic_overflow_is_empty_not_a_panic() {
    let resource = json!({"resourceType": "Patient"});
    let env = Env::new();
    for text in [
        "9223372036854775807 + 1",
        "-(-9223372036854775807 - 1)",
        "@T10:00 + 9223372036854775807 hours",
        "@2020-01-01 + 9223372036854775807 days",
        "@2020-01-01T10:00 + 9223372036854775807 'ms'",
    ] {
        let expr = Expression::parse(text).unwrap();
        let items = expr.evaluate(&resource, &env);
        assert!(
            matches!(items.as_deref(), Ok([]) | Err(_)),
            "{text}: {items:?}"
        );
    }
}
