"""The worker registry: records, validation, the Redis store and its change events."""

from registry.connect import check_url, connect
from registry.embedded import EmbeddedRedis, EmbeddedRedisError
from registry.errors import DuplicateWorker, RegistryError, StoreUnavailable, UnknownWorker
from registry.lease import Lease
from registry.models import Change, Health, RegisterRequest, WorkerKey, WorkerRecord, WorkerSpec
from registry.store import REDIS_ERRORS, RegistryStore
from registry.watch import Follower, ViewSink, pause

__all__ = [
    "REDIS_ERRORS",
    "Change",
    "DuplicateWorker",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "Follower",
    "Health",
    "Lease",
    "RegisterRequest",
    "RegistryError",
    "RegistryStore",
    "StoreUnavailable",
    "UnknownWorker",
    "ViewSink",
    "WorkerKey",
    "WorkerRecord",
    "WorkerSpec",
    "check_url",
    "connect",
    "pause",
]
