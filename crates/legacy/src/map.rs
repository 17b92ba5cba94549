//! The per-type mapping rules. DSTU2 is first brought to STU3 (the official
//! R2→R3 maps), then STU3 to R4 (the R3→R4 maps), so each rule is written
//! once. The input may be loose JSON from [`crate::xml`] (single values where
//! arrays are due, primitives as strings), so rules read values tolerantly;
//! cardinality and primitive types are fixed afterwards by [`crate::conform`].

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::{FhirVersion, Unmapped};

type Obj = Map<String, Value>;

/// The system URL of CVX in R4.
pub const CVX: &str = "http://hl7.org/fhir/sid/cvx";
/// The non-standard CVX system the sample-patient generators (and other
/// legacy feeds) use.
pub const LEGACY_CVX: &str = "http://www2a.cdc.gov/vaccines/IIS/IISStandards/vaccines.asp?rpt=cvx";

/// Resource types renamed between versions.
const RENAMED_TYPES: &[(&str, &str)] = &[("MedicationOrder", "MedicationRequest")];

struct Mapper<'a> {
    version: FhirVersion,
    unmapped: &'a mut Vec<Unmapped>,
    dropped: &'a mut BTreeMap<String, u64>,
}

/// Maps a resource or Bundle; `None` when the document itself has no mapping
/// (it is then in `unmapped`).
pub(crate) fn document(
    value: Value,
    version: FhirVersion,
    unmapped: &mut Vec<Unmapped>,
    dropped: &mut BTreeMap<String, u64>,
) -> Option<Value> {
    let mut mapper = Mapper {
        version,
        unmapped,
        dropped,
    };
    let mut mapped = mapper.resource(value)?;
    rewrite_systems_and_references(&mut mapped, 0);
    Some(mapped)
}

/// `Type/id` of a resource, for messages.
pub(crate) fn describe(resource: &Value) -> String {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("resource");
    match resource.get("id").and_then(first_str) {
        Some(id) => format!("{resource_type}/{id}"),
        None => resource_type.to_owned(),
    }
}

impl Mapper<'_> {
    fn resource(&mut self, value: Value) -> Option<Value> {
        let Value::Object(mut object) = value else {
            return None;
        };
        let resource_type = object
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(contained) = object.remove("contained") {
            let mapped: Vec<Value> = items(contained)
                .into_iter()
                .filter_map(|inner| self.resource(inner))
                .collect();
            if !mapped.is_empty() {
                object.insert("contained".into(), Value::Array(mapped));
            }
        }
        if resource_type == "Bundle" {
            self.bundle(&mut object);
            return Some(Value::Object(object));
        }
        // Profiles name version-specific StructureDefinitions; they do not hold for R4.
        if let Some(Value::Object(meta)) = object.get_mut("meta")
            && meta.remove("profile").is_some()
        {
            self.drop_count(&format!("{resource_type}.meta.profile"));
        }
        let mapped = if self.version == FhirVersion::Dstu2 {
            // DSTU2 goes through STU3; the STU3 type may differ (MedicationOrder).
            if dstu2_to_stu3(&resource_type, &mut object) {
                let stu3_type = object
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                stu3_to_r4(&stu3_type, &mut object, self)
            } else {
                false
            }
        } else {
            stu3_to_r4(&resource_type, &mut object, self)
        };
        if !mapped {
            self.unmapped.push(Unmapped {
                id: object.get("id").and_then(first_str).map(str::to_owned),
                reason: format!(
                    "{} {resource_type} has no R4 mapping (mapped: Patient, Practitioner, \
                     Encounter, Condition, Observation, Immunization, MedicationOrder/\
                     MedicationRequest, MedicationStatement, AllergyIntolerance, Bundle)",
                    self.version.as_str().to_uppercase()
                ),
                resource_type,
            });
            return None;
        }
        Some(Value::Object(object))
    }

    fn bundle(&mut self, bundle: &mut Obj) {
        let Some(entries) = bundle.remove("entry") else {
            return;
        };
        let mut mapped_entries = Vec::new();
        for entry in items(entries) {
            let Value::Object(mut entry) = entry else {
                continue;
            };
            if let Some(resource) = entry.remove("resource") {
                match self.resource(resource) {
                    Some(mapped) => {
                        entry.insert("resource".into(), mapped);
                    }
                    // Reported in `unmapped`; the entry would have nothing to write.
                    None => continue,
                }
            }
            mapped_entries.push(Value::Object(entry));
        }
        if !mapped_entries.is_empty() {
            bundle.insert("entry".into(), Value::Array(mapped_entries));
        }
    }

    fn drop_count(&mut self, path: &str) {
        *self.dropped.entry(path.to_owned()).or_default() += 1;
    }
}

