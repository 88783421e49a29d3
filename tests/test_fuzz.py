"""Fuzz the whole API from its own OpenAPI document with schemathesis, against a server with tiny models.

Every operation in ``GET /openapi.json`` (but pulls, which would reach the network) gets valid and invalid
requests; no answer may be a 5xx, every error must match the error schema the route declares (OpenAI's,
Ollama's or Anthropic's), no answer may carry traceback text, and the server must still answer afterwards.
Bounded: a few examples per operation, so the module runs in about a minute on a 2-core machine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from test_api_support import EMBED, MODEL, REPLY, ServerProcess, chat_body

pytest_plugins = ["test_api_support"]  # its api_home fixture

EXAMPLES = 15
#: The OpenAI roots are four paths to the same handlers: fuzz two of them (the others only differ by path).
SKIPPED_PATHS = r"^/engines/(v1|llama\.cpp/v1)/"


@pytest.fixture(scope="module")
def server(api_home: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(api_home)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def document(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(server.url + "openapi.json", timeout=30)
    assert response.status_code == 200
    doc = response.json()
    assert isinstance(doc, dict)
    return doc


def test_openapi_document_describes_every_route(document: dict[str, Any], server: ServerProcess) -> None:
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": server.url.rstrip("/")}]
    paths = document["paths"]
    for path, verb in [
        ("/v1/chat/completions", "post"),
        ("/engines/{model}/v1/chat/completions", "post"),
        ("/v1/embeddings", "post"),
        ("/models/{ref}", "delete"),
        ("/engines/ps", "get"),
        ("/openapi.json", "get"),
    ]:
        operation = paths[path][verb]
        assert operation["responses"]["default"]["content"]["application/json"]["schema"]["required"] == ["error"]
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["required"] == ["messages"]
    # Every described GET route reaches its handler (not the catch-all's "Unknown route" 404).
    for path, verbs in paths.items():
        concrete = path.replace("{model}", MODEL).replace("{ref}", MODEL)
        if "get" in verbs:
            answer = httpx.get(server.url + concrete.lstrip("/"), timeout=60)
            assert answer.status_code < 500 and "Unknown route" not in answer.text, (path, answer.text)


def _schema(document: dict[str, Any]) -> Any:
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(max_examples=EXAMPLES, allow_x00=False)
    return schema


def _steered(case: Any, use_real_model: bool) -> Any:
    """Half the bodies name a stored model, so generation and embeddings really run."""
    if use_real_model and isinstance(case.body, dict):
        case.body["model"] = EMBED if "embed" in case.path else MODEL
        for key in ("max_tokens", "max_completion_tokens", "num_predict"):
            if isinstance(case.body.get(key), int) and case.body[key] > 64:
                case.body[key] = 64  # the tiny model's context; bigger values are fuzzed unsteered
    return case


def no_traceback(ctx: Any, response: Any, case: Any) -> bool | None:
    text = response.text if isinstance(response.text, str) else ""
    if "Traceback (most recent call last)" in text or 'File "/' in text:
        raise AssertionError(f"traceback text in the answer to {case.method} {case.path}: {text[:300]}")
    return None


def test_fuzz_every_operation(document: dict[str, Any], server: ServerProcess) -> None:
    schema = _schema(document)
    operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        raw = document["paths"][operation.path][operation.method.lower()]
        if raw.get("x-network") or re.match(SKIPPED_PATHS, operation.path):
            continue
        operations.append(operation)
    assert len(operations) >= 30
    base_url = server.url.rstrip("/")
    seen: dict[str, int] = {}
    # Destructive operations (purge, delete, unload) last, so the others meet loaded, stored models.
    operations.sort(key=lambda op: bool(document["paths"][op.path][op.method.lower()].get("x-destructive")))
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @given(case=strategy, real=st.booleans())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any, real: bool) -> None:
            case = _steered(case, real)
            response = case.call(base_url=base_url, timeout=60)
            seen[str(response.status_code)] = seen.get(str(response.status_code), 0) + 1
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, no_traceback])

        run()
    assert not any(code.startswith("5") for code in seen), seen
    assert "200" in seen and "400" in seen, seen
    # Still healthy: answers, generates, and its log shows no unhandled exception.
    assert httpx.get(server.url + "health", timeout=30).json() == {"status": "ok"}
    chat = httpx.post(server.url + "v1/chat/completions", json=chat_body(), timeout=60)
    assert chat.status_code in (200, 404), chat.text  # 404 when the fuzzer removed the model last
    if chat.status_code == 200:
        assert chat.json()["choices"][0]["message"]["content"] == REPLY
    assert server.proc.poll() is None
    assert "Traceback" not in server.log(), server.log()[-3000:]
    json.loads(httpx.get(server.url + "engines/ps", timeout=30).text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} in /engines/ps")
