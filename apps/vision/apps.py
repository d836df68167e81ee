from django.apps import AppConfig


class VisionConfig(AppConfig):
    name = "apps.vision"
    label = "vision"
