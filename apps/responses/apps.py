from django.apps import AppConfig


class ResponsesConfig(AppConfig):
    """OpenAI's Responses API over chat's requests and conversations; it has no tables of its own."""

    name = "apps.responses"
    label = "responses"
