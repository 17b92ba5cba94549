//! Search behaviour end to end without a store: parse a query string, extract the index
//! entries of a resource, and match them — one table-driven helper for every parameter type,
//! prefix and modifier.

use std::sync::OnceLock;

use flare_search::{IndexValue, ParsedSearch, Predicate, Prefix, Registry, SearchError, matches};
use serde_json::{Value, json};

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::r4)
}

/// Fixed "now" so `ap` on dates is reproducible: 2021-01-01T00:00:00Z.
const NOW_MS: i64 = 1_609_459_200_000;

fn params_of(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_encoding::percent_decode_str(text)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(name), decode(value))
        })
        .collect()
}

fn parse(resource_type: &str, query: &str) -> Result<ParsedSearch, SearchError> {
    registry().parse_at(Some(resource_type), &params_of(query), NOW_MS)
}

/// Every case: does `resource` match the search `query` on its own type?
fn check_all(cases: &[(&Value, &str, bool)]) {
    let mut failures = Vec::new();
    for (resource, query, expected) in cases {
        let resource_type = resource["resourceType"]
            .as_str()
            .expect("test resources have a type");
        let parsed = parse(resource_type, query).unwrap_or_else(|error| panic!("{query}: {error}"));
        assert!(
            parsed.ignored.is_empty(),
            "{query}: ignored {:?}",
            parsed.ignored
        );
        let entries = registry().extract(resource);
        if matches(&parsed.query.clauses, &entries) != *expected {
            failures.push(format!(
                "{resource_type}?{query} should {}match",
                if *expected { "" } else { "not " }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "pat-1",
        "meta": {"lastUpdated": "2020-05-06T07:08:09.123+02:00", "tag": [{"system": "urn:tags", "code": "vip"}],
                 "profile": ["http://example.org/StructureDefinition/p|1.2"]},
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345", "type": {"text": "Medical record"}}],
        "active": true,
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}, {"given": ["Jim"], "text": "Jim Zoë"}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473"}, {"system": "email", "value": "p@example.org"}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
        "generalPractitioner": [{"reference": "Practitioner/gp-7"}],
        "managingOrganization": {"reference": "http://other.org/fhir/Organization/1"},
        "contained": [{"resourceType": "Organization", "id": "c1"}],
        "link": [{"other": {"reference": "#c1"}, "type": "seealso"}],
    })
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1", "display": "Respiratory rate"}], "text": "RR"},
        "subject": {"reference": "Patient/pat-1"},
        "encounter": {"reference": "Encounter/enc-1/_history/3"},
        "effectivePeriod": {"start": "2020-03-04T10:00:00Z", "end": "2020-03-04T11:00:00Z"},
        "valueQuantity": {"value": 22.5, "unit": "breaths/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
    })
}

#[test]
fn strings() {
    let patient = patient();
    check_all(&[
        (&patient, "name=peter", true),
        (&patient, "name=PET", true),
        (&patient, "name=chalm", true),
        (&patient, "name=eter", false),
        (&patient, "family=Chalmers", true),
        (&patient, "name:exact=Peter", true),
        (&patient, "name:exact=peter", false),
        (&patient, "name:contains=alme", true),
        (&patient, "name:contains=xyz", false),
        (&patient, "name=jim zoe", true),
        (&patient, "address-city=pleasant", true),
        (&patient, "address=erewhon", false),
        (&patient, "address=534", true),
        (&patient, "name=bob,pete", true),
        (&patient, "name=peter&name=james", true),
        (&patient, "name=peter&name=bob", false),
    ]);
}

