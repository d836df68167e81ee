"""django.contrib.admin's app config with our site as `admin.site` (its own module: apps.py keeps one config)."""
from django.contrib.admin.apps import AdminConfig


class AIHubAdminConfig(AdminConfig):
    """The admin whose index is the operations dashboard (apps/monitoring/admin_site.py)."""

    default_site = "apps.monitoring.admin_site.AIHubAdminSite"
