"""Incremental detokenisation: stop strings never leak, characters are never split."""
from workers.text_stream import TextStream


def _run(pieces, stop):
    # One "token" per piece; decode joins the pieces like a tokenizer would.
    emitted = []
    stream = TextStream(lambda ids: "".join(pieces[i] for i in ids), stop, emitted.append)
    for index in range(len(pieces)):
        stream.add([index])
        if stream.stopped:
            break
    return emitted, stream.finish(), stream.stopped


def test_without_stop_strings_every_piece_is_emitted_as_it_comes():
    emitted, text, stopped = _run(["Hel", "lo", " world"], [])
    assert emitted == ["Hel", "lo", " world"] and text == "Hello world" and not stopped


def test_a_stop_string_split_across_tokens_is_held_back_and_cut():
    emitted, text, stopped = _run(["Hello ", "EN", "D", " more"], ["END"])
    assert text == "Hello " and stopped
    assert "".join(emitted) == "Hello "
    assert not any("E" in piece for piece in emitted)


def test_held_back_text_that_was_not_a_stop_string_is_released():
    emitted, text, stopped = _run(["a", "E", "N", "x"], ["END"])
    assert text == "aENx" and not stopped
    assert emitted == ["a", "ENx"]


def test_held_back_text_is_flushed_at_the_end():
    emitted, text, _ = _run(["a", "EN"], ["END"])
    assert text == "aEN" and "".join(emitted) == "aEN"


def test_the_earliest_of_several_stop_strings_wins():
    _, text, stopped = _run(["one two three"], ["three", "two"])
    assert text == "one " and stopped


def test_an_incomplete_utf8_character_waits_for_its_next_byte():
    pieces = ["caf", "\ufffd", "é!"]  # a decoder shows a split character as U+FFFD until it completes

    emitted = []
    decoded = {1: "caf", 2: "caf\ufffd", 3: "café!"}
    stream = TextStream(lambda ids: decoded[len(ids)], [], emitted.append)
    for index in range(len(pieces)):
        stream.add([index])
    assert emitted == ["caf", "é!"] and stream.finish() == "café!"


def test_nul_characters_are_replaced_so_the_answer_can_be_stored():
    emitted, text, _ = _run(["a", "\x00", "b"], [])
    assert text == "a\ufffdb" and "\x00" not in "".join(emitted)