// ------------------------------------------------------------- DSTU2 → STU3

/// Applies the R2→R3 rules; `false` when the type has no mapping.
fn dstu2_to_stu3(resource_type: &str, o: &mut Obj) -> bool {
    match resource_type {
        "Patient" => rename(o, "careProvider", "generalPractitioner"),
        // Practitioner.practitionerRole became the PractitionerRole resource in STU3;
        // it has no place in Practitioner and is dropped (and counted) by conform.
        "Practitioner" => {}
        "Encounter" => {
            rename(o, "patient", "subject");
            if let Some(class) = o.remove("class") {
                let code = first_str(&class).unwrap_or_default();
                o.insert("class".into(), encounter_class(code));
            }
            rename(o, "indication", "diagnosis");
            if let Some(Value::Array(_) | Value::Object(_)) = o.get("diagnosis") {
                let conditions = o.remove("diagnosis").map(items).unwrap_or_default();
                let diagnosis: Vec<Value> = conditions
                    .into_iter()
                    .map(|condition| json!({"condition": condition}))
                    .collect();
                o.insert("diagnosis".into(), Value::Array(diagnosis));
            }
        }
        "Condition" => {
            rename(o, "patient", "subject");
            rename(o, "encounter", "context");
            rename(o, "dateRecorded", "assertedDate");
            // The sample-patient generator writes `abatementDate`; DSTU2 names it abatementDateTime.
            rename(o, "abatementDate", "abatementDateTime");
            notes_to_annotation(o, "notes", "note");
            map_code(o, "clinicalStatus", |code| match code {
                "relapse" => "recurrence",
                other => other,
            });
            each_object(o, "category", |category| {
                each_object(category, "coding", |coding| {
                    if coding.get("system").and_then(first_str)
                        == Some("http://hl7.org/fhir/condition-category")
                    {
                        map_code(coding, "code", |code| match code {
                            "diagnosis" => "encounter-diagnosis",
                            _ => "problem-list-item",
                        });
                    }
                });
            });
        }
        "Observation" => {
            rename(o, "comments", "comment");
            rename(o, "encounter", "context");
            each_object(o, "referenceRange", |range| {
                rename(range, "meaning", "appliesTo");
            });
        }
        "Immunization" => {
            rename(o, "wasNotGiven", "notGiven");
            if let Some(reported) = o.remove("reported").as_ref().and_then(flag) {
                o.insert("primarySource".into(), Value::Bool(!reported));
            }
            let mut practitioners = Vec::new();
            for (key, role) in [("performer", "AP"), ("requester", "OP")] {
                if let Some(actor) = o.remove(key) {
                    practitioners.push(json!({
                        "role": {"coding": [{"system": "http://hl7.org/fhir/v2/0443", "code": role}]},
                        "actor": actor,
                    }));
                }
            }
            if !practitioners.is_empty() {
                o.insert("practitioner".into(), Value::Array(practitioners));
            }
            // DSTU2 used MedicationAdministration statuses; STU3 keeps completed and
            // entered-in-error only.
            map_code(o, "status", |code| match code {
                "entered-in-error" => "entered-in-error",
                _ => "completed",
            });
        }
        "MedicationOrder" => {
            o.insert("resourceType".into(), json!("MedicationRequest"));
            o.insert("intent".into(), json!("order"));
            rename(o, "dateWritten", "authoredOn");
            rename(o, "patient", "subject");
            rename(o, "encounter", "context");
            if let Some(prescriber) = o.remove("prescriber") {
                o.insert("requester".into(), json!({"agent": prescriber}));
            }
            rename(o, "reasonCodeableConcept", "reasonCode");
            notes_to_annotation(o, "note", "note");
            each_object(o, "dosageInstruction", dosage_dstu2_to_stu3);
            each_object(o, "dispenseRequest", |request| {
                // STU3 names the medication once, on the request itself.
                request.remove("medicationCodeableConcept");
                request.remove("medicationReference");
            });
            // dateEnded, reasonEnded and substitution.type have no STU3 place; conform
            // drops and counts them.
        }
        "MedicationStatement" => {
            rename(o, "patient", "subject");
            if let Some(not_taken) = o.remove("wasNotTaken").as_ref().and_then(flag) {
                o.insert("taken".into(), json!(if not_taken { "n" } else { "y" }));
            }
            rename(o, "reasonForUseCodeableConcept", "reasonCode");
            rename(o, "reasonForUseReference", "reasonReference");
            rename(o, "supportingInformation", "derivedFrom");
            notes_to_annotation(o, "note", "note");
            each_object(o, "dosage", dosage_dstu2_to_stu3);
        }
        "AllergyIntolerance" => {
            rename(o, "substance", "code");
            rename(o, "recordedDate", "assertedDate");
            rename(o, "reporter", "asserter");
            rename(o, "lastOccurence", "lastOccurrence");
            rename(o, "onset", "onsetDateTime");
            if let Some(status) = o.remove("status") {
                let (clinical, verification) = match first_str(&status).unwrap_or_default() {
                    "active" => (Some("active"), "confirmed"),
                    "unconfirmed" => (Some("active"), "unconfirmed"),
                    "confirmed" => (Some("active"), "confirmed"),
                    "inactive" => (Some("inactive"), "confirmed"),
                    "resolved" => (Some("resolved"), "confirmed"),
                    "refuted" => (None, "refuted"),
                    "entered-in-error" => (None, "entered-in-error"),
                    _ => (None, "unconfirmed"),
                };
                if let Some(clinical) = clinical {
                    o.insert("clinicalStatus".into(), json!(clinical));
                }
                o.insert("verificationStatus".into(), json!(verification));
            }
            map_code(o, "criticality", |code| match code {
                "CRITL" => "low",
                "CRITH" => "high",
                "CRITU" => "unable-to-assess",
                other => other,
            });
            if o.get("category").and_then(first_str) == Some("other") {
                o.remove("category");
            }
            each_object(o, "reaction", |reaction| {
                reaction.remove("certainty");
                notes_to_annotation(reaction, "note", "note");
            });
        }
        _ => return false,
    }
    true
}

