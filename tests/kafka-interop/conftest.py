"""Fixtures: a throwaway nisshi broker, the flare binary and the kafka_tail example."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nisshi_binary():
    if os.environ.get("FLARE_NISSHI"):
        return os.environ["FLARE_NISSHI"]
    home = Path.home() / ".cargo/bin/nisshi"
    if home.is_file():
        return str(home)
    found = shutil.which("nisshi")
    if not found:
        pytest.fail("nisshi is not installed: run scripts/test.sh (installs it once, ~15 min)")
    return found


def built(env, relative):
    path = Path(os.environ.get(env, TARGET / relative))
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it first (see tests/kafka-interop/README.md)")
    return str(path)


@pytest.fixture(scope="session")
def broker():
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    workdir = tempfile.mkdtemp(prefix="nisshi-")
    log = open(Path(workdir) / "broker.log", "w")
    process = subprocess.Popen(
        [nisshi_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://nisshi/", "--group-initial-rebalance-delay", "0s"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("the broker did not start: " + (Path(workdir) / "broker.log").read_text())
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def flare_bin():
    return built("FLARE_BIN", "debug/flare")


@pytest.fixture(scope="session")
def kafka_tail_bin():
    return built("FLARE_KAFKA_TAIL", "debug/examples/kafka_tail")


@pytest.fixture
def flare_server(broker, flare_bin, tmp_path):
    process = subprocess.Popen(
        [flare_bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
         "--log", f"kafka://{broker}"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "FLARE_LOG_LEVEL": "warn"})
    base = None
    for line in process.stdout:
        if "listening on " in line:
            base = line.split("listening on ", 1)[1].strip() + "/fhir"
            break
    if base is None:
        process.kill()
        pytest.fail("flare serve did not start")
    yield base
    process.terminate()
    process.wait(timeout=10)
