"""The worker registry: records, validation, the Redis store and its change events."""

from registry.apikeys import Admission, ApiKey, ApiKeyStore, Limit, NewApiKey, hash_key
from registry.connect import check_url, connect
from registry.embedded import EmbeddedRedis, EmbeddedRedisError
from registry.errors import (
    DuplicateWorker,
    ManagedWorker,
    RegistryError,
    StoreUnavailable,
    UnknownApiKey,
    UnknownModelSettings,
    UnknownWorker,
)
from registry.lease import Lease
from registry.managed import Applied, apply_managed
from registry.model_settings import (
    TRIGGERS,
    AliasTarget,
    Balancing,
    ModelRecord,
    ModelSettings,
    Trigger,
    check_name,
)
from registry.models import (
    Change,
    Health,
    Load,
    RegisterRequest,
    WorkerKey,
    WorkerRecord,
    WorkerSpec,
)
from registry.prices import NewPrice, Price, PriceStore
from registry.spend import Period, Spend
from registry.store import REDIS_ERRORS, RegistryStore, Snapshot
from registry.usage import UNIT_S, Batch, Group, Retention, Tally, Unit, UsageStore
from registry.watch import Follower, ViewSink, pause

__all__ = [
    "REDIS_ERRORS",
    "TRIGGERS",
    "UNIT_S",
    "Admission",
    "AliasTarget",
    "ApiKey",
    "ApiKeyStore",
    "Applied",
    "Balancing",
    "Batch",
    "Change",
    "DuplicateWorker",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "Follower",
    "Group",
    "Health",
    "Lease",
    "Limit",
    "Load",
    "ManagedWorker",
    "ModelRecord",
    "ModelSettings",
    "NewApiKey",
    "NewPrice",
    "Period",
    "Price",
    "PriceStore",
    "RegisterRequest",
    "RegistryError",
    "RegistryStore",
    "Retention",
    "Snapshot",
    "Spend",
    "StoreUnavailable",
    "Tally",
    "Trigger",
    "Unit",
    "UnknownApiKey",
    "UnknownModelSettings",
    "UnknownWorker",
    "UsageStore",
    "ViewSink",
    "WorkerKey",
    "WorkerRecord",
    "WorkerSpec",
    "apply_managed",
    "check_name",
    "check_url",
    "connect",
    "hash_key",
    "pause",
]