/// DSTU2 Encounter.class codes to the v3 ActCode concepts STU3 and R4 use.
fn encounter_class(code: &str) -> Value {
    let (system, code, display) = match code {
        "inpatient" => ("v3-ActCode", "IMP", "inpatient encounter"),
        "outpatient" | "ambulatory" => ("v3-ActCode", "AMB", "ambulatory"),
        "emergency" => ("v3-ActCode", "EMER", "emergency"),
        "home" => ("v3-ActCode", "HH", "home health"),
        "field" => ("v3-ActCode", "FLD", "field"),
        "daytime" => ("v3-ActCode", "SS", "short stay"),
        "virtual" => ("v3-ActCode", "VR", "virtual"),
        // R4 requires a class; "other" and absent values have no ActCode.
        _ => ("v3-NullFlavor", "UNK", "unknown"),
    };
    json!({
        "system": format!("http://terminology.hl7.org/CodeSystem/{system}"),
        "code": code,
        "display": display,
    })
}

fn dosage_dstu2_to_stu3(dosage: &mut Obj) {
    rename(dosage, "additionalInstructions", "additionalInstruction");
    rename(dosage, "siteCodeableConcept", "site");
    rename(dosage, "quantityQuantity", "doseQuantity");
    rename(dosage, "quantityRange", "doseRange");
    each_object(dosage, "timing", |timing| {
        each_object(timing, "repeat", |repeat| {
            rename(repeat, "periodUnits", "periodUnit");
            rename(repeat, "durationUnits", "durationUnit");
            rename(repeat, "boundsQuantity", "boundsDuration");
        });
    });
}

