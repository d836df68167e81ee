from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self):
        from . import openapi  # noqa: F401 - registers the OpenAPI description of key auth
