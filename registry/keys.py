"""Every Redis key and channel name the registry uses, in one place.

All keys carry the same hash tag (`{prefix}`), so every multi-key script touches a single
Redis Cluster slot, and a distinct prefix keeps deployments (or tests) sharing one Redis apart.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def _tag(self) -> str:
        return "{" + self.prefix + "}"

    @property
    def workers(self) -> str:
        """Hash: worker id -> worker record (JSON)."""
        return f"{self._tag}:workers"

    def model(self, model_name: str) -> str:
        """Set: ids of the workers serving `model_name`."""
        return f"{self._tag}:model:{model_name}"

    @property
    def model_prefix(self) -> str:
        """The start of every per-model index key (for scripts that derive one)."""
        return f"{self._tag}:model:"

    @property
    def models(self) -> str:
        """Hash: model name -> its settings record (JSON), written by the admin API."""
        return f"{self._tag}:models"

    @property
    def health(self) -> str:
        """Hash: worker id -> Health (JSON), written by the active health checker."""
        return f"{self._tag}:health"

    @property
    def expiry(self) -> str:
        """Sorted set: worker id -> heartbeat deadline (ms, Redis clock), for ttl_s workers."""
        return f"{self._tag}:expiry"

    @property
    def probe_lease(self) -> str:
        """String: who runs the active health probes, with a TTL renewed by the holder."""
        return f"{self._tag}:probe-lease"

    @property
    def version(self) -> str:
        """Counter bumped by every write; a gap tells a follower it missed an event."""
        return f"{self._tag}:version"

    @property
    def events(self) -> str:
        """Pub/sub channel carrying one change event per write."""
        return f"{self._tag}:events"

    @property
    def api_keys(self) -> str:
        """Hash: API key id -> key record (JSON with the key's SHA-256, never the key)."""
        return f"{self._tag}:apikeys"

    @property
    def api_key_hashes(self) -> str:
        """Hash: SHA-256 of an API key -> the key's id."""
        return f"{self._tag}:apikey-hashes"

    def rate(self, key_id: str) -> str:
        """Hash: the key's request counts this minute and the last (`w`, `n`, `p`)."""
        return f"{self._tag}:rate:{key_id}"

    def in_flight(self, key_id: str) -> str:
        """Sorted set: the key's requests in progress, scored by their start (ms)."""
        return f"{self._tag}:inflight:{key_id}"

    def response(self, response_id: str) -> str:
        """String: a stored Responses-API response (JSON: owner, response, input, history),
        expiring after `responses_ttl_s`."""
        return f"{self._tag}:response:{response_id}"

    # The Assistants API's state (registry/assistants.py). `owner` is the API key's id, or
    # "open" when keys are not required; ids in key names are checked by the caller.

    def assistants(self, owner: str) -> str:
        """Hash: assistant id -> assistant (JSON), and `seq`, the owner's counter."""
        return f"{self._tag}:assistants:{owner}"

    def assistant_order(self, owner: str) -> str:
        """Sorted set: the owner's assistant ids, scored by creation (`seq`)."""
        return f"{self._tag}:assistant-order:{owner}"

    def thread(self, owner: str, thread_id: str) -> str:
        """Hash: `thread` (JSON), `seq`, `bytes`, `active` and `active_until` (the run in
        progress and its deadline, ms), `m:<id>` per message and `r:<id>` per run (JSON)."""
        return f"{self._tag}:thread:{owner}:{thread_id}"

    def thread_messages(self, owner: str, thread_id: str) -> str:
        """Sorted set: the thread's message ids, scored by their place in it."""
        return f"{self._tag}:thread-messages:{owner}:{thread_id}"

    def thread_runs(self, owner: str, thread_id: str) -> str:
        """Sorted set: the thread's run ids, scored by creation."""
        return f"{self._tag}:thread-runs:{owner}:{thread_id}"

    def spend(self, key_id: str) -> str:
        """Hash: what the key spent, as its token limits and budget count it (registry/spend.py)."""
        return f"{self._tag}:spend:{key_id}"

    def usage(self, unit: str, start_s: int) -> str:
        """Hash: usage in one time bucket (`unit` m, h or d, starting at `start_s`, UTC), by
        key, model, worker and estimated (registry/usage.py)."""
        return f"{self._tag}:usage:{unit}:{start_s}"

    def usage_flush(self, flush_id: str) -> str:
        """String: a usage flush already applied (so a retried flush is not counted twice)."""
        return f"{self._tag}:usage-flush:{flush_id}"

    @property
    def prices(self) -> str:
        """Hash: model -> Price (JSON), set through the admin API; over the config file's."""
        return f"{self._tag}:prices"