// --------------------------------------------------------------- STU3 → R4

/// Applies the R3→R4 rules; `false` when the type has no mapping.
fn stu3_to_r4(resource_type: &str, o: &mut Obj, mapper: &mut Mapper<'_>) -> bool {
    match resource_type {
        "Patient" | "Practitioner" => {}
        "Encounter" => {
            rename(o, "reason", "reasonCode");
            rename(o, "incomingReferral", "basedOn");
            each_object(o, "diagnosis", |diagnosis| rename(diagnosis, "role", "use"));
            if !o.contains_key("class") {
                o.insert("class".into(), encounter_class(""));
            }
        }
        "Condition" => {
            rename(o, "assertedDate", "recordedDate");
            rename(o, "context", "encounter");
            to_concept(
                o,
                "clinicalStatus",
                "http://terminology.hl7.org/CodeSystem/condition-clinical",
                |code| Some(code),
            );
            to_concept(
                o,
                "verificationStatus",
                "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                |code| (code != "unknown").then_some(code),
            );
            if o.remove("abatementBoolean").is_some() {
                mapper.drop_count("Condition.abatementBoolean");
            }
        }
        "Observation" => {
            rename(o, "context", "encounter");
            notes_to_annotation(o, "comment", "note");
            for related in o.remove("related").map(items).unwrap_or_default() {
                let kind = related.get("type").and_then(first_str).unwrap_or("");
                let target = related.get("target").cloned();
                let key = match kind {
                    "has-member" => "hasMember",
                    "derived-from" => "derivedFrom",
                    _ => {
                        mapper.drop_count(&format!("Observation.related({kind})"));
                        continue;
                    }
                };
                if let Some(target) = target {
                    push(o, key, target);
                }
            }
        }
        "Immunization" => immunization_stu3_to_r4(o),
        "MedicationRequest" => {
            rename(o, "context", "encounter");
            if let Some(requester) = o.remove("requester") {
                let agent = requester.get("agent").cloned();
                match agent {
                    Some(agent) => {
                        o.insert("requester".into(), agent);
                    }
                    None => mapper.drop_count("MedicationRequest.requester"),
                }
            }
            if o.remove("definition").is_some() {
                mapper.drop_count("MedicationRequest.definition");
            }
            each_object(o, "dosageInstruction", dosage_stu3_to_r4);
            each_object(o, "substitution", |substitution| {
                rename(substitution, "allowed", "allowedBoolean");
            });
            o.entry("intent").or_insert_with(|| json!("order"));
            o.entry("status").or_insert_with(|| json!("unknown"));
        }
        "MedicationStatement" => {
            if let Some(taken) = o.remove("taken") {
                match first_str(&taken) {
                    Some("n") => {
                        o.insert("status".into(), json!("not-taken"));
                    }
                    Some("unk") if !o.contains_key("status") => {
                        o.insert("status".into(), json!("unknown"));
                    }
                    _ => {}
                }
            }
            rename(o, "reasonNotTaken", "statusReason");
            each_object(o, "dosage", dosage_stu3_to_r4);
            o.entry("status").or_insert_with(|| json!("unknown"));
        }
        "AllergyIntolerance" => {
            rename(o, "assertedDate", "recordedDate");
            to_concept(
                o,
                "clinicalStatus",
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                |code| Some(code),
            );
            to_concept(
                o,
                "verificationStatus",
                "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                |code| Some(code),
            );
        }
        _ => return false,
    }
    true
}

