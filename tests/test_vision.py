"""Images and video in chat, through the official SDK, a real worker and a tiny random Idefics3 (SmolVLM family).

Expected prompt sizes are computed with the model's own processor in the test: when the usage matches, the
worker saw exactly those images, tiles and frames.
"""
from __future__ import annotations

import http.server
import threading

import openai
import pytest
from django.core.management import call_command

from apps.chat.models import Conversation, GenerationRequest
from apps.training.models import TrainingFile
from apps.vision.models import StoredImage
from tests.support.media import (
    data_url,
    decompression_bomb,
    image_bytes,
    silence_wav,
    video_bytes,
    video_with_garbled_audio,
)
from tests.support.processes import MODEL_CACHE
from tests.support.speech import SENTENCE, assert_same_words, espeak
from tests.support.tiny_vision import build_tiny_idefics3_model, build_tiny_llava_model
from tests.support.vision_engine import image_row_beside_text_rows

VISION_MODEL = "tiny:vision"
RED, GREEN = image_bytes((220, 30, 30)), image_bytes((30, 200, 60), size=(40, 90))


@pytest.fixture(scope="module")
def vision_model(hub):
    directory = build_tiny_idefics3_model(MODEL_CACHE / "tiny-idefics3")
    call_command("importmodel", VISION_MODEL, directory=directory, verbosity=0)  # kind detected: vision
    return VISION_MODEL


@pytest.fixture(scope="module")
def processor(vision_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(MODEL_CACHE / "tiny-idefics3")


def expected_prompt_tokens(processor, content: list[dict], images: list[bytes], **options) -> int:
    """Prompt tokens of one user message, as the processor makes them (image parts as {"type": "image"})."""
    import io

    from PIL import Image

    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images] or None
    return len(processor(text=[text], images=pictures, **options)["input_ids"][0])


def image_part(data: bytes, detail: str | None = None, mime: str = "image/png") -> dict:
    url = {"url": data_url(data, mime)}
    if detail:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def ask(client, content, **extra):
    return client.chat.completions.create(model=extra.pop("model", VISION_MODEL), max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": content}], **extra)


def stored(user) -> tuple[int, int, int]:
    return (StoredImage.objects.filter(user=user).count(), GenerationRequest.objects.filter(user=user).count(),
            Conversation.objects.filter(user=user).count())


# -- images ------------------------------------------------------------------------------------------------

def test_an_image_request_answers_and_its_usage_counts_the_image_tokens(openai_client, alice, processor):
    completion = ask(openai_client, [{"type": "text", "text": "What is this?"}, image_part(RED)])
    assert completion.model == VISION_MODEL
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 4
    text_only = expected_prompt_tokens(processor, [{"type": "text", "text": "What is this?"}], [])
    expected = expected_prompt_tokens(processor, [{"type": "text", "text": "What is this?"}, {"type": "image"}], [RED])
    assert completion.usage.prompt_tokens == expected
    image_tokens = expected - text_only
    assert image_tokens >= 5 * 4  # 2x2 tiles plus the global view, 4 image tokens each (plus their markers)
    # Stored once, referenced by id: the request row holds the id, never the pixels.
    row = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    part = row.prompt_messages[0]["parts"][1]
    assert part["type"] == "image" and StoredImage.objects.get(id=part["image_id"], user=alice.user).bytes == len(RED)
    assert "base64" not in str(row.prompt_messages) and "base64" not in str(row.params)


def test_detail_low_sends_one_view_and_high_sends_the_tiles(openai_client, processor):
    content = [{"type": "text", "text": "Describe"}]
    low = ask(openai_client, content + [image_part(RED, "low")]).usage.prompt_tokens
    high = ask(openai_client, content + [image_part(RED, "high")]).usage.prompt_tokens
    assert low == expected_prompt_tokens(processor, content + [{"type": "image"}], [RED], do_image_splitting=False)
    assert high == expected_prompt_tokens(processor, content + [{"type": "image"}], [RED], do_image_splitting=True)
    assert low < high


def test_several_images_in_one_message_and_across_turns_are_all_seen(openai_client, alice, processor):
    two = ask(openai_client, [{"type": "text", "text": "Compare"}, image_part(RED), image_part(GREEN)])
    assert two.usage.prompt_tokens == expected_prompt_tokens(
        processor, [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}], [RED, GREEN])
    # A second turn that sends the history again, pictures included: both turns' images reach the model,
    # and the picture sent twice is stored once.
    before = StoredImage.objects.filter(user=alice.user).count()
    blue = image_bytes((40, 60, 230))
    turns = openai_client.chat.completions.create(model=VISION_MODEL, max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, image_part(RED), image_part(GREEN)]},
        {"role": "assistant", "content": two.choices[0].message.content},
        {"role": "user", "content": [image_part(blue), {"type": "text", "text": "And this one?"}]}])
    assert turns.usage.prompt_tokens > two.usage.prompt_tokens + 20
    assert StoredImage.objects.filter(user=alice.user).count() == before + 1


