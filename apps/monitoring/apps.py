from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "apps.monitoring"
    label = "monitoring"

    def ready(self):
        from prometheus_client import REGISTRY

        from .prometheus import AIHubCollector

        # Once per process (ready() can run twice in some management commands).
        if not getattr(REGISTRY, "_aihub_registered", False):
            REGISTRY.register(AIHubCollector())
            REGISTRY._aihub_registered = True
