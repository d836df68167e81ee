"""Benchmark: conversation search over many stored messages (docs/conversation_search.md).

The database holds one heavy user (most of the passages: a self-hosted hub often has one main user) and many
light users, each message one passage with a synthetic unit vector (the real model is not needed to measure
the index) and a sentence of random words. The model's partial HNSW index is built as the background task
builds it. Then, with the real selectors of apps/chat/search.py:
  semantic  - the heavy user's nearest messages (HNSW, iterative scan, owner filter): p50/p95 latency, and
              recall@10 against exact search (the same query with index scans off);
  light     - the same for a light user (the planner may prefer the owner's b-tree index: exact);
  text      - full-text ranking (GIN) for two words of the vocabulary, for the heavy user;
  fused     - conversation_search as the endpoint runs it, both rankers and the fusion, given a query vector.
It also says whether the planner used the HNSW index for the heavy user.

Run: `python bench/conversation_search.py [--passages 100000] [--queries 100]` (a few minutes, most of it
inserting rows and building the index).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from stack import django_on_embedded_services

MODEL = "all-minilm:l6-v2"
DIMENSIONS = 384
VOCABULARY = [f"w{i}" for i in range(5000)]


def unit_vectors(count: int, rng: random.Random):
    import numpy as np

    generator = np.random.default_rng(rng.randrange(2**32))
    # Sentence embeddings lie near a space of far fewer dimensions than they have (isotropic noise in all 384
    # would make every neighbour about as far as any other, which no real text does): a 24-dimensional
    # latent, projected, plus a little noise.
    latent = generator.normal(size=(count, 24)) @ generator.normal(size=(24, DIMENSIONS))
    vectors = latent + 0.5 * generator.normal(size=(count, DIMENSIONS))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype("float32")


def populate(passages: int, light_users: int, per_light_user: int, rng: random.Random):
    """Users, one conversation each, messages and their passage vectors, written with COPY."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from apps.chat.models import Conversation

    heavy = get_user_model().objects.create_user(username="heavy")
    lights = [get_user_model().objects.create_user(username=f"light-{i}") for i in range(light_users)]
    owners = [heavy] * (passages - light_users * per_light_user) + \
        [user for user in lights for _ in range(per_light_user)]
    conversations = {user.id: Conversation.objects.create(user=user, model="bench", title="bench").id
                     for user in [heavy, *lights]}
    vectors = unit_vectors(len(owners), rng)
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM chat_message")
        first_id = cursor.fetchone()[0] + 1
        raw = cursor.cursor
        with raw.copy("COPY chat_message (id, conversation_id, role, content, tool_call_id, created_at) "
                      "FROM STDIN") as copy:
            for offset, owner in enumerate(owners):
                words = " ".join(rng.choice(VOCABULARY) for _ in range(12))
                copy.write_row((first_id + offset, conversations[owner.id], "user", words, "", "now"))
        with raw.copy("COPY chat_messageembedding (message_id, user_id, model, passage, start, \"end\", embedding, "
                      "created_at) FROM STDIN") as copy:
            for offset, owner in enumerate(owners):
                text = "[" + ",".join(f"{v:.6f}" for v in vectors[offset]) + "]"
                copy.write_row((first_id + offset, owner.id, MODEL, 0, 0, 60, text, "now"))
        cursor.execute(f"SELECT setval('chat_message_id_seq', {first_id + len(owners)})")
        cursor.execute("ANALYZE chat_message; ANALYZE chat_messageembedding")
    return heavy, lights, vectors


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def timed(function, repeats: int) -> tuple[list[float], list]:
    latencies, results = [], []
    for _ in range(repeats):
        tic = time.perf_counter()
        results.append(function())
        latencies.append((time.perf_counter() - tic) * 1000)
    return latencies, results