#[test]
fn tokens() {
    let patient = patient();
    let observation = observation();
    check_all(&[
        (&patient, "gender=male", true),
        (&patient, "gender=female", false),
        (&patient, "gender:not=female", true),
        (&patient, "gender:not=male", false),
        (&patient, "gender:not=female,male", false),
        (&patient, "active=true", true),
        (&patient, "active=false", false),
        (&patient, "identifier=12345", true),
        (
            &patient,
            "identifier=urn:oid:1.2.36.146.595.217.0.1|12345",
            true,
        ),
        (&patient, "identifier=urn:other|12345", false),
        (&patient, "identifier=|12345", false),
        (&patient, "identifier=urn:oid:1.2.36.146.595.217.0.1|", true),
        (&patient, "identifier:text=medical", true),
        (&patient, "phone=(03) 5555 6473", true),
        (&patient, "email=p@example.org", true),
        (&patient, "email=(03) 5555 6473", false),
        (&patient, "telecom=phone|(03) 5555 6473", true),
        (&patient, "_id=pat-1", true),
        (&patient, "_id=pat-2,pat-1", true),
        (&patient, "_id=pat-2", false),
        (&patient, "_tag=urn:tags|vip", true),
        (&patient, "_tag=vip", true),
        (&patient, "_tag=urn:tags|other", false),
        (&observation, "code=http://loinc.org|9279-1", true),
        (&observation, "code=9279-1", true),
        (&observation, "code=http://snomed.info/sct|9279-1", false),
        (&observation, "code:text=respiratory", true),
        (&observation, "code:text=rr", true),
        (&observation, "code:text=heart", false),
        (&observation, "status=final,amended", true),
        (&observation, "status:missing=false", true),
        (&observation, "method:missing=true", true),
        (&observation, "method:missing=false", false),
    ]);
}

#[test]
fn references() {
    let patient = patient();
    let observation = observation();
    check_all(&[
        (&observation, "subject=Patient/pat-1", true),
        (&observation, "subject=pat-1", true),
        (&observation, "subject:Patient=pat-1", true),
        (&observation, "subject:Group=pat-1", false),
        (&observation, "subject=Patient/pat-2", false),
        (&observation, "patient=pat-1", true),
        (&observation, "patient=Patient/pat-1", true),
        (&observation, "encounter=Encounter/enc-1", true),
        (&patient, "general-practitioner=Practitioner/gp-7", true),
        (&patient, "general-practitioner=gp-7", true),
        (
            &patient,
            "organization=http://other.org/fhir/Organization/1",
            true,
        ),
        (&patient, "organization=Organization/1", false),
        (&patient, "link:missing=true", true),
    ]);
}

#[test]
fn dates_with_every_prefix() {
    let patient = patient();
    let observation = observation();
    check_all(&[
        (&patient, "birthdate=1974", true),
        (&patient, "birthdate=1974-12", true),
        (&patient, "birthdate=1974-12-25", true),
        (&patient, "birthdate=1974-12-26", false),
        (&patient, "birthdate=eq1974-12-25T10:00", false),
        (&patient, "birthdate=ne1975", true),
        (&patient, "birthdate=ne1974", false),
        (&patient, "birthdate=gt1974-12-24", true),
        (&patient, "birthdate=gt1974-12-25", false),
        (&patient, "birthdate=lt1975", true),
        (&patient, "birthdate=lt1974-12-25", false),
        (&patient, "birthdate=ge1974-12-25", true),
        (&patient, "birthdate=ge1974-12-26", false),
        (&patient, "birthdate=le1974-12-25", true),
        (&patient, "birthdate=le1974-12-24", false),
        (&patient, "birthdate=sa1974-12-24", true),
        (&patient, "birthdate=sa1974-12-25", false),
        (&patient, "birthdate=eb1974-12-26", true),
        (&patient, "birthdate=eb1974", false),
        // 46 years before "now": ap widens by ~4.6 years.
        (&patient, "birthdate=ap1978", true),
        (&patient, "birthdate=ap1985", false),
        (&patient, "birthdate=ge1970&birthdate=le1980", true),
        (&patient, "_lastUpdated=2020-05-06", true),
        (&patient, "_lastUpdated=2020-05-06T05:08:09Z", true),
        (&patient, "_lastUpdated=gt2020-05-06T05:08:09Z", false),
        (
            &patient,
            "_lastUpdated=lt2020-05-06T07:00:00%2B02:00",
            false,
        ),
        (&patient, "_lastUpdated=gt2020-05-06T07:00:00%2B02:00", true),
        (&observation, "date=2020-03-04", true),
        (&observation, "date=2020-03-04T10:30", false),
        (&observation, "date=ap2020-03-04T10:30", true),
        (&observation, "date=gt2020-03-04T10:30", true),
        (&observation, "date=lt2020-03-04T10:30", true),
        (&observation, "date=sa2020-03-04T10:30", false),
        (&observation, "date=eb2020-03-05", true),
    ]);
}

