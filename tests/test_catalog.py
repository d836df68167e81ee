"""The catalog: importing models from every source, memory estimates, quantised serving."""
import os
import shutil
import subprocess
import sys

from django.test import Client

from apps.catalog.models import ModelEntry
from apps.catalog.services import model_register
from tests.support.processes import MODEL_CACHE, ROOT
from tests.support.tiny_models import build_tiny_chat_model


def _importmodel(*args, env=None):
    return subprocess.run([sys.executable, "manage.py", "importmodel", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_a_directory_is_registered_with_its_size_and_parameters(tmp_path):
    path = build_tiny_chat_model(MODEL_CACHE / "mid-a", hidden_size=128, layers=4, seed=3)
    result = _importmodel("dir:1m", "--directory", str(path), "--kind", "code")
    assert result.returncode == 0, result.stderr
    entry = ModelEntry.objects.get(id="dir:1m")
    assert entry.kind == "code" and entry.capabilities == ["chat", "code"]
    assert entry.parameter_count == 689280 and 0 < entry.quantisable_parameter_count < entry.parameter_count
    assert entry.context_length == 4096 and entry.size_bytes > 2_000_000
    # float32 on a CPU is twice float16 on a GPU; 4-bit keeps embeddings and head at full precision.
    assert entry.estimated_bytes("cpu") == 2 * entry.estimated_bytes("cuda")
    entry.quantization = "bnb-4bit"
    assert entry.estimated_bytes("cpu") < entry.parameter_count * 4 * 0.35


def test_a_hugging_face_id_is_found_in_the_local_cache_and_never_downloaded(tmp_path, models):
    snapshot = tmp_path / "hub" / "models--acme--tiny-chat" / "snapshots" / "abc123"
    shutil.copytree(MODEL_CACHE / "tiny-chat", snapshot)
    (tmp_path / "hub" / "models--acme--tiny-chat" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-chat" / "refs" / "main").write_text("abc123")
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = _importmodel("acme:tiny", "--hub-id", "acme/tiny-chat", env=env)
    assert result.returncode == 0, result.stderr
    entry = ModelEntry.objects.get(id="acme:tiny")
    assert entry.source == "hub_cache" and entry.source_ref == "acme/tiny-chat"
    missing = _importmodel("acme:none", "--hub-id", "acme/not-cached", env=env)
    assert missing.returncode != 0 and "not in the local Hugging Face cache" in missing.stderr


def test_a_bad_directory_is_refused_clearly(tmp_path):
    result = _importmodel("bad:1", "--directory", str(tmp_path))
    assert result.returncode != 0 and "config.json" in result.stderr
    assert not ModelEntry.objects.filter(id="bad:1").exists()


def test_a_4bit_model_is_served_and_measured_smaller(hub, openai_client, models):
    path = build_tiny_chat_model(MODEL_CACHE / "mid-a", hidden_size=128, layers=4, seed=3)
    model_register(model_id="mid-a:4bit", path=path, quantization="bnb-4bit")
    model_register(model_id="mid-a:full", path=path)
    for model_id in ("mid-a:4bit", "mid-a:full"):
        completion = openai_client.chat.completions.create(model=model_id, max_tokens=4, temperature=0,
                                                           messages=[{"role": "user", "content": "hi"}])
        assert completion.usage.completion_tokens == 4
    log = hub.processes.log("inference")
    sizes = {}
    for model_id in ("mid-a:4bit", "mid-a:full"):
        line = [line for line in log.splitlines() if f"{model_id}: " in line and "bytes measured" in line][-1]
        sizes[model_id] = int(line.split(f"{model_id}: ")[1].split(" bytes")[0])
    assert sizes["mid-a:4bit"] < sizes["mid-a:full"] / 3


def test_the_admin_shows_where_models_are_loaded_and_loads_them(hub, openai_client, models):
    from django.contrib.auth import get_user_model

    openai_client.chat.completions.create(model=models["tiny"], max_tokens=1,
                                          messages=[{"role": "user", "content": "hi"}])
    admin = get_user_model().objects.create_superuser(username="catalog-admin", password="pw-123456")
    client = Client(SERVER_NAME="localhost")
    client.force_login(admin)
    page = client.get("/admin/catalog/modelentry/").content.decode()
    assert "inference@" in page  # the tiny model's row says where it is loaded
    response = client.post("/admin/catalog/modelentry/", {"action": "unload_models",
                                                          "_selected_action": [models["tiny"]]}, follow=True)
    assert f"Unloaded {models['tiny']} from inference@" in response.content.decode()
    response = client.post("/admin/catalog/modelentry/", {"action": "load_models",
                                                          "_selected_action": [models["tiny"]]}, follow=True)
    assert f"Loaded {models['tiny']} on inference@" in response.content.decode()
