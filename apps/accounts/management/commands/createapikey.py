from django.core.management.base import BaseCommand

from apps.accounts.services import api_key_create, user_get_or_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user if needed); prints the key alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args, username, name, **options):
        user = user_get_or_create(username=username)
        key, raw = api_key_create(user=user, name=name)
        self.stderr.write(f"Created key {key.display_prefix}… for {user.username}. It is shown once:")
        self.stdout.write(raw)
