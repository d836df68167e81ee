"""Benchmark: embedding throughput through the hub against the same model in-process (issue #13).

For batches of 1, 32 and 256 inputs, the same sentences are embedded
  in-process - all-MiniLM-L6-v2 loaded with transformers in this process: inputs sorted by length, forward
                passes of 32 (sentence-transformers' `encode` recipe), mean pooling, L2 normalisation;
  hub         - POST /embeddings with the official SDK (base64, its default), end to end: web, the job queue,
                the inference worker's embedding thread, and back;
one after the other in each run, so a busy moment of the machine shifts both alike. It prints inputs/s
at each size and the ratio hub / in-process (target >= 0.8x at 256).

Run: `python bench/embeddings.py [--runs 5]` (about 2-3 minutes, most of it starting the hub).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from stack import django_on_embedded_services

MODEL = "all-minilm:l6-v2"
SIZES = (1, 32, 256)
WORDS = ("model", "vector", "search", "document", "query", "library", "garden", "river", "engine", "market",
         "music", "history", "weather", "science", "kitchen", "travel")


def sentences(count: int, offset: int = 0) -> list[str]:
    """Sentences of 6 to 30 words, different for every run (no cache anywhere can help)."""
    out = []
    for i in range(count):
        n = 6 + (i * 7 + offset) % 25
        out.append(" ".join(WORDS[(i + j * 3 + offset) % len(WORDS)] for j in range(n)) + f" {offset}-{i}.")
    return out


class InProcess:
    def __init__(self, path: str, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    def embed(self, texts: list[str]):
        import torch.nn.functional as F

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in chunk], padding=True, return_tensors="pt")
            with self.torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
            for row, index in enumerate(chunk):
                out[index] = vectors[row].tolist()
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="measured runs per batch size (after one warm-up)")
    args = parser.parse_args()

    seconds = {(where, size): [] for where in ("local", "hub") for size in SIZES}
    with django_on_embedded_services() as run_dir:
        from django.core.management import call_command
        from openai import OpenAI

        from apps.accounts.services import api_key_create, user_get_or_create
        from apps.catalog.models import ModelEntry
        from tests.support.processes import start_hub

        call_command("importmodel", builtin=MODEL, verbosity=0)
        entry = ModelEntry.objects.get(id=MODEL)
        _, key = api_key_create(user=user_get_or_create(username="bench"))
        local = InProcess(entry.path)
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        client = OpenAI(base_url=f"{base_url}/api/v1", api_key=key, max_retries=0, timeout=300)
        try:
            for size in SIZES:
                for run in range(args.runs + 1):
                    texts = sentences(size, offset=run * 1000 + size)
                    started = time.perf_counter()
                    local.embed(texts)
                    local_s = time.perf_counter() - started
                    started = time.perf_counter()
                    response = client.embeddings.create(model=MODEL, input=texts)
                    hub_s = time.perf_counter() - started
                    assert len(response.data) == size
                    if run:  # the first warms up (and loads the model on the worker)
                        seconds[("local", size)].append(local_s)
                        seconds[("hub", size)].append(hub_s)
        finally:
            client.close()
            processes.stop()

    print(f"model {MODEL}, CPU ({os.cpu_count()} cores, shared with whatever else runs), "
          f"{args.runs} runs per size (+1 warm-up), p50:")
    print(f"  {'inputs':>6}  {'in-process inputs/s':>20}  {'hub inputs/s':>13}  {'hub / in-process':>16}")
    for size in SIZES:
        local_rate = size / statistics.median(seconds[("local", size)])
        hub_rate = size / statistics.median(seconds[("hub", size)])
        print(f"  {size:>6}  {local_rate:>20.1f}  {hub_rate:>13.1f}  {hub_rate / local_rate:>15.2f}x")
    print("target: >= 0.8x at 256 inputs")


if __name__ == "__main__":
    main()
