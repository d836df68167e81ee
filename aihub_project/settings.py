"""Settings for AI Hub. Every knob is read from the environment once, here.

With no DATABASE_URL / REDIS_URL the hub uses its embedded PostgreSQL and
Valkey (see docs/configuration.md); their ports are fixed, and their passwords
are read from var/, so that a second terminal (`manage.py createapikey`)
reaches the servers `make run` started.
"""
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from aihub_project.embedded import embedded_urls

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-local-development-key-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

# Behind TLS in production (DJANGO_SECURE=true): HTTPS only, secure cookies, HSTS.
# `manage.py check --deploy` passes with it and a strong DJANGO_SECRET_KEY.
if env.bool("DJANGO_SECURE", default=False):
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# Where the hub keeps its own state: embedded database data, Valkey data, the model store.
AIHUB_VAR_DIR = Path(env("AIHUB_VAR_DIR", default=str(BASE_DIR / "var")))
AIHUB_LOG_DIR = Path(env("AIHUB_LOG_DIR", default=str(BASE_DIR / "logs")))
AIHUB_MODEL_STORE = Path(env("AIHUB_MODEL_STORE", default=str(AIHUB_VAR_DIR / "models")))
AIHUB_EMBEDDED_PG_PORT = env.int("AIHUB_EMBEDDED_PG_PORT", default=55432)
AIHUB_EMBEDDED_REDIS_PORT = env.int("AIHUB_EMBEDDED_REDIS_PORT", default=56379)
# runhub: how long a child gets to stop after SIGTERM before its process group is killed, and how many
# times a minute a crashed child is restarted (with a doubling delay) before the launcher gives up and stops the hub.
AIHUB_STOP_TIMEOUT_SECONDS = env.float("AIHUB_STOP_TIMEOUT_SECONDS", default=20.0)
AIHUB_RESTARTS_PER_MINUTE = env.int("AIHUB_RESTARTS_PER_MINUTE", default=5)
# Flower in read-only mode (its --read_only): no pool grow/shrink/autoscale, restart, shutdown, consumer or
# revoke buttons. Growing a GPU worker's pool would start a second process on a device that one process must
# own (docs/operations.md, "Flower's controls"); cancel work through the hub (API, admin), which Flower bypasses.
AIHUB_FLOWER_READ_ONLY = env.bool("AIHUB_FLOWER_READ_ONLY", default=True)

# The embedded servers' URLs carry the passwords runhub generated in AIHUB_VAR_DIR (absent before the first run;
# runhub then hands the new password to its own connection, see runhub.py).
_EMBEDDED_DATABASE_URL, _EMBEDDED_REDIS_URL = embedded_urls(
    AIHUB_VAR_DIR, pg_port=AIHUB_EMBEDDED_PG_PORT, redis_port=AIHUB_EMBEDDED_REDIS_PORT)
DATABASE_URL = env("DATABASE_URL", default=_EMBEDDED_DATABASE_URL)
REDIS_URL = env("REDIS_URL", default=_EMBEDDED_REDIS_URL)

