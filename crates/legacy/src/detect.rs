//! Which FHIR version a document is written in, from its content.
//!
//! Markers are element names that R4 does not have for that type, resource
//! types R4 does not have, and value shapes R4 does not allow (a `code` where
//! R4 has a CodeableConcept). A test checks that no marker element exists in
//! R4, so R4 input can never be taken for legacy input.

use serde_json::Value;

use crate::FhirVersion;

/// Resource types that exist in DSTU2 only, or in STU3 only.
const DSTU2_TYPES: &[&str] = &[
    "MedicationOrder",
    "Order",
    "OrderResponse",
    "DiagnosticOrder",
    "DeviceUseRequest",
    "Conformance",
];
const STU3_TYPES: &[&str] = &[
    "ProcedureRequest",
    "ReferralRequest",
    "ProcessRequest",
    "ProcessResponse",
    "DeviceComponent",
    "EligibilityRequest",
    "EligibilityResponse",
    "DataElement",
    "Sequence",
];

/// `(resource type, element)` that mark DSTU2 or STU3.
pub(crate) const DSTU2_ELEMENTS: &[(&str, &str)] = &[
    ("Immunization", "wasNotGiven"),
    ("Immunization", "reported"),
    ("Encounter", "patient"),
    ("Condition", "patient"),
    ("Condition", "dateRecorded"),
    ("Condition", "notes"),
    ("AllergyIntolerance", "substance"),
    ("AllergyIntolerance", "status"),
    ("MedicationStatement", "patient"),
    ("MedicationStatement", "wasNotTaken"),
    ("Observation", "comments"),
    ("Practitioner", "practitionerRole"),
    ("Patient", "careProvider"),
];
pub(crate) const STU3_ELEMENTS: &[(&str, &str)] = &[
    ("Immunization", "notGiven"),
    ("Immunization", "date"),
    ("Immunization", "practitioner"),
    ("Immunization", "explanation"),
    ("Condition", "assertedDate"),
    ("Condition", "context"),
    ("AllergyIntolerance", "assertedDate"),
    ("MedicationRequest", "context"),
    ("MedicationStatement", "taken"),
    ("Observation", "context"),
    ("Observation", "comment"),
    ("Observation", "related"),
    ("Encounter", "reason"),
];
/// Elements whose value is a plain code before R4 and a CodeableConcept or
/// Coding in R4.
const CODE_BEFORE_R4: &[(&str, &str, FhirVersion)] = &[
    ("Condition", "clinicalStatus", FhirVersion::Stu3),
    ("Condition", "verificationStatus", FhirVersion::Stu3),
    ("AllergyIntolerance", "clinicalStatus", FhirVersion::Stu3),
    (
        "AllergyIntolerance",
        "verificationStatus",
        FhirVersion::Stu3,
    ),
    ("Encounter", "class", FhirVersion::Dstu2),
];

/// The oldest version any resource in the document (Bundle entries and
/// contained resources included) shows; R4 when nothing older shows.
pub fn detect(value: &Value) -> FhirVersion {
    let mut oldest = FhirVersion::R4;
    visit(value, &mut oldest, 0);
    oldest
}

fn visit(value: &Value, oldest: &mut FhirVersion, depth: usize) {
    if depth > 64 || *oldest == FhirVersion::Dstu2 {
        return;
    }
    match value {
        Value::Object(object) => {
            if let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) {
                let version = resource_version(resource_type, object);
                *oldest = (*oldest).min(version);
            }
            // Terminology URLs R4 moved (v2/v3 tables, categories) or never used (the
            // legacy CVX URL) show an older document, even in types shared with R4.
            if let Some(Value::String(system)) = object.get("system")
                && crate::map::r4_system(system).is_some()
            {
                *oldest = (*oldest).min(FhirVersion::Stu3);
            }
            for child in object.values() {
                if child.is_object() || child.is_array() {
                    visit(child, oldest, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                visit(item, oldest, depth + 1);
            }
        }
        _ => {}
    }
}

fn resource_version(resource_type: &str, object: &serde_json::Map<String, Value>) -> FhirVersion {
    if DSTU2_TYPES.contains(&resource_type) {
        return FhirVersion::Dstu2;
    }
    if STU3_TYPES.contains(&resource_type) {
        return FhirVersion::Stu3;
    }
    let has = |markers: &[(&str, &str)]| {
        markers
            .iter()
            .any(|(marker_type, key)| *marker_type == resource_type && object.contains_key(*key))
    };
    if has(DSTU2_ELEMENTS) {
        return FhirVersion::Dstu2;
    }
    let mut version = FhirVersion::R4;
    for (marker_type, key, older) in CODE_BEFORE_R4 {
        if *marker_type == resource_type && object.get(*key).is_some_and(Value::is_string) {
            version = version.min(*older);
        }
    }
    if has(STU3_ELEMENTS) {
        version = version.min(FhirVersion::Stu3);
    }
    version
}

#[cfg(test)]
mod tests {
    use flare_fhir::model;
    use serde_json::json;

    use super::*;

    #[test]
    fn no_marker_element_exists_in_r4() {
        for (resource_type, key) in DSTU2_ELEMENTS.iter().chain(STU3_ELEMENTS) {
            assert!(
                model::resolve_json_key(resource_type, key).is_none(),
                "{resource_type}.{key} exists in R4"
            );
        }
        for resource_type in DSTU2_TYPES.iter().chain(STU3_TYPES) {
            assert!(!model::is_resource_type(resource_type), "{resource_type}");
        }
    }

    #[test]
    fn versions_from_content() {
        let r4 = json!({"resourceType": "Immunization", "status": "completed",
            "occurrenceDateTime": "2020", "patient": {"reference": "Patient/1"},
            "vaccineCode": {"text": "x"}});
        assert_eq!(detect(&r4), FhirVersion::R4);
        let stu3 = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "Condition", "clinicalStatus": "active"}}]});
        assert_eq!(detect(&stu3), FhirVersion::Stu3);
        let dstu2 = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Immunization", "notGiven": false}},
            {"resource": {"resourceType": "MedicationOrder"}}]});
        assert_eq!(detect(&dstu2), FhirVersion::Dstu2);
    }
}
