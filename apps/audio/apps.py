from django.apps import AppConfig


class AudioConfig(AppConfig):
    name = "apps.audio"
    verbose_name = "Audio (speech to text, text to speech)"
