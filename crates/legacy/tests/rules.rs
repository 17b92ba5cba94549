//! One test per mapping rule, through the public API with DSTU2 XML and STU3 JSON.

use flare_legacy::{DeclaredVersion, FhirVersion, InputFormat, LegacyError, convert};
use serde_json::{Value, json};

fn dstu2(resource_xml: &str) -> Value {
    let xml = format!(
        r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>
           <entry><resource>{resource_xml}</resource>
           <request><method value="PUT"/><url value="X/1"/></request></entry></Bundle>"#
    );
    let converted = convert(xml.as_bytes(), InputFormat::Xml, DeclaredVersion::Auto)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(converted.version, FhirVersion::Dstu2);
    assert!(converted.unmapped.is_empty(), "{:?}", converted.unmapped);
    let bundle = converted.resources.into_iter().next().unwrap();
    assert!(flare_fhir::validate(&bundle).is_ok(), "{bundle}");
    bundle["entry"][0]["resource"].clone()
}

const LEGACY_CVX: &str = "http://www2a.cdc.gov/vaccines/IIS/IISStandards/vaccines.asp?rpt=cvx";

fn immunization(was_not_given: &str) -> Value {
    dstu2(&format!(
        r#"<Immunization><id value="i1"/>
             <date value="2010-03-11"/>
             <vaccineCode><coding><system value="{LEGACY_CVX}"/><code value="03"/></coding></vaccineCode>
             <patient><reference value="Patient/p1"/></patient>
             <wasNotGiven value="{was_not_given}"/>
             <reported value="false"/>
             <explanation><reasonNotGiven><coding><system value="http://hl7.org/fhir/v3/ActReason"/>
               <code value="MEDPREC"/></coding></reasonNotGiven></explanation>
           </Immunization>"#
    ))
}

