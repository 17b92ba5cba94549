"""A second opinion on `flare generate`: every resource it writes is valid FHIR R4 (4.0.1)
according to the `fhir.resources` models from PyPI (6.4.0, the last release whose models are
R4 4.0.1 rather than R4B or R5; it needs pydantic 1).

The binary comes from FLARE_BIN (scripts/test.sh builds it).
"""

import json
import os
import subprocess
from collections import Counter

import fhir.resources
import pytest
from fhir.resources import get_fhir_model_class

SEED = "17"
PATIENTS = "20"


@pytest.fixture(scope="module")
def generated():
    binary = os.environ.get("FLARE_BIN", "target/debug/flare")
    # A high sepsis share so deteriorating vital signs, labs and antibiotics are all present.
    result = subprocess.run(
        [binary, "generate", "--stdout", "--seed", SEED, "--patients", PATIENTS, "--sepsis-share", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_models_are_r4():
    assert fhir.resources.__fhir_version__ == "4.0.1"


def test_every_generated_resource_is_valid_r4(generated):
    by_type = Counter(resource["resourceType"] for resource in generated)
    # Every kind of resource the generator makes is in the sample.
    assert set(by_type) == {"Patient", "Encounter", "Observation", "Immunization", "MedicationRequest"}, by_type
    assert by_type["Patient"] == int(PATIENTS)
    failures = []
    for resource in generated:
        model = get_fhir_model_class(resource["resourceType"])
        try:
            parsed = model.parse_obj(resource)
        except Exception as error:  # pydantic's ValidationError lists every problem
            failures.append(f"{resource['resourceType']}/{resource.get('id')}: {error}")
            continue
        # Nothing was dropped on the way: the model writes back what it read (UTC written as
        # +00:00 instead of Z is the same instant).
        if json.loads(parsed.json().replace('+00:00"', 'Z"')) != resource:
            failures.append(f"{resource['resourceType']}/{resource.get('id')} does not round-trip")
    assert not failures, "\n".join(failures[:20])


def test_the_same_seed_gives_the_same_resources(generated):
    binary = os.environ.get("FLARE_BIN", "target/debug/flare")
    again = subprocess.run(
        [binary, "generate", "--stdout", "--seed", SEED, "--patients", PATIENTS, "--sepsis-share", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert [json.loads(line) for line in again.stdout.splitlines()] == generated
