from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0003_tool_calls_and_output"),
    ]

    operations = [
        migrations.AddField(
            model_name="generationrequest",
            name="metadata",
            field=models.JSONField(blank=True, default=dict,
                                   help_text="The client's metadata: up to 16 string pairs (OpenAI's `metadata`)."),
        ),
    ]