#[test]
fn immunization_given_is_completed_with_occurrence_and_r4_cvx() {
    let given = immunization("false");
    assert_eq!(given["status"], "completed");
    assert_eq!(given["occurrenceDateTime"], "2010-03-11");
    assert_eq!(given["primarySource"], json!(true));
    assert_eq!(
        given["vaccineCode"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/cvx"
    );
    assert_eq!(given["vaccineCode"]["coding"][0]["code"], "03");
    assert!(
        given.get("statusReason").is_none(),
        "a reason not given only when not given"
    );
    assert!(given.get("date").is_none() && given.get("wasNotGiven").is_none());
}

#[test]
fn immunization_not_given_is_not_done_with_its_reason() {
    let not_given = immunization("true");
    assert_eq!(not_given["status"], "not-done");
    assert_eq!(not_given["statusReason"]["coding"][0]["code"], "MEDPREC");
    assert_eq!(
        not_given["statusReason"]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    );
}

#[test]
fn medication_order_becomes_a_medication_request() {
    let request = dstu2(
        r#"<MedicationOrder><id value="m1"/>
             <dateWritten value="2008-04-05"/>
             <status value="active"/>
             <patient><reference value="Patient/p1"/></patient>
             <prescriber><reference value="Practitioner/d1"/></prescriber>
             <medicationCodeableConcept><coding><system value="http://www.nlm.nih.gov/research/umls/rxnorm"/>
               <code value="582620"/></coding></medicationCodeableConcept>
             <dosageInstruction>
               <timing><repeat><boundsPeriod><start value="2008-04-05"/></boundsPeriod>
                 <frequency value="2"/><period value="1"/><periodUnits value="d"/></repeat></timing>
               <asNeededBoolean value="false"/>
               <doseQuantity><value value="10"/><unit value="mL"/></doseQuantity>
               <text value="10 mL bid"/>
             </dosageInstruction>
             <dispenseRequest><numberOfRepeatsAllowed value="1"/>
               <expectedSupplyDuration><value value="30"/><unit value="days"/></expectedSupplyDuration>
             </dispenseRequest>
           </MedicationOrder>"#,
    );
    assert_eq!(request["resourceType"], "MedicationRequest");
    assert_eq!(request["intent"], "order");
    assert_eq!(request["status"], "active");
    assert_eq!(request["authoredOn"], "2008-04-05");
    assert_eq!(request["subject"]["reference"], "Patient/p1");
    assert_eq!(request["requester"]["reference"], "Practitioner/d1");
    let dosage = &request["dosageInstruction"][0];
    assert_eq!(dosage["timing"]["repeat"]["periodUnit"], "d");
    assert_eq!(dosage["timing"]["repeat"]["frequency"], json!(2));
    assert_eq!(dosage["asNeededBoolean"], json!(false));
    assert_eq!(dosage["doseAndRate"][0]["doseQuantity"]["value"], json!(10));
    assert_eq!(
        request["dispenseRequest"]["numberOfRepeatsAllowed"],
        json!(1)
    );
}

#[test]
fn references_and_request_urls_follow_the_renamed_type() {
    let xml = r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>
      <entry><resource><MedicationOrder><id value="m1"/>
        <patient><reference value="Patient/p1"/></patient>
        <medicationCodeableConcept><text value="x"/></medicationCodeableConcept>
      </MedicationOrder></resource>
      <request><method value="PUT"/><url value="MedicationOrder/m1"/></request></entry>
      <entry><resource><MedicationDispense><id value="d1"/>
        <authorizingPrescription><reference value="MedicationOrder/m1"/></authorizingPrescription>
      </MedicationDispense></resource>
      <request><method value="PUT"/><url value="MedicationDispense/d1"/></request></entry>
    </Bundle>"#;
    let converted = convert(xml.as_bytes(), InputFormat::Xml, DeclaredVersion::Auto).unwrap();
    let bundle = &converted.resources[0];
    assert_eq!(bundle["entry"][0]["request"]["url"], "MedicationRequest/m1");
    assert_eq!(bundle["entry"][0]["resource"]["status"], "unknown");
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(1));
    assert_eq!(converted.unmapped.len(), 1);
    assert_eq!(converted.unmapped[0].resource_type, "MedicationDispense");
    assert_eq!(converted.unmapped[0].id.as_deref(), Some("d1"));
    assert!(converted.unmapped[0].reason.contains("no R4 mapping"));
}

#[test]
fn panel_components_and_observation_fields() {
    let panel = dstu2(
        r#"<Observation><id value="bp"/><status value="final"/>
             <category><coding><system value="http://hl7.org/fhir/observation-category"/>
               <code value="vital-signs"/></coding></category>
             <code><coding><system value="http://loinc.org"/><code value="55284-4"/></coding></code>
             <subject><reference value="Patient/p1"/></subject>
             <encounter><reference value="Encounter/e1"/></encounter>
             <effectiveDateTime value="2010-12-16"/>
             <comments value="seated"/>
             <component><code><coding><system value="http://loinc.org"/><code value="8480-6"/></coding></code>
               <valueQuantity><value value="100.0"/><unit value="mm[Hg]"/><code value=""/></valueQuantity></component>
             <component><code><coding><system value="http://loinc.org"/><code value="8462-4"/></coding></code>
               <valueQuantity><value value="60"/><unit value="mm[Hg]"/></valueQuantity></component>
           </Observation>"#,
    );
    assert_eq!(
        panel["category"][0]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/observation-category"
    );
    assert_eq!(panel["encounter"]["reference"], "Encounter/e1");
    assert_eq!(panel["note"][0]["text"], "seated");
    let components = panel["component"].as_array().unwrap();
    assert_eq!(components.len(), 2);
    assert_eq!(components[0]["code"]["coding"][0]["code"], "8480-6");
    assert_eq!(components[0]["valueQuantity"]["value"].to_string(), "100.0");
    assert!(
        components[0]["valueQuantity"].get("code").is_none(),
        "empty code dropped"
    );
    assert_eq!(components[1]["valueQuantity"]["value"], json!(60));
}

