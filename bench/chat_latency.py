"""Benchmark: what the hub adds on top of in-process generation (issue: foundation).

Runs the same prompts, greedy, exactly N tokens (ignore_eos), through
  (a) in-process `model.generate` on the default model (SmolLM2-135M-Instruct), and
  (b) the hub end to end: HTTP -> daphne -> Redis queue -> Celery worker -> event log -> client,
and prints p50 figures and the ratios the issue names:
  end-to-end latency ratio (target p50 <= 1.10x at 32 tokens),
  TTFT over the websocket minus in-process TTFT (target p50 <= 50 ms), and the same over SSE.

Everything is real and local: embedded PostgreSQL and Valkey in a temporary
directory, a daphne process and Celery worker processes. Run: `make bench` or
`python bench/chat_latency.py --runs 20 --tokens 32`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from stack import django_on_embedded_services

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the ocean.",
    "Describe your favourite city and why.",
]


def p50(values):
    return statistics.median(values)


class InProcess:
    """(a) `model.generate` in this process, timed from the chat template to the first new token."""

    def __init__(self, model_dir: Path, tokens: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.tokens = torch, tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(self, prompt: str) -> tuple[float, float]:
        """(latency, time to first token) in seconds."""
        first = {}

        class FirstToken:
            calls = 0

            def put(self, value):
                self.calls += 1
                if self.calls == 2:  # the first put is the prompt
                    first["at"] = time.perf_counter()

            def end(self):
                pass

        started = time.perf_counter()
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)["input_ids"]
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=self.tokens,
                                      min_new_tokens=self.tokens, do_sample=False, temperature=None, top_p=None,
                                      top_k=None, streamer=FirstToken())
        self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        finished = time.perf_counter()
        assert out.shape[1] - ids.shape[1] == self.tokens
        return finished - started, first["at"] - started


class ThroughHub:
    """(b) the hub end to end, three ways: a plain POST, SSE, and the websocket."""

    def __init__(self, base_url: str, key: str, model: str, tokens: int):
        import httpx
        from websockets.sync.client import connect

        self.url = f"{base_url}/api/v1/chat/completions"
        self.model, self.tokens = model, tokens
        headers = {"Authorization": f"Bearer {key}"}
        self.client = httpx.Client(timeout=120, headers=headers)
        self.ws = connect(f"{base_url.replace('http', 'ws')}/ws/v1/chat/", additional_headers=headers)
        json.loads(self.ws.recv())  # authenticated

    def close(self):
        self.ws.close()
        self.client.close()

    def body(self, prompt: str, **extra) -> dict:
        return {"model": self.model, "max_tokens": self.tokens, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": prompt}], **extra}

    def latency(self, prompt: str) -> float:
        started = time.perf_counter()
        response = self.client.post(self.url, json=self.body(prompt))
        finished = time.perf_counter()
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == self.tokens
        return finished - started

    def sse_ttft(self, prompt: str) -> float:
        started, first = time.perf_counter(), None
        with self.client.stream("POST", self.url, json=self.body(prompt, stream=True)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if first is None and '"content":"' in line and '"content":""' not in line:
                    first = time.perf_counter()
        return first - started

    def ws_ttft(self, prompt: str) -> float:
        started, first = time.perf_counter(), None
        self.ws.send(json.dumps({"type": "chat.completion", "request": self.body(prompt)}))
        while True:
            event = json.loads(self.ws.recv(timeout=120))
            if event["type"] == "token" and first is None:
                first = time.perf_counter()
            if event["type"] in ("done", "error"):
                assert event["type"] == "done", event
                return first - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    figures = {name: [] for name in ("local_total", "local_ttft", "hub_total", "sse_ttft", "ws_ttft")}
    with django_on_embedded_services() as run_dir:
        from apps.accounts.services import api_key_create, user_get_or_create
        from apps.catalog.models import ModelEntry
        from tests.support.processes import start_hub

        entry = ModelEntry.objects.get(id="smollm2:135m")
        _, key = api_key_create(user=user_get_or_create(username="bench"))
        local = InProcess(Path(entry.path), args.tokens)
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        hub = ThroughHub(base_url, key, entry.id, args.tokens)
        try:
            # Each run measures every path back to back on the same prompt, so all of them
            # see the same machine: a busy moment shifts them together, not one phase alone.
            for run in range(args.runs + 2):
                prompt = PROMPTS[run % len(PROMPTS)]
                local_total, local_ttft = local.run(prompt)
                measured = {"local_total": local_total, "local_ttft": local_ttft, "hub_total": hub.latency(prompt),
                            "sse_ttft": hub.sse_ttft(prompt), "ws_ttft": hub.ws_ttft(prompt)}
                if run >= 2:  # the first two warm up
                    for name, value in measured.items():
                        figures[name].append(value)
        finally:
            hub.close()
            processes.stop()

    print(f"model smollm2:135m, {args.tokens} tokens, greedy, {args.runs} runs of each path (+2 warm-up), p50:")
    for name, key in [("in-process latency", "local_total"), ("hub end-to-end latency", "hub_total"),
                      ("in-process TTFT", "local_ttft"), ("hub TTFT over SSE", "sse_ttft"),
                      ("hub TTFT over websocket", "ws_ttft")]:
        print(f"  {name:<28} {p50(figures[key]) * 1000:8.1f} ms")
    ratio = p50(figures["hub_total"]) / p50(figures["local_total"])
    ws_extra = (p50(figures["ws_ttft"]) - p50(figures["local_ttft"])) * 1000
    sse_extra = (p50(figures["sse_ttft"]) - p50(figures["local_ttft"])) * 1000
    print(f"end-to-end latency ratio hub / in-process: {ratio:.3f}x   (target <= 1.10x)")
    print(f"TTFT websocket - in-process:               {ws_extra:+.1f} ms (target <= 50 ms)")
    print(f"TTFT SSE - in-process:                     {sse_extra:+.1f} ms (target <= 50 ms)")


if __name__ == "__main__":
    main()
