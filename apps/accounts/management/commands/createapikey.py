from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.accounts.models import Scope
from apps.accounts.services import api_key_create, user_get_or_create
from apps.core.errors import AppError


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user if needed); prints the key alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")
        parser.add_argument("--scope", action="append", choices=Scope.values, dest="scopes",
                            help="Repeat for several; default: inference and training. admin needs --staff.")
        parser.add_argument("--staff", action="store_true", help="Make the user staff (operators).")
        parser.add_argument("--expires-in-days", type=int, help="Default: the key never expires.")

    def handle(self, *args, username, name, scopes, staff, expires_in_days, **options):
        user = user_get_or_create(username=username)
        if staff and not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            key, raw = api_key_create(user=user, name=name, scopes=scopes, expires_at=expires_at)
        except AppError as exc:
            raise CommandError(exc.message)
        self.stderr.write(f"Created key {key.display_prefix}… for {user.username}. It is shown once:")
        self.stdout.write(raw)
