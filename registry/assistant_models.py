"""The Assistants API's objects as they are stored and answered (OpenAI's v2 shapes).

Each record's JSON in Redis is the object a client gets, so reading one back is the answer;
`extra="ignore"` lets a newer gateway read what an older one wrote.
"""

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Metadata = dict[str, str]
RunStatus = Literal[
    "queued",
    "in_progress",
    "requires_action",
    "cancelling",
    "cancelled",
    "failed",
    "completed",
    "incomplete",
    "expired",
]
ACTIVE: frozenset[str] = frozenset({"queued", "in_progress", "cancelling"})
# A run in these keeps its thread (no messages, no other run) until it ends or expires.
WAITING: frozenset[str] = ACTIVE | {"requires_action"}


def new_id(kind: str) -> str:
    """Return a new object id in OpenAI's style (`asst_...`, `thread_...`, `msg_...`)."""
    return f"{kind}_{secrets.token_hex(12)}"


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    created_at: int


class AssistantRecord(_Record):
    object: Literal["assistant"] = "assistant"
    name: str | None = None
    description: str | None = None
    model: str
    instructions: str | None = None
    tools: list[dict[str, Any]] = []
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata = {}
    temperature: float | None = None
    top_p: float | None = None
    response_format: Any = "auto"


class ThreadRecord(_Record):
    object: Literal["thread"] = "thread"
    metadata: Metadata = {}
    tool_resources: dict[str, Any] | None = None


class MessageRecord(_Record):
    object: Literal["thread.message"] = "thread.message"
    thread_id: str
    role: Literal["user", "assistant"]
    # Content parts in OpenAI's answer shape: {"type": "text", "text": {"value", "annotations"}}
    # or {"type": "image_url", "image_url": {"url", "detail"}}.
    content: list[dict[str, Any]]
    status: Literal["in_progress", "incomplete", "completed"] = "completed"
    assistant_id: str | None = None
    run_id: str | None = None
    attachments: list[dict[str, Any]] = []
    metadata: Metadata = {}
    completed_at: int | None = None
    incomplete_at: int | None = None
    incomplete_details: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined."""
        return "".join(
            str(part.get("text", {}).get("value", ""))
            for part in self.content
            if part.get("type") == "text"
        )


class LastError(BaseModel):
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    message: str


class RunUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RunRecord(_Record):
    object: Literal["thread.run"] = "thread.run"
    thread_id: str
    assistant_id: str
    status: RunStatus = "queued"
    model: str
    instructions: str = ""
    tools: list[dict[str, Any]] = []
    metadata: Metadata = {}
    temperature: float | None = None
    top_p: float | None = None
    max_completion_tokens: int | None = None
    max_prompt_tokens: int | None = None
    response_format: Any = "auto"
    tool_choice: Any = "auto"
    truncation_strategy: dict[str, Any] = {"type": "auto", "last_messages": None}
    parallel_tool_calls: bool = True
    started_at: int | None = None
    expires_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    last_error: LastError | None = None
    incomplete_details: dict[str, Any] | None = None
    required_action: dict[str, Any] | None = None
    usage: RunUsage | None = None
    # The function calls of this run and the outputs given for them, in the order they came:
    # [{"calls": [{"id", "type", "function"}], "outputs": [{"tool_call_id", "output"}]}].
    # Kept to continue the run; not part of the answer (OpenAI tells them as run steps).
    tool_rounds: list[dict[str, Any]] = []

    def public(self) -> dict[str, Any]:
        """The run as clients get it."""
        return self.model_dump(mode="json", exclude={"tool_rounds"})

    def seen_at(self, now: int) -> "RunRecord":
        """The run as a reader sees it at `now`: past its deadline and still active, a run
        whose process went away is expired."""
        if self.status in WAITING and self.expires_at is not None and now > self.expires_at:
            return self.model_copy(update={"status": "expired"})
        return self
