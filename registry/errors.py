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


class NotStored(RegistryError):
    """No stored object (assistant, thread, message, run) with that id belongs to the caller."""


class ThreadBusy(RegistryError):
    """The thread has a run in progress; it takes no messages or runs until that ends."""


class StorageFull(RegistryError):
    """A stored conversation's limit (messages, bytes, assistants) would be passed."""


class UnknownCursor(RegistryError):
    """A list's `after` cursor names no object of that list."""


class MessageTooLarge(RegistryError):
    """A message is larger than a stored conversation takes."""


class RunChanged(RegistryError):
    """A run was not in the state a change expected (another request changed it first)."""


class UnknownModelSettings(RegistryError):
    """No settings are stored for that model."""
