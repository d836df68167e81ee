"""schemathesis over /api/schema of the live hub, with its default checks: the schema says what the API does.

Every operation gets a bounded number of generated requests (valid and invalid), sent with a staff key
holding every scope, so that the authenticated paths run. The run must find no server error, no status
code the schema does not document and no response that violates its schema. Left out: revoking keys
(the run could revoke its own key mid-run).
"""
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_account

EXAMPLES_PER_OPERATION = 8  # about 900 requests, two minutes on a quiet machine
EXCLUDED = ["DELETE /api/v1/keys/{key_id}"]


@pytest.mark.timeout(900)  # a busy machine can triple the two minutes
def test_the_api_conforms_to_its_openapi_schema(hub, models, tmp_path):
    operator = make_account("fuzz", staff=True, scopes=["inference", "training", "admin"])
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    excluded = [arg for operation in EXCLUDED for arg in ("--exclude-name", operation)]
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{hub.base_url}/api/schema?format=json",
               "--url", hub.base_url, "--header", f"Authorization: Bearer {operator.raw_key}",
               "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "12", "--request-timeout", "60",
               "--workers", "2", "--no-color", "--suppress-health-check", "all",
               "--report", "junit", "--report-dir", str(tmp_path), *excluded]
    # The fuzz loads every kind of model with an admin key: models earlier tests left loaded (a fine-tune they
    # pinned) would make a load a 507 (the worker's model count) that depends on which modules ran before.
    _unload_everything(hub, operator)
    # cwd: schemathesis keeps a cache of past failures in its working directory.
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=840, cwd=tmp_path)
    finally:
        _unload_everything(hub, operator)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20000:]
    assert "No issues found" in output or " passed" in output, output[-5000:]


def _unload_everything(hub, operator) -> None:
    """Every loaded model unloaded: the fuzz starts from empty workers and leaves them as the next tests expect."""
    status = httpx.get(f"{hub.api_url}/models/status", headers=operator.auth, timeout=60).json()
    loaded = {model["id"] for worker in status.get("workers", []) for model in worker.get("loaded_models", [])}
    for model_id in loaded:
        httpx.post(f"{hub.api_url}/models/unload", headers=operator.auth, json={"model_id": model_id}, timeout=120)
