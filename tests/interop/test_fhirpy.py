"""A second opinion on the FHIR API: the `fhirpy` client from PyPI drives a real `flare serve`.

The server binary comes from FLARE_BIN (scripts/test.sh builds it); it listens on a free
loopback port and keeps its data in a temporary folder.
"""

import os
import re
import subprocess
import tempfile

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound


@pytest.fixture(scope="module")
def client():
    binary = os.environ.get("FLARE_BIN", "target/debug/flare")
    with tempfile.TemporaryDirectory() as data_dir:
        proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            base = None
            for line in proc.stdout:
                match = re.search(r"listening on (http://\S+)", line)
                if match:
                    base = match.group(1) + "/fhir"
                    break
            assert base, "flare serve did not say where it listens"
            yield SyncFHIRClient(base, extra_headers={"Accept": "application/fhir+json"})
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_crud(client):
    patient = client.resource("Patient", name=[{"family": "Fhirpy", "given": ["Interop"]}], gender="female")
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Fhirpy"

    fetched["gender"] = "other"
    fetched.save()
    assert fetched["meta"]["versionId"] == "2"

    fetched.delete()
    with pytest.raises((ResourceNotFound, OperationOutcome)):
        client.reference("Patient", patient.id).to_resource()


def test_search(client):
    for family, birth in [("Searchable", "1980-01-01"), ("Searchable", "2000-01-01"), ("Other", "1990-01-01")]:
        client.resource("Patient", name=[{"family": family}], birthDate=birth).save()
    found = client.resources("Patient").search(family="searchable").fetch_all()
    assert len(found) == 2
    older = client.resources("Patient").search(family="searchable", birthdate__lt="1990").fetch()
    assert [p["birthDate"] for p in older] == ["1980-01-01"]
    assert client.resources("Patient").search(family="searchable").count() == 2
    page = client.resources("Patient").search(family="searchable").limit(1).fetch()
    assert len(page) == 1


def test_history(client):
    patient = client.resource("Patient", gender="male")
    patient.save()
    patient["gender"] = "female"
    patient.save()
    history = client.execute(f"Patient/{patient.id}/_history", method="get")
    assert history["type"] == "history"
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_transaction(client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5a5c3d3e-0000-4000-8000-000000000001",
                "resource": {"resourceType": "Patient", "name": [{"family": "Bundled"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
                    "subject": {"reference": "urn:uuid:5a5c3d3e-0000-4000-8000-000000000001"},
                    "valueQuantity": {"value": 18, "unit": "/min"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = client.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    patient_ref = response["entry"][0]["response"]["location"].split("/_history")[0]
    observations = client.resources("Observation").search(subject=patient_ref).fetch()
    assert len(observations) == 1
