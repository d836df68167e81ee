"""Benchmark: embedding throughput through the hub against the same model in-process (issue #13).

For batches of 1, 32 and 256 inputs, the same sentences are embedded
  in-process - all-MiniLM-L6-v2 loaded with transformers in this process: inputs sorted by length, forward
                passes of 32 (sentence-transformers' `encode` recipe), mean pooling, L2 normalisation;
  hub         - POST /embeddings with the official SDK (base64, its default), end to end: web, the job queue,
                the inference worker's embedding thread, and back;
one after the other in each run, so a busy moment of the machine shifts both alike. It prints inputs/s
at each size and the ratio hub / in-process (target >= 0.8x at 256).

Then vector store search (docs/vector_stores.md), in the same run, over 100,000 chunks of one store:
  chunks  - 99,744 synthetic 384-dimension vectors plus 256 real ones. The synthetic ones are made cheaply
            with numpy and inserted directly with COPY (no model): unit vectors shaped like a document
            collection (`Corpus`): 1,000 random topic directions, 10 subjects around each (a document or
            a section), every chunk its subject plus noise. Uniformly random vectors would have no
            neighbourhoods at all, the worst case for any ANN index and unlike any corpus. The 256 real
            ones are sentences embedded by the hub's worker with all-MiniLM-L6-v2. The HNSW index is then
            built by the same code the ingestion task uses (apps/vectorstores/indexes.py).
  queries - 100: 50 real sentences embedded by the hub, and 50 synthetic questions (new points near a
            random subject).
  measure - p50/p95 latency of the database search (apps/vectorstores/search.chunks_nearest: the SQL
            the search endpoint runs, HNSW with the hub's ef_search and iterative scan, store and file
            filters included), its recall@10 against exact search (numpy over the same vectors), and
            p50 of POST /vector_stores/{id}/search end to end (query embedding included).
Targets: p50 <= 20 ms, recall@10 >= 0.95.

Run: `python bench/embeddings.py [--runs 5] [--chunks 100000]` (about 5-8 minutes, most of it starting the hub
and building the index).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from stack import django_on_embedded_services

MODEL = "all-minilm:l6-v2"
SIZES = (1, 32, 256)
WORDS = ("model", "vector", "search", "document", "query", "library", "garden", "river", "engine", "market",
         "music", "history", "weather", "science", "kitchen", "travel")


def sentences(count: int, offset: int = 0) -> list[str]:
    """Sentences of 6 to 30 words, different for every run (no cache anywhere can help)."""
    out = []
    for i in range(count):
        n = 6 + (i * 7 + offset) % 25
        out.append(" ".join(WORDS[(i + j * 3 + offset) % len(WORDS)] for j in range(n)) + f" {offset}-{i}.")
    return out


class InProcess:
    def __init__(self, path: str, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    def embed(self, texts: list[str]):
        import torch.nn.functional as F

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in chunk], padding=True, return_tensors="pt")
            with self.torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
            for row, index in enumerate(chunk):
                out[index] = vectors[row].tolist()
        return out


class Corpus:
    """Synthetic embeddings with the structure of a document collection: 1,000 topics, 10 subjects in each
    (a document or a section), chunks scattered around their subject. Unit vectors throughout."""

    def __init__(self, rng, dims: int, topics: int = 1000, subjects: int = 10):
        import numpy as np

        self.rng, self.dims = rng, dims
        centres = self._unit(rng.normal(0, 1, (topics, dims)))
        spread = self._unit(rng.normal(0, 1, (topics * subjects, dims)))
        self.subjects = self._unit(np.repeat(centres, subjects, axis=0) + 0.6 * spread)

    @staticmethod
    def _unit(vectors):
        import numpy as np

        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    def points(self, count: int, noise: float = 0.35):
        """`count` vectors, each near a random subject (a chunk, or a question about that subject)."""
        picked = self.subjects[self.rng.integers(0, len(self.subjects), count)]
        return self._unit(picked + noise * self._unit(self.rng.normal(0, 1, picked.shape)))


def search_benchmark(entry, client, user, *, chunks: int, queries: int) -> dict:
    """Fill one store with `chunks` chunks (synthetic + real), build its index, time searches (docstring)."""
    import numpy as np
    from django.conf import settings
    from django.db import connection, transaction
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    from apps.embeddings.services import texts_embed
    from apps.training.models import TrainingFile
    from apps.vectorstores.indexes import ensure_hnsw_index, index_name
    from apps.vectorstores.models import VectorStore, VectorStoreFile
    from apps.vectorstores.search import chunks_nearest, nearest_sql, search_settings

    dims, files_count, real_count = entry.embedding_dimensions, 100, 256
    rng = np.random.default_rng(13)
    corpus = Corpus(rng, dims)
    real_texts = sentences(real_count, offset=77_000)
    real = np.stack([np.frombuffer(raw, dtype="<f4") for start in range(0, real_count, 64)
                     for raw in texts_embed(entry=entry, texts=real_texts[start:start + 64])[0]])
    vectors = np.concatenate([corpus.points(chunks - real_count), real]).astype(np.float32)
    texts = [f"synthetic chunk {i}" for i in range(chunks - real_count)] + real_texts

    store = VectorStore.objects.create(owner=user, name="bench", embedding_model=entry.id, dimensions=dims,
                                       chunking_strategy={})
    entries = []
    for number in range(files_count):
        document = TrainingFile.objects.create(user=user, filename=f"doc-{number}.txt", purpose="assistants",
                                               path="/dev/null", status="processed")
        entries.append(VectorStoreFile.objects.create(store=store, file=document, status="completed",
                                                      chunking_strategy={}))
    connection.ensure_connection()
    register_vector(connection.connection)
    tic = time.perf_counter()
    with connection.cursor() as cursor, cursor.cursor.copy(
            "COPY vectorstores_chunk (store_id, file_id, index, text, tokens, attributes, dims, embedding) "
            "FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["uuid", "uuid", "int4", "text", "int4", "jsonb", "int2", "vector"])
        for i, vector in enumerate(vectors):
            copy.write_row((store.id, entries[i % files_count].id, i // files_count, texts[i], 8, Jsonb({}), dims,
                            vector))
    load_s = time.perf_counter() - tic
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")  # the graph fits: a build without spilling
        cursor.execute("ANALYZE vectorstores_chunk")
    tic = time.perf_counter()
    ensure_hnsw_index(dims)
    build_s = time.perf_counter() - tic
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s)", [index_name(dims)])
        index_mb = cursor.fetchone()[0] / 2**20
    print(f"loaded {chunks} chunks in {load_s:.0f} s; HNSW index built in {build_s:.0f} s")

    half = queries // 2
    real_queries = sentences(half, offset=91_000)
    asked = np.stack([np.frombuffer(raw, dtype="<f4") for raw in texts_embed(entry=entry, texts=real_queries)[0]]
                     + list(corpus.points(queries - half)))
    store_ids, file_ids = [store.id], [item.id for item in entries]
    exact_order = np.argsort(-(vectors @ asked.T), axis=0)[:10].T  # exact top 10 per query
    ids_by_row = _chunk_ids_in_copy_order(store, chunks, files_count)
    sql, params = nearest_sql(dims=dims, store_ids=store_ids, file_ids=file_ids, vector=asked[0], limit=10)
    with transaction.atomic(), connection.cursor() as cursor:
        search_settings(cursor, 10)
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index_name(dims) in plan, f"the search does not use the HNSW index:\n{plan}"
    latencies, recalls = [], []
    for round_ in range(2):  # the first round warms the index into memory
        for number, vector in enumerate(asked):
            tic = time.perf_counter()
            rows = chunks_nearest(dims=dims, store_ids=store_ids, file_ids=file_ids, vector=vector, limit=10)
            elapsed = time.perf_counter() - tic
            if round_:
                latencies.append(elapsed)
                expected = {ids_by_row[row] for row in exact_order[number]}
                recalls.append(len(expected & {row[0] for row in rows}) / 10)
    api = []
    for text in real_queries[:20]:
        tic = time.perf_counter()
        client.vector_stores.search(store.public_id, query=text, max_num_results=10)
        api.append(time.perf_counter() - tic)
    return {"chunks": chunks, "dims": dims, "queries": queries, "build_s": build_s, "index_mb": index_mb,
            "ef_search": max(settings.AIHUB_VECTOR_STORE_EF_SEARCH, 20),
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * statistics.quantiles(latencies, n=20)[-1],
            "recall": statistics.mean(recalls), "recall_real": statistics.mean(recalls[:half]),
            "recall_synthetic": statistics.mean(recalls[half:]), "api_p50_ms": 1000 * statistics.median(api[5:])}


def _chunk_ids_in_copy_order(store, chunks: int, files_count: int) -> list[int]:
    """Chunk ids by the row number they were copied with (COPY assigns ids in order)."""
    from apps.vectorstores.models import Chunk

    first = Chunk.objects.filter(store=store).order_by("id").values_list("id", flat=True).first()
    return list(range(first, first + chunks))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="measured runs per batch size (after one warm-up)")
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks in the searched store")
    parser.add_argument("--queries", type=int, default=100, help="search queries (half real, half synthetic)")
    args = parser.parse_args()

    seconds = {(where, size): [] for where in ("local", "hub") for size in SIZES}
    with django_on_embedded_services() as run_dir:
        from django.core.management import call_command
        from openai import OpenAI

        from apps.accounts.services import api_key_create, user_get_or_create
        from apps.catalog.models import ModelEntry
        from tests.support.processes import start_hub

        call_command("importmodel", builtin=MODEL, verbosity=0)
        entry = ModelEntry.objects.get(id=MODEL)
        user = user_get_or_create(username="bench")
        _, key = api_key_create(user=user)
        local = InProcess(entry.path)
        base_url, processes = start_hub(dict(os.environ), run_dir / "logs")
        client = OpenAI(base_url=f"{base_url}/api/v1", api_key=key, max_retries=0, timeout=300)
        try:
            for size in SIZES:
                for run in range(args.runs + 1):
                    texts = sentences(size, offset=run * 1000 + size)
                    started = time.perf_counter()
                    local.embed(texts)
                    local_s = time.perf_counter() - started
                    started = time.perf_counter()
                    response = client.embeddings.create(model=MODEL, input=texts)
                    hub_s = time.perf_counter() - started
                    assert len(response.data) == size
                    if run:  # the first warms up (and loads the model on the worker)
                        seconds[("local", size)].append(local_s)
                        seconds[("hub", size)].append(hub_s)
            search = search_benchmark(entry, client, user, chunks=args.chunks, queries=args.queries)
        finally:
            client.close()
            processes.stop()

    print(f"model {MODEL}, CPU ({os.cpu_count()} cores, shared with whatever else runs), "
          f"{args.runs} runs per size (+1 warm-up), p50:")
    print(f"  {'inputs':>6}  {'in-process inputs/s':>20}  {'hub inputs/s':>13}  {'hub / in-process':>16}")
    for size in SIZES:
        local_rate = size / statistics.median(seconds[("local", size)])
        hub_rate = size / statistics.median(seconds[("hub", size)])
        print(f"  {size:>6}  {local_rate:>20.1f}  {hub_rate:>13.1f}  {hub_rate / local_rate:>15.2f}x")
    print("target: >= 0.8x at 256 inputs")
    print(f"vector store search over {search['chunks']} chunks ({search['dims']} dimensions, HNSW m=16 "
          f"ef_construction=64, ef_search {search['ef_search']}; index built in {search['build_s']:.0f} s, "
          f"{search['index_mb']:.0f} MB), {search['queries']} queries:")
    print(f"  database search p50 {search['p50_ms']:.1f} ms, p95 {search['p95_ms']:.1f} ms (target p50 <= 20 ms)")
    print(f"  recall@10 against exact search {search['recall']:.3f} (target >= 0.95): "
          f"real queries {search['recall_real']:.3f}, synthetic {search['recall_synthetic']:.3f}")
    print(f"  POST /vector_stores/{{id}}/search end to end p50 {search['api_p50_ms']:.1f} ms "
          "(query embedding included)")


if __name__ == "__main__":
    main()
