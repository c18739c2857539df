"""A replica's live options: a new body limit and CORS apply to the next request."""

from __future__ import annotations

import logging

import httpx
import pytest

from agentmesh.following import gateway_part
from agentmesh.gateway.config import GatewaySection
from agentmesh.gateway.state import GatewayConfig
from tests.gateway.conftest import StartGateway

ORIGIN = "https://app.example.com"


async def test_a_lowered_body_limit_refuses_the_next_request_with_413(
    start_gateway: StartGateway,
) -> None:
    config = GatewayConfig()
    replica = await start_gateway(config=config)
    body = {"model": "nope", "messages": [{"role": "user", "content": "x" * 200}]}
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 404

        changed = config.apply(GatewayConfig(max_body_bytes=100))

        reply = await http.post("/v1/chat/completions", json=body)
    assert changed == ["max_body_bytes"]
    assert reply.status_code == 413
    assert reply.json()["error"]["details"]["limit"] == 100


async def test_cors_added_by_a_new_gateway_section_answers_preflights_at_once(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    base = GatewayConfig()
    config = GatewayConfig()
    started = GatewaySection()
    replica = await start_gateway(config=config)
    part = gateway_part(config, base, started)
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST"}
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        before = await http.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in before.headers

        section = GatewaySection.model_validate(
            {"port": 9999, "cors": {"allow_origins": [ORIGIN], "allow_credentials": True}}
        )
        with caplog.at_level(logging.INFO):
            await part.apply(section)

        after = await http.options("/v1/chat/completions", headers=preflight)
        models = await http.get("/v1/models", headers={"origin": ORIGIN})
    assert after.status_code == 200
    assert after.headers["access-control-allow-origin"] == ORIGIN
    assert after.headers["access-control-allow-credentials"] == "true"
    assert models.headers["access-control-allow-origin"] == ORIGIN
    # A port cannot change under a running replica: said so, once.
    restart = [r.getMessage() for r in caplog.records if "restart the gateway" in r.getMessage()]
    assert restart == ["gateway.port changed (8001 → 9999): restart the gateway to apply it"]
