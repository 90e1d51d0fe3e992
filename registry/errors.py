"""Errors the registry raises; the gateway maps each to an HTTP status."""


class RegistryError(Exception):
    """Base of every registry error."""


class DuplicateWorker(RegistryError):
    """The (model_name, req_url_template) identity is already registered."""


class ManagedWorker(RegistryError):
    """The worker is declared in a config file: only that file changes or removes it."""


class UnknownWorker(RegistryError):
    """No worker with that identity is registered."""


class StoreUnavailable(RegistryError):
    """Redis could not be reached or answered with an error."""


class UnknownApiKey(RegistryError):
    """No API key with that id exists (never created, or revoked)."""


class UnknownModelSettings(RegistryError):
    """No settings are stored for that model."""
