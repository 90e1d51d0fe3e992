"""Typed keys for the objects shared on the aiohttp Application."""

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.health import HealthChecker
from gateway.router import Router
from gateway.settings import Settings
from gateway.upstream import Upstream
from registry import Follower, RegistryStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", RegistryStore)
ROUTER = web.AppKey("router", Router)
FOLLOWER = web.AppKey("follower", Follower)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", Upstream)
HEALTH = web.AppKey("health", HealthChecker)
