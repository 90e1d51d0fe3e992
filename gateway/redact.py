"""Hide a worker's own secrets (its header values, its URLs' userinfo) in text it sent back.

A worker's error body, its non-JSON answer or a streamed error event may echo the
`Authorization` header it was sent. Such text reaches API-key holders (error messages, stream
error events), operators (`last_error` in the listing) and logs. Redact first, cut after: a
cut made first could keep the start of a secret.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

_MIN_SECRET = 6  # shorter values ("1", "json") are not secrets and would garble the text
_MASK = "***"


@dataclass(frozen=True, slots=True)
class Redactor:
    """Replaces each known secret of one worker with `***`."""

    secrets: tuple[str, ...]  # longest first, so a value wins over its own suffix

    @classmethod
    def of(cls, header_values: Iterable[str], urls: Iterable[str | None]) -> "Redactor":
        """Collect the secrets of a worker from its header values and URLs."""
        found: set[str] = set()
        for value in header_values:
            # "Bearer sk-..." is also sent back as "sk-..." alone.
            for secret in (value, value.rpartition(" ")[2]):
                if len(secret) >= _MIN_SECRET:
                    found.add(secret)
        for url in urls:
            if not url or "@" not in url:
                continue
            try:
                parsed = URL(url)
            except ValueError:
                continue
            for part in (parsed.raw_user, parsed.raw_password, parsed.user, parsed.password):
                if part and len(part) >= _MIN_SECRET:
                    found.add(part)
        return cls(tuple(sorted(found, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text

    def quote(self, data: bytes | str, limit: int = 200) -> str:
        """Return worker-sent `data` as text, redacted, then cut to `limit` characters."""
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        text = self(text)
        return text if len(text) <= limit else text[:limit] + "..."
