"""Prompt templates, skills with progressive disclosure, sessions, the built-in tools and the
blocking API, on a scripted model behind a real LLM worker."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentmesh.agents.runtime import (
    EventType,
    Fences,
    InferenceRequest,
    Message,
    PromptTemplateManager,
    Runtime,
    SkillManager,
    ToolRegistry,
)
from agentmesh.agents.runtime.builtins import check_public
from agentmesh.broker.settings import Settings
from agentmesh.schemas.errors import Forbidden, InvalidMessage, NotFound
from tests.runtime.conftest import MakeRuntime, StartModel
from tests.runtime.scripted_llm import Reply, last_message, plan, tool_names


async def test_a_template_is_rendered_from_the_message_arguments(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(plan(Reply(content="summary")))
    templates = PromptTemplateManager()
    template = templates.create(
        name="summarize", content="Please summarize the following text in {{language}}:\n\n{{text}}"
    )
    runtime = make_runtime(prompt_template_manager=templates)
    for reference in ("summarize", template.id):  # by name or by id
        result = await runtime.ainfer(
            InferenceRequest(
                model_id="m",
                messages=[
                    Message(
                        role="user",
                        prompt_template=reference,
                        arguments={"language": "English", "text": "a long article"},
                    )
                ],
            )
        )
        assert result.content == "summary"
        sent = upstream.requests[-1]["messages"][-1]["content"]
        assert sent == "Please summarize the following text in English:\n\na long article"


async def test_a_missing_template_variable_is_an_error_naming_it(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(plan(Reply(content="x")))
    templates = PromptTemplateManager()
    templates.create(name="t", content="{{a}} and {{ b }} and {{a}}")
    runtime = make_runtime(prompt_template_manager=templates)
    message = Message(role="user", prompt_template="t", arguments={"a": 1})
    with pytest.raises(InvalidMessage) as caught:
        await runtime.ainfer(InferenceRequest(model_id="m", messages=[message]))
    assert caught.value.details["missing"] == ["b"] and "b" in caught.value.message
    with pytest.raises(NotFound, match="nosuch"):
        await runtime.ainfer(
            InferenceRequest(
                model_id="m", messages=[Message(role="user", prompt_template="nosuch")]
            )
        )
    assert upstream.requests == []


def write_skill(root: Path) -> Path:
    skill = root / "sales_report"
    (skill / "scripts").mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        textwrap.dedent(
            """\
            ---
            name: sales-report
            description: Query the latest sales data and write a report.
            ---
            # How to report sales
            SECRET-STEP: read scripts/query.sql and run it.
            """
        )
    )
    (skill / "scripts" / "query.sql").write_text("SELECT region, SUM(amount) FROM sales;")
    return skill


async def test_a_skill_is_disclosed_only_when_the_model_selects_it(
    start_model: StartModel, make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "user":
            return Reply(tool_calls=[("skill_sales-report", {})])
        if "SECRET-STEP" in last["content"]:
            return Reply(
                tool_calls=[
                    ("read_skill_file", {"skill": "sales-report", "path": "scripts/query.sql"})
                ]
            )
        return Reply(content=f"ran: {last['content']}")

    upstream = await start_model(brain)
    tools = ToolRegistry()
    skills = SkillManager(tools)
    config = skills.load_skill(write_skill(tmp_path))
    runtime = make_runtime(tool_registry=tools, skill_manager=skills)
    events = [
        e
        async for e in runtime.ainfer_stream(
            InferenceRequest(
                model_id="m",
                tool_ids=[config.tool_id],
                text="Help me query the latest data",
                max_tool_rounds=20,
            )
        )
    ]
    first, second, third = upstream.requests
    # Round one: the summary only, never the body.
    assert tool_names(first) == ["skill_sales-report"]
    assert "latest sales data" in first["tools"][0]["function"]["description"]
    assert "SECRET-STEP" not in str(first)
    # Selected: the whole SKILL.md and its file list, and the file tool from then on.
    assert "SECRET-STEP" in second["messages"][-1]["content"]
    assert "scripts/query.sql" in second["messages"][-1]["content"]
    assert tool_names(second) == ["skill_sales-report", "read_skill_file"]
    assert third["messages"][-1]["content"] == "SELECT region, SUM(amount) FROM sales;"
    assert any(e.type is EventType.SKILL for e in events)


async def test_a_skill_file_outside_its_directory_is_refused(
    start_model: StartModel, make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("top secret")
    upstream = await start_model(
        plan(
            Reply(tool_calls=[("skill_sales-report", {})]),
            Reply(
                tool_calls=[
                    ("read_skill_file", {"skill": "sales-report", "path": "../../secret.txt"})
                ]
            ),
            Reply(content="ok"),
        )
    )
    tools = ToolRegistry()
    skills = SkillManager(tools)
    skills.load_skill(write_skill(tmp_path / "skills"))
    runtime = make_runtime(tool_registry=tools, skill_manager=skills)
    await runtime.ainfer(InferenceRequest(model_id="m", tool_ids=["skill_sales-report"], text="x"))
    refused = upstream.requests[2]["messages"][-1]["content"]
    assert "has no file" in refused and "top secret" not in refused


async def test_a_session_keeps_the_conversation_between_inferences(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(plan(Reply(content="Hello Ada"), Reply(content="You are Ada")))
    runtime = make_runtime()
    first = await runtime.ainfer(InferenceRequest(model_id="m", text="I am Ada", session_id="new"))
    assert first.session_id and first.session_id.startswith("sess-")
    second = await runtime.ainfer(
        InferenceRequest(model_id="m", text="Who am I?", session_id=first.session_id)
    )
    assert second.content == "You are Ada"
    sent = [(m["role"], m["content"]) for m in upstream.requests[1]["messages"]]
    assert sent == [
        ("user", "I am Ada"),
        ("assistant", "Hello Ada"),
        ("user", "Who am I?"),
    ]
    # The result holds this inference's messages, not the history.
    assert [m.content for m in second.messages] == ["Who am I?", "You are Ada"]
    with pytest.raises(NotFound):
        await runtime.ainfer(InferenceRequest(model_id="m", text="x", session_id="sess-nosuch"))


async def test_bash_is_off_unless_enabled_and_then_runs_fenced(
    start_model: StartModel, make_runtime: MakeRuntime, fences: Fences
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=last["content"])
        return Reply(
            tool_calls=[("bash", {"command": "pwd; echo $AGENTMESH_PREFIX; seq 1 100000"})]
        )

    await start_model(brain)
    off = make_runtime()
    result = await off.ainfer(InferenceRequest(model_id="m", tool_ids=["bash"], text="run"))
    assert "FORBIDDEN" in result.content or "not enabled" in result.content
    fences.bash_enabled = True
    fences.output_cap = 1000
    on = make_runtime(fences=fences)
    result = await on.ainfer(
        InferenceRequest(model_id="m", tool_ids=["bash"], text="run", session_id="new")
    )
    lines = result.content.splitlines()
    assert lines[0] == "exit code: 0"
    assert lines[1] == str((fences.workdir_root / result.session_id).resolve())
    assert lines[2] == ""  # the process's environment is not passed on
    assert "[output truncated:" in result.content and len(result.content) < 1200


async def test_a_bash_command_past_its_timeout_is_killed(
    start_model: StartModel, make_runtime: MakeRuntime, fences: Fences
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=last["content"])
        return Reply(tool_calls=[("bash", {"command": "sleep 30 & sleep 30; echo never"})])

    await start_model(brain)
    fences.bash_enabled = True
    fences.bash_timeout = 0.5
    runtime = make_runtime(fences=fences)
    result = await runtime.ainfer(InferenceRequest(model_id="m", tool_ids=["bash"], text="run"))
    assert "TIMEOUT" in result.content and "never" not in result.content


async def test_fetch_refuses_loopback_and_private_addresses_unless_allowed() -> None:
    for url in ("http://127.0.0.1:8001/", "http://localhost/", "http://10.1.2.3/", "http://[::1]/"):
        with pytest.raises(Forbidden):
            await check_public(url, allow_private=False)
    with pytest.raises(InvalidMessage):
        await check_public("file:///etc/passwd", allow_private=False)
    await check_public("http://127.0.0.1/", allow_private=True)


async def test_fetch_through_the_loop_reports_the_refusal_to_the_model(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(
        plan(Reply(tool_calls=[("fetch", {"url": "http://127.0.0.1:9/"})]), Reply(content="ok"))
    )
    await make_runtime().ainfer(InferenceRequest(model_id="m", tool_ids=["fetch"], text="get"))
    assert "private or local address" in upstream.requests[1]["messages"][-1]["content"]


async def test_the_blocking_api_works_from_plain_code(
    start_model: StartModel, settings: Settings
) -> None:
    await start_model(plan(Reply(thinking="hmm", content="Python 3.14")))

    def program() -> tuple[str, str]:
        runtime = Runtime(settings=settings)
        try:
            result = runtime.infer(InferenceRequest(model_id="m", text="latest python?"))
            streamed = ""
            for msg in runtime.infer_stream(InferenceRequest(model_id="m", text="again")):
                if msg.content:
                    streamed += msg.content
            return result.messages[-1].content or "", streamed
        finally:
            runtime.close()

    assert await asyncio.to_thread(program) == ("Python 3.14", "Python 3.14")


async def test_the_blocking_api_inside_an_event_loop_says_what_to_use(settings: Settings) -> None:
    runtime = Runtime(settings=settings)
    try:
        with pytest.raises(RuntimeError, match="ainfer"):
            runtime.infer(InferenceRequest(model_id="m", text="x"))
    finally:
        await asyncio.to_thread(runtime.close)
