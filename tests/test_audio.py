"""Audio through the official SDK against real workers: Whisper tiny.en (faster-whisper) and the hibari voice.

Sentences are spoken in the test, by espeak-ng and by the hub's own /audio/speech, and must come back as the
same words, as tests/support/speech.py judges them (a small word error rate; the sentence comes back exactly).
"""
from __future__ import annotations

import base64
import io
import json
import re

import av
import httpx
import numpy as np
import openai
import pytest

from tests.conftest import SPEECH_MODEL, TRANSCRIPTION_MODEL, make_account
from tests.support.busy import job_list_full_answers
from tests.support.speech import SENTENCE, assert_same_words, espeak

WHISPER = TRANSCRIPTION_MODEL
VOICE_MODEL = SPEECH_MODEL


@pytest.fixture(scope="module")
def audio_models(hub, models):
    """The default audio models (tests/conftest.py registers them as `runhub` does on first start)."""
    return {"whisper": models["transcription"], "voice": models["speech"]}


@pytest.fixture(scope="module")
def client(hub, audio_models):
    from openai import OpenAI

    account = make_account("listener")
    return OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> bytes:
    return espeak(SENTENCE, tmp_path_factory.mktemp("audio") / "sentence.wav")


def decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        return sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))


def _error(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


def test_an_espeak_sentence_transcribes_to_the_same_words(client, spoken):
    result = client.audio.transcriptions.create(model=WHISPER, file=("sentence.wav", spoken))
    assert_same_words(SENTENCE, result.text)


def test_speech_streams_the_sentence_and_transcribes_back_to_it(client):
    with client.audio.speech.with_streaming_response.create(model=VOICE_MODEL, voice="heart", input=SENTENCE,
                                                            response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        chunks = list(response.iter_bytes())
    audio = b"".join(chunks)
    assert 2.0 < decoded_seconds(audio) < 10.0
    result = client.audio.transcriptions.create(model=WHISPER, file=("speech.wav", audio))
    assert_same_words(SENTENCE, result.text)


@pytest.mark.parametrize("response_format,container", [("mp3", "mp3"), ("opus", "ogg"), ("flac", "flac"),
                                                        ("aac", "aac")])
def test_speech_comes_in_each_encoded_format(client, response_format, container):
    audio = client.audio.speech.create(model=VOICE_MODEL, voice="heart", input="Hello there.",
                                       response_format=response_format).content
    with av.open(io.BytesIO(audio)) as opened:
        assert container in opened.format.name
    assert decoded_seconds(audio) > 0.5


def test_pcm_is_raw_24_khz_16_bit_mono(client):
    pcm = client.audio.speech.create(model=VOICE_MODEL, voice="heart", input="Hello there.",
                                     response_format="pcm").content
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(pcm) % 2 == 0 and 0.5 < len(samples) / 24000 < 5
    assert np.abs(samples).max() > 1000  # speech, not silence


def test_srt_and_vtt_are_well_formed(client, spoken):
    srt = client.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken), response_format="srt")
    vtt = client.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken), response_format="vtt")
    srt_cues = _cues(srt.strip().split("\n\n"), numbered=True, separator=",")
    assert vtt.startswith("WEBVTT\n\n")
    vtt_cues = _cues(vtt[len("WEBVTT\n\n"):].strip().split("\n\n"), numbered=False, separator=".")
    assert srt_cues == vtt_cues
    assert_same_words(SENTENCE, " ".join(text for _, _, text in srt_cues))


def _cues(blocks: list[str], *, numbered: bool, separator: str) -> list[tuple[float, float, str]]:
    stamp = rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)"
    cues, last_end = [], 0.0
    for number, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if numbered:
            assert lines.pop(0) == str(number)
        match = re.fullmatch(f"{stamp} --> {stamp}", lines[0])
        assert match, lines[0]
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        start, end = h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000
        assert last_end <= start + 0.01 and start < end
        assert lines[1:] and all(line.strip() for line in lines[1:])
        cues.append((start, end, " ".join(lines[1:])))
        last_end = end
    assert cues
    return cues


def test_verbose_json_has_segments_and_word_timestamps(client, spoken):
    result = client.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken),
                                                response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
    assert result.language == "english" and result.duration == pytest.approx(decoded_seconds(spoken), abs=0.1)
    assert result.segments and result.words
    assert_same_words(SENTENCE, " ".join(segment.text for segment in result.segments))
    assert_same_words(SENTENCE, " ".join(word.word for word in result.words))
    starts = [word.start for word in result.words]
    assert starts == sorted(starts) and all(w.start <= w.end <= result.duration + 0.1 for w in result.words)
    only_words = client.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken),
                                                    response_format="verbose_json", timestamp_granularities=["word"])
    assert only_words.words and not only_words.segments


def test_plain_text_format(client, spoken):
    text = client.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken), response_format="text")
    assert isinstance(text, str)
    assert_same_words(SENTENCE, text)


def test_streaming_sends_deltas_then_the_whole_text(client, spoken):
    stream = client.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken), stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1 and events[-1] is done[0]
    assert "".join(deltas).strip() == done[0].text
    assert_same_words(SENTENCE, done[0].text)


