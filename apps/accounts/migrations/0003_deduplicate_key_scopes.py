"""Keys stored before scopes were normalised at creation may list a scope twice: store each once, in order."""
from django.db import migrations

ORDER = ["inference", "training", "admin"]  # apps.accounts.models.Scope, frozen for this migration


def deduplicate_scopes(apps, schema_editor):
    ApiKey = apps.get_model("accounts", "ApiKey")
    for key in ApiKey.objects.only("id", "scopes").iterator():
        scopes = key.scopes if isinstance(key.scopes, list) else []
        wanted = set(scopes)
        normalized = [scope for scope in ORDER if scope in wanted] + sorted(wanted - set(ORDER))
        if normalized != scopes:
            ApiKey.objects.filter(id=key.id).update(scopes=normalized)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_key_family")]
    operations = [migrations.RunPython(deduplicate_scopes, migrations.RunPython.noop)]
