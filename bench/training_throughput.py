"""Benchmark: training steps per second through the hub vs a plain peft loop (issue: training).

Same base model (default: SmolLM2-135M), same data, same LoRA settings, same
batch size; both on this machine's device. The plain loop is the textbook
peft + AdamW loop in this process; the hub run is a real job through the API,
the training worker and its checkpoints/progress events. Rates exclude model
loading (hub: first to last step event). Also prints the plain loop's peak RSS
and the worker-measured tokens/s. Target: hub >= 0.95x plain.

Run: `python bench/training_throughput.py [--steps 24] [--batch 4]`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from stack import django_on_embedded_services

EXAMPLES = [{"messages": [{"role": "user", "content": f"Tell me fact number {i} about the sea."},
                          {"role": "assistant", "content": f"Fact {i}: the sea is deep, salty and full of life."}]}
            for i in range(64)]


def plain_loop(model_dir: Path, steps: int, batch: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                      target_modules="all-linear"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    texts = [tokenizer.apply_chat_template(e["messages"], tokenize=True, return_dict=True)["input_ids"]
             for e in EXAMPLES]
    started = None
    for step in range(steps + 1):
        rows = [texts[(step * batch + i) % len(texts)] for i in range(batch)]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id or 0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            started = time.perf_counter()  # the first step warms up, like the hub's first event
    return steps / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    with django_on_embedded_services() as run_dir:
        import httpx

        from apps.accounts.services import api_key_create, user_get_or_create
        from apps.catalog.models import ModelEntry
        from apps.training.models import TrainingJob
        from tests.support.processes import start_hub

        entry = ModelEntry.objects.get(id="smollm2:135m")
        _, key = api_key_create(user=user_get_or_create(username="bench"))
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        try:
            headers = {"Authorization": f"Bearer {key}"}
            lines = "".join(json.dumps(e) + "\n" for e in EXAMPLES).encode()
            file_id = httpx.post(f"{base_url}/api/v1/files", headers=headers, data={"purpose": "fine-tune"},
                                 files={"file": ("sea.jsonl", lines)}).json()["id"]
            epochs = max(1, -(-args.steps * args.batch // len(EXAMPLES)))
            job_id = httpx.post(f"{base_url}/api/v1/training/jobs", headers=headers, json={
                "base_model": entry.id, "training_file": file_id, "batch_size": args.batch, "num_epochs": epochs,
                "lora_r": 8, "lora_alpha": 16, "checkpoint_every": 10**6}).json()["id"]
            job = TrainingJob.objects.get(id=job_id.removeprefix("ftjob-"))
            while True:
                job.refresh_from_db()
                if job.is_finished:
                    break
                time.sleep(1)
            assert job.status == "succeeded", job.error
            metrics = list(job.events.filter(type="metrics").order_by("id"))
            hub_rate = (len(metrics) - 1) / (metrics[-1].created_at - metrics[0].created_at).total_seconds()
            tokens_per_second = job.tokens_per_second
        finally:
            processes.stop()
        plain_rate = plain_loop(Path(entry.path), min(args.steps, len(metrics) - 1), args.batch)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"LoRA r=8 on smollm2:135m, batch {args.batch}, {len(metrics)} hub steps:")
    print(f"  plain peft loop      {plain_rate:6.3f} steps/s   (peak RSS {peak_rss:.0f} MiB)")
    print(f"  through the hub      {hub_rate:6.3f} steps/s   ({tokens_per_second:.0f} tokens/s on the worker)")
    print(f"  hub / plain          {hub_rate / plain_rate:6.3f}x   (target >= 0.95x)")


if __name__ == "__main__":
    main()
