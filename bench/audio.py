"""Benchmark: multimodal requests through the hub against the same work in-process (issue #14).

Audio (`audio_benchmark`): the real-time factor (seconds of audio per second of wall time, higher is faster) of
transcribing one spoken clip (espeak-ng, about 40 s: two Whisper windows) with Whisper tiny.en
  hub          - POST /audio/transcriptions with the official SDK, end to end: upload, the audio job queue, the
                 inference worker's audio thread (PyAV decoding, faster-whisper), and back;
  faster-whisper in-process - the same model, runtime and settings as the worker (compute type, beam size,
                 temperature fallback), decoding the same file with the same PyAV code, in this process;
  transformers in-process   - the runtime the hub did not choose: the same tensors as WhisperForConditionalGeneration
                 (bench/whisper_transformers.py), greedy, beside faster-whisper greedy for a like-for-like pair;
each measured run alternating hub and in-process, so a busy moment of the machine shifts both alike. It prints
the medians and the ratio hub / in-process (target >= 0.9x).

Run: `python bench/audio.py [--runs 3]` (a few minutes, most of it starting the hub). Other multimodal parts
(images) add a function of their own beside `audio_benchmark` and a line in `main`.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from stack import django_on_embedded_services

WHISPER = "whisper:tiny.en"
CLIP_TEXT = " ".join(["Please close the door behind you.", "We will meet again next week.",
                      "The train leaves at noon.", "Please bring your ticket and your passport."] * 4)


def spoken_clip(directory: Path) -> bytes:
    path = directory / "clip.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-g", "3", "-w", str(path), CLIP_TEXT], check=True)
    return path.read_bytes()


class FasterWhisperInProcess:
    """The worker's runtime with the worker's settings (workers/audio_runtime.py, workers/audio.py)."""

    def __init__(self, path: str):
        from django.conf import settings
        from faster_whisper import WhisperModel

        self.settings = settings
        self.model = WhisperModel(path, device="cpu", compute_type=settings.AIHUB_WHISPER_CPU_COMPUTE_TYPE,
                                  num_workers=max(1, settings.AIHUB_AUDIO_THREADS))

    def transcribe(self, data: bytes, *, greedy: bool = False) -> str:
        from workers.audio import TEMPERATURE_FALLBACK
        from workers.audio_runtime import decode_audio

        samples = decode_audio(data, max_seconds=self.settings.AIHUB_AUDIO_MAX_SECONDS)
        options = (dict(beam_size=1, temperature=0.0, without_timestamps=True) if greedy
                   else dict(beam_size=self.settings.AIHUB_WHISPER_BEAM_SIZE, temperature=TEMPERATURE_FALLBACK))
        segments, _ = self.model.transcribe(samples, language="en", **options)
        return "".join(segment.text for segment in segments).strip()


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def audio_seconds(data: bytes) -> float:
    from workers.audio_runtime import WHISPER_SAMPLE_RATE, decode_audio

    return len(decode_audio(data, max_seconds=3600)) / WHISPER_SAMPLE_RATE


def audio_benchmark(client, runs: int) -> None:
    from apps.catalog.models import ModelEntry
    from workers.audio_runtime import decode_audio

    path = ModelEntry.objects.get(id=WHISPER).path
    with tempfile.TemporaryDirectory() as directory:
        clip = spoken_clip(Path(directory))
    duration = audio_seconds(clip)
    local = FasterWhisperInProcess(path)
    seconds = {"hub": [], "in-process": [], "fw greedy": [], "transformers greedy": []}
    for run in range(runs + 1):  # the first warms up (and loads the model on the worker)
        started = time.perf_counter()
        hub_text = client.audio.transcriptions.create(model=WHISPER, file=("clip.wav", clip)).text
        hub_s = time.perf_counter() - started
        started = time.perf_counter()
        local_text = local.transcribe(clip)
        local_s = time.perf_counter() - started
        if run:
            seconds["hub"].append(hub_s)
            seconds["in-process"].append(local_s)
    # The same model and settings: nearly the same words. Not always all of them: int8 kernels on another thread
    # count round differently, and at a window's edge that can drop a word (seen on an AVX-512 EPYC: "Please"
    # missing once in 90 words) or end a sentence with a comma instead of a full stop (seen on a Zen 4 EPYC), so
    # words are compared without their case and punctuation.
    hub_words, local_words = words(hub_text), words(local_text)
    agreement = difflib.SequenceMatcher(a=hub_words, b=local_words).ratio()
    print(f"transcripts agree on {agreement:.1%} of their words")
    assert agreement >= 0.95, (hub_text, local_text)

    from whisper_transformers import greedy_transcribe, load_whisper_transformers

    model, tokenizer = load_whisper_transformers(path)
    samples = decode_audio(clip, max_seconds=3600)
    for run in range(runs + 1):
        started = time.perf_counter()
        local.transcribe(clip, greedy=True)
        fw_s = time.perf_counter() - started
        started = time.perf_counter()
        greedy_transcribe(model, tokenizer, samples)
        tf_s = time.perf_counter() - started
        if run:
            seconds["fw greedy"].append(fw_s)
            seconds["transformers greedy"].append(tf_s)
    rtf = {where: duration / statistics.median(values) for where, values in seconds.items()}
    print(f"audio: {WHISPER}, a {duration:.1f} s clip, CPU ({os.cpu_count()} cores, shared with whatever else "
          f"runs), {runs} runs (+1 warm-up), median real-time factor (x real time, higher is faster):")
    beam = local.settings.AIHUB_WHISPER_BEAM_SIZE
    for label, value in ((f"hub (faster-whisper, beam {beam})", f"{rtf['hub']:.2f}x"),
                         ("faster-whisper in-process, same settings", f"{rtf['in-process']:.2f}x"),
                         ("hub / in-process", f"{rtf['hub'] / rtf['in-process']:.2f}  (target >= 0.9)")):
        print(f"  {label:<42} {value}")
    print(f"  runtime choice, greedy: faster-whisper {rtf['fw greedy']:.2f}x, transformers "
          f"{rtf['transformers greedy']:.2f}x ({rtf['fw greedy'] / rtf['transformers greedy']:.1f}x faster)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="measured runs (after one warm-up)")
    args = parser.parse_args()
    with django_on_embedded_services() as run_dir:
        from django.core.management import call_command
        from openai import OpenAI

        from apps.accounts.services import api_key_create, user_get_or_create
        from tests.support.processes import start_hub

        call_command("importmodel", builtin=WHISPER, verbosity=0)
        _, key = api_key_create(user=user_get_or_create(username="bench"))
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        client = OpenAI(base_url=f"{base_url}/api/v1", api_key=key, max_retries=0, timeout=600)
        try:
            audio_benchmark(client, args.runs)
        finally:
            client.close()
            processes.stop()


if __name__ == "__main__":
    main()
