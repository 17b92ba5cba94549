"""Benchmark: `flare ingest kafka` of FHIR XML from a topic, in resources/s.

The ten DSTU2 XML transaction Bundles of the sample-patient fixtures are published COPIES times
each (every id and reference suffixed per copy, so each copy is new data, not an unchanged
rewrite) by confluent-kafka to a throwaway nisshi broker; then a release `flare ingest kafka
--format xml --from dstu2` loads the topic into a fresh data directory (SQLite, fsync on).
The time counted runs from the ingest's start until the last resource is stored (the
--until-idle wait after it is subtracted).

Run once: python bench_xml_ingest.py [--copies 20] [--flare target/release/flare]
"""

import argparse
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = pathlib.Path(os.environ.get("FLARE_FIXTURES", "/work/shared/fixtures")) / "sample-patients" / "dstu2-xml"
IDLE_SECONDS = 3.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def suffixed(xml, copy):
    """Every resource id and relative reference made unique to this copy."""
    xml = re.sub(r'(<id value=")([^"]+)(")', lambda m: f"{m.group(1)}{m.group(2)}-c{copy}{m.group(3)}", xml)
    xml = re.sub(
        r'(<reference value=")([A-Za-z]+/)([^"/]+)(")',
        lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}-c{copy}{m.group(4)}",
        xml,
    )
    # Conditional and full URLs of transaction entries name the ids too.
    xml = re.sub(
        r'(<url value=")([A-Za-z]+/)([^"/?]+)(")',
        lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}-c{copy}{m.group(4)}",
        xml,
    )
    return xml


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--flare", default=str(ROOT / "target" / "release" / "flare"))
    parser.add_argument("--nisshi", default=os.path.expanduser("~/.cargo/bin/nisshi"))
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="flare-xml-bench-"))
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [args.nisshi, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://nisshi/", "--group-initial-rebalance-delay", "0s"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("nisshi did not start")
                time.sleep(0.05)
        bundles = [p.read_text() for p in sorted(FIXTURES.glob("*.xml"))]
        producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "message.max.bytes": 10_000_000, "log_level": 0})
        messages = 0
        payload_bytes = 0
        for copy in range(args.copies):
            for bundle in bundles:
                body = suffixed(bundle, copy).encode()
                producer.produce("bench.xml", body, key=f"copy{copy}".encode())
                messages += 1
                payload_bytes += len(body)
                producer.poll(0)
        producer.flush(30)

        data_dir = work / "data"
        started = time.monotonic()
        result = subprocess.run(
            [args.flare, "ingest", "kafka", "--brokers", f"127.0.0.1:{port}", "--topic", "bench.xml",
             "--format", "xml", "--from", "dstu2", "--until-idle", str(IDLE_SECONDS),
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, env={**os.environ, "FLARE_LOG_LEVEL": "off"},
        )
        elapsed = time.monotonic() - started - IDLE_SECONDS
        summary = result.stdout + result.stderr
        if result.returncode != 0:
            sys.exit(f"flare ingest kafka failed:\n{summary}")
        tally = re.search(r"resources: (\d+) created, (\d+) updated", summary)
        resources = int(tally.group(1)) + int(tally.group(2)) if tally else None
        # The summary, without the per-message notes on types that have no R4 mapping.
        print("\n".join(line for line in summary.splitlines() if not line.startswith("failed ")))
        print()
        print("| messages | XML MB | resources | seconds | resources/s | messages/s |")
        print("|---:|---:|---:|---:|---:|---:|")
        rate = f"{resources / elapsed:,.0f}" if resources else "?"
        print(f"| {messages:,} | {payload_bytes / 1e6:.1f} | {resources if resources is not None else '?'} | {elapsed:.2f} | {rate} | {messages / elapsed:,.1f} |")
    finally:
        broker.terminate()
        try:
            broker.wait(5)
        except subprocess.TimeoutExpired:
            broker.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
