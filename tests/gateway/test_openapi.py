"""The OpenAPI contract against a live gateway: schemathesis with every check finds nothing.

The gateway runs with auth on, and the fuzzer signs in with an admin key, so the protected routes
answer more than 401. Not in the document, so not fuzzed: the WebSocket route (`/ws/...`, no HTTP
operation to describe) and `/mcp` (a raw ASGI route speaking JSON-RPC, tested in test_mcp_endpoint).
The LLM routes' streams are covered too: without a worker they answer 404 before any event.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import Status, events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER
from schemathesis.specs.openapi.formats import unregister_string_format

from agentmesh.gateway.state import GatewayConfig
from tests.gateway.conftest import StartGateway

ADMIN_TOKEN = "openapi-test-admin-token"
SEED = 20260310  # the same requests on every run: a failure here reproduces
MAX_EXAMPLES = 5  # per operation and phase (the coverage phase adds its own, every run)
DEADLINE = 150.0  # seconds, a bound on a hung run: one pass takes 40-55 on a quiet 2-core box
TASK_STATUSES = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
INFER_STATUSES = ["2xx", "3xx", "4xx", "503", "504"]
DEFINITION_STATUSES = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx"]
DEFINITION_CHECKS = [
    ("PUT", "/v1/agents/{agent_id}"),
    ("PUT", "/v1/tools/{tool_id}"),
    ("PUT", "/v1/models/{model_id}"),
    ("POST", "/v1/tools/skill"),
]
# `printable` (CreateKeyRequest.name) is Python's str.isprintable, which no pattern spells.
PRINTABLE = st.text(
    st.characters(categories=["L", "M", "N", "P", "S"], include_characters=" "),
    min_size=1,
    max_size=64,
).filter(str.strip)


@pytest.mark.timeout(DEADLINE + 60)  # the run's own bound, then the gateway's stop
async def test_schemathesis_with_every_check_finds_nothing(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(config=GatewayConfig(auth=True, admin_token=ADMIN_TOKEN))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        created = await http.post(
            "/gateway/keys",
            json={"name": "fuzzer", "scopes": ["admin"]},
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    key = created.json()
    # The fuzzer's own calls are synchronous (requests): in a thread, while the loop serves.
    problems = await asyncio.to_thread(fuzz, gateway.url, key["key"], key["key_id"])
    assert not problems, "\n\n".join(problems)


async def test_a_405_names_every_method_the_path_serves(http: httpx.AsyncClient) -> None:
    r = await http.put("/gateway/keys")  # GET and POST /gateway/keys are two routes
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


async def test_a_json_body_that_is_not_utf8_is_refused_not_a_500(http: httpx.AsyncClient) -> None:
    for path in ("/gateway/send", "/v1/chat/completions"):
        r = await http.post(
            path, content=b"\xff\xfe{", headers={"content-type": "application/json"}
        )
        assert r.status_code in (400, 422), (path, r.text)


def fuzz(url: str, key: str, key_id: str) -> list[str]:
    """Run every schemathesis phase and check once; what it found, as readable lines."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {key}"},
            "workers": 1,
            "request-timeout": 10,
            "cache": {"enabled": False},
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "checks": {
                "enabled": True,  # `--checks all`
                # 504 TIMEOUT is the documented answer to a deadline the caller set too short
                # (the fuzzer draws `timeout: 5e-324`); every other 5xx is a failure.
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "504"]},
            },
            "operations": [
                {
                    # A task's deadline must be in the future (else 400): no schema can say so.
                    "include-path": "/v1/tasks",
                    "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"expected-statuses": TASK_STATUSES}},
                },
                {
                    # No runtime worker runs here: an inference is the documented 503
                    # UNAVAILABLE ("no runtime worker is running"), tested in test_runtime_api.
                    "include-path-regex": "^/v1/infer(/stream)?$",
                    "checks": {"not_a_server_error": {"expected-statuses": INFER_STATUSES}},
                },
                {
                    # A live feed, ended only by the replica's shutdown: its first event.
                    "include-path": "/v1/sessions/events",
                    "max-stream-events": 1,
                },
                *(
                    # A body's id must be the path's, and a skill's files must hold a SKILL.md
                    # with a front matter (else 400): no schema can say so.
                    {
                        "include-path": path,
                        "include-method": method,
                        "checks": {
                            "positive_data_acceptance": {"expected-statuses": DEFINITION_STATUSES}
                        },
                    }
                    for method, path in DEFINITION_CHECKS
                ),
            ],
        }
    )

    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        # The stateful phase revokes the keys it lists; not the one it signs in with.
        if (case.path_parameters or {}).get("key_id") == key_id:
            case.path_parameters["key_id"] = "z" * len(key_id)

    schemathesis.openapi.format("printable", PRINTABLE)
    schemathesis.hook(before_call)
    try:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
        return _problems(from_schema(schema).execute(), time.monotonic() + DEADLINE)
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(before_call)
        unregister_string_format("printable")


def _problems(stream: Any, deadline: float) -> list[str]:
    found: list[str] = []
    statuses: dict[str, set[int]] = defaultdict(set)  # by operation
    for event in stream:
        if time.monotonic() > deadline and not stream.stop_event.is_set():
            stream.stop()
            found.append(f"the run did not end within {DEADLINE:.0f} s")
        if isinstance(event, events.ScenarioFinished):
            for case_id, interaction in event.recorder.interactions.items():
                if interaction.response is not None:
                    label = event.recorder.cases[case_id].value.operation.label
                    statuses[label].add(interaction.response.status_code)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.append(
                            f"{failure.operation}: {failure.title} ({check.name})\n"
                            f"{failure.message}\n{check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            found.append(f"schemathesis error: {event!r}")
    # Every check passes on a gateway that answers 401 to all: the key must have worked, so
    # every GET without a path parameter (all list or status routes) answered 200 at least once.
    found += [
        f"{label} never answered 200 (the fuzzer was not signed in?): {sorted(seen)}"
        for label, seen in statuses.items()
        if label.startswith("GET ") and "{" not in label and 200 not in seen
    ]
    return list(dict.fromkeys(found))  # a failure is reported once per scenario it shrank to