def test_a_conversation_keeps_its_images_for_the_next_turn(openai_client):
    first = ask(openai_client, [{"type": "text", "text": "Remember this"}, image_part(GREEN)])
    conversation_id = first.model_extra["conversation_id"]
    follow = openai_client.chat.completions.create(
        model=VISION_MODEL, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "What was it?"}],
        extra_body={"conversation_id": conversation_id})
    row = GenerationRequest.objects.get(id=follow.id.removeprefix("chatcmpl-"))
    assert row.prompt_messages[0]["parts"][1]["type"] == "image"
    assert follow.usage.prompt_tokens > first.usage.prompt_tokens


def test_an_uploaded_file_is_an_image_by_file_part_or_by_id_in_image_url(openai_client, processor):
    uploaded = openai_client.files.create(file=("green.png", GREEN, "image/png"), purpose="vision")
    assert uploaded.purpose == "vision" and uploaded.status == "processed"
    expected = expected_prompt_tokens(processor, [{"type": "text", "text": "Hi"}, {"type": "image"}], [GREEN])
    by_part = ask(openai_client, [{"type": "text", "text": "Hi"}, {"type": "file", "file": {"file_id": uploaded.id}}])
    by_url = ask(openai_client, [{"type": "text", "text": "Hi"},
                                 {"type": "image_url", "image_url": {"url": uploaded.id}}])
    assert by_part.usage.prompt_tokens == by_url.usage.prompt_tokens == expected


def test_another_users_file_is_not_found(openai_client, hub, bob):
    from openai import OpenAI

    theirs = OpenAI(base_url=hub.api_url, api_key=bob.raw_key, max_retries=0).files.create(
        file=("red.png", RED, "image/png"), purpose="vision")
    with pytest.raises(openai.NotFoundError) as refused:
        ask(openai_client, [{"type": "file", "file": {"file_id": theirs.id}}])
    assert refused.value.body["code"] == "file_not_found"


def test_auto_sends_an_image_request_to_a_vision_model(openai_client, vision_model):
    from apps.catalog.models import ModelEntry

    completion = ask(openai_client, [{"type": "text", "text": "Hello"}, image_part(RED)], model="auto")
    assert ModelEntry.objects.get(id=completion.model).kind == "vision"
    assert "task=vision" in GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-")).route



def test_a_llava_model_sees_each_image_as_its_patches(openai_client, hub):
    from transformers import AutoProcessor

    directory = build_tiny_llava_model(MODEL_CACHE / "tiny-llava")
    call_command("importmodel", "tiny:llava", directory=directory, verbosity=0)
    content = [{"type": "text", "text": "Compare"}, image_part(RED), image_part(GREEN, "low")]
    completion = ask(openai_client, content, model="tiny:llava")
    llava = AutoProcessor.from_pretrained(directory)
    parts = [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]
    expected = expected_prompt_tokens(llava, parts, [RED, GREEN])
    assert completion.usage.prompt_tokens == expected
    assert expected - expected_prompt_tokens(llava, [{"type": "text", "text": "Compare"}], []) == 2 * 16
    assert completion.usage.completion_tokens == 4


def test_a_text_model_refuses_images(openai_client, models):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(openai_client, [image_part(RED)], model=models["tiny"])
    assert refused.value.body["code"] == "model_not_supported"


