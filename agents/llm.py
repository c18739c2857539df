"""Calling models over the bus: `await mesh.llm("gpt-4.1-mini").chat(messages)`.

Requests and replies are OpenAI chat-completions shaped dicts, whatever the provider behind
the alias; LLM workers translate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

from agentmesh.broker.bus import Bus
from agentmesh.broker.types import Kind
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import ModelNotFound, NoResponders


class LLM:
    """One model alias. Get it from `MeshClient.llm(alias)` or `ctx.llm(alias)`."""

    def __init__(self, bus: Bus, alias: str) -> None:
        self.bus = bus
        self.alias = alias
        self.subject = bus.subjects.llm(alias)  # validates (escapes) the alias

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        stream: bool = False,
        timeout: float | None = None,
        **params: Any,
    ) -> Any:
        """A `chat.completion` dict; with `stream=True`, an async iterator of chunk dicts.

        Args:
            messages: OpenAI-style messages (`{"role": ..., "content": ...}`).
            params: any other chat-completions field (`tools`, `temperature`, ...).

        Raises:
            ModelNotFound: no worker serves the alias now.
            MeshError: what the worker reports (RATE_LIMIT, UNAVAILABLE, INVALID_MESSAGE, ...).
        """
        body = pack({**params, "model": self.alias, "messages": messages})
        if stream:
            return self._stream(body, timeout)
        with self._calling():
            frame = await self.bus.request(self.subject, body, timeout=timeout)
        return unpack(frame.data)

    async def _stream(self, body: bytes, timeout: float | None) -> AsyncIterator[dict[str, Any]]:
        with self._calling():
            async with aclosing(self.bus.stream(self.subject, body, timeout=timeout)) as frames:
                async for frame in frames:
                    if frame.kind is Kind.CHUNK:
                        yield unpack(frame.data)

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """Around a bus call to the model: `NoResponders` means no worker serves the alias."""
        try:
            yield
        except NoResponders:
            raise ModelNotFound(
                f"no LLM worker serves model '{self.alias}'", details={"model": self.alias}
            ) from None
