"""Placeholder names and how they are spelled inside templates.

A placeholder is written `{NAME}` or, in the seed's older style, `<NAME>`. Only `{NAME}` tokens
made of capitals, digits and underscores count as placeholder syntax, so an unknown one is
reported instead of being sent to a worker verbatim; `<NAME>` is recognised only for known
names, because angle brackets are common in ordinary prompt text.
"""

import re
from typing import Final

from templates.errors import TemplateError

USER_PROMPT: Final = "USER_PROMPT"
MODEL_TEMPERATURE: Final = "MODEL_TEMPERATURE"
MODEL_NAME: Final = "MODEL_NAME"
MESSAGES: Final = "MESSAGES"  # the whole chat message list, as a JSON list
SYSTEM_PROMPT: Final = "SYSTEM_PROMPT"
MAX_TOKENS: Final = "MAX_TOKENS"
STREAM: Final = "STREAM"
TOP_P: Final = "TOP_P"

KNOWN: Final[frozenset[str]] = frozenset(
    {USER_PROMPT, MODEL_TEMPERATURE, MODEL_NAME, MESSAGES, SYSTEM_PROMPT, MAX_TOKENS, STREAM, TOP_P}
)

_TOKEN = re.compile(r"\{([A-Z][A-Z0-9_]*)\}|<([A-Z][A-Z0-9_]*)>")


def find(text: str) -> list[tuple[int, int, str]]:
    """Return (start, end, name) of every placeholder in `text`, unknown `{NAME}`s included."""
    found: list[tuple[int, int, str]] = []
    for match in _TOKEN.finditer(text):
        curly, angle = match.group(1), match.group(2)
        if curly is not None:
            found.append((match.start(), match.end(), curly))
        elif angle in KNOWN:
            found.append((match.start(), match.end(), angle))
    return found


def check_known(names: set[str], where: str) -> None:
    """Raise TemplateError naming any placeholder that is not one of the known ones."""
    unknown = sorted(names - KNOWN)
    if unknown:
        listed = ", ".join("{" + name + "}" for name in unknown)
        known = ", ".join("{" + name + "}" for name in sorted(KNOWN))
        raise TemplateError(f"unknown placeholder {listed} in {where}; known placeholders: {known}")