#[test]
fn condition_encounter_and_allergy_statuses() {
    let condition = dstu2(
        r#"<Condition><id value="c1"/><patient><reference value="Patient/p1"/></patient>
             <code><text value="x"/></code><clinicalStatus value="relapse"/>
             <verificationStatus value="confirmed"/><dateRecorded value="2001-01-01"/></Condition>"#,
    );
    assert_eq!(condition["subject"]["reference"], "Patient/p1");
    assert_eq!(
        condition["clinicalStatus"]["coding"][0]["code"],
        "recurrence"
    );
    assert_eq!(
        condition["verificationStatus"]["coding"][0]["code"],
        "confirmed"
    );
    assert_eq!(condition["recordedDate"], "2001-01-01");

    let encounter = dstu2(
        r#"<Encounter><id value="e1"/><status value="finished"/><class value="ambulatory"/>
             <patient><reference value="Patient/p1"/></patient></Encounter>"#,
    );
    assert_eq!(encounter["class"]["code"], "AMB");
    assert_eq!(encounter["subject"]["reference"], "Patient/p1");

    let allergy = dstu2(
        r#"<AllergyIntolerance><id value="a1"/><status value="confirmed"/><criticality value="CRITH"/>
             <patient><reference value="Patient/p1"/></patient>
             <substance><text value="peanut"/></substance><category value="food"/></AllergyIntolerance>"#,
    );
    assert_eq!(allergy["code"]["text"], "peanut");
    assert_eq!(allergy["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(
        allergy["verificationStatus"]["coding"][0]["code"],
        "confirmed"
    );
    assert_eq!(allergy["criticality"], "high");
    assert_eq!(allergy["category"], json!(["food"]));
}

#[test]
fn stu3_json_immunization_and_r4_input_passes_unchanged() {
    let stu3 = json!({"resourceType": "Immunization", "id": "i1", "status": "completed",
        "notGiven": false, "date": "2010-03-11", "primarySource": true,
        "patient": {"reference": "Patient/p1"},
        "vaccineCode": {"coding": [{"system": LEGACY_CVX, "code": "03"}]},
        "practitioner": [{"actor": {"reference": "Practitioner/d1"}}]});
    let converted = convert(
        stu3.to_string().as_bytes(),
        InputFormat::Json,
        DeclaredVersion::Auto,
    )
    .unwrap();
    assert_eq!(converted.version, FhirVersion::Stu3);
    let r4 = &converted.resources[0];
    assert_eq!(r4["occurrenceDateTime"], "2010-03-11");
    assert_eq!(r4["performer"][0]["actor"]["reference"], "Practitioner/d1");
    assert_eq!(
        r4["vaccineCode"]["coding"][0]["system"],
        "http://hl7.org/fhir/sid/cvx"
    );

    let r4_input = json!({"resourceType": "Patient", "id": "p", "active": true});
    let converted = convert(
        r4_input.to_string().as_bytes(),
        InputFormat::Json,
        DeclaredVersion::Auto,
    )
    .unwrap();
    assert_eq!(converted.version, FhirVersion::R4);
    assert_eq!(converted.resources, vec![r4_input]);
}

#[test]
fn errors_carry_a_one_line_reason() {
    let error = convert(
        b"<Bundle xmlns=\"http://hl7.org/fhir\">\n<entry>\n</Bundle>",
        InputFormat::Xml,
        DeclaredVersion::Exactly(FhirVersion::Dstu2),
    )
    .unwrap_err();
    assert!(matches!(error, LegacyError::Xml(_)), "{error:?}");
    assert_eq!(error.kind(), "xml");
    assert!(!error.reason().contains('\n'));
    let unmapped_only = convert(
        br#"{"resourceType": "MedicationDispense", "id": "d", "status": "completed"}"#,
        InputFormat::Json,
        DeclaredVersion::Exactly(FhirVersion::Dstu2),
    )
    .unwrap();
    assert!(unmapped_only.resources.is_empty());
    assert_eq!(
        unmapped_only.unmapped[0].resource_type,
        "MedicationDispense"
    );
}
