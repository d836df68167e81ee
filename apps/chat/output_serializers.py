"""The shapes of chat answers, for the OpenAPI schema: completion_body and sse_stream (completions.py) build them.

Open objects (extra keys allowed), because the answer grows with the request's
options (logprobs, tool calls); what is listed here is always there.
"""
from rest_framework import serializers


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class AssistantMessageSerializer(serializers.Serializer):
    role = serializers.CharField(help_text="assistant")
    content = serializers.CharField(allow_null=True)
    refusal = serializers.CharField(allow_null=True)


class ChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = AssistantMessageSerializer()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.CharField(help_text="stop, length, cancelled, tool_calls")


class RetrievalChunkSerializer(serializers.Serializer):
    vector_store_id = serializers.CharField()
    file_id = serializers.CharField()
    filename = serializers.CharField()
    chunk_index = serializers.IntegerField(help_text="The chunk's place in its file, from 0.")
    chunk_id = serializers.IntegerField()
    score = serializers.FloatField(help_text="Cosine similarity to the query.")
    attributes = serializers.DictField()


class RetrievalSerializer(serializers.Serializer):
    query = serializers.CharField(help_text="What was searched: the last user message.")
    vector_store_ids = serializers.ListField(child=serializers.CharField())
    found = serializers.IntegerField(help_text="Chunks the search returned; those that fit the context are used.")
    chunks = RetrievalChunkSerializer(many=True, help_text="The chunks put into the prompt, best first.")


class ChatCompletionSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    system_fingerprint = serializers.CharField(allow_null=True)
    choices = ChoiceSerializer(many=True)
    usage = UsageSerializer()
    conversation_id = serializers.UUIDField(allow_null=True, help_text="AI Hub extension: the stored conversation.")
    retrieval = RetrievalSerializer(required=False, help_text="AI Hub extension, with a `retrieval` request: the "
                                                              "vector store chunks the model was given.")


class StreamEventSerializer(serializers.Serializer):
    """One server-sent event of a streamed completion (OpenAPI 3.0 describes a stream by its events)."""

    data = serializers.CharField(help_text="A chat.completion.chunk as JSON; an {\"error\": ...} object when the "
                                           "generation fails midway; the last event is `[DONE]` (docs/streaming.md).")
    event = serializers.CharField(required=False)
    id = serializers.CharField(required=False)
    retry = serializers.IntegerField(required=False)