#[test]
fn quantities_and_numbers() {
    let observation = observation();
    let assessment = json!({"resourceType": "RiskAssessment", "id": "r", "prediction": [{"probabilityDecimal": 0.35}]});
    check_all(&[
        (&observation, "value-quantity=22.5", true),
        (&observation, "value-quantity=22", false),
        (&observation, "value-quantity=2.25e1", true),
        (&observation, "value-quantity=gt22", true),
        (&observation, "value-quantity=gt22.5", false),
        (&observation, "value-quantity=ge22.5", true),
        (&observation, "value-quantity=lt23", true),
        (&observation, "value-quantity=le22", false),
        (&observation, "value-quantity=ap21", true),
        (&observation, "value-quantity=ap19", false),
        (&observation, "value-quantity=ne22", true),
        (
            &observation,
            "value-quantity=22.5|http://unitsofmeasure.org|/min",
            true,
        ),
        (
            &observation,
            "value-quantity=22.5|http://unitsofmeasure.org|mg",
            false,
        ),
        (&observation, "value-quantity=22.5||/min", true),
        (&observation, "value-quantity=22.5||breaths/minute", true),
        (&observation, "value-quantity=gt20||mg", false),
        (&assessment, "probability=0.35", true),
        (&assessment, "probability=0.4", true),
        (&assessment, "probability=0.40", false),
        (&assessment, "probability=gt0.3", true),
        (&assessment, "probability=lt0.3", false),
    ]);
}

#[test]
fn uris_and_canonicals() {
    let value_set = json!({"resourceType": "ValueSet", "id": "v", "url": "http://example.org/fhir/ValueSet/colours|2.0"});
    let patient = patient();
    check_all(&[
        (
            &value_set,
            "url=http://example.org/fhir/ValueSet/colours",
            true,
        ),
        (
            &value_set,
            "url=http://example.org/fhir/ValueSet/colours|2.0",
            true,
        ),
        (
            &value_set,
            "url=http://example.org/fhir/ValueSet/shapes",
            false,
        ),
        (&value_set, "url:below=http://example.org/fhir/", true),
        (&value_set, "url:below=http://example.org/other/", false),
        (
            &value_set,
            "url:above=http://example.org/fhir/ValueSet/colours/extra",
            true,
        ),
        (
            &patient,
            "_profile=http://example.org/StructureDefinition/p",
            true,
        ),
    ]);
}

#[test]
fn chains_are_parsed_but_not_matched_in_memory() {
    let parsed = parse(
        "Observation",
        "subject:Patient.name=peter&patient.identifier=urn:x|1",
    )
    .unwrap();
    let chain = parsed.query.clauses[0].chain.as_ref().unwrap();
    assert_eq!(chain.target_type, "Patient");
    assert_eq!(chain.clause.param, "name");
    let inner = parsed.query.clauses[1].chain.as_ref().unwrap();
    assert_eq!(inner.target_type, "Patient");
    assert!(
        matches!(&inner.clause.predicates[0], Predicate::Token { system: Some(Some(s)), .. } if s == "urn:x")
    );
    assert!(!matches(
        &parsed.query.clauses,
        &registry().extract(&observation())
    ));
    let ambiguous = parse("Observation", "subject.name=peter").unwrap_err();
    assert!(
        matches!(ambiguous, SearchError::AmbiguousChain { .. }),
        "{ambiguous}"
    );
    assert!(ambiguous.to_string().contains("subject:"), "{ambiguous}");
}

