#!/usr/bin/env bash
# FHIRcast interop: @medplum/core 4.5.x (a third-party FHIRcast client) subscribes, receives,
# publishes and reads the current context against the hub of a real `flare serve`.
# Needs Node 20+ and npm; uses the `flare` binary built by `cargo build -p flare`
# (or FLARE_BIN).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
flare=${FLARE_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/flare}
work=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

(cd "$work" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund @medplum/core@4.5.2)
cp "$here/medplum.mjs" "$work/"
printf 'data_dir = "%s/data"\n[server]\nlisten = "127.0.0.1:0"\n[fhircast]\nenabled = true\n' "$work" > "$work/flare.toml"
"$flare" serve -c "$work/flare.toml" > "$work/flare.log" 2>&1 &
pid=$!
address=""
for _ in $(seq 1 100); do
    address=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/flare.log" | head -1 || true)
    [ -n "$address" ] && break
    sleep 0.1
done
if [ -z "$address" ]; then
    cat "$work/flare.log" >&2
    echo "flare serve did not start" >&2
    exit 1
fi
node --experimental-websocket "$work/medplum.mjs" "$address/"
