"""`manage.py runhub` (what `make run` runs): everything up, Ctrl-C leaves no process behind, data kept."""
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from aihub_project.embedded import free_port
from tests.support.processes import MODEL_CACHE, ROOT


def _start(env, log_path):
    log = open(log_path, "ab")
    process = subprocess.Popen([sys.executable, "manage.py", "runhub"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return process


def _wait_healthy(process, url, log_path, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"runhub never became healthy:\n{log_path.read_text()[-3000:]}")


def _interrupt_and_check_nothing_is_left(process):
    descendants = psutil.Process(process.pid).children(recursive=True)
    assert len(descendants) >= 7  # postgres, valkey, daphne, three workers and their pools, flower
    os.kill(process.pid, signal.SIGINT)
    process.wait(60)
    gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == [], [p.info if hasattr(p, "info") else p for p in alive]


def test_runhub_starts_everything_stops_everything_and_keeps_its_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    port, flower_port = free_port(), free_port()
    env.update({
        "AIHUB_VAR_DIR": str(tmp_path / "var"), "AIHUB_LOG_DIR": str(tmp_path / "logs"),
        "AIHUB_MODEL_STORE": str(MODEL_CACHE), "AIHUB_PORT": str(port), "AIHUB_FLOWER_PORT": str(flower_port),
        "AIHUB_EMBEDDED_PG_PORT": str(free_port()), "AIHUB_EMBEDDED_REDIS_PORT": str(free_port()),
    })
    log_path = tmp_path / "runhub.log"

    process = _start(env, log_path)
    _wait_healthy(process, f"http://127.0.0.1:{port}/health", log_path)
    flower = f"http://127.0.0.1:{flower_port}/"
    assert httpx.get(flower, timeout=10).status_code == 401  # Flower shows task arguments: never open
    user, password = (tmp_path / "var" / "flower-credentials.txt").read_text().strip().split(":", 1)
    assert httpx.get(flower, auth=(user, password), timeout=10).status_code == 200
    assert (tmp_path / "var" / "admin-credentials.txt").is_file()
    _interrupt_and_check_nothing_is_left(process)
    first_output = log_path.read_text()
    assert "Created admin user" in first_output

    # A second run reuses the database: no new admin, the model is already in the catalog.
    process = _start(env, log_path)
    _wait_healthy(process, f"http://127.0.0.1:{port}/health", log_path)
    _interrupt_and_check_nothing_is_left(process)
    second_output = log_path.read_text()[len(first_output):]
    assert "Created admin user" not in second_output
    assert "Preparing the default model" not in second_output
