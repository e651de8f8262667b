"""Limits of the API, declared once: the request models' `Field` bounds and the services'
checks both read them, and the SDK and CLI import them instead of repeating numbers."""

from __future__ import annotations

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
"""Tenant, dataset, model, alias and endpoint names: lower-case slugs safe in URLs, paths
and shells (1-63 characters)."""

MAX_VERSION = 2**31 - 1
"""The largest version number of a dataset or model that a ref or a request may name."""

MAX_INT64 = 2**63 - 1
"""The largest integer a database column holds: the cap of ids, cursors and offsets."""
MAX_COUNT = 2**31 - 1
"""The cap of counts the API takes (attempt numbers and the like)."""
MAX_SIZE_BYTES = 1 << 50
"""The largest size in bytes the API takes (1 PiB): memory requests, artifact sizes."""
MAX_METERED_QUANTITY = 1e15
"""The most one attempt may meter of a quantity it counts itself (tokens_trained...)."""

# resources (jobs and endpoint replicas)
RESOURCE_STEP = 0.01
"""The granularity of cpus and gpus requests: multiples of it, and cpus at least one step,
gpus 0 or at least one step (so that tiny requests cannot oversubscribe a node)."""
MAX_CPUS = 4096.0
"""CPU slots one job or replica may ask for."""
MAX_GPUS = 1024.0
"""GPUs one job or replica may ask for."""

# tenants
MIN_RATE_LIMIT_RPS, MAX_RATE_LIMIT_RPS = 0.01, 1e6
"""Requests per second per key a tenant's rate limit may be set to."""
MAX_TOKENS_PER_MINUTE = 10**12
"""The most tokens per minute per key a tenant's token rate limit may be set to."""
MAX_TOKENS_BUDGET = 10**15
"""The largest token budget (tokens in + out over the tenant's life) a tenant may be given."""
MIN_WEIGHT, MAX_WEIGHT = 0.001, 1e6
"""The range of a tenant's fair-share weight."""
MAX_QUOTA = 1e9
"""The cap of max_gpus, max_cpus and gpu_hours_budget (finite: no quota is null)."""

# recipes
MAX_SEED = 2**32 - 1
"""Seeds of recipes (numpy takes 0..2^32-1)."""

# jobs
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_ATTEMPTS = 100
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LIST_JOBS = 100
MAX_LIST_JOBS = 1000
MAX_EVENTS_PAGE = 5000
DEFAULT_EVENTS_PAGE = 500
MAX_LOG_CHUNK = 1 << 20
"""Bytes of a job log one call answers at most."""
DEFAULT_LOG_CHUNK = 65536
MAX_EVENT_MESSAGE = 4000
"""Characters of one worker event's message."""
MAX_EVENTS_PER_CALL = 1000
"""Events one worker call may post."""
EVENT_LEVELS = ("info", "debug", "warning", "error")
"""Levels of a job event; the first is the default for an unknown one."""
EVENT_TYPES = ("message", "metrics", "checkpoint", "progress")
"""Types of a worker event; the first is the default for an unknown one."""

# endpoints
MAX_REPLICAS = 32
MAX_BATCH_SIZE = 1024
MAX_WAIT_MS = 1000.0
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_WAIT_MS = 5.0
REPLICA_SECRET_MIN_CHARS, REPLICA_SECRET_MAX_CHARS = 32, 128
"""Length of the secret a replica accepts requests with (the gateway and the endpoint
controller present it; a replica makes a 43-character one at start)."""
MAX_IMAGES_PER_REQUEST = 64
"""Images (inputs) one predict request may carry; the SDK splits larger calls."""
PREDICT_CHUNK_BYTES = 16 << 20
"""Bytes of inputs the SDK puts in one predict request when it splits a large call (half
the gateway's default body limit)."""

# keys
MAX_KEY_LIFETIME_S = 10 * 365 * 86400.0
"""The longest an expiring API key may live (10 years); keys without expiry are allowed."""

# idempotency
MAX_IDEMPOTENCY_KEY_CHARS = 255
"""Length of an `Idempotency-Key` header (printable ASCII)."""

# chat datasets (and fine-tuning files)
MAX_CHAT_CONVERSATIONS = 1_000_000
"""Conversations one chat dataset may hold."""
MAX_CHAT_MESSAGES = 1000
"""Messages one conversation may hold."""
MAX_CHAT_CONVERSATION_CHARS = 1_000_000
"""Characters of content one conversation may hold (all its messages together)."""
MAX_CHAT_RECORD_BYTES = 16 << 20
"""Bytes of one JSONL line (one conversation as uploaded)."""
MAX_CHAT_JSON_BYTES = 1 << 30
"""Bytes of a chat file uploaded as one JSON list (it is read whole; JSONL is streamed)."""

# files (the OpenAI files API)
MAX_LIST_FILES = 10_000
"""Files one list call answers at most (OpenAI's cap; also the default)."""
MAX_FILENAME_CHARS = 255
"""Characters of an uploaded file's name that are kept."""

# fine-tuning jobs (the OpenAI fine-tuning API)
DEFAULT_LIST_FINE_TUNING = 20
"""Fine-tuning jobs, events or checkpoints one list call answers by default (OpenAI's)."""
MAX_LIST_FINE_TUNING = 100
"""... and at most."""
MAX_LR_MULTIPLIER = 100.0
"""The largest `learning_rate_multiplier` (times the recipe's auto lr)."""
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
"""OpenAI's bounds on an object's `metadata`: pairs, characters of a key and of a value."""
MAX_MODELS_PER_JOB = 8
"""Models one job may register (llm-distill: one per student size)."""
MAX_EMBEDDING_DIMENSIONS = 65_536
"""The most dimensions an embeddings request may name (models here have a few hundred)."""