def exact_ids(user, vector, depth: int) -> list[int]:
    """The same selector with index scans off: a sequential scan computes every distance."""
    from django.db import connection, transaction

    from apps.chat.search import semantic_ranking

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        return [hit.message_id for hit in semantic_ranking(user=user, model_id=MODEL, dimensions=DIMENSIONS,
                                                           vector=vector, depth=depth)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--light-users", type=int, default=200)
    parser.add_argument("--per-light-user", type=int, default=50)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    rng = random.Random(13)
    with django_on_embedded_services():
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connection, transaction
        from django.test.utils import override_settings

        from apps.catalog.models import ModelEntry
        from apps.chat.message_embeddings import hnsw_index_ensure
        from apps.chat.search import conversation_search, semantic_ranking, text_ranking

        call_command("importmodel", builtin=MODEL, verbosity=0)
        entry = ModelEntry.objects.get(id=MODEL)
        tic = time.perf_counter()
        heavy, lights, vectors = populate(args.passages, args.light_users, args.per_light_user, rng)
        print(f"inserted {args.passages} messages and passages in {time.perf_counter() - tic:.1f}s")
        tic = time.perf_counter()
        with connection.cursor() as cursor:
            # The bench builds the index over a full table at once (a hub builds it when the first vectors
            # arrive, then inserts into it); PostgreSQL's default 64 MB would build it on disk, slowly.
            cursor.execute("SET maintenance_work_mem = '1GB'")
        hnsw_index_ensure(entry)
        print(f"built the HNSW index in {time.perf_counter() - tic:.1f}s")

        def query_vector():
            import numpy as np

            base = vectors[rng.randrange(len(vectors))] + 0.03 * np.random.default_rng(
                rng.randrange(2**32)).normal(size=DIMENSIONS)
            return (base / np.linalg.norm(base)).tolist()

        queries = [query_vector() for _ in range(args.queries)]
        depth = settings.AIHUB_CONVERSATION_SEARCH_CANDIDATES
        with override_settings(AIHUB_CONVERSATION_SEARCH_MIN_SIMILARITY=-1.0):  # rank everything: measure recall
            for label, user in (("semantic", heavy), ("light", lights[0])):
                pending = iter(queries)
                # The depth the endpoint asks for (each ranker's candidates), recall of its first ten.
                latencies, results = timed(lambda user=user, pending=pending: semantic_ranking(
                    user=user, model_id=MODEL, dimensions=DIMENSIONS, vector=next(pending), depth=depth),
                    len(queries))
                recalls = [len({hit.message_id for hit in found[:10]} & set(exact_ids(user, vector, 10))) / 10
                           for found, vector in zip(results[:20], queries[:20])]
                print(f"{label:9s} p50 {percentile(latencies, 0.5):6.1f} ms  p95 {percentile(latencies, 0.95):6.1f} "
                      f"ms  recall@10 {statistics.mean(recalls):.3f} (20 queries against exact search)")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            cursor.execute(f"SET LOCAL hnsw.ef_search = {2 * depth}")
            cursor.execute(f"EXPLAIN (ANALYZE) SELECT message_id FROM chat_messageembedding WHERE user_id = "
                           f"{heavy.id} AND model = '{MODEL}' ORDER BY embedding::vector({DIMENSIONS}) <=> "
                           f"'{queries[0]}'::vector({DIMENSIONS}) LIMIT {2 * depth}")
            plan = [row[0] for row in cursor.fetchall()]
        print("heavy user's plan uses the HNSW index:", any("chat_msgemb_hnsw" in line for line in plan),
              "|", plan[-1].strip(), "inside PostgreSQL")
        two_words = [" ".join(rng.sample(VOCABULARY, 2)) for _ in range(args.queries)]
        pending_words = iter(two_words)
        latencies, _ = timed(lambda: text_ranking(user=heavy, q=next(pending_words).replace(" ", " or "),
                                                  depth=100), len(two_words))
        print(f"text      p50 {percentile(latencies, 0.5):6.1f} ms  p95 {percentile(latencies, 0.95):6.1f} ms")
        pending_all = iter(zip(two_words, queries))

        def fused():
            q, vector = next(pending_all)
            return conversation_search(user=heavy, q=q, mode="hybrid", vector=vector, entry=entry, limit=20,
                                       offset=0)
        latencies, _ = timed(fused, len(queries))
        print(f"fused     p50 {percentile(latencies, 0.5):6.1f} ms  p95 {percentile(latencies, 0.95):6.1f} ms "
              f"(both rankers over {depth} candidates each, fusion, snippets of one page)")


if __name__ == "__main__":
    main()
