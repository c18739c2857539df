"""mcp.json parsing: the mcpServers shape other MCP clients use, and clear errors."""

from __future__ import annotations

import json
import sys

import pytest

from agentmesh.workers.config import ConfigError
from agentmesh.workers.mcp.config import MCPConfig


def test_the_common_shapes():
    config = MCPConfig.parse(
        {
            "mcpServers": {
                "time": {"command": "python", "args": ["-m", "mcp_server_time"]},
                "remote": {"url": "http://127.0.0.1:9000/mcp", "headers": {"A": "${TOKEN}"}},
                "old": {"url": "http://127.0.0.1:9001/sse", "type": "sse", "timeout": 5},
                "vscode": {"type": "http", "url": "https://example.com/mcp"},
                "off": {"command": "x", "disabled": True},
                "claude": {"command": "npx", "args": ["-y", "pkg"], "autoApprove": ["x"]},
            },
            "inputs": [],  # VS Code's extra top-level key is ignored
        },
        environ={"TOKEN": "Bearer s3cret"},
    )
    servers = {s.name: s for s in config.servers}
    assert set(servers) == {"time", "remote", "old", "vscode", "claude"}  # "off" is disabled
    assert servers["time"].transport == "stdio"
    assert servers["time"].executable == sys.executable  # python: the worker's interpreter
    assert servers["claude"].executable == "npx"
    assert servers["remote"].transport == "http"
    assert servers["remote"].headers == {"A": "Bearer s3cret"}
    assert servers["old"].transport == "sse" and servers["old"].timeout == 5
    assert servers["vscode"].transport == "http"
    assert servers["time"].timeout == 60


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"servers": {}}, 'expected {"mcpServers"'),
        ({"mcpServers": []}, "mcpServers"),
        ({"mcpServers": {}}, "no enabled server"),
        ({"mcpServers": {"a.b": {"command": "x"}}}, "invalid server name 'a.b'"),
        ({"mcpServers": {"a*": {"command": "x"}}}, "invalid server name 'a*'"),
        ({"mcpServers": {"a": {"args": []}}}, "mcpServers.a: a stdio server needs a 'command'"),
        ({"mcpServers": {"a": {"url": "ftp://x"}}}, "mcpServers.a.url"),
        ({"mcpServers": {"a": {"url": "http://x", "type": "ws"}}}, "unknown transport 'ws'"),
        ({"mcpServers": {"a": {"type": "sse"}}}, "an sse server needs a 'url'"),
        ({"mcpServers": {"a": {"command": "x", "timeout": 0}}}, "mcpServers.a.timeout"),
        ({"mcpServers": {"a": {"command": "${NOPE_NOT_SET}"}}}, "NOPE_NOT_SET is not set"),
    ],
)
def test_bad_configs_say_what_is_wrong(raw, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("{", r"\{")):
        MCPConfig.parse(raw, environ={})


def test_load_reads_json_files(tmp_path):
    good = tmp_path / "mcp.json"
    good.write_text(json.dumps({"mcpServers": {"t": {"command": "python"}}}))
    assert [s.name for s in MCPConfig.load(good).servers] == ["t"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        MCPConfig.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        MCPConfig.load(tmp_path / "missing.json")
