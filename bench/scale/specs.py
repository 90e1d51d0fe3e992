"""The workers a scale run registers: seed-style template workers, each a distinct URL."""

import json

from bench.stack import MODEL

BODY = {"input": "{USER_PROMPT}", "model_name": "{MODEL_NAME}"}
EXTRACT = "data.items[].attributes.answer"


def model_of(index: int, models: int) -> str:
    """Return the model of worker `index`; model 0 is the one the load rows drive."""
    slot = index % models
    return MODEL if slot == 0 else f"m{slot:05d}"


def spec(base_url: str, index: int, model: str, path: str = "w") -> dict[str, object]:
    """Return the register body of worker `index` at `base_url`/`path`/`index`."""
    return {
        "model_name": model,
        "req_url_template": f"{base_url}/{path}/{index}",
        "body": BODY,
        "response_extract": EXTRACT,
        "owner": "bench-scale",
    }


def encoded(specs: list[dict[str, object]]) -> list[bytes]:
    """Return each spec as the JSON bytes of its register request."""
    return [json.dumps(s, separators=(",", ":")).encode() for s in specs]
