"""Typed keys for the objects shared on the aiohttp Application."""

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.allowlist import AllowList
from gateway.endpoints import Catalogue
from gateway.health import HealthChecker
from gateway.metrics import Metrics
from gateway.router import Router
from gateway.settings import Settings
from gateway.upstream import Upstream
from registry import ApiKeyStore, Follower, RegistryStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", RegistryStore)
ROUTER = web.AppKey("router", Router)
FOLLOWER = web.AppKey("follower", Follower)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", Upstream)
HEALTH = web.AppKey("health", HealthChecker)
METRICS = web.AppKey("metrics", Metrics)
CATALOGUE = web.AppKey("catalogue", Catalogue)
ALLOWLIST = web.AppKey("allowlist", AllowList)
API_KEYS = web.AppKey("api_keys", ApiKeyStore)