INSTALLED_APPS = [
    "daphne",
    "apps.monitoring.admin_apps.AIHubAdminConfig",  # django.contrib.admin, with the dashboard as its index
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_prometheus",
    "apps.core",
    "apps.accounts",
    "apps.catalog",
    "apps.chat",
    "apps.monitoring",
    "apps.responses",
    "apps.training",
    "apps.embeddings",
    "apps.vectorstores",
    "apps.audio",
    "apps.vision",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "aihub_project.urls"
ASGI_APPLICATION = "aihub_project.asgi.application"
WSGI_APPLICATION = "aihub_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Project-wide overrides of other apps' templates (the admin's base_site.html): searched before the apps.
        "DIRS": [BASE_DIR / "aihub_project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {"default": env.db_url_config(DATABASE_URL)}
# Commands and prefork workers keep one persistent connection each, checked before reuse (a prefork worker's
# before each task, aihub_project/celery.py; Celery's Django fixup closes it after a fork). The ASGI web
# process cannot: Django runs each request's sync code on a thread of its own, so a persistent connection
# would be opened per request and never reused; nor can the inference worker, whose Celery threads each get
# their connection closed after every task. Both borrow from a psycopg pool instead (DATABASE_POOL, set by
# aihub_project/web.py and, for a threads-pool worker, aihub_project/celery.py): opening a
# PostgreSQL connection costs ~10-20 ms, a large part of the time to first token.
if env.bool("DATABASE_POOL", default=False):
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django's pool requires it: "closing" returns to the pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
        # A request that finds every connection busy waits this long, then fails (a 500, logged).
        "timeout": env.float("DATABASE_POOL_TIMEOUT_SECONDS", default=10.0),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
# Also makes Django's pool check each connection before lending it (one round trip): a connection
# that died with a PostgreSQL restart is replaced instead of failing the request that drew it.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = AIHUB_VAR_DIR / "static"
# Served by WhiteNoise; finders are used when collectstatic has not run (make run, tests).
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing root

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apps.accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "apps.accounts.permissions.KeyScope",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.core.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "apps.core.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "apps.core.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    # Choice sets that several components share get one name each (else spectacular invents hashed names
    # and warns, which `check --deploy` treats as a failure).
    "ENUM_NAME_OVERRIDES": {
        "TrainingJobStatusEnum": "apps.training.models.TrainingJob.Status",
        "FunctionTypeEnum": ["function"],
        "TranscriptFormatEnum": "apps.audio.serializers.TRANSCRIPT_FORMATS",
        "SpeechFormatEnum": "apps.audio.serializers.SPEECH_FORMATS",
        # A vector store file's statuses, which its batches share.
        "IngestionStatusEnum": "apps.vectorstores.selectors.FILE_STATUSES",
    },
    "TITLE": "AI Hub API",
    "DESCRIPTION": (
        "OpenAI-compatible API of a self-hosted AI hub. Authenticate with "
        "`Authorization: Bearer <key>` (make one with `python manage.py createapikey USER`). "
        "The websocket protocol is described in docs/websocket.md."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Request bodies are their own components: without the read-only fields, and closed (apps/core/openapi.py).
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": [],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: the broker is Redis/Valkey unless CELERY_BROKER_URL names another (RabbitMQ).
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL)

# Default limits per API key when neither the key nor its user sets one (0 = unlimited).
AIHUB_DEFAULT_LIMITS = {
    "requests_per_minute": env.int("AIHUB_DEFAULT_RPM", default=0),
    "tokens_per_minute": env.int("AIHUB_DEFAULT_TPM", default=0),
    "max_concurrent_generations": env.int("AIHUB_DEFAULT_MAX_CONCURRENT", default=0),
    "token_budget": env.int("AIHUB_DEFAULT_TOKEN_BUDGET", default=0),
    "budget_period_days": env.int("AIHUB_DEFAULT_BUDGET_PERIOD_DAYS", default=30),
    "max_queued_training_jobs": env.int("AIHUB_DEFAULT_MAX_QUEUED_TRAINING_JOBS", default=3),
}
# Requests waiting for a GPU beyond this get 503 with Retry-After (0 = unbounded), like OLLAMA_MAX_QUEUE.
AIHUB_MAX_QUEUE = env.int("AIHUB_MAX_QUEUE", default=512)
AIHUB_QUEUE_RETRY_AFTER_SECONDS = env.int("AIHUB_QUEUE_RETRY_AFTER_SECONDS", default=5)

# Response cache for deterministic requests (temperature 0 or a seed), per user. A request's
# `cache` field decides; this is the answer when it says nothing.
AIHUB_RESPONSE_CACHE_DEFAULT = env.bool("AIHUB_RESPONSE_CACHE_DEFAULT", default=False)
AIHUB_RESPONSE_CACHE_TTL_SECONDS = env.int("AIHUB_RESPONSE_CACHE_TTL_SECONDS", default=3600)

# Training: uploaded datasets, the operator's datasets root for `dataset_path`, limits and checkpoints.
AIHUB_FILES_DIR = Path(env("AIHUB_FILES_DIR", default=str(AIHUB_VAR_DIR / "files")))
AIHUB_DATASETS_ROOT = env("AIHUB_DATASETS_ROOT", default="") or None
AIHUB_MAX_FILE_BYTES = env.int("AIHUB_MAX_FILE_BYTES", default=512 * 2**20)
AIHUB_MAX_FILE_LINES = env.int("AIHUB_MAX_FILE_LINES", default=1_000_000)
AIHUB_TRAINING_DIR = Path(env("AIHUB_TRAINING_DIR", default=str(AIHUB_VAR_DIR / "training")))
AIHUB_TRAINING_CHECKPOINT_STEPS = env.int("AIHUB_TRAINING_CHECKPOINT_STEPS", default=50)
AIHUB_TRAINING_MAX_ATTEMPTS = env.int("AIHUB_TRAINING_MAX_ATTEMPTS", default=3)
# A job that does not fit beside the inference models on its device waits this long between tries.
AIHUB_TRAINING_MEMORY_RETRY_SECONDS = env.int("AIHUB_TRAINING_MEMORY_RETRY_SECONDS", default=30)
# Most users one fine-tuned model can be shared with by name (PATCH /api/v1/models/{id}); beyond, make it public.
AIHUB_MODEL_SHARE_MAX_USERS = env.int("AIHUB_MODEL_SHARE_MAX_USERS", default=100)
# One dataset line is read at most this far (never whole into memory); a longer line makes the file `error`.
AIHUB_MAX_DATASET_LINE_BYTES = env.int("AIHUB_MAX_DATASET_LINE_BYTES", default=4 * 2**20)
# Arrays and objects nested deeper than this in a dataset line make it invalid (a chat line needs 3).
AIHUB_MAX_DATASET_JSON_DEPTH = env.int("AIHUB_MAX_DATASET_JSON_DEPTH", default=16)
# Checkpoints kept per job: the newest K stay, older ones (rows and directories) go (0 = keep all).
AIHUB_TRAINING_KEEP_CHECKPOINTS = env.int("AIHUB_TRAINING_KEEP_CHECKPOINTS", default=3)
# Disk one user may fill with uploaded files plus training checkpoints (0 = unlimited).
AIHUB_USER_STORAGE_QUOTA_BYTES = env.int("AIHUB_USER_STORAGE_QUOTA_BYTES", default=10 * 2**30)
# Starts of one task (a chat request, a dataset validation), counted on its row in PostgreSQL, before it
# ends as a clear failure (`too_many_attempts`, "validation failed repeatedly"): a message that kills its
# worker is redelivered, and without a count it would be redelivered forever.
AIHUB_TASK_MAX_ATTEMPTS = env.int("AIHUB_TASK_MAX_ATTEMPTS", default=3)

# Hostile input (docs/limits.md). Request bodies are refused with 413 before anything reads or
# parses them (apps/core/request_size.py): chat bodies carry whole conversations, other JSON
# bodies are small objects; file uploads are bounded by AIHUB_MAX_FILE_BYTES instead.
AIHUB_MAX_CHAT_REQUEST_BYTES = env.int("AIHUB_MAX_CHAT_REQUEST_BYTES", default=4 * 2**20)
AIHUB_MAX_REQUEST_BYTES = env.int("AIHUB_MAX_REQUEST_BYTES", default=2**20)
# Django refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE with an HTML 400; ours answers first.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(AIHUB_MAX_CHAT_REQUEST_BYTES, AIHUB_MAX_REQUEST_BYTES)
# How deeply arrays and objects may nest in a JSON body (a chat request needs about 5).
AIHUB_MAX_JSON_DEPTH = env.int("AIHUB_MAX_JSON_DEPTH", default=32)
# Per chat request: messages (OpenAI's API takes at most 2048), characters of all message
# contents together (~250k tokens, beyond any context served), and stop sequences (OpenAI: 4).
AIHUB_MAX_MESSAGES = env.int("AIHUB_MAX_MESSAGES", default=2048)
AIHUB_MAX_PROMPT_CHARS = env.int("AIHUB_MAX_PROMPT_CHARS", default=1_000_000)
AIHUB_MAX_STOP_SEQUENCES = env.int("AIHUB_MAX_STOP_SEQUENCES", default=4)
AIHUB_MAX_STOP_CHARS = env.int("AIHUB_MAX_STOP_CHARS", default=256)
# The most choices (`n`) one chat request may ask for: each is a row of the batch and n x max_tokens
# counts against the key's token limits.
AIHUB_MAX_N = env.int("AIHUB_MAX_N", default=8)
# The longest `keep_alive` a chat request may ask for (seconds); -1 (pin) and 0 (unload now)
# need the admin scope, like POST /models/load and /models/unload.
AIHUB_KEEP_ALIVE_MAX_SECONDS = env.float("AIHUB_KEEP_ALIVE_MAX_SECONDS", default=3600.0)
# `model: "auto"` reads at most this many characters of user text to tell code from chat.
AIHUB_ROUTING_SAMPLE_CHARS = env.int("AIHUB_ROUTING_SAMPLE_CHARS", default=16384)

# Images and video in chat (docs/multimodal.md). Every image is checked in the web process before anything
# is stored: its bytes, its pixels (read from the header, before decoding: a decompression bomb is refused
# without being decompressed) and its format; each request holds at most so many images (video frames count).
AIHUB_VISION_MAX_IMAGE_BYTES = env.int("AIHUB_VISION_MAX_IMAGE_BYTES", default=10 * 2**20)
AIHUB_VISION_MAX_IMAGE_PIXELS = env.int("AIHUB_VISION_MAX_IMAGE_PIXELS", default=40_000_000)
AIHUB_VISION_MAX_IMAGES = env.int("AIHUB_VISION_MAX_IMAGES", default=16)
AIHUB_VISION_IMAGE_FORMATS = env.list("AIHUB_VISION_IMAGE_FORMATS", default=["PNG", "JPEG", "WEBP", "GIF"])
# Remote image URLs: refused unless their host (or host:port) is listed here; then fetched by the web with
# these limits, no redirect to another host, and no private address unless the entry is that IP literal.
AIHUB_VISION_URL_HOSTS = env.list("AIHUB_VISION_URL_HOSTS", default=[])
AIHUB_VISION_URL_TIMEOUT_SECONDS = env.float("AIHUB_VISION_URL_TIMEOUT_SECONDS", default=10.0)
# Video parts: decoded with PyAV in the web process, sampled to frames stored as images.
AIHUB_VIDEO_MAX_BYTES = env.int("AIHUB_VIDEO_MAX_BYTES", default=50 * 2**20)
AIHUB_VIDEO_MAX_SECONDS = env.float("AIHUB_VIDEO_MAX_SECONDS", default=120.0)
AIHUB_VIDEO_FRAMES_PER_SECOND = env.float("AIHUB_VIDEO_FRAMES_PER_SECOND", default=1.0)
AIHUB_VIDEO_MAX_FRAMES = env.int("AIHUB_VIDEO_MAX_FRAMES", default=8)
# Frames are scaled down to this longest side before they are stored (the models resize them anyway).
AIHUB_VIDEO_FRAME_MAX_SIDE = env.int("AIHUB_VIDEO_FRAME_MAX_SIDE", default=768)

# Generation knobs.
AIHUB_DEFAULT_MODEL = env("AIHUB_DEFAULT_MODEL", default="smollm2:135m")
AIHUB_DEFAULT_MAX_TOKENS = env.int("AIHUB_DEFAULT_MAX_TOKENS", default=512)
# How long a request's token log stays readable after it finishes (resume, late readers).
AIHUB_EVENT_LOG_TTL_SECONDS = env.int("AIHUB_EVENT_LOG_TTL_SECONDS", default=3600)
# An HTTP client (SSE or waiting for a whole answer) that is gone for this long has
# its generation stopped: its reader renews a lease four times per period.
AIHUB_HTTP_READER_LEASE_SECONDS = env.float("AIHUB_HTTP_READER_LEASE_SECONDS", default=0.8)
# How long a websocket client may stay away and still resume a running generation.
AIHUB_WS_RESUME_GRACE_SECONDS = env.float("AIHUB_WS_RESUME_GRACE_SECONDS", default=0.0)
AIHUB_WS_RESUME_GRACE_MAX_SECONDS = env.float("AIHUB_WS_RESUME_GRACE_MAX_SECONDS", default=300.0)
# While a websocket streams, its key is read again this often (one query), so a socket that only
# listens stops streaming for a revoked or expired key; client messages re-check it every time.
AIHUB_WS_KEY_RECHECK_SECONDS = env.float("AIHUB_WS_KEY_RECHECK_SECONDS", default=5.0)
# A non-streaming request (and a stream with no events) gives up after this long.
AIHUB_REQUEST_TIMEOUT_SECONDS = env.float("AIHUB_REQUEST_TIMEOUT_SECONDS", default=600.0)
# Time limits per task (celeryconfig.task_annotations): soft at the limit (the task ends the row
# clearly), hard a little later (the pool process is killed; the sweeper recovers the row).
# A generation's limit is kept by the batching engine, which ends the request at the next step
# (Celery's threads pool has no time limits); a training job has its own cancel and checkpoints
# (0 = no ceiling).
AIHUB_GENERATION_TIME_LIMIT_SECONDS = env.int("AIHUB_GENERATION_TIME_LIMIT_SECONDS", default=900)
AIHUB_TRAINING_TIME_LIMIT_SECONDS = env.int("AIHUB_TRAINING_TIME_LIMIT_SECONDS", default=0)
AIHUB_VALIDATION_TIME_LIMIT_SECONDS = env.int("AIHUB_VALIDATION_TIME_LIMIT_SECONDS", default=600)
# The sweeper (Celery beat, docs/queues.md): how often it runs, how long a queued request may
# wait unclaimed before its message is published again (its message may be lost; a duplicate
# is harmless), and how many rows of each kind one sweep handles at most.
AIHUB_SWEEP_INTERVAL_SECONDS = env.float("AIHUB_SWEEP_INTERVAL_SECONDS", default=30.0)
AIHUB_SWEEP_REPUBLISH_AFTER_SECONDS = env.float("AIHUB_SWEEP_REPUBLISH_AFTER_SECONDS", default=240.0)
AIHUB_SWEEP_BATCH = env.int("AIHUB_SWEEP_BATCH", default=200)
# Continuous batching (docs/models.md): the most requests one inference worker decodes together,
# and the most prompt tokens it prefills in one step (longer prompts join the batch over several
# steps, so a long prompt does not stall the running rows for long). The KV cache has no knob of
# its own: it may use what the loaded models leave of AIHUB_GPU_MEMORY_BUDGET.
AIHUB_MAX_BATCH_SIZE = env.int("AIHUB_MAX_BATCH_SIZE", default=32)
AIHUB_MAX_BATCH_TOKENS = env.int("AIHUB_MAX_BATCH_TOKENS", default=2048)
# auto: measure at load whether oneDNN multiplies by a packed weight faster than MKL (workers/packed_linear.py)
AIHUB_CPU_PACKED_LINEAR = env.str("AIHUB_CPU_PACKED_LINEAR", default="auto")
if AIHUB_CPU_PACKED_LINEAR not in ("auto", "on", "off"):
    raise ImproperlyConfigured("AIHUB_CPU_PACKED_LINEAR must be auto, on or off.")
# Celery task threads of an inference worker: each holds one request (running or waiting for a
# row) or a control command, so a few more than the batch keeps the batch full.
AIHUB_INFERENCE_THREADS = env.int("AIHUB_INFERENCE_THREADS", default=AIHUB_MAX_BATCH_SIZE + 4)
# Embeddings (docs/api.md, docs/models.md "Embedding models"): the model when a request names none,
# bounds on a request's inputs (the model's own length is checked by the worker), the most padded
# tokens one forward pass takes (inputs of every waiting request are sorted by length and cut into
# passes of at most this many), the embedding threads of each inference worker (beside the Celery
# threads, so embeddings never wait behind chat generations), and the jobs that may wait per worker.
AIHUB_DEFAULT_EMBEDDING_MODEL = env("AIHUB_DEFAULT_EMBEDDING_MODEL", default="all-minilm:l6-v2")
AIHUB_EMBEDDING_MAX_INPUTS = env.int("AIHUB_EMBEDDING_MAX_INPUTS", default=2048)
AIHUB_EMBEDDING_MAX_INPUT_CHARS = env.int("AIHUB_EMBEDDING_MAX_INPUT_CHARS", default=32768)
AIHUB_EMBEDDING_MAX_INPUT_TOKENS = env.int("AIHUB_EMBEDDING_MAX_INPUT_TOKENS", default=8192)
AIHUB_EMBEDDING_MAX_BATCH_TOKENS = env("AIHUB_EMBEDDING_MAX_BATCH_TOKENS", default="auto")  # or a number
AIHUB_EMBEDDING_THREADS = env.int("AIHUB_EMBEDDING_THREADS", default=1)
AIHUB_EMBEDDING_MAX_QUEUE = env.int("AIHUB_EMBEDDING_MAX_QUEUE", default=256)
# Conversation search (docs/conversation_search.md): messages are embedded in the background as they
# are stored (off: the search is full-text only), with this model (recorded per vector, so a change
# never mixes two models' spaces); bounds on the query, the candidates each ranker gives the fusion,
# the cosine similarity below which a message is no semantic match at all, and how long a search waits
# for its query's vector (then `hybrid` answers from words alone).
AIHUB_CONVERSATION_EMBEDDINGS = env.bool("AIHUB_CONVERSATION_EMBEDDINGS", default=True)
AIHUB_CONVERSATION_EMBEDDING_MODEL = env("AIHUB_CONVERSATION_EMBEDDING_MODEL", default=AIHUB_DEFAULT_EMBEDDING_MODEL)
AIHUB_CONVERSATION_SEARCH_MAX_QUERY_CHARS = env.int("AIHUB_CONVERSATION_SEARCH_MAX_QUERY_CHARS", default=1000)
AIHUB_CONVERSATION_SEARCH_CANDIDATES = env.int("AIHUB_CONVERSATION_SEARCH_CANDIDATES", default=50)
AIHUB_CONVERSATION_SEARCH_MIN_SIMILARITY = env.float("AIHUB_CONVERSATION_SEARCH_MIN_SIMILARITY", default=0.25)
AIHUB_CONVERSATION_SEARCH_EMBED_TIMEOUT_SECONDS = env.float("AIHUB_CONVERSATION_SEARCH_EMBED_TIMEOUT_SECONDS",
                                                            default=15.0)
# Vector stores (docs/vector_stores.md): chunks per embedding job sent by the ingestion task, HNSW's
# candidate list at search time (raised to 2 x max_num_results), the most chunks one file may make,
# and the ingestion task's time limit.
AIHUB_VECTOR_STORE_EMBED_BATCH = env.int("AIHUB_VECTOR_STORE_EMBED_BATCH", default=64)
AIHUB_VECTOR_STORE_EF_SEARCH = env.int("AIHUB_VECTOR_STORE_EF_SEARCH", default=100)
AIHUB_VECTOR_STORE_MAX_CHUNKS_PER_FILE = env.int("AIHUB_VECTOR_STORE_MAX_CHUNKS_PER_FILE", default=100_000)
AIHUB_VECTOR_STORE_INGEST_TIME_LIMIT_SECONDS = env.int("AIHUB_VECTOR_STORE_INGEST_TIME_LIMIT_SECONDS", default=3600)
# Audio (docs/multimodal.md, docs/models.md "Audio models"): the models when a request names none (both are
# registered on first start), the largest upload (OpenAI's is 25 MB) and the longest audio a transcription
# takes, the characters /audio/speech synthesises at most (OpenAI's 4096), the audio threads of each
# inference worker (beside the Celery threads, like the embedding threads: a transcription never waits behind
# chat generations; with two, a long transcription does not hold up speech), and the jobs that may wait per worker.
AIHUB_DEFAULT_TRANSCRIPTION_MODEL = env("AIHUB_DEFAULT_TRANSCRIPTION_MODEL", default="whisper:tiny.en")
AIHUB_DEFAULT_SPEECH_MODEL = env("AIHUB_DEFAULT_SPEECH_MODEL", default="hibari:tts")
AIHUB_AUDIO_MAX_BYTES = env.int("AIHUB_AUDIO_MAX_BYTES", default=25 * 2**20)
AIHUB_AUDIO_MAX_SECONDS = env.float("AIHUB_AUDIO_MAX_SECONDS", default=3600.0)
AIHUB_SPEECH_MAX_CHARS = env.int("AIHUB_SPEECH_MAX_CHARS", default=4096)
AIHUB_AUDIO_THREADS = env.int("AIHUB_AUDIO_THREADS", default=2)
AIHUB_AUDIO_MAX_QUEUE = env.int("AIHUB_AUDIO_MAX_QUEUE", default=64)
# Whisper's CTranslate2 compute type on the CPU and on a GPU ("default" keeps what the model file holds).
AIHUB_WHISPER_CPU_COMPUTE_TYPE = env("AIHUB_WHISPER_CPU_COMPUTE_TYPE", default="int8")
AIHUB_WHISPER_GPU_COMPUTE_TYPE = env("AIHUB_WHISPER_GPU_COMPUTE_TYPE", default="float16")
# Whisper's beam search width (1: greedy, faster; 5: Whisper's and faster-whisper's default, fewer errors).
AIHUB_WHISPER_BEAM_SIZE = env.int("AIHUB_WHISPER_BEAM_SIZE", default=5)
# Device for the worker: "auto" picks cuda when available.
AIHUB_DEVICE = env("AIHUB_DEVICE", default="auto")
# Models one worker keeps loaded; the least recently used is unloaded first.
MAX_CONCURRENT_MODELS = env.int("MAX_CONCURRENT_MODELS", default=2)
# Memory a worker may fill with models: bytes ("8000000000"), or a fraction of the
# device's total memory ("0.9"). On the CPU the same budget applies to host memory.
AIHUB_GPU_MEMORY_BUDGET = env("AIHUB_GPU_MEMORY_BUDGET", default="0.9")
# Seconds a model may stay loaded without being used (Ollama's keep_alive default is 300).
MODEL_UNLOAD_TIMEOUT = env.float("MODEL_UNLOAD_TIMEOUT", default=300.0)
# A load that needs room which only models serving requests hold waits this long for them to finish, then 507.
AIHUB_MODEL_SWAP_WAIT_SECONDS = env.float("AIHUB_MODEL_SWAP_WAIT_SECONDS", default=30.0)
# How often a worker reports its state; it drops out of status after three missed beats.
AIHUB_HEARTBEAT_SECONDS = env.float("AIHUB_HEARTBEAT_SECONDS", default=2.0)
# How long POST /models/load and /models/unload wait for the worker's answer.
AIHUB_CONTROL_TIMEOUT_SECONDS = env.float("AIHUB_CONTROL_TIMEOUT_SECONDS", default=300.0)

# Monitoring. With a token set, /metrics needs `Authorization: Bearer <token>` (empty: open, for local
# scraping); the token (or an admin key) also shows the details of /health.
AIHUB_METRICS_TOKEN = env("AIHUB_METRICS_TOKEN", default="")
# /health runs its checks at most once per this many seconds per web process (0: every call).
AIHUB_HEALTH_CACHE_SECONDS = env.float("AIHUB_HEALTH_CACHE_SECONDS", default=5.0)
# Free space in AIHUB_VAR_DIR below which /health warns (still 200) / fails (503): a fraction
# (0 < x <= 1) of the filesystem, or bytes; 0 turns the check off.
AIHUB_DISK_WARN_BYTES = env.float("AIHUB_DISK_WARN_BYTES", default=0.1)
AIHUB_DISK_CRITICAL_BYTES = env.float("AIHUB_DISK_CRITICAL_BYTES", default=0.01)

AIHUB_LOG_DIR.mkdir(parents=True, exist_ok=True)
LOG_LEVEL = env("AIHUB_LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        # WatchedFileHandler: several processes append to one file; logrotate-safe.
        "file": {
            "class": "logging.handlers.WatchedFileHandler",
            "filename": str(AIHUB_LOG_DIR / "app.log"),
            "formatter": "plain",
        },
    },
    "root": {"handlers": ["console", "file"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "httpx": {"level": "WARNING"},
    },
}
