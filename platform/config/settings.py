"""Settings for the RLHF platform.

Everything comes from environment variables (see README, "Configuration"). The defaults need no
server: SQLite and a filesystem Celery broker under var/. DATABASE_URL and CELERY_BROKER_URL
switch to PostgreSQL and Redis.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.env import (
    check_secret_key,
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_str,
    local_env_load,
)

BASE_DIR = Path(__file__).resolve().parents[2]
# The local development settings `make setup` writes (DJANGO_DEBUG=1, a generated secret key);
# the environment wins over it, and production (DJANGO_DEBUG=0) never reads it (config/env.py).
local_env_load(Path(env_str("PLATFORM_ENV_FILE", str(BASE_DIR / ".env"))))
VAR_DIR = Path(env_str("PLATFORM_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", False)

if DEBUG:
    SECRET_KEY = (
        env_str("DJANGO_SECRET_KEY") or "dev-only-insecure-key-never-use-in-production-0123456789"
    )
    ALLOWED_HOSTS = env_list(
        "DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"]
    )
else:
    SECRET_KEY = check_secret_key(env_str("DJANGO_SECRET_KEY"))
    ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured(
            "DJANGO_ALLOWED_HOSTS is not set. In production list the host names the platform is "
            "served under, comma-separated (e.g. rlhf.example.org); for local development set "
            "DJANGO_DEBUG=1."
        )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "core",
    "annotation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.login.LoginLimitMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "core.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": database_from_url(
        env_str("DATABASE_URL") or f"sqlite:///{(VAR_DIR / 'platform.sqlite3').as_posix()}"
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # IMMEDIATE transactions take the write lock up front, so concurrent writers queue on the
    # busy timeout instead of failing with "database is locked" when a read upgrades to a write.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-platform.sqlite3")}
    # Kept open across requests too: opening one (PRAGMAs, Django's SQL functions) and closing
    # it (a WAL checkpoint) cost 3 ms of CPU per request, more than the labeling work itself.
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # The labeling hot paths' statements (annotation/sql.py) are prepared after this many runs on
    # a connection; 0 turns preparing off (needed behind PgBouncer < 1.21 in transaction mode).
    # The ORM's statements bind on the client and are never prepared, so the generic-plan mode
    # below only concerns those: PostgreSQL's default re-plans the lease's claim on every run
    # (its generic plan is estimated dearer, though it is the same index walk), which cost 1.5 ms
    # of CPU per lease against 0.35 ms with the plan kept. Sessions last DATABASE_CONN_MAX_AGE,
    # so the plans follow the statistics within a minute.
    prepare_threshold = env_int("DATABASE_PREPARE_THRESHOLD", 2, minimum=0)
    DATABASES["default"]["OPTIONS"] = {
        "prepare_threshold": prepare_threshold or None,
        "options": "-c plan_cache_mode=force_generic_plan",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (log-in rate limits) ----------------------------------------------------------------
# Per-process memory by default; set CACHE_URL=redis://... in production so every web worker
# shares the same counters.
CACHE_URL = env_str("CACHE_URL", "locmem://")
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    }
elif CACHE_URL.startswith("locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r}: use locmem:// or redis://host:6379/1.")

# --- Auth -----------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The log-in limit comes first: it refuses a locked username or address on every log-in form
# before the password is checked (core/login.py); it never authenticates anyone itself.
AUTHENTICATION_BACKENDS = [
    "core.login.LoginLimitBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotation:home"
LOGOUT_REDIRECT_URL = "login"

# --- I18n, static ---------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("UPLOAD_MAX_BYTES", 50 * 1024 * 1024, minimum=1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Largest file the import API accepts (413 above it); the command line import has no limit.
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 200 * 1024 * 1024, minimum=1024)
# Most bytes an imported Parquet file may decode to (a few hundred bytes of dictionary-encoded
# Parquet can decode to gigabytes); refused before its rows are read (annotation/imports/).
IMPORT_MAX_DECODED_BYTES = env_int("IMPORT_MAX_DECODED_BYTES", 512 * 1024 * 1024, minimum=1024)

# --- Security (production) ------------------------------------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
}
# How long a web worker remembers an API token's user (core/authentication.py): a revoked
# token keeps working in the other workers for at most this long. 0 reads it on every request.
API_TOKEN_CACHE_SECONDS = env_int("API_TOKEN_CACHE_SECONDS", 10, minimum=0)
SPECTACULAR_SETTINGS = {
    "TITLE": "RLHF platform API",
    "DESCRIPTION": "Projects, prompts, labeling tasks and annotations; datasets and training.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "SnapshotKindEnum": "annotation.models.SnapshotKind",
        "TaskKindEnum": "annotation.models.TaskKind",
        "SourceEnum": "annotation.models.Source",  # a prompt's source, a response's origin
        # Task batches and consensus computations: queued, running, done, failed.
        "JobStatusEnum": "annotation.models.TaskBatch.Status",
    },
}

# --- Celery ---------------------------------------------------------------------------------
# The embedded default is kombu's filesystem transport: a real broker that needs no server, so
# `make run` starts a real worker process on a fresh machine. Redis in production.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_DIR = Path(env_str("CELERY_BROKER_DIR", str(VAR_DIR / "broker")))
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (CELERY_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        # Exchange tables; kombu's default is ./control in whatever directory the process runs.
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    # Longer than the longest training run, so a long task is not redelivered while it runs;
    # the run's database claim stops a redelivered message from executing it twice anyway.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 7 * 24 * 3600, minimum=60)
    }
# Outcomes live in the database rows the tasks update, so no result backend is needed.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = [
    # Sampling candidates goes to the training queue while a live worker with a GPU takes it
    # (a batched generate on a GPU), else it stays on default.
    "training.selectors.generation_route",
    # Exact names win over the glob.
    {
        "training.tasks.generation_run": {"queue": "default"},
        "training.tasks.base_model_fetch": {"queue": "default"},  # network, not a GPU
        "training.tasks.arena_battles_create": {"queue": "default"},
        "training.tasks.*": {"queue": "training"},
    },
]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Platform -------------------------------------------------------------------------------
# Where snapshots, model artifacts and run logs are written.
DATA_DIR = Path(env_str("PLATFORM_DATA_DIR", str(VAR_DIR / "data")))
# A running job (a snapshot build, a training run, a generation job) refreshes its heartbeat
# this often; one whose heartbeat is older than TRAINING_STALE_AFTER_SECONDS lost its worker and
# is marked failed (resume continues a run).
# Folders of models that training may read by typed path besides the project's own artifacts
# (e.g. shared base models), comma-separated; runs still write only under DATA_DIR/runs/.
# Registered artifacts may point into DATA_DIR or these folders, nowhere else. Default: none.
TRAINING_MODEL_DIRS = [Path(d) for d in env_list("TRAINING_MODEL_DIRS")]
# The platform's own models folder: base models registered from the admin, by a folder under it
# or fetched from the hub into MODELS_DIR/hub/. A folder a user names never leaves it.
MODELS_DIR = Path(env_str("PLATFORM_MODELS_DIR", str(DATA_DIR / "models")))
TRAINING_HEARTBEAT_SECONDS = env_int("TRAINING_HEARTBEAT_SECONDS", 10, minimum=1)
TRAINING_STALE_AFTER_SECONDS = env_int("TRAINING_STALE_AFTER_SECONDS", 90, minimum=2)
# CPU threads torch may use for the training and sampling in a worker (0: torch's default, one
# per core). On a machine shared with the database or other workers, torch's threads spin on
# busy cores: a reward stage took 18 s alone and 805 s beside two other jobs on 2 cores.
TRAINING_TORCH_THREADS = env_int("TRAINING_TORCH_THREADS", 0, minimum=0)
# Prompts a generation job samples in one left-padded `generate` call (bench/generation.py).
# 1 samples prompt i with seed + i alone, so a response never depends on the other prompts.
TRAINING_GENERATION_BATCH_SIZE = env_int("TRAINING_GENERATION_BATCH_SIZE", 8, minimum=1)
# Playground sessions that may hold a model and generate at once (each loads its model in a
# training worker); a user beyond that waits, and is told their place in the queue.
TRAINING_PLAYGROUND_MAX_SESSIONS = env_int("TRAINING_PLAYGROUND_MAX_SESSIONS", 2, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
