"""A worker's transcript in the `response_format` the client asked for, as OpenAI's API writes each one."""
from __future__ import annotations

import json

from django.http import HttpResponse, JsonResponse

SEGMENT_KEYS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
                "no_speech_prob")


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: list[dict]) -> str:
    """SubRip: numbered cues from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    cues = [f"{n}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
            for n, s in enumerate(segments, start=1)]
    return "\n".join(cues)


def vtt(segments: list[dict]) -> str:
    """WebVTT: the `WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`, a blank line after each."""
    cues = [f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text'].strip()}\n"
            for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def usage(result: dict) -> dict:
    """Whisper-style usage: the seconds of audio (OpenAI bills whisper-1 by duration)."""
    return {"type": "duration", "seconds": int(-(-result["duration"] // 1))}


def transcription_response(result: dict, *, response_format: str, task: str, granularities: list[str]):
    if response_format == "text":
        return HttpResponse(result["text"] + "\n", content_type="text/plain; charset=utf-8")
    if response_format == "srt":
        return HttpResponse(srt(result["segments"]), content_type="application/x-subrip; charset=utf-8")
    if response_format == "vtt":
        return HttpResponse(vtt(result["segments"]), content_type="text/vtt; charset=utf-8")
    if response_format == "json":
        return JsonResponse({"text": result["text"], "usage": usage(result)})
    body = {"task": task, "language": result["language_name"], "duration": result["duration"],
            "text": result["text"]}
    if "segment" in granularities:
        body["segments"] = [{key: segment[key] for key in SEGMENT_KEYS} for segment in result["segments"]]
    if "word" in granularities:
        body["words"] = result.get("words", [])
    body["usage"] = usage(result)
    return JsonResponse(body)


def sse(event: dict) -> str:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
