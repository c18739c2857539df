"""The models `agentmesh up` serves from the environment: echo always, the rest when available."""

from __future__ import annotations

import asyncio

from agentmesh.broker.servers import free_port
from agentmesh.workers.llm.config import LLMConfig
from agentmesh.workers.llm.defaults import config_from_env, describe
from tests.workers.fake_ollama import FakeOllama


def nowhere() -> str:
    """An Ollama URL nothing answers at, so the tests never see this machine's Ollama."""
    return f"http://127.0.0.1:{free_port()}"


def served(config: LLMConfig) -> dict[str, tuple[str, str, str | None]]:
    return {
        m.name: (m.deployments[0].provider, m.deployments[0].model, m.deployments[0].api_key)
        for m in config.models
    }


def test_with_no_keys_and_no_ollama_only_the_labelled_echo_model_is_served() -> None:
    config = config_from_env({}, ollama_url=nowhere())
    assert served(config) == {"echo": ("echo", "echo", None)}
    assert describe(config) == ["echo (built-in, repeats your message; no key needed)"]


def test_provider_keys_in_the_environment_add_their_models() -> None:
    config = config_from_env(
        {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"}, ollama_url=nowhere()
    )
    assert served(config) == {
        "echo": ("echo", "echo", None),
        "gpt-4.1-mini": ("openai", "gpt-4.1-mini", "sk-o"),
        "gpt-4.1": ("openai", "gpt-4.1", "sk-o"),
        "claude-haiku-4-5": ("anthropic", "claude-haiku-4-5", "sk-a"),
        "claude-sonnet-4-5": ("anthropic", "claude-sonnet-4-5", "sk-a"),
    }
    assert config.model("gpt-4.1").deployments[0].url == "https://api.openai.com/v1"
    assert describe(config)[1:] == [
        "gpt-4.1-mini, gpt-4.1 (openai)",
        "claude-haiku-4-5, claude-sonnet-4-5 (anthropic)",
    ]


def test_an_empty_key_counts_as_unset_and_a_base_url_is_honoured() -> None:
    config = config_from_env(
        {
            "OPENAI_API_KEY": "sk-o",
            "OPENAI_BASE_URL": "http://proxy:4000/v1",
            "ANTHROPIC_API_KEY": "",
        },
        ollama_url=nowhere(),
    )
    assert [m.name for m in config.models] == ["echo", "gpt-4.1-mini", "gpt-4.1"]
    assert config.model("gpt-4.1-mini").deployments[0].url == "http://proxy:4000/v1"


async def test_a_running_ollama_adds_one_model_per_local_model() -> None:
    ollama = await FakeOllama(models=("qwen3:8b", "llama3.2:latest")).start()
    try:
        # Off the loop: the probe is a blocking call, and this loop runs the fake server.
        config = await asyncio.to_thread(config_from_env, {}, ollama_url=ollama.base_url)
    finally:
        await ollama.stop()
    assert served(config) == {
        "echo": ("echo", "echo", None),
        "llama3.2:latest": ("ollama", "llama3.2:latest", None),
        "qwen3:8b": ("ollama", "qwen3:8b", None),
    }
    assert config.model("qwen3:8b").deployments[0].url == ollama.base_url
