"""The worker registry: records, validation, the Redis store and its change events."""

from registry.apikeys import Admission, ApiKey, ApiKeyStore, NewApiKey, hash_key
from registry.assistant_models import (
    ACTIVE,
    WAITING,
    AssistantRecord,
    LastError,
    MessageRecord,
    RunRecord,
    RunUsage,
    ThreadRecord,
    new_id,
)
from registry.assistants import AssistantLimits, AssistantStore, valid_id
from registry.connect import check_url, connect
from registry.embedded import EmbeddedRedis, EmbeddedRedisError
from registry.errors import (
    DuplicateWorker,
    MessageTooLarge,
    NotStored,
    RegistryError,
    RunChanged,
    StorageFull,
    StoreUnavailable,
    ThreadBusy,
    UnknownApiKey,
    UnknownCursor,
    UnknownWorker,
)
from registry.lease import Lease
from registry.models import Change, Health, RegisterRequest, WorkerKey, WorkerRecord, WorkerSpec
from registry.store import REDIS_ERRORS, RegistryStore
from registry.watch import Follower, ViewSink, pause

__all__ = [
    "ACTIVE",
    "REDIS_ERRORS",
    "WAITING",
    "Admission",
    "ApiKey",
    "ApiKeyStore",
    "AssistantLimits",
    "AssistantRecord",
    "AssistantStore",
    "Change",
    "DuplicateWorker",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "Follower",
    "Health",
    "LastError",
    "Lease",
    "MessageRecord",
    "MessageTooLarge",
    "NewApiKey",
    "NotStored",
    "RegisterRequest",
    "RegistryError",
    "RegistryStore",
    "RunChanged",
    "RunRecord",
    "RunUsage",
    "StorageFull",
    "StoreUnavailable",
    "ThreadBusy",
    "ThreadRecord",
    "UnknownApiKey",
    "UnknownCursor",
    "UnknownWorker",
    "ViewSink",
    "WorkerKey",
    "WorkerRecord",
    "WorkerSpec",
    "check_url",
    "connect",
    "hash_key",
    "new_id",
    "pause",
    "valid_id",
]