def test_a_vision_model_answers_text_only_requests_too(openai_client, processor):
    completion = ask(openai_client, "Just text")
    assert completion.usage.prompt_tokens == expected_prompt_tokens(processor, [{"type": "text",
                                                                                 "text": "Just text"}], [])


# -- remote URLs ---------------------------------------------------------------------------------------------

class _Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/red.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(RED)))
            self.end_headers()
            self.wfile.write(RED)
        elif self.path == "/elsewhere":
            self.send_response(302)
            self.send_header("Location", "http://example.com/red.png")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_remote_url_is_refused_unless_its_host_is_allowed(openai_client, alice):
    before = stored(alice.user)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(openai_client, [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}])
    assert refused.value.body["code"] == "remote_url_not_allowed"
    assert refused.value.body["param"] == "messages[0].content[0]"
    assert stored(alice.user) == before


def test_an_allowed_host_is_fetched(openai_client, image_server, processor):
    completion = ask(openai_client, [{"type": "text", "text": "Hi"},
                                     {"type": "image_url", "image_url": {"url": f"http://{image_server}/red.png"}}])
    assert completion.usage.prompt_tokens == expected_prompt_tokens(
        processor, [{"type": "text", "text": "Hi"}, {"type": "image"}], [RED])


def test_an_allowed_name_resolving_to_a_private_address_and_a_redirect_elsewhere_are_refused(
        openai_client, image_server, alice):
    port = image_server.rsplit(":", 1)[1]
    before = stored(alice.user)
    for url in (f"http://localhost:{port}/red.png", f"http://{image_server}/elsewhere"):
        with pytest.raises(openai.BadRequestError) as refused:
            ask(openai_client, [{"type": "image_url", "image_url": {"url": url}}])
        assert refused.value.body["code"] == "remote_url_not_allowed", url
    assert stored(alice.user) == before


# -- bad input: a 400 naming the part, nothing stored ----------------------------------------------------------

