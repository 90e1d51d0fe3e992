"""The aiohttp gateway: routes, router, upstream calls, settings and the CLI."""

from gateway.app import create_app
from gateway.settings import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]
