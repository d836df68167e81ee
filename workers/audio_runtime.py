"""Audio models and audio files on the worker: Whisper (faster-whisper on CTranslate2), hibari voices (ONNX),
decoding any container PyAV (FFmpeg) reads, and encoding speech as it is synthesised.

Why faster-whisper and not transformers' WhisperForConditionalGeneration for the same weights: measured on this
project's CPU machine (docs/models.md, "Audio models"; bench/audio.py re-measures it), CTranslate2 transcribes
several times faster at the same words, and it is the runtime the model files ship for.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.core.errors import error_object

logger = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = 16000
# OpenAI's formats; mp3, opus (in Ogg), aac (ADTS) and flac go through FFmpeg's encoders (PyAV's wheels ship them).
SPEECH_FORMATS = {
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/ogg"),
    "aac": ("adts", "aac", "audio/aac"),
    "flac": ("flac", "flac", "audio/flac"),
    "wav": (None, None, "audio/wav"),
    "pcm": (None, None, "audio/pcm"),
}


class AudioRefused(Exception):
    """Input the worker cannot use (corrupt, too long, an unknown voice): a 400 with this error object."""

    def __init__(self, message: str, *, param: str | None = "file", code: str = "invalid_audio"):
        super().__init__(message)
        self.error = error_object(message, param=param, code=code)


# -- models -------------------------------------------------------------------------------------------------


@dataclass
class Voices:
    """A speech model: one ONNX session per voice, made when a request first asks for it (each ~8 MB)."""

    assets: Path
    threads: int = 1
    sessions: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def available(self) -> list[str]:
        """The voices whose model is on this machine: the bundled one, and any copied into hibari's cache."""
        from hibari.voices import voice_path

        names = []
        for name in json.loads((self.assets / "voices.json").read_text()):
            try:
                voice_path(name, download_missing=False)
                names.append(name)
            except FileNotFoundError:
                continue
        return names

    def get(self, name: str):
        with self.lock:
            if name not in self.sessions:
                available = self.available()
                if name not in available:
                    raise AudioRefused(f"Unknown voice '{name}'; the voices available are: {', '.join(available)}.",
                                       param="voice", code="invalid_value")
                from hibari import Hibari

                self.sessions[name] = Hibari(voice=name, threads=self.threads)
            return self.sessions[name]


def load_audio_model(*, model_id: str, path: str, kind: str, device, parameter_count: int):
    """A catalog entry of kind `audio` (Whisper) or `speech` (hibari) as the ModelManager's LoadedModel."""
    from django.conf import settings

    from .engine import LoadedModel

    started = time.perf_counter()
    if kind == "audio":
        from faster_whisper import WhisperModel

        on_gpu = device.type == "cuda"
        compute_type = settings.AIHUB_WHISPER_GPU_COMPUTE_TYPE if on_gpu else settings.AIHUB_WHISPER_CPU_COMPUTE_TYPE
        # num_workers: as many transcriptions at once as the worker has audio threads (CTranslate2 runs them in
        # parallel on its own threads, outside the GIL).
        model = WhisperModel(path, device="cuda" if on_gpu else "cpu", device_index=device.index or 0,
                             compute_type=compute_type, num_workers=max(1, settings.AIHUB_AUDIO_THREADS))
        # CTranslate2's memory is not torch's: count the weights at the precision it computes in.
        bytes_per_parameter = {"int8": 1, "int8_float32": 1, "int8_float16": 1, "float16": 2, "bfloat16": 2}
        size = parameter_count * bytes_per_parameter.get(model.model.compute_type, 4)
    else:
        model = Voices(Path(path))
        model.get("heart" if "heart" in model.available() else model.available()[0])  # load one voice now
        size = parameter_count
    seconds = time.perf_counter() - started
    logger.info("loaded %s (%s) on %s in %.2fs", model_id, kind, device, seconds)
    return LoadedModel(model_id, model, None, device, 0, seconds, size_bytes=size)


# -- decoding -----------------------------------------------------------------------------------------------


def decode_audio(data: bytes, *, max_seconds: float, sample_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Any audio (or the first audio track of a video) as mono float32 samples at `sample_rate`, via PyAV.

    Refuses (AudioRefused) what FFmpeg cannot read, a file without audio, and audio longer than `max_seconds`
    (checked against the container's duration first, then while decoding, so a lying header costs nothing).
    """
    import io

    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError) as exc:
        raise AudioRefused(f"The file is not audio that can be decoded ({_reason(exc)}).")
    with container:
        if not container.streams.audio:
            raise AudioRefused("The file has no audio track.")
        if container.duration is not None and container.duration / 1e6 > max_seconds + 1:
            raise AudioRefused(f"The audio lasts {container.duration / 1e6:.0f} s; this hub takes at most "
                               f"{max_seconds:.0f} s (AIHUB_AUDIO_MAX_SECONDS).", code="audio_too_long")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, total, limit = [], 0, int((max_seconds + 1) * sample_rate)
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].shape[0]
                if total > limit:
                    raise AudioRefused(f"The audio lasts more than {max_seconds:.0f} s, the most this hub takes "
                                       "(AIHUB_AUDIO_MAX_SECONDS).", code="audio_too_long")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise AudioRefused(f"The audio could not be decoded ({_reason(exc)}).")
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if samples.shape[0] < sample_rate // 10:
        raise AudioRefused("The file holds no audio (less than 0.1 s could be decoded).")
    return samples


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).split(":")[0] or type(exc).__name__


# -- encoding -----------------------------------------------------------------------------------------------


class _Sink:
    """A write-only file for PyAV's muxer: what it writes is taken after every packet (no seeking back)."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class SpeechEncoder:
    """Float samples in, bytes of `response_format` out, chunk by chunk as synthesis goes (a streamed answer).

    wav gets a header whose sizes say "unknown length" (0xFFFFFFFF), as streamed WAV does, since the length
    is not known when the first bytes leave; pcm is raw 16-bit little-endian mono, OpenAI's `pcm`.
    """

    def __init__(self, response_format: str, sample_rate: int):
        self.format, self.rate = response_format, sample_rate
        self.container = self.stream = None
        if SPEECH_FORMATS[response_format][0]:
            import av

            muxer, codec, _ = SPEECH_FORMATS[response_format]
            self.sink = _Sink()
            self.container = av.open(self.sink, mode="w", format=muxer)
            self.stream = self.container.add_stream(codec, rate=sample_rate, layout="mono")

    def start(self) -> bytes:
        if self.format != "wav":
            return b""
        import struct

        unknown = 0xFFFFFFFF
        return (b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + struct.pack(
            "<IHHIIHH", 16, 1, 1, self.rate, self.rate * 2, 2, 16) + b"data" + struct.pack("<I", unknown))

    def encode(self, samples: np.ndarray) -> bytes:
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
        if self.container is None:
            return pcm.tobytes()
        import av

        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        return self.sink.take()

    def finish(self) -> bytes:
        if self.container is None:
            return b""
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        return self.sink.take()
