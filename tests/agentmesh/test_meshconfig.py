"""The mesh file: sections, the agentgateway format, the JSON Schema, refusing a bad edit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agentmesh.following import MeshFollower, Part
from agentmesh.meshconfig import parse_document, schema_text
from agentmesh.workers.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# The seed's two simplified agentgateway examples (LLM and MCP), in one file, as written there.
SEED_AGENTGATEWAY = """\
# yaml-language-server: $schema=https://agentgateway.dev/schema/config
llm:
  models:
  - name: gpt-3.5-turbo        # 模型名称,自定义
    provider: openAI            # 提供商,支持 openAI/anthropic/bedrock/gemini 等
    params:
      model: gpt-3.5-turbo     # 实际调用的模型名
      apiKey: "$OPENAI_API_KEY" # API Key,支持环境变量
mcp:
  port: 3000                    # 监听端口
  targets:                      # MCP Server 列表
  - name: server-everything     # 名称,用于日志和 UI 显示
    stdio:                      # 通过 stdio 方式连接本地 MCP Server
      cmd: npx                  # 启动命令
      args:                     # 命令参数
      - -y
      - "@modelcontextprotocol/server-everything"
"""

MESH = """\
gateway: {port: 8100, max_body_bytes: 2048}
models:
  - name: echo
    deployments: [{provider: echo, model: echo}]
mcpServers:
  time: {command: python, args: [-m, mcp_server_time]}
agents: ["agentmesh.agents.examples.echo:agent"]
servers: {nats_port: 4300}
"""


def test_the_committed_json_schema_is_the_one_the_models_generate() -> None:
    committed = (ROOT / "docs" / "mesh.schema.json").read_text()
    assert committed == schema_text(), "run: agentmesh config schema > docs/mesh.schema.json"


def test_every_section_of_a_mesh_file_is_read_by_its_own_model() -> None:
    doc = parse_document(MESH, source="mesh.yaml")
    config = doc.validate()
    assert [m.name for m in doc.llm().models] == ["echo"]  # type: ignore[union-attr]
    assert [s.name for s in doc.mcp().servers] == ["time"]  # type: ignore[union-attr]
    assert (doc.gateway().port, doc.gateway().max_body_bytes) == (8100, 2048)
    assert doc.servers().nats_port == 4300
    assert config.agents == ["agentmesh.agents.examples.echo:agent"]
    assert doc.warnings == []


def test_a_section_is_valid_without_the_variables_of_another() -> None:
    text = MESH.replace("args: [-m, mcp_server_time]", "args: ['${NO_SUCH_MESH_VAR}']")
    doc = parse_document(text, source="mesh.yaml")
    assert doc.llm() is not None  # the LLM worker does not need the MCP section's variable
    with pytest.raises(ConfigError, match="NO_SUCH_MESH_VAR is not set"):
        doc.mcp()


def test_an_unknown_top_level_key_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="unknown top-level key 'modles'"):
        parse_document("modles: []\n", source="mesh.yaml")


def test_a_bad_field_is_named_with_its_section() -> None:
    doc = parse_document("gateway: {max_body_bytes: -1}\n", source="mesh.yaml")
    with pytest.raises(ConfigError, match=r"mesh.yaml: gateway.max_body_bytes: Input should be"):
        doc.gateway()


def test_the_seeds_agentgateway_file_becomes_models_mcp_servers_and_a_gateway_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-seed")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    doc = parse_document(SEED_AGENTGATEWAY, source="config.yaml")
    models = doc.llm()
    assert models is not None
    (deployment,) = models.model("gpt-3.5-turbo").deployments  # type: ignore[union-attr]
    assert (deployment.provider, deployment.model) == ("openai", "gpt-3.5-turbo")
    assert (deployment.api_key, deployment.url) == ("sk-seed", "https://api.openai.com/v1")
    (server,) = doc.mcp().servers  # type: ignore[union-attr]
    assert (server.name, server.command) == ("server-everything", "npx")
    assert server.args == ["-y", "@modelcontextprotocol/server-everything"]
    assert doc.gateway().port == 3000
    assert doc.warnings == []


def test_agentgateway_settings_we_do_not_support_are_named_in_one_warning() -> None:
    text = SEED_AGENTGATEWAY.replace("provider: openAI", "provider: bedrock") + (
        "binds: [{port: 3000}]\nconfig: {logging: {format: json}}\n"
    )
    doc = parse_document(text, source="config.yaml")
    unsupported = [w for w in doc.warnings if "does not support" in w]
    assert len(unsupported) == 1, doc.warnings
    for name in ("binds", "config", "llm.models[0].provider=bedrock"):
        assert name in unsupported[0]
    assert doc.raw["models"] == []  # the bedrock model is skipped, not half served


async def test_an_invalid_edit_is_refused_with_one_error_naming_the_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    applied: list[Any] = []

    async def apply(config: Any) -> None:
        applied.append(config)

    follower = MeshFollower(
        parse_document(MESH, source="mesh.yaml"),
        [
            Part("models", lambda doc: doc.llm(), apply),
            Part("gateway", lambda d: d.gateway(), apply),
        ],
    )
    bad = MESH.replace("provider: echo", "provider: nope").replace("2048", "4096")
    with caplog.at_level(logging.WARNING):
        await follower.on_text(bad)

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "models.0.deployments.0.provider" in errors[0]
    assert "the running config stays in force" in errors[0]
    assert applied == []  # not even the valid gateway change: a version applies whole or not
    assert follower.current.raw["gateway"]["max_body_bytes"] == 2048
