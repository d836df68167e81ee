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


def in_process(model_dir: Path, prompts, tokens: int, runs: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    class FirstToken:
        def __init__(self):
            self.calls, self.at = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.at is None:  # the first put is the prompt
                self.at = time.perf_counter()

        def end(self):
            pass

    totals, ttfts = [], []
    for run in range(runs + 2):
        prompt = prompts[run % len(prompts)]
        started = time.perf_counter()
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        streamer = FirstToken()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 streamer=streamer)
        tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        finished = time.perf_counter()
        assert out.shape[1] - ids.shape[1] == tokens
        if run >= 2:  # the first two warm up
            totals.append(finished - started)
            ttfts.append(streamer.at - started)
    return totals, ttfts


def through_hub(base_url: str, key: str, model: str, prompts, tokens: int, runs: int):
    import httpx
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {key}"}
    url = f"{base_url}/api/v1/chat/completions"

    def body(run, **extra):
        return {"model": model, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": prompts[run % len(prompts)]}], **extra}

    totals, sse_ttfts, ws_ttfts = [], [], []
    with httpx.Client(timeout=120, headers=headers) as client:
        for run in range(runs + 2):
            started = time.perf_counter()
            response = client.post(url, json=body(run))
            finished = time.perf_counter()
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] == tokens
            if run >= 2:
                totals.append(finished - started)
        for run in range(runs + 2):
            started = time.perf_counter()
            first = None
            with client.stream("POST", url, json=body(run, stream=True)) as response:
                for line in response.iter_lines():
                    if first is None and '"content":"' in line and '"content":""' not in line:
                        first = time.perf_counter()
            if run >= 2:
                sse_ttfts.append(first - started)
    with connect(f"{base_url.replace('http', 'ws')}/ws/v1/chat/", additional_headers=headers) as ws:
        json.loads(ws.recv())
        for run in range(runs + 2):
            started = time.perf_counter()
            ws.send(json.dumps({"type": "chat.completion", "request": body(run)}))
            first = None
            while True:
                event = json.loads(ws.recv(timeout=120))
                if event["type"] == "token" and first is None:
                    first = time.perf_counter()
                if event["type"] in ("done", "error"):
                    assert event["type"] == "done", event
                    break
            if run >= 2:
                ws_ttfts.append(first - started)
    return totals, sse_ttfts, ws_ttfts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    with django_on_embedded_services() as run_dir:
        from apps.accounts.services import api_key_create, user_get_or_create
        from apps.catalog.models import ModelEntry
        from tests.support.processes import start_hub

        entry = ModelEntry.objects.get(id="smollm2:135m")
        _, key = api_key_create(user=user_get_or_create(username="bench"))
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        try:
            hub_total, sse_ttft, ws_ttft = through_hub(base_url, key, entry.id, PROMPTS, args.tokens, args.runs)
        finally:
            processes.stop()
        local_total, local_ttft = in_process(Path(entry.path), PROMPTS, args.tokens, args.runs)

    print(f"model smollm2:135m, {args.tokens} tokens, greedy, {args.runs} runs each (+2 warm-up), p50:")
    for name, values in [("in-process latency", local_total), ("hub end-to-end latency", hub_total),
                         ("in-process TTFT", local_ttft), ("hub TTFT over SSE", sse_ttft),
                         ("hub TTFT over websocket", ws_ttft)]:
        print(f"  {name:<28} {p50(values) * 1000:8.1f} ms")
    ratio = p50(hub_total) / p50(local_total)
    ws_extra = (p50(ws_ttft) - p50(local_ttft)) * 1000
    sse_extra = (p50(sse_ttft) - p50(local_ttft)) * 1000
    print(f"end-to-end latency ratio hub / in-process: {ratio:.3f}x   (target <= 1.10x)")
    print(f"TTFT websocket - in-process:               {ws_extra:+.1f} ms (target <= 50 ms)")
    print(f"TTFT SSE - in-process:                     {sse_extra:+.1f} ms (target <= 50 ms)")


if __name__ == "__main__":
    main()
