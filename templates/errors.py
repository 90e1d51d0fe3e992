"""The errors templates raise: a template or path an operator must fix, or a worker's bad answer.

An ExtractError keeps what the worker sent (`quote`) apart from the gateway's own words
(`message`), so the gateway can redact the worker's secrets from the quote before it is cut
short for a message: a cut made first could split a secret and leak its prefix.
"""

from collections.abc import Callable

QUOTE_MAX_CHARS = 4096  # what a quote keeps: far more than a message shows, bounded all the same


class TemplateError(ValueError):
    """A request template or extract path that cannot be used, with the reason."""


class ExtractError(ValueError):
    """A worker response that does not hold what the extract path asks for.

    `message` never holds text the worker supplied; `quote` holds it (up to QUOTE_MAX_CHARS,
    uncut otherwise), introduced by `quote_label` when shown.
    """

    def __init__(self, message: str, quote: str = "", quote_label: str = "it began with") -> None:
        quote = quote[:QUOTE_MAX_CHARS]
        super().__init__(message, quote, quote_label)
        self.message = message
        self.quote = quote
        self.quote_label = quote_label

    def describe(self, redact: Callable[[str], str] = lambda s: s, limit: int = 120) -> str:
        """Return the message with the redacted quote, cut to `limit` characters, appended."""
        if not self.quote:
            return self.message
        return f"{self.message}; {self.quote_label} {redact(self.quote)[:limit]!r}"

    def __str__(self) -> str:
        return self.describe()


class StreamLineTooLong(ExtractError):
    """A streamed answer whose line (or SSE event) passed the decoder's max_line_bytes."""


class CannotTranslate(ValueError):
    """A request that cannot be said in the protocol of the worker chosen for it (a 400).

    The message is for the client: it names what the request asked and why this worker's
    protocol cannot carry it.
    """
