"""Turn a unified request into a worker's request, and a worker's answer back into text."""

from templates import presets
from templates.errors import ExtractError, StreamLineTooLong, TemplateError
from templates.extract import Extractor, compile_extract
from templates.placeholders import (
    MAX_TOKENS,
    MESSAGES,
    MODEL_NAME,
    MODEL_TEMPERATURE,
    STREAM,
    SYSTEM_PROMPT,
    TOP_P,
    USER_PROMPT,
)
from templates.render import RenderedRequest, RequestPlan, compile_request
from templates.stream import Decoder, StreamFormat, decoder
from templates.worker import Operation, OperationName, WorkerPlan, compile_worker

__all__ = [
    "MAX_TOKENS",
    "MESSAGES",
    "MODEL_NAME",
    "MODEL_TEMPERATURE",
    "STREAM",
    "SYSTEM_PROMPT",
    "TOP_P",
    "USER_PROMPT",
    "Decoder",
    "ExtractError",
    "Extractor",
    "Operation",
    "OperationName",
    "RenderedRequest",
    "RequestPlan",
    "StreamFormat",
    "StreamLineTooLong",
    "TemplateError",
    "WorkerPlan",
    "compile_extract",
    "compile_request",
    "compile_worker",
    "decoder",
    "presets",
]
