from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("catalog", "0003_embedding_dimensions"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelentry",
            name="tool_calling",
            field=models.CharField(choices=[("native", "Native (the chat template renders tools)"),
                                            ("generic", "Generic (the hub's documented tool prompt)")],
                                   default="generic", max_length=10,
                                   help_text="native: its chat template renders tools; generic: the hub's prompt."),
        ),
        migrations.AddField(
            model_name="modelentry",
            name="tool_parser",
            field=models.CharField(default="generic", max_length=20,
                                   help_text="The format its tool calls are read in: hermes, llama3, mistral, "
                                             "generic."),
        ),
    ]