#[test]
fn invalid_values_are_errors_naming_the_parameter() {
    for (resource_type, query, named) in [
        ("Patient", "birthdate=1974-13", "birthdate"),
        ("Patient", "birthdate=xx1974", "birthdate"),
        ("Patient", "birthdate=gt", "birthdate"),
        ("Observation", "value-quantity=abc", "value-quantity"),
        ("Observation", "value-quantity=5|mg", "value-quantity"),
        ("Patient", "gender:missing=maybe", "gender:missing"),
        ("Patient", "identifier=|", "identifier"),
        ("Patient", "_count=-1", "_count"),
        ("Patient", "_offset=x", "_offset"),
        ("Patient", "_total=some", "_total"),
        ("Patient", "_summary=all", "_summary"),
        ("Patient", "_include=Patient", "_include"),
        ("Observation", "subject=Nonsense/1", "subject"),
    ] {
        let error = parse(resource_type, query).expect_err(query);
        let message = error.to_string();
        assert!(
            message.contains(&format!("'{named}'")),
            "{query}: {message}"
        );
        assert!(message.contains("expected"), "{query}: {message}");
    }
    assert!(matches!(
        registry().parse(Some("Patients"), &[]),
        Err(SearchError::UnknownResourceType(_))
    ));
}

#[test]
fn unknown_parameters_and_modifiers_are_reported() {
    let parsed = parse("Patient", "foo=1&name:sounds=x&gender:in=http://vs&_has:Observation:patient:code=1&_include=*&_summary=true&_format=json&name=").unwrap();
    let names: Vec<&str> = parsed
        .ignored
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "foo",
            "name:sounds",
            "gender:in",
            "_has:Observation:patient:code",
            "_include",
            "_summary",
            "name"
        ]
    );
    assert!(parsed.ignored[0].1.contains("unknown search parameter"));
    assert!(parsed.query.clauses.is_empty());
}

#[test]
fn result_parameters() {
    let parsed = parse(
        "Observation",
        "_count=5000&_offset=40&_sort=-date,_id,nonsense&_total=none&_elements=status,code&_include=Observation:subject&_revinclude:iterate=Provenance:target&_summary=count",
    )
    .unwrap();
    let query = &parsed.query;
    assert_eq!(query.count, flare_search::MAX_COUNT);
    assert_eq!(query.offset, 40);
    assert_eq!(query.sort.len(), 2);
    assert!(query.sort[0].descending && query.sort[0].param == "date");
    assert_eq!(query.total, flare_search::TotalMode::None);
    assert!(query.count_only);
    assert_eq!(parsed.elements, ["status", "code"]);
    assert_eq!(query.includes[0].param, "subject");
    assert!(query.revincludes[0].iterate);
    assert_eq!(parsed.ignored.len(), 2, "{:?}", parsed.ignored);
    assert_eq!(
        parse("Patient", "").unwrap().query.count,
        flare_search::DEFAULT_COUNT
    );
}

#[test]
fn canonical_form_is_stable_and_reparses_to_the_same_query() {
    let first = parse("Observation", "subject:Patient=pat-1&code=http://loinc.org|9279-1,1234-5&date=eq2020&_count=10&date=lt2021-06").unwrap();
    let second = parse("Observation", "date=2020&date=lt2021-06&_count=10&code=http://loinc.org|9279-1,1234-5&subject=Patient/pat-1").unwrap();
    assert_eq!(first.canonical_params(), second.canonical_params());
    assert_eq!(
        first.to_query_string(10),
        "code=http://loinc.org|9279-1,1234-5&date=2020&date=lt2021-06&subject=Patient/pat-1&_count=10&_offset=10"
    );
    let reparsed = registry()
        .parse_at(Some("Observation"), &first.canonical_params(), NOW_MS)
        .unwrap();
    assert_eq!(reparsed.canonical_params(), first.canonical_params());
    assert_eq!(reparsed.query.clauses.len(), first.query.clauses.len());
    for clause in &first.query.clauses {
        assert!(reparsed.query.clauses.contains(clause), "{clause:?} lost");
    }
    let escaped = parse("Patient", "name=a\\,b&_elements=id").unwrap();
    assert_eq!(
        escaped.canonical_params()[0],
        ("name".to_owned(), "a\\,b".to_owned())
    );
    assert_eq!(escaped.query.clauses[0].predicates.len(), 1);
}

