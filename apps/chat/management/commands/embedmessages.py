from django.core.management.base import BaseCommand, CommandError

from apps.chat.message_embeddings import message_embeddings_backfill


class Command(BaseCommand):
    help = ("Embed every searched message that has no vector of the conversation embedding model yet (after "
            "turning AIHUB_CONVERSATION_EMBEDDINGS on, changing AIHUB_CONVERSATION_EMBEDDING_MODEL, or tasks "
            "lost with a worker). Needs the hub's inference worker running: it embeds through it.")

    def add_arguments(self, parser):
        parser.add_argument("--prune", action="store_true",
                            help="Also delete the vectors of other models, which no search uses any more.")

    def handle(self, *args, prune, **options):
        try:
            conversations, passages, pruned = message_embeddings_backfill(
                prune=prune, progress=lambda done, total: self.stdout.write(f"{done}/{total} conversations"))
        except RuntimeError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"embedded {passages} passage(s) of {conversations} conversation(s); "
                          f"deleted {pruned} vector(s) of other models")
