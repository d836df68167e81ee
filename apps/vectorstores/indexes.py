"""One partial HNSW index per embedding size, over the one chunk table.

pgvector indexes a column of one fixed size; our `embedding` column has none (a store of a
384-dimension model and one of a 1024-dimension model share the table). Each size N gets

    CREATE INDEX vectorstores_chunk_hnsw_N ON vectorstores_chunk
        USING hnsw ((embedding::vector(N)) vector_cosine_ops) WHERE dims = N

and a search casts the same way with `dims = N` in its WHERE, which is what lets the planner use it
(search.py). The index for a size is created, once, by the ingestion task before it writes the first
chunks of that size (CONCURRENTLY: writes and searches go on meanwhile; never on a web request).
Without its index a search is still right: PostgreSQL then scans the store's chunks exactly.
"""
from __future__ import annotations

import logging

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)

# pgvector's HNSW takes `vector` up to 2,000 dimensions; larger models are searched exactly.
HNSW_MAX_DIMENSIONS = 2000
_known: set[int] = set()


def index_name(dims: int) -> str:
    return f"vectorstores_chunk_hnsw_{int(dims)}"


def ensure_hnsw_index(dims: int) -> bool:
    """Create the HNSW index for `dims`-sized embeddings if it is missing; False when none can exist.

    Must run outside a transaction (CREATE INDEX CONCURRENTLY). Concurrent callers are harmless: the
    first builds it, the others see it (or its build) and go on; a build interrupted half-way leaves an
    INVALID index that the next caller drops and builds again.
    """
    dims = int(dims)
    if dims in _known:
        return True
    if not 0 < dims <= HNSW_MAX_DIMENSIONS:
        return False
    name = index_name(dims)
    with connection.cursor() as cursor:
        valid = _index_valid(cursor, name)
        if valid is False:
            # Invalid while another worker builds it (CONCURRENTLY marks it valid at the end): leave it to them.
            # Invalid with no build running: an interrupted build; drop it and build again.
            cursor.execute("SELECT 1 FROM pg_stat_progress_create_index p JOIN pg_class c ON c.oid = p.index_relid "
                           "WHERE c.relname = %s", [name])
            if cursor.fetchone():
                return True
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
        if not valid:
            logger.info("creating %s", name)
            try:
                cursor.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON vectorstores_chunk '
                               f"USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}")
            except DatabaseError:
                # Two workers creating it at the same instant: the loser's name clashes. Theirs is as good.
                if _index_valid(cursor, name) is None:
                    raise
    _known.add(dims)
    return True


def _index_valid(cursor, name: str) -> bool | None:
    """True: built; False: not usable yet (being built, or a build was interrupted); None: no such index."""
    cursor.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                   "WHERE c.relname = %s", [name])
    row = cursor.fetchone()
    return None if row is None else bool(row[0])