fn immunization_stu3_to_r4(o: &mut Obj) {
    let not_given = o
        .remove("notGiven")
        .as_ref()
        .and_then(flag)
        .unwrap_or(false);
    let status = match o.get("status").and_then(first_str) {
        Some("entered-in-error") => "entered-in-error",
        _ if not_given => "not-done",
        _ => "completed",
    };
    o.insert("status".into(), json!(status));
    rename(o, "date", "occurrenceDateTime");
    if !o.keys().any(|key| key.starts_with("occurrence")) {
        // R4 requires an occurrence; the source did not say when.
        o.insert("occurrenceString".into(), json!("unknown"));
    }
    if let Some(Value::Object(mut explanation)) = o.remove("explanation") {
        if let Some(reason) = explanation.remove("reason") {
            o.insert("reasonCode".into(), reason);
        }
        if let Some(reason_not_given) = explanation.remove("reasonNotGiven")
            && not_given
        {
            // R4 statusReason holds one concept.
            if let Some(first) = items(reason_not_given).into_iter().next() {
                o.insert("statusReason".into(), first);
            }
        }
    }
    if let Some(practitioners) = o.remove("practitioner") {
        let performers: Vec<Value> = items(practitioners)
            .into_iter()
            .map(|practitioner| {
                let mut performer = Obj::new();
                if let Some(role) = practitioner.get("role") {
                    performer.insert("function".into(), role.clone());
                }
                if let Some(actor) = practitioner.get("actor") {
                    performer.insert("actor".into(), actor.clone());
                }
                Value::Object(performer)
            })
            .collect();
        o.insert("performer".into(), Value::Array(performers));
    }
    if let Some(protocols) = o.remove("vaccinationProtocol") {
        let applied: Vec<Value> = items(protocols)
            .into_iter()
            .filter_map(|protocol| {
                let dose = protocol.get("doseSequence").and_then(positive_int)?;
                let mut out = Obj::new();
                out.insert("doseNumberPositiveInt".into(), json!(dose));
                for key in ["series", "authority", "targetDisease"] {
                    if let Some(value) = protocol.get(key) {
                        out.insert(key.into(), value.clone());
                    }
                }
                if let Some(doses) = protocol.get("seriesDoses").and_then(positive_int) {
                    out.insert("seriesDosesPositiveInt".into(), json!(doses));
                }
                Some(Value::Object(out))
            })
            .collect();
        if !applied.is_empty() {
            o.insert("protocolApplied".into(), Value::Array(applied));
        }
    }
}

fn dosage_stu3_to_r4(dosage: &mut Obj) {
    let mut dose_and_rate = Obj::new();
    for key in [
        "doseQuantity",
        "doseRange",
        "doseSimpleQuantity",
        "rateRatio",
        "rateRange",
        "rateQuantity",
        "rateSimpleQuantity",
    ] {
        if let Some(value) = dosage.remove(key) {
            let key = key.replace("SimpleQuantity", "Quantity");
            dose_and_rate.insert(key, value);
        }
    }
    if !dose_and_rate.is_empty() {
        dosage.insert("doseAndRate".into(), json!([dose_and_rate]));
    }
}

// ---------------------------------------------------------- whole document

/// Terminology URLs R4 moved to terminology.hl7.org, and the legacy CVX URL.
pub(crate) fn r4_system(system: &str) -> Option<String> {
    if system == LEGACY_CVX || system == "urn:oid:2.16.840.1.113883.12.292" {
        return Some(CVX.to_owned());
    }
    if let Some(table) = system.strip_prefix("http://hl7.org/fhir/v2/") {
        return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{table}"));
    }
    if let Some(code_system) = system.strip_prefix("http://hl7.org/fhir/v3/") {
        return Some(format!(
            "http://terminology.hl7.org/CodeSystem/v3-{code_system}"
        ));
    }
    match system {
        "http://hl7.org/fhir/identifier-type" => {
            Some("http://terminology.hl7.org/CodeSystem/v2-0203".to_owned())
        }
        "http://hl7.org/fhir/observation-category"
        | "http://hl7.org/fhir/condition-category"
        | "http://hl7.org/fhir/condition-clinical"
        | "http://hl7.org/fhir/condition-ver-status" => {
            let name = system.trim_start_matches("http://hl7.org/fhir/");
            Some(format!("http://terminology.hl7.org/CodeSystem/{name}"))
        }
        _ => None,
    }
}

