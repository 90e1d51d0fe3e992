"""The worker registry: records, validation, the Redis store and its change events."""

from registry.apikeys import Admission, ApiKey, ApiKeyStore, NewApiKey, hash_key
from registry.embedded import EmbeddedRedis, EmbeddedRedisError
from registry.errors import (
    DuplicateWorker,
    RegistryError,
    StoreUnavailable,
    UnknownApiKey,
    UnknownWorker,
)
from registry.models import Change, RegisterRequest, WorkerKey, WorkerRecord, WorkerSpec
from registry.store import RegistryStore
from registry.watch import Follower, ViewSink

__all__ = [
    "Admission",
    "ApiKey",
    "ApiKeyStore",
    "Change",
    "DuplicateWorker",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "Follower",
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
    "hash_key",
]
