from django.apps import AppConfig


class VectorStoresConfig(AppConfig):
    name = "apps.vectorstores"
    label = "vectorstores"
