"""Typed keys for the objects shared on the aiohttp Application."""

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.allowlist import AllowList
from gateway.endpoints import CATALOGUE
from gateway.failover import Failover
from gateway.health import HealthChecker
from gateway.metrics import Metrics
from gateway.router import Router
from gateway.runs import Runner
from gateway.settings import Settings
from registry import ApiKeyStore, AssistantStore, Follower, RegistryStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", RegistryStore)
ROUTER = web.AppKey("router", Router)
FOLLOWER = web.AppKey("follower", Follower)
SESSION = web.AppKey("session", aiohttp.ClientSession)
FAILOVER = web.AppKey("failover", Failover)
HEALTH = web.AppKey("health", HealthChecker)
METRICS = web.AppKey("metrics", Metrics)
ALLOWLIST = web.AppKey("allowlist", AllowList)
API_KEYS = web.AppKey("api_keys", ApiKeyStore)
ASSISTANTS = web.AppKey("assistants", AssistantStore)
RUNS = web.AppKey("runs", Runner)

__all__ = [
    "ALLOWLIST",
    "API_KEYS",
    "ASSISTANTS",
    "CATALOGUE",
    "FAILOVER",
    "FOLLOWER",
    "HEALTH",
    "METRICS",
    "REDIS",
    "ROUTER",
    "RUNS",
    "SESSION",
    "SETTINGS",
    "STORE",
]
