"""The tool-call parsers (workers/tool_calls.py) on the formats real models write: plain unit tests, no hub."""
from __future__ import annotations

import json

import pytest

from workers.tool_calls import CallOut, Content, ToolCall, ToolCallParser, parse_tool_calls

WEATHER = ["get_weather", "get_time"]


def _calls(calls):
    def value(arguments):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments  # cut short: compared as text
    return [(call.name, value(call.arguments)) for call in calls]


def _streamed(text: str, pieces: list[str], **options):
    """Feed the pieces, collect what a client would see: the content text and the calls in order."""
    parser = ToolCallParser(**options)
    out = []
    for piece in pieces:
        out += parser.feed(piece)
    out += parser.finish()
    content = "".join(p.text for p in out if isinstance(p, Content))
    calls = {}
    for piece in out:
        if isinstance(piece, CallOut):
            if piece.fragment is None:  # a whole call
                calls[piece.index] = ToolCall(piece.call.name, piece.call.arguments, piece.call.id)
            elif piece.index not in calls:  # a streaming call's first event: its arguments follow in pieces
                assert piece.fragment == ""
                calls[piece.index] = ToolCall(piece.call.name, "", piece.call.id)
            else:
                calls[piece.index].arguments += piece.fragment
    assert list(calls) == list(range(len(calls)))
    return content, list(calls.values()), parser


def _every_split(text: str, **options):
    """The whole answer at once, then split in two at every character boundary, then character by character:
    the client sees the same content and the same calls each time."""
    whole_content, whole_calls = parse_tool_calls(text, **options)
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    for pieces in splits:
        content, calls, parser = _streamed(text, pieces, **options)
        assert content == (whole_content or "")
        assert parser.content == whole_content
        assert _calls(calls) == _calls(whole_calls)
    return whole_content, whole_calls


def test_it_reads_a_hermes_call_and_keeps_the_text_before_it():
    content, calls = _every_split(
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        format="hermes", tool_names=WEATHER)
    assert content == "Let me look."
    assert _calls(calls) == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")


def test_it_reads_several_hermes_calls_in_a_row_as_parallel_calls():
    text = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>')
    content, calls = _every_split(text, format="hermes", tool_names=WEATHER)
    assert content is None
    assert _calls(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]


def test_it_returns_only_the_first_call_when_parallel_calls_are_off():
    text = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    _, calls = _every_split(text, format="hermes", parallel=False)
    assert _calls(calls) == [("get_weather", {"city": "Paris"})]


def test_it_gives_a_malformed_call_back_as_plain_content():
    text = 'Hmm <tool_call>{"name": "get_weather", "arguments": {"city": </tool_call> done'
    content, calls = _every_split(text, format="generic", tool_names=WEATHER)
    assert calls == []
    assert content == text


def test_it_treats_a_call_of_a_function_not_offered_as_content():
    text = '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>'
    content, calls = _every_split(text, format="generic", tool_names=WEATHER)
    assert calls == [] and content == text


def test_it_reads_a_call_whose_end_tag_never_came():
    content, calls = _every_split('<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}',
                                  format="generic", tool_names=WEATHER)
    assert content is None and _calls(calls) == [("get_time", {"zone": "UTC"})]


def test_it_leaves_an_answer_without_calls_exactly_as_written():
    text = "The weather <tool is fine.\n\n"
    content, calls = _every_split(text, format="hermes")
    assert calls == [] and content == text


def test_it_accepts_arguments_given_as_json_text():
    _, calls = _every_split('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>',
                            format="hermes")
    assert _calls(calls) == [("get_weather", {"city": "Oslo"})]


def test_it_reads_llama3_calls_with_and_without_the_python_tag():
    for prefix in ("", "<|python_tag|>"):
        text = prefix + ('{"name": "get_weather", "parameters": {"city": "Rome"}}; '
                         '{"name": "get_time", "parameters": {}}')
        content, calls = _every_split(text, format="llama3", tool_names=WEATHER)
        assert content is None
        assert _calls(calls) == [("get_weather", {"city": "Rome"}), ("get_time", {})]


def test_it_streams_llama3_text_that_is_not_a_call_as_content():
    content, calls = _every_split("Sure, {name} is a placeholder.", format="llama3")
    assert calls == [] and content == "Sure, {name} is a placeholder."
    content, calls = _every_split('{"answer": 42}', format="llama3")
    assert calls == [] and content == '{"answer": 42}'


def test_it_reads_mistral_calls_with_the_marker_without_it_and_in_the_newer_form():
    array = '[{"name": "get_weather", "arguments": {"city": "Lyon"}}, {"name": "get_time", "arguments": {}}]'
    texts = ["[TOOL_CALLS]" + array, array,
             '[TOOL_CALLS]get_weather[ARGS]{"city": "Lyon"}[TOOL_CALLS]get_time[ARGS]{}']
    for text in texts:
        content, calls = _every_split(text, format="mistral", tool_names=WEATHER)
        assert content is None
        assert _calls(calls) == [("get_weather", {"city": "Lyon"}), ("get_time", {})]


def test_it_streams_mistral_text_that_is_not_a_call_as_content():
    content, calls = _every_split("[1] is a footnote", format="mistral")
    assert calls == [] and content == "[1] is a footnote"


@pytest.mark.parametrize("text", ['{"city": "Paris"}', ' {"city": "Paris"}\n\nextra words',
                                  'Sure: {"name": "get_weather", "arguments": {"city": "Paris"}}',
                                  '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'])
def test_it_reads_a_forced_named_call_from_its_arguments_object(text):
    content, calls = _every_split(text, forced="get_weather", tool_names=WEATHER)
    assert content is None and _calls(calls) == [("get_weather", {"city": "Paris"})]


def test_it_streams_a_forced_named_calls_arguments_as_they_come():
    parser = ToolCallParser(forced="get_weather", tool_names=WEATHER)
    first = parser.feed(' {"city": "Pa')
    assert [(p.index, p.call.name, p.fragment) for p in first] == [(0, "get_weather", ""), (0, "get_weather",
                                                                                            '{"city": "Pa')]
    assert [p.fragment for p in parser.feed('ris", "note": "a } in \\"text\\""} and more')] == [
        'ris", "note": "a } in \\"text\\""}']
    assert parser.feed("{}") == [] and parser.finish() == []
    assert json.loads(parser.calls[0].arguments) == {"city": "Paris", "note": 'a } in "text"'}


def test_a_forced_named_call_cut_short_keeps_the_arguments_written_so_far():
    content, calls = _every_split('{"city": "Par', forced="get_weather")
    assert content is None and [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Par')]


def test_it_reads_a_required_call_as_one_object_or_an_array_of_calls():
    _, calls = _every_split('{"name": "get_time", "arguments": {"zone": "UTC"}}', forced="required",
                            tool_names=WEATHER)
    assert _calls(calls) == [("get_time", {"zone": "UTC"})]
    _, calls = _every_split(
        '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "X"}}]',
        forced="required", tool_names=WEATHER)
    assert _calls(calls) == [("get_time", {}), ("get_weather", {"city": "X"})]


def test_it_falls_back_to_content_when_a_forced_answer_does_not_parse():
    content, calls = _every_split("I cannot do that.", forced="get_weather")
    assert calls == [] and content == "I cannot do that."
    content, calls = _every_split('{"name": "get_time", "arguments": {"zone": ', forced="required")
    assert calls == [] and content == '{"name": "get_time", "arguments": {"zone": '