def test_long_audio_is_transcribed_window_by_window_with_progress(hub, client, audio_models, tmp_path):
    """Over Whisper's 30 s window: several windows, each segment's progress streamed (as SSE comments)."""
    sentences = ["The weather is nice today.", "I would like a cup of coffee.", "The train leaves at noon.",
                 "Please close the door behind you.", "We will meet again next week."] * 3
    clip = espeak(" ".join(sentences), tmp_path / "long.wav")
    assert decoded_seconds(clip) > 31
    account = make_account("long")
    with httpx.stream("POST", f"{hub.api_url}/audio/transcriptions", headers=account.auth, timeout=300,
                      files={"file": ("long.wav", clip)}, data={"model": WHISPER, "stream": "true"}) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    progress = [float(line.split()[2].split("/")[0]) for line in lines if line.startswith(": progress")]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] > 30
    done = json.loads(next(line for line in lines if "transcript.text.done" in line)[len("data: "):])
    assert_same_words(" ".join(sentences), done["text"])


def test_input_audio_in_chat_is_transcribed_into_the_prompt(hub, client, spoken, models):
    encoded = base64.b64encode(spoken).decode("ascii")
    completion = client.chat.completions.create(model=models["tiny"], max_tokens=4, messages=[{
        "role": "user", "content": [{"type": "text", "text": "What was said?"},
                                    {"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}}]}])
    conversation = httpx.get(f"{hub.api_url}/chat/conversations/{completion.conversation_id}",
                             headers={"Authorization": f"Bearer {client.api_key}"}, timeout=30).json()
    prompt = conversation["messages"][0]["content"]
    match = re.fullmatch(r"What was said\? \[audio transcript: (.*)\]", prompt)
    assert match, prompt
    assert_same_words(SENTENCE, match.group(1))
    # The model saw exactly that text: the same prompt typed costs the same prompt tokens.
    typed = client.chat.completions.create(model=models["tiny"], max_tokens=4,
                                           messages=[{"role": "user", "content": prompt}])
    assert typed.usage.prompt_tokens == completion.usage.prompt_tokens


def test_input_audio_over_the_websocket_is_transcribed_too(hub, spoken, models):
    from websockets.sync.client import connect

    from apps.chat.models import GenerationRequest

    account = make_account("caller")
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(spoken).decode(), "format": "wav"}}
    with connect(f"{hub.ws_url}/ws/v1/chat/", open_timeout=10, max_size=2**22) as ws:
        ws.send(json.dumps({"type": "auth", "api_key": account.raw_key}))
        assert json.loads(ws.recv(timeout=30))["type"] == "authenticated"
        ws.send(json.dumps({"type": "chat.completion", "request": {
            "model": models["tiny"], "max_tokens": 2, "messages": [{"role": "user", "content": [part]}]}}))
        accepted = json.loads(ws.recv(timeout=180))
        assert accepted["type"] == "accepted", accepted
        while json.loads(ws.recv(timeout=60))["type"] not in ("done", "error"):
            pass
    conversation = GenerationRequest.objects.get(id=accepted["request_id"]).conversation
    prompt = conversation.messages.order_by("created_at").first().content
    match = re.fullmatch(r"\[audio transcript: (.*)\]", prompt)
    assert match, prompt
    assert_same_words(SENTENCE, match.group(1))


def test_translation_with_an_english_only_model_is_refused_naming_it(client, spoken):
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.translations.create(model=WHISPER, file=("a.wav", spoken))
    assert _error(refused)["param"] == "model" and WHISPER in _error(refused)["message"]


def _silent_flac(seconds: float) -> bytes:
    """A FLAC of silence: tiny on disk however long it plays."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=8000, layout="mono")
        block = av.AudioFrame.from_ndarray(np.zeros((1, 8000 * 60), dtype="<i2"), format="s16", layout="mono")
        block.sample_rate = 8000
        for _ in range(int(seconds // 60) + 1):
            for packet in stream.encode(block):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def test_every_bad_input_is_a_400_and_stores_nothing(hub, client, spoken, models):
    from apps.audio.jobs import audio_key
    from apps.chat.models import GenerationRequest
    from apps.core.redis import sync_client

    account = make_account("careless")
    from openai import OpenAI

    careless = OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=180)
    refusals = {
        "corrupt": lambda: careless.audio.transcriptions.create(model=WHISPER, file=("a.mp3", b"ID3" + b"\0" * 999)),
        "corrupt, streamed": lambda: careless.audio.transcriptions.create(
            model=WHISPER, file=("a.mp3", b"ID3" + b"\0" * 999), stream=True),
        "not audio": lambda: careless.audio.transcriptions.create(model=WHISPER, file=("a.txt", b"hello " * 100)),
        "too long": lambda: careless.audio.transcriptions.create(model=WHISPER,
                                                                 file=("long.flac", _silent_flac(3700))),
        "bad format": lambda: careless.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken),
                                                                   response_format="xml"),
        "granularity without verbose_json": lambda: careless.audio.transcriptions.create(
            model=WHISPER, file=("a.wav", spoken), timestamp_granularities=["word"]),
        "chat model": lambda: careless.audio.transcriptions.create(model=models["tiny"], file=("a.wav", spoken)),
        "unknown voice": lambda: careless.audio.speech.create(model=VOICE_MODEL, voice="alloy", input="Hi."),
        "speech format": lambda: careless.audio.speech.create(model=VOICE_MODEL, voice="heart", input="Hi.",
                                                              response_format="ogg"),
        "instructions": lambda: careless.audio.speech.create(model=VOICE_MODEL, voice="heart", input="Hi.",
                                                             instructions="Whisper it."),
        "speed": lambda: careless.audio.speech.create(model=VOICE_MODEL, voice="heart", input="Hi.", speed=4.0),
        "whisper as a voice": lambda: careless.audio.speech.create(model=WHISPER, voice="heart", input="Hi."),
        "corrupt chat audio": lambda: careless.chat.completions.create(model=models["tiny"], messages=[{
            "role": "user", "content": [{"type": "input_audio",
                                         "input_audio": {"data": base64.b64encode(b"junk" * 50).decode(),
                                                         "format": "wav"}}]}]),
        "chat audio format": lambda: careless.chat.completions.create(model=models["tiny"], messages=[{
            "role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}]}]),
    }
    errors = {}
    for what, call in refusals.items():
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        errors[what] = _error(refused)
    assert errors["corrupt"]["code"] == errors["corrupt, streamed"]["code"] == errors["not audio"]["code"] \
        == "invalid_audio"
    assert errors["too long"]["code"] == "audio_too_long"
    assert errors["bad format"]["param"] == "response_format"
    assert "heart" in errors["unknown voice"]["message"] and errors["unknown voice"]["param"] == "voice"
    assert errors["speech format"]["param"] == "response_format"
    assert errors["instructions"]["param"] == "instructions"
    assert errors["instructions"]["code"] == "unsupported_parameter"
    assert errors["corrupt chat audio"]["param"] == "messages"
    # Nothing kept: no request row for the user, no audio waiting in Redis.
    assert not GenerationRequest.objects.filter(user=account.user).exists()
    assert not list(sync_client().scan_iter(audio_key("*")))


def test_audio_models_are_catalog_entries_loaded_and_unloaded_like_text_models(hub, client, spoken):
    staff = make_account("ops", staff=True, scopes=["inference", "admin"])
    listed = {m.id for m in client.models.list()}
    assert {WHISPER, VOICE_MODEL} <= listed
    for model_id in (WHISPER, VOICE_MODEL):
        loaded = httpx.post(f"{hub.api_url}/models/load", json={"model_id": model_id}, headers=staff.auth,
                            timeout=120)
        assert loaded.status_code == 200, loaded.text
    status = httpx.get(f"{hub.api_url}/models/status", headers=staff.auth, timeout=30).json()
    sizes = {m["id"]: m["size_bytes"] for w in status["workers"] for m in w["loaded_models"]}
    assert sizes.get(WHISPER, 0) > 30e6 and sizes.get(VOICE_MODEL, 0) > 5e6
    unloaded = httpx.post(f"{hub.api_url}/models/unload", json={"model_id": WHISPER}, headers=staff.auth,
                          timeout=120)
    assert unloaded.status_code == 200, unloaded.text
    # Unloaded is not gone: the next request loads it again.
    assert_same_words(SENTENCE, client.audio.transcriptions.create(model=WHISPER, file=("a.wav", spoken)).text)


def test_multilingual_whisper_base_is_an_opt_in_import_that_translates(hub, client, spoken):
    from django.core.management import call_command

    from apps.catalog.models import ModelEntry

    call_command("importmodel", builtin="whisper:base", verbosity=0)  # joins the two packages' halves once
    entry = ModelEntry.objects.get(id="whisper:base")
    assert entry.kind == "audio" and "translation" in entry.capabilities
    assert 70e6 < entry.parameter_count < 80e6  # Whisper base: 74 M parameters, counted from the joined file
    english = client.audio.translations.create(model="whisper:base", file=("a.wav", spoken))
    assert_same_words(SENTENCE, english.text)
    detected = client.audio.transcriptions.create(model="whisper:base", file=("a.wav", spoken),
                                                  response_format="verbose_json")
    assert detected.language == "english"
    assert_same_words(SENTENCE, detected.text)


def test_a_full_audio_list_answers_503_queue_full_and_gives_the_key_its_slot_back(hub, audio_models):
    """Past AIHUB_AUDIO_MAX_QUEUE waiting jobs (here 0), a 503 with Retry-After; the key's one concurrency slot
    is given back each time, so the second try is refused by the list again, not by the key."""
    for response in job_list_full_answers("/audio/speech", {"model": VOICE_MODEL, "voice": "heart", "input": "Hi."},
                                          redis_db=10, AIHUB_AUDIO_MAX_QUEUE="0"):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "queue_full" and response.headers["retry-after"] == "5"