BAD_PARTS = {
    "corrupt": (image_part(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "invalid_image"),
    "truncated": (image_part(RED[:len(RED) // 2]), "invalid_image"),
    "decompression bomb": (image_part(decompression_bomb()), "image_too_large"),
    "bmp": (image_part(image_bytes(format="BMP"), mime="image/bmp"), "unsupported_image_format"),
    "not base64": ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not-base64@@@"}},
                   "invalid_data_url"),
    "not an image type": (image_part(RED, mime="text/plain"), "invalid_data_url"),
    "bad video": ({"type": "video_url", "video_url": {"url": data_url(b"\x00" * 512, "video/mp4")}}, "invalid_video"),
}


@pytest.mark.parametrize("name", list(BAD_PARTS))
def test_a_bad_image_is_a_400_that_stores_nothing(openai_client, alice, name):
    part, code = BAD_PARTS[name]
    before = stored(alice.user)
    with pytest.raises(openai.BadRequestError) as refused:
        # A good image first: it was stored when the bad one is found, and goes with the rolled-back request.
        ask(openai_client, [image_part(image_bytes((1, 2, 3))), {"type": "text", "text": "x"}, part])
    assert refused.value.body["code"] == code
    assert refused.value.body["param"] == "messages[0].content[2]"
    assert stored(alice.user) == before


def test_bad_shapes_and_too_many_images_are_400s(openai_client, alice):
    before = stored(alice.user)
    for content in ([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                    [{"type": "image_url", "image_url": {"url": data_url(RED), "detail": "ultra"}}],
                    [{"type": "file", "file": {"file_data": "abc", "filename": "a.png"}}],
                    [image_part(RED)] * 17):
        with pytest.raises(openai.BadRequestError):
            ask(openai_client, content)
    assert stored(alice.user) == before


def test_an_oversized_or_non_image_upload_is_refused_and_stores_nothing(openai_client, alice):
    import io
    import os

    from PIL import Image

    noise = io.BytesIO()  # 10.8 MB of incompressible pixels: over the 10 MiB image limit
    Image.frombytes("RGB", (2000, 1800), os.urandom(2000 * 1800 * 3)).save(noise, format="PNG", compress_level=0)
    for name, data, code in (("big.png", noise.getvalue(), "image_too_large"),
                             ("notes.txt", b"hello", "invalid_image")):
        with pytest.raises(openai.BadRequestError) as refused:
            openai_client.files.create(file=(name, data, "application/octet-stream"), purpose="vision")
        assert refused.value.body["code"] == code
    assert not TrainingFile.objects.filter(user=alice.user, purpose="vision").exists()


def test_a_vision_file_cannot_train(openai_client, alice, models):
    uploaded = openai_client.files.create(file=("red.png", RED, "image/png"), purpose="vision")
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.fine_tuning.jobs.create(model=models["tiny"], training_file=uploaded.id)
    assert refused.value.body["param"] == "training_file"


# -- video ---------------------------------------------------------------------------------------------------

def test_a_video_reaches_the_model_as_sampled_frames(openai_client, alice, processor):
    clip = video_bytes(seconds=3)  # red, green, blue for a second each
    completion = ask(openai_client, [{"type": "text", "text": "What happens?"},
                                     {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}}])
    row = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    video = row.prompt_messages[0]["parts"][1]
    assert video["type"] == "video" and video["times"] == [0.0, 1.0, 2.0]  # one frame a second
    assert video["transcript"] is None  # the clip has no audio track: nothing to hear, no error
    frames = [bytes(StoredImage.objects.get(id=image_id).data) for image_id in video["image_ids"]]
    assert len(set(frames)) == 3
    content = [{"type": "text", "text": "What happens?"}, {"type": "text", "text": "Video (3 frames):"}]
    for seconds in video["times"]:
        content += [{"type": "text", "text": f" {seconds:.1f}s "}, {"type": "image"}]
    # Frames go in as low-detail images: one view each.
    assert completion.usage.prompt_tokens == expected_prompt_tokens(processor, content, frames,
                                                                    do_image_splitting=False)


def test_a_long_video_is_sampled_to_the_frame_limit_and_a_too_long_one_refused(openai_client, alice):
    completion = ask(openai_client, [{"type": "video_url", "video_url": {
        "url": data_url(video_bytes(seconds=20, fps=2, size=16), "video/mp4")}}])
    row = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    assert row.prompt_messages[0]["parts"][0]["times"] == [0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5]
    before = stored(alice.user)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(openai_client, [{"type": "video_url", "video_url": {
            "url": data_url(video_bytes(seconds=121, fps=1, size=16), "video/mp4")}}])
    assert refused.value.body["code"] == "video_too_long"
    assert stored(alice.user) == before


def test_an_uploaded_video_is_used_by_file_id(openai_client):
    uploaded = openai_client.files.create(file=("clip.mp4", video_bytes(seconds=2), "video/mp4"), purpose="vision")
    completion = ask(openai_client, [{"type": "video_url", "video_url": {"url": uploaded.id}}])
    row = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    assert row.prompt_messages[0]["parts"][0]["times"] == [0.0, 1.0]


def test_a_videos_speech_reaches_the_model_as_a_transcript_after_its_frames(openai_client, processor, models,
                                                                            tmp_path):
    clip = video_bytes(seconds=5, audio=espeak(SENTENCE, tmp_path / "said.wav"))  # frames plus a spoken track
    completion = ask(openai_client, [{"type": "text", "text": "What is said?"},
                                     {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}}])
    row = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    video = row.prompt_messages[0]["parts"][1]
    assert video["times"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert_same_words(SENTENCE, video["transcript"])  # heard by the real Whisper tiny.en on the inference worker
    frames = [bytes(StoredImage.objects.get(id=image_id).data) for image_id in video["image_ids"]]
    content = [{"type": "text", "text": "What is said?"}, {"type": "text", "text": "Video (5 frames):"}]
    for seconds in video["times"]:
        content += [{"type": "text", "text": f" {seconds:.1f}s "}, {"type": "image"}]
    content.append({"type": "text", "text": f"\nAudio transcript: {video['transcript']}\n"})
    # The usage matches frames and transcript together: the model saw both.
    assert completion.usage.prompt_tokens == expected_prompt_tokens(processor, content, frames,
                                                                    do_image_splitting=False)


def test_a_silent_track_gives_no_transcript_and_a_garbled_or_too_long_one_is_a_400_that_stores_nothing(
        openai_client, alice, models):
    completion = ask(openai_client, [{"type": "video_url", "video_url": {
        "url": data_url(video_bytes(seconds=3, audio=silence_wav(3)), "video/mp4")}}])
    row = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    assert row.prompt_messages[0]["parts"][0]["transcript"] is None
    before = stored(alice.user)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(openai_client, [{"type": "text", "text": "Listen:"},
                            {"type": "video_url", "video_url": {"url": data_url(video_with_garbled_audio(),
                                                                                "video/mp4")}}])
    error = refused.value.body
    assert error["code"] == "invalid_video" and error["param"] == "messages[0].content[1]"
    assert "audio track" in error["message"]
    # A short picture cannot carry a sound track longer than the clip limit (120 s here).
    with pytest.raises(openai.BadRequestError) as refused:
        ask(openai_client, [{"type": "video_url", "video_url": {
            "url": data_url(video_bytes(seconds=2, audio=silence_wav(125)), "video/mp4")}}])
    assert refused.value.body["code"] == "video_too_long"
    assert stored(alice.user) == before


# -- the catalog's machinery ----------------------------------------------------------------------------------

def test_the_vision_model_loads_unloads_and_is_counted_like_any_model(hub, openai_client, vision_model):
    import httpx

    from tests.conftest import make_account

    staff = make_account("ops", staff=True, scopes=["inference", "admin"])

    def loaded_ids():
        status = httpx.get(f"{hub.api_url}/models/status", headers=staff.auth, timeout=30).json()
        return {model["id"] for worker in status["workers"] for model in worker["loaded_models"]}

    assert httpx.post(f"{hub.api_url}/models/load", headers=staff.auth, json={"model_id": VISION_MODEL},
                      timeout=120).status_code == 200
    assert VISION_MODEL in loaded_ids()
    ask(openai_client, [image_part(RED)])
    scraped = httpx.get(f"{hub.base_url}/metrics", timeout=60).text
    assert any(line.startswith("aihub_tokens_total{") and f'model="{VISION_MODEL}"' in line and 'kind="prompt"' in line
               for line in scraped.splitlines())
    assert httpx.post(f"{hub.api_url}/models/unload", headers=staff.auth, json={"model_id": VISION_MODEL},
                      timeout=120).status_code == 200
    assert VISION_MODEL not in loaded_ids()


def test_deleting_a_conversation_deletes_the_images_only_it_showed(openai_client, alice, hub):
    import hashlib

    import httpx

    only_here, shared = image_bytes((9, 9, 9)), image_bytes((8, 8, 8))
    first = ask(openai_client, [image_part(only_here), image_part(shared)])
    ask(openai_client, [image_part(shared)])  # another conversation shows the shared picture too
    deleted = httpx.delete(f"{hub.api_url}/chat/conversations/{first.model_extra['conversation_id']}",
                           headers=alice.auth, timeout=30)
    assert deleted.status_code in (200, 204), deleted.text
    kept = set(StoredImage.objects.filter(user=alice.user).values_list("sha256", flat=True))
    assert hashlib.sha256(shared).hexdigest() in kept
    assert hashlib.sha256(only_here).hexdigest() not in kept


def test_an_image_row_decoded_in_the_batch_answers_as_transformers_generate_does(processor):
    """The engine's way (prefill with pixel values, then decode among text rows) against model.generate."""
    import io

    import torch
    from PIL import Image

    from workers.engine import load_model

    loaded = load_model(model_id=VISION_MODEL, path=str(MODEL_CACHE / "tiny-idefics3"), context_length=4096,
                        device=torch.device("cpu"), kind="vision")
    answer = image_row_beside_text_rows(loaded, [{"type": "image"}, {"type": "text", "text": "What is this?"}],
                                        [Image.open(io.BytesIO(RED)).convert("RGB")], max_tokens=16)
    assert answer.result.text == answer.generated
    assert answer.result.prompt_tokens == answer.prompt_tokens