#[test]
fn prefixes_are_parsed() {
    let parsed = parse("Patient", "birthdate=sa2000").unwrap();
    assert!(matches!(
        parsed.query.clauses[0].predicates[0],
        Predicate::Date {
            prefix: Prefix::Sa,
            ..
        }
    ));
}

#[test]
fn system_level_search_knows_the_common_parameters() {
    let parsed = registry()
        .parse(None, &params_of("_id=1&_lastUpdated=gt2020&name=x"))
        .unwrap();
    assert_eq!(parsed.query.clauses.len(), 2);
    assert_eq!(parsed.ignored.len(), 1);
}

#[test]
fn capability_lists_searchable_parameters() {
    let rows = registry().capability("Patient");
    let name = rows
        .iter()
        .find(|row| row.code == "name")
        .expect("Patient has name");
    assert_eq!(name.kind, "string");
    assert_eq!(
        name.definition,
        "http://hl7.org/fhir/SearchParameter/Patient-name"
    );
    assert!(rows.iter().any(|row| row.code == "_lastUpdated"));
    assert!(
        !rows
            .iter()
            .any(|row| row.kind == "composite" || row.kind == "special")
    );
}

#[test]
fn extraction_indexes_the_expected_values() {
    let entries = registry().extract(&observation());
    let code: Vec<&IndexValue> = entries
        .iter()
        .filter(|entry| entry.param == "code")
        .map(|entry| &entry.value)
        .collect();
    // The coding (with its display for `:text`) and the concept's own text.
    assert_eq!(
        code,
        [
            &IndexValue::Token {
                system: Some("http://loinc.org".into()),
                code: Some("9279-1".into()),
                text: Some("respiratory rate".into())
            },
            &IndexValue::Token {
                system: None,
                code: None,
                text: Some("rr".into())
            },
        ]
    );
    let dates: Vec<&IndexValue> = entries
        .iter()
        .filter(|entry| entry.param == "date")
        .map(|entry| &entry.value)
        .collect();
    assert_eq!(
        dates,
        [&IndexValue::Date {
            low_ms: 1_583_316_000_000,
            high_ms: 1_583_319_600_999
        }]
    );
    // Contained references are not indexed.
    let links = registry()
        .extract(&patient())
        .into_iter()
        .filter(|entry| entry.param == "link")
        .count();
    assert_eq!(links, 0);
    assert!(
        registry()
            .extract(&json!({"resourceType": "NoSuchType"}))
            .is_empty()
    );
    assert!(registry().extract(&json!({"name": "x"})).is_empty());
}

/// Every official R4 example extracts (when `FLARE_R4_EXAMPLES` points at the
/// `hl7.fhir.r4.examples` package).
#[test]
fn official_examples_extract() {
    let Some(folder) = std::env::var_os("FLARE_R4_EXAMPLES") else {
        eprintln!("FLARE_R4_EXAMPLES not set: official examples skipped");
        return;
    };
    let mut resources = 0;
    let mut entries = 0;
    let mut empty = Vec::new();
    for file in std::fs::read_dir(&folder).expect("FLARE_R4_EXAMPLES is a folder") {
        let path = file.expect("readable folder").path();
        if path.extension().is_none_or(|extension| extension != "json")
            || path
                .file_name()
                .is_some_and(|name| name == "package.json" || name == ".index.json")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        let Ok(resource) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if resource.get("resourceType").is_none() {
            continue;
        }
        let extracted = registry().extract(&resource);
        resources += 1;
        entries += extracted.len();
        if extracted.is_empty() {
            empty.push(
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    eprintln!(
        "{resources} examples, {entries} index entries, {} with none",
        empty.len()
    );
    assert!(
        resources > 5000,
        "only {resources} examples found in {folder:?}"
    );
    // Every resource with an id has at least `_id`.
    assert!(empty.len() < resources / 100, "{empty:?}");
}
