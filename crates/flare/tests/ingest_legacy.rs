//! `flare ingest` of the legacy sample-patient fixtures (DSTU2 XML, STU3 JSON): loaded into a
//! fresh data directory, then counted by searching the store through `flare serve`. The
//! expected numbers are the fixture README's table.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

fn flare() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flare"));
    command.env("FLARE_LOG_LEVEL", "warn");
    command
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/sample-patients")
}

fn ingest(paths: &[PathBuf], data_dir: &Path) -> Output {
    flare()
        .arg("ingest")
        .args(paths)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

/// A `flare serve` child on a free port; killed on drop.
struct Served {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
}

impl Served {
    fn start(data_dir: &Path) -> Self {
        let mut child = flare()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("flare serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split("listening on ")
                    .nth(1)
                    .map(|url| format!("{}/fhir", url.trim()))
            })
            .expect("flare serve says where it listens");
        std::thread::spawn(move || for _ in lines {});
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self { child, base, http }
    }

    fn search(&self, query: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/{query}", self.base))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{query}");
        response.json().unwrap()
    }

    fn count(&self, query: &str) -> u64 {
        let separator = if query.contains('?') { '&' } else { '?' };
        self.search(&format!("{query}{separator}_summary=count"))["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("no total for {query}"))
    }

    /// Every resource a search matches, following `next` links.
    fn all(&self, query: &str) -> Vec<Value> {
        let mut resources = Vec::new();
        let mut page = self.search(query);
        loop {
            for entry in page["entry"].as_array().into_iter().flatten() {
                resources.push(entry["resource"].clone());
            }
            let next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|link| link["relation"] == "next")
                .and_then(|link| link["url"].as_str())
                .map(str::to_owned);
            let Some(next) = next else { break };
            let response = self.http.get(next).send().unwrap();
            page = response.json().unwrap();
        }
        resources
    }

    /// Dates (YYYY-MM-DD) of the patient's Observations matching `filter`.
    fn observation_dates(&self, patient: &str, filter: &str) -> BTreeSet<String> {
        self.all(&format!(
            "Observation?subject=Patient/{patient}&{filter}&_count=500"
        ))
        .iter()
        .filter_map(|observation| observation["effectiveDateTime"].as_str())
        .map(|date| date.chars().take(10).collect())
        .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CVX: &str = "http://hl7.org/fhir/sid/cvx";
const LOINC: &str = "http://loinc.org";

#[test]
fn dstu2_xml_fixtures_load_with_the_readme_counts() {
    let dir = tempfile::tempdir().unwrap();
    let output = ingest(&[fixtures().join("dstu2-xml")], dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // MedicationDispense, Procedure and List have no mapping: reported per file and in sum.
    assert!(
        stdout.contains("not loaded, no R4 mapping: List 6, MedicationDispense 113, Procedure 9"),
        "{stdout}\n{stderr}"
    );
    // What had no R4 place is summed up (empty `<code value=""/>` in the generator's output).
    assert!(
        stdout.contains("legacy elements with no R4 place, dropped:")
            && stdout.contains("Observation.valueQuantity.code"),
        "{stdout}"
    );
    // Everything else loads.
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("failed ") && !line.contains("no R4 mapping"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:#?}");

    let served = Served::start(dir.path());
    let patients: BTreeMap<String, String> = served
        .all("Patient?_count=100")
        .iter()
        .map(|patient| {
            (
                patient["id"].as_str().unwrap().to_owned(),
                patient["birthDate"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected_patients: BTreeMap<String, String> = [
        ("1032702", "2007-03-20"),
        ("1134281", "2004-10-15"),
        ("1288992", "1925-12-23"),
        ("1614502", "2006-11-22"),
        ("1869612", "1950-07-31"),
        ("4444001", "1932-06-15"),
        ("629528", "1981-10-27"),
        ("7321938", "2010-12-16"),
        ("8888801", "1953-03-17"),
        ("981968", "1956-03-23"),
    ]
    .into_iter()
    .map(|(id, date)| (id.to_owned(), date.to_owned()))
    .collect();
    assert_eq!(patients, expected_patients);

    // Immunizations by CVX code (the legacy system URL is now the R4 one).
    let mut vaccines: BTreeMap<&str, u64> = BTreeMap::new();
    for code in [
        "110", "89", "116", "21", "104", "03", "141", "115", "33", "121",
    ] {
        vaccines.insert(
            code,
            served.count(&format!("Immunization?vaccine-code={CVX}|{code}")),
        );
    }
    let expected_vaccines: BTreeMap<&str, u64> = [
        ("110", 1),
        ("89", 2),
        ("116", 1),
        ("21", 1),
        ("104", 1),
        ("03", 2),
        ("141", 1),
        ("115", 1),
        ("33", 1),
        ("121", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(vaccines, expected_vaccines);
    assert_eq!(served.count("Immunization"), 12);

    // Observations, respiratory rate and systolic pressure per patient; then the dates on
    // which both RR >= 22/min and SBP <= 100 mm Hg occur.
    let table: &[(&str, u64, u64, u64, usize)] = &[
        ("1032702", 1, 0, 0, 0),
        ("1134281", 69, 0, 0, 0),
        ("1288992", 317, 27, 27, 2),
        ("1614502", 2, 0, 0, 0),
        ("1869612", 242, 18, 18, 2),
        ("4444001", 0, 0, 0, 0),
        ("629528", 181, 15, 15, 0),
        ("7321938", 7, 0, 0, 0),
        ("8888801", 318, 0, 9, 0),
        ("981968", 151, 15, 15, 0),
    ];
    for (patient, observations, rr, sbp, qsofa_dates) in table {
        let subject = format!("subject=Patient/{patient}");
        assert_eq!(
            served.count(&format!("Observation?{subject}")),
            *observations,
            "{patient}"
        );
        assert_eq!(
            served.count(&format!("Observation?{subject}&code={LOINC}|9279-1")),
            *rr,
            "{patient} RR"
        );
        assert_eq!(
            served.count(&format!("Observation?{subject}&code={LOINC}|8480-6")),
            *sbp,
            "{patient} SBP"
        );
        let fast_breathing =
            served.observation_dates(patient, &format!("code={LOINC}|9279-1&value-quantity=ge22"));
        let low_pressure = served.observation_dates(
            patient,
            &format!("code={LOINC}|8480-6&value-quantity=le100"),
        );
        assert_eq!(
            fast_breathing.intersection(&low_pressure).count(),
            *qsofa_dates,
            "{patient} dates with RR>=22 and SBP<=100"
        );
    }
    assert_eq!(served.count("Observation"), 1288);
}

#[test]
fn stu3_json_fixtures_load_with_the_readme_counts() {
    let dir = tempfile::tempdir().unwrap();
    let output = ingest(&[fixtures().join("stu3-json")], dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("not loaded, no R4 mapping: MedicationDispense 11"),
        "{stdout}\n{stderr}"
    );
    let served = Served::start(dir.path());
    assert_eq!(served.count("Patient"), 2);
    assert_eq!(served.count("Practitioner"), 2);
    // The patients point at the Practitioner bundles' ids.
    assert_eq!(
        served.count("Patient?general-practitioner=Practitioner/smart-Practitioner-71614502"),
        1
    );
    for (code, expected) in [("110", 1), ("89", 2), ("116", 1), ("03", 2)] {
        assert_eq!(
            served.count(&format!("Immunization?vaccine-code={CVX}|{code}")),
            expected,
            "CVX {code}"
        );
    }
    assert_eq!(served.count("Immunization?status=completed"), 6);
    assert_eq!(served.count("Observation"), 3);
    assert_eq!(served.count("MedicationRequest"), 8);
}

#[test]
fn a_malformed_file_and_an_unmapped_type_fail_alone() {
    let input = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("dstu2-xml/patient-7321938.fhir-bundle.xml"),
        input.path().join("good.xml"),
    )
    .unwrap();
    std::fs::write(
        input.path().join("broken.xml"),
        "<Bundle xmlns=\"http://hl7.org/fhir\">\n<type value=\"transaction\"/>\n<entry>\n</Bundle>\n",
    )
    .unwrap();
    // `Order` exists in DSTU2 only.
    std::fs::write(
        input.path().join("order.xml"),
        "<Order xmlns=\"http://hl7.org/fhir\"><id value=\"o1\"/><date value=\"2015\"/></Order>",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = ingest(&[input.path().to_owned()], dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    let failure = |file: &str| {
        stderr
            .lines()
            .find(|line| line.starts_with("failed ") && line.contains(file))
            .unwrap_or_else(|| panic!("no failure for {file}: {stderr}"))
            .to_owned()
    };
    assert!(failure("broken.xml").contains("not well-formed"));
    let order = failure("order.xml");
    assert!(
        order.contains("Order") && order.contains("no R4 mapping"),
        "{order}"
    );
    assert!(
        stdout.contains("not loaded, no R4 mapping: Order 1"),
        "{stdout}"
    );
    assert!(!stderr.contains("good.xml"), "{stderr}");

    let served = Served::start(dir.path());
    assert_eq!(served.count("Patient"), 1);
    assert_eq!(served.count("Observation?subject=Patient/7321938"), 7);
}
