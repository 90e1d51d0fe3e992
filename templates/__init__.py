"""Turn a unified request into a worker's request, and a worker's answer back into text."""

from templates.errors import ExtractError, TemplateError
from templates.extract import Extractor, compile_extract
from templates.placeholders import MODEL_NAME, MODEL_TEMPERATURE, USER_PROMPT
from templates.render import RenderedRequest, RequestPlan, compile_request

__all__ = [
    "MODEL_NAME",
    "MODEL_TEMPERATURE",
    "USER_PROMPT",
    "ExtractError",
    "Extractor",
    "RenderedRequest",
    "RequestPlan",
    "TemplateError",
    "compile_extract",
    "compile_request",
]