/// Renames types in a reference or URL (`MedicationOrder/1` →
/// `MedicationRequest/1`, also inside absolute URLs).
fn r4_reference(reference: &str) -> Option<String> {
    RENAMED_TYPES.iter().find_map(|(old, new)| {
        let prefix = format!("{old}/");
        if reference.starts_with(&prefix) {
            return Some(reference.replacen(old, new, 1));
        }
        let infix = format!("/{old}/");
        reference
            .contains(&infix)
            .then(|| reference.replacen(&infix, &format!("/{new}/"), 1))
    })
}

fn rewrite_systems_and_references(value: &mut Value, depth: usize) {
    if depth > 128 {
        return;
    }
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                match (key.as_str(), &*child) {
                    ("system", Value::String(system)) => {
                        if let Some(r4) = r4_system(system) {
                            *child = Value::String(r4);
                        }
                    }
                    ("reference" | "url" | "fullUrl", Value::String(reference)) => {
                        if let Some(r4) = r4_reference(reference) {
                            *child = Value::String(r4);
                        }
                    }
                    _ => rewrite_systems_and_references(child, depth + 1),
                }
            }
        }
        Value::Array(values) => {
            for child in values {
                rewrite_systems_and_references(child, depth + 1);
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------------ helpers

/// An array's items, or the single value as one item.
fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(values) => values,
        single => vec![single],
    }
}

/// A string, or the first string of an array.
fn first_str(value: &Value) -> Option<&str> {
    match value {
        Value::String(text) => Some(text),
        Value::Array(values) => values.first().and_then(Value::as_str),
        _ => None,
    }
}

/// A boolean written as JSON or as the XML text `true`/`false`.
fn flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => match text.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        Value::Array(values) => values.first().and_then(flag),
        _ => None,
    }
}

fn positive_int(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
    .filter(|number| *number > 0)
}

/// Renames a property and its `_name` sibling.
fn rename(o: &mut Obj, from: &str, to: &str) {
    if from == to {
        return;
    }
    if let Some(value) = o.remove(from) {
        o.insert(to.to_owned(), value);
    }
    if let Some(extra) = o.remove(&format!("_{from}")) {
        o.insert(format!("_{to}"), extra);
    }
}

/// Runs `apply` on the object (or each object of the array) under `key`.
fn each_object(o: &mut Obj, key: &str, mut apply: impl FnMut(&mut Obj)) {
    match o.get_mut(key) {
        Some(Value::Object(object)) => apply(object),
        Some(Value::Array(values)) => {
            for value in values {
                if let Value::Object(object) = value {
                    apply(object);
                }
            }
        }
        _ => {}
    }
}

/// Translates a code value in place.
fn map_code(o: &mut Obj, key: &str, translate: impl Fn(&str) -> &str) {
    if let Some(code) = o.get(key).and_then(first_str) {
        let translated = translate(code).to_owned();
        o.insert(key.to_owned(), Value::String(translated));
    }
}

/// A plain code (before R4) becomes a CodeableConcept of `system`; a code the
/// translation refuses is removed.
fn to_concept(o: &mut Obj, key: &str, system: &str, translate: impl Fn(&str) -> Option<&str>) {
    let Some(value) = o.remove(key) else {
        return;
    };
    match first_str(&value) {
        Some(code) => {
            if let Some(code) = translate(code) {
                o.insert(
                    key.to_owned(),
                    json!({"coding": [{"system": system, "code": code}]}),
                );
            }
        }
        // Already a concept.
        None => {
            o.insert(key.to_owned(), value);
        }
    }
    o.remove(&format!("_{key}"));
}

/// A string note (or several) becomes Annotations.
fn notes_to_annotation(o: &mut Obj, from: &str, to: &str) {
    let Some(notes) = o.remove(from) else {
        return;
    };
    let annotations: Vec<Value> = items(notes)
        .into_iter()
        .map(|note| match note {
            Value::String(text) => json!({"text": text}),
            other => other,
        })
        .collect();
    o.insert(to.to_owned(), Value::Array(annotations));
}

fn push(o: &mut Obj, key: &str, value: Value) {
    match o.remove(key) {
        Some(existing) => {
            let mut values = items(existing);
            values.push(value);
            o.insert(key.to_owned(), Value::Array(values));
        }
        None => {
            o.insert(key.to_owned(), Value::Array(vec![value]));
        }
    }
}
