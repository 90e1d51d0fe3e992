"""A preset worker's URL forms: its base URL or any endpoint URL is one worker, one identity."""

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from registry import RegistryStore, UnknownWorker, WorkerRecord, WorkerSpec

OPENAI_FORMS = [
    "http://h:8000/v1",
    "http://h:8000/v1/",
    "http://h:8000/v1/chat/completions",
    "http://h:8000/v1/chat/completions/",
    "http://h:8000/v1/completions",
    "http://h:8000/v1/embeddings",
    "http://h:8000/v1/models",
]
OLLAMA_FORMS = [
    "http://h:11434",
    "http://h:11434/",
    "http://h:11434/api/chat",
    "http://h:11434/api/generate",
    "http://h:11434/api/embed",
    "http://h:11434/api/embeddings",
    "http://h:11434/api/tags/",
]


def preset_spec(preset: str, url: str, model: str = "m") -> WorkerSpec:
    return WorkerSpec(model_name=model, preset=preset, req_url_template=url)


@pytest.mark.parametrize(
    ("preset", "url", "base"),
    [("openai", url, OPENAI_FORMS[0]) for url in OPENAI_FORMS]
    + [("ollama", url, OLLAMA_FORMS[0]) for url in OLLAMA_FORMS],
)
def test_every_url_form_is_the_base_url_and_one_identity(preset: str, url: str, base: str) -> None:
    spec = preset_spec(preset, url)
    assert spec.req_url_template == base
    assert spec.worker_id == preset_spec(preset, base).worker_id
    chat = spec.compile().operations["chat"].url
    assert chat == base + ("/chat/completions" if preset == "openai" else "/api/chat")


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1"),
        ("https://openrouter.ai/api/v1/chat/completions", "https://openrouter.ai/api/v1"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
        (
            "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions",
            "https://res.openai.azure.com/openai/deployments/gpt-4o",
        ),
        ("https://res.openai.azure.com/openai/v1/", "https://res.openai.azure.com/openai/v1"),
        ("https://api.deepinfra.com/v1/openai", "https://api.deepinfra.com/v1/openai"),
        ("http://webui:8080/api/embeddings", "http://webui:8080/api"),  # Open WebUI's /api base
        ("http://h:9/models/{MODEL_NAME}/v1/", "http://h:9/models/{MODEL_NAME}/v1"),
    ],
)
def test_real_openai_compatible_bases_are_kept(url: str, base: str) -> None:
    assert preset_spec("openai", url).req_url_template == base


@pytest.mark.parametrize(
    ("preset", "url", "said"),
    [
        ("ollama", "http://h:11434/v1", "its path ends in '/v1'; /v1 is Ollama's OpenAI"),
        ("ollama", "http://h:11434/v1/chat/completions", '"preset": "openai"'),
        ("ollama", "http://h:11434/v1/api/chat", "its path ends in '/v1'"),
        ("openai", "http://h:11434/api/chat", "its path ends in '/api/chat'; that is an Ollama"),
        ("openai", "http://h:11434/api/tags", '"preset": "ollama"'),
        ("openai", "http://h:8000/v1?api-version=2024-02-01", "cannot carry a query string"),
        ("openai", "http://h:8000/v1/chat/completions?x=1", "cannot carry a query string"),
        ("ollama", "http://h:11434/#top", "or a fragment"),
    ],
)
def test_urls_that_cannot_be_right_for_the_preset_are_refused(
    preset: str, url: str, said: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        preset_spec(preset, url)
    message = str(caught.value)
    assert said in message
    assert "req_url_template" in message


def test_template_worker_urls_are_left_as_written() -> None:
    # The URL of a template worker is its whole request URL: nothing is stripped from it.
    url = "http://h:8000/v1/chat/completions/"
    spec = WorkerSpec(model_name="m", req_url_template=url, body={"p": "{USER_PROMPT}"})
    assert spec.req_url_template == url


def record(preset: str | None, url: str, model: str = "m") -> WorkerRecord:
    if preset is None:
        spec = WorkerSpec(model_name=model, req_url_template=url, body={"p": "{USER_PROMPT}"})
    else:
        spec = preset_spec(preset, url, model)
    return WorkerRecord.from_spec(spec)


async def test_offline_and_heartbeat_by_another_url_form(redis: Redis, key_prefix: str) -> None:
    store = RegistryStore(redis, key_prefix)
    registered = record("openai", "http://h:8000/v1/chat/completions")
    await store.put(registered.model_copy(update={"ttl_s": 30.0}), replace=False)
    assert await store.heartbeat("m", "http://h:8000/v1/models") == 30.0
    gone = await store.delete("m", "http://h:8000/v1/")
    assert gone.id == registered.id
    records = (await store.snapshot()).records
    assert records == []
    with pytest.raises(UnknownWorker):
        await store.delete("m", "http://h:8000/v1/embeddings")


async def test_another_form_never_names_a_worker_of_another_kind(
    redis: Redis, key_prefix: str
) -> None:
    store = RegistryStore(redis, key_prefix)
    # A template worker whose whole URL happens to be an OpenAI base: the endpoint URL names
    # a preset worker there, not it.
    template = record(None, "http://h:8000/v1")
    ollama = record("ollama", "http://h:8000/v1/x")
    await store.put(template, replace=False)
    await store.put(ollama, replace=False)
    with pytest.raises(UnknownWorker):
        await store.delete("m", "http://h:8000/v1/chat/completions")
    with pytest.raises(UnknownWorker):
        await store.delete("m", "http://h:8000/v1/x/chat/completions")
    # The exact URL is the identity first: it names the template worker.
    assert (await store.delete("m", "http://h:8000/v1")).id == template.id
    assert (await store.delete("m", "http://h:8000/v1/x/api/chat")).id == ollama.id
    records = (await store.snapshot()).records
    assert records == []
