"""Benchmark: an image chat request through the hub against the same model in-process (issue #14).

The model is a random-weight Idefics3 (the SmolVLM family) built from a real config at a size whose compute is
not negligible on a CPU (SigLIP 384 wide x 4 layers on 224-pixel tiles, Llama 576 wide x 8 layers): a
224x160 picture is 2 tiles plus the global view, 64 image tokens each. Each run answers the same question
about a different picture with greedy decoding to max_tokens, timed
  in-process   - the processor and model.generate in this process, with the model as transformers loads it
                 (what `transformers` alone costs);
  packed       - the same, with the model's linear layers packed as the worker's loader packs them on this
                 machine (workers/packed_linear.py; left out where it does not pack): the worker's compute
                 without the hub, so hub / packed is the hub's own overhead;
  hub          - chat.completions.create with the picture as a data URL, through the official SDK: the web
                 checks and stores the image, the worker reads it by id, runs the processor, prefills it with
                 the pixel values and decodes in its batch;
one after the other in each run. It prints the p50 of each and the ratios hub / in-process (target <= 1.10x).

Run: `python bench/vision.py [--runs 5] [--max-tokens 32]` (a few minutes, most of it starting the hub).
`image_request_overhead(...)` is the measurement alone, for a combined multimodal benchmark to import.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import time

from stack import ROOT, django_on_embedded_services

MODEL = "bench:vision"
QUESTION = "What is in this picture?"
SIZES = {"image_size": 224, "patch_size": 14, "vision_hidden": 384, "vision_layers": 4, "text_hidden": 576,
         "text_layers": 8}


def picture(index: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (224, 160), ((index * 53) % 256, (index * 97) % 256, (index * 31) % 256))
    ImageDraw.Draw(image).ellipse([20 + index % 50, 20, 120, 120], fill=(255 - index % 256, 40, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class InProcess:
    """The model as transformers loads it; with `packed`, its linear layers packed as the worker's loader does
    on this machine (workers/packed_linear.py, AIHUB_CPU_PACKED_LINEAR), so the two compute alike."""

    def __init__(self, path, *, packed: bool = False):
        import torch
        from django.conf import settings
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from workers.packed_linear import use_packed_linear

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        self.packed = packed and use_packed_linear(self.model, mode=settings.AIHUB_CPU_PACKED_LINEAR)

    def answer(self, data: bytes, max_tokens: int) -> tuple[int, int]:
        from PIL import Image

        messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[Image.open(io.BytesIO(data)).convert("RGB")],
                                return_tensors="pt")
        with self.torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                         do_sample=False)
        prompt = inputs["input_ids"].shape[1]
        return prompt, output.shape[1] - prompt


def image_request_overhead(client, locals_: dict[str, InProcess], *, runs: int, max_tokens: int) -> dict:
    """p50 seconds of one image request through the hub (`client`: an OpenAI client) and in-process, in each of
    `locals_` (by name), and the ratio hub / each."""
    from tests.support.media import data_url

    seconds = {name: [] for name in [*locals_, "hub"]}
    for run in range(runs + 1):
        data = picture(run)
        taken = {}
        for name, local in locals_.items():
            started = time.perf_counter()
            prompt, generated = local.answer(data, max_tokens)
            taken[name] = time.perf_counter() - started
        started = time.perf_counter()
        completion = client.chat.completions.create(
            model=MODEL, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                   {"type": "image_url", "image_url": {"url": data_url(data)}}]}])
        taken["hub"] = time.perf_counter() - started
        assert completion.usage.prompt_tokens == prompt, (completion.usage.prompt_tokens, prompt)
        assert completion.usage.completion_tokens == generated == max_tokens
        if run:  # the first warms up (and loads the model on the worker)
            for name, value in taken.items():
                seconds[name].append(value)
    p50 = {name: statistics.median(values) for name, values in seconds.items()}
    return {"prompt_tokens": prompt, "p50_s": p50, "ratio": {name: p50["hub"] / p50[name] for name in locals_}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="measured runs (after one warm-up)")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    with django_on_embedded_services() as run_dir:
        from django.core.management import call_command
        from openai import OpenAI

        from apps.accounts.services import api_key_create, user_get_or_create
        from tests.support.processes import start_hub
        from tests.support.tiny_vision import build_tiny_idefics3_model

        directory = build_tiny_idefics3_model(ROOT / "var" / "test-models" / "bench-idefics3", **SIZES)
        call_command("importmodel", MODEL, directory=directory, verbosity=0)
        _, key = api_key_create(user=user_get_or_create(username="bench"))
        locals_ = {"transformers": InProcess(directory)}
        packed = InProcess(directory, packed=True)
        if packed.packed:  # the worker computes on packed linear layers here: the same compute, without the hub
            locals_["packed"] = packed
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        client = OpenAI(base_url=f"{base_url}/api/v1", api_key=key, max_retries=0, timeout=300)
        try:
            result = image_request_overhead(client, locals_, runs=args.runs, max_tokens=args.max_tokens)
        finally:
            client.close()
            processes.stop()

    print(f"model {MODEL} (random Idefics3, {SIZES}), CPU ({os.cpu_count()} cores, shared with whatever else "
          f"runs), {args.runs} runs (+1 warm-up), {result['prompt_tokens']} prompt tokens, {args.max_tokens} "
          "generated, p50:")
    names = {"transformers": "in-process, transformers as it loads the model",
             "packed": "in-process, linear layers packed as the worker's (workers/packed_linear.py)"}
    for name, seconds in result["p50_s"].items():
        print(f"  {names.get(name, name):<75} {seconds * 1000:8.0f} ms")
    for name, ratio in result["ratio"].items():
        print(f"  hub / {names[name]:<69} {ratio:.2f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
