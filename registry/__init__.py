"""The worker registry: records, validation, the Redis store and its change events."""

from registry.apikeys import Admission, ApiKey, ApiKeyStore, NewApiKey, hash_key
from registry.connect import check_url, connect
from registry.embedded import EmbeddedRedis, EmbeddedRedisError
from registry.errors import (
    DuplicateWorker,
    ManagedWorker,
    RegistryError,
    StoreUnavailable,
    UnknownApiKey,
    UnknownWorker,
)
from registry.lease import Lease
from registry.managed import Applied, apply_managed
from registry.models import Change, Health, RegisterRequest, WorkerKey, WorkerRecord, WorkerSpec
from registry.store import REDIS_ERRORS, RegistryStore
from registry.watch import Follower, ViewSink, pause

__all__ = [
    "REDIS_ERRORS",
    "Admission",
    "ApiKey",
    "ApiKeyStore",
    "Applied",
    "Change",
    "DuplicateWorker",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "Follower",
    "Health",
    "Lease",
    "ManagedWorker",
    "NewApiKey",
    "RegisterRequest",
    "RegistryError",
    "RegistryStore",
    "StoreUnavailable",
    "UnknownApiKey",
    "UnknownWorker",
    "ViewSink",
    "WorkerKey",
    "WorkerRecord",
    "WorkerSpec",
    "apply_managed",
    "check_url",
    "connect",
    "hash_key",
    "pause",
]
