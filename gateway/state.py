"""Typed keys for the objects shared on the aiohttp Application."""

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.allowlist import AllowList
from gateway.endpoints import CATALOGUE
from gateway.failover import Failover
from gateway.fallback import Dispatcher
from gateway.health import HealthChecker
from gateway.http1 import Client
from gateway.live import Live
from gateway.metrics import Metrics
from gateway.router import Router
from gateway.runs import Runner
from gateway.settings import Settings
from registry import ApiKeyStore, AssistantStore, Follower, RegistryStore
from registry.responses import ResponseStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", RegistryStore)
ROUTER = web.AppKey("router", Router)
FOLLOWER = web.AppKey("follower", Follower)
SESSION = web.AppKey("session", aiohttp.ClientSession)
FAILOVER = web.AppKey("failover", Failover)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
UPSTREAM = web.AppKey("upstream", Client)  # the worker client (gateway/http1/)
HEALTH = web.AppKey("health", HealthChecker)
METRICS = web.AppKey("metrics", Metrics)
ALLOWLIST = web.AppKey("allowlist", AllowList)
API_KEYS = web.AppKey("api_keys", ApiKeyStore)
ASSISTANTS = web.AppKey("assistants", AssistantStore)
RUNS = web.AppKey("runs", Runner)
RESPONSES = web.AppKey("responses", ResponseStore)
LIVE = web.AppKey("live", Live)

__all__ = [
    "ALLOWLIST",
    "API_KEYS",
    "ASSISTANTS",
    "CATALOGUE",
    "DISPATCHER",
    "FAILOVER",
    "FOLLOWER",
    "HEALTH",
    "LIVE",
    "METRICS",
    "REDIS",
    "ROUTER",
    "RUNS",
    "SESSION",
    "SETTINGS",
    "STORE",
    "UPSTREAM",
]
