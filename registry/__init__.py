"""The worker registry: records, validation, the Redis store and its change events."""

from registry.embedded import EmbeddedRedis, EmbeddedRedisError
from registry.errors import DuplicateWorker, RegistryError, StoreUnavailable, UnknownWorker
from registry.models import Change, RegisterRequest, WorkerKey, WorkerRecord, WorkerSpec
from registry.store import RegistryStore
from registry.watch import Follower, ViewSink

__all__ = [
    "Change",
    "DuplicateWorker",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "Follower",
    "RegisterRequest",
    "RegistryError",
    "RegistryStore",
    "StoreUnavailable",
    "UnknownWorker",
    "ViewSink",
    "WorkerKey",
    "WorkerRecord",
    "WorkerSpec",
]
