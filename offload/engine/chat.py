"""One assistant reply to a conversation: the prompt rendered, the output streamed as reasoning and content."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from offload.engine.chat_format import ChatFormat
from offload.engine.generate import Generation, GenerationResult
from offload.engine.reasoning import AssistantOutput, ReasoningStream
from offload.engine.sampling import SamplingParams


class Generates(Protocol):
    """What a chat turn needs of the engine: its chat format and its generate call."""

    chat_format: ChatFormat

    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams | None = None,
        max_tokens: int = 256,
        stop_strings: Sequence[str] = (),
        ignore_eos: bool = False,
    ) -> Generation: ...


class ChatTurn:
    """Iterate for (reasoning_delta, content_delta) pairs; `output` (reasoning, content, tool calls) and `result`
    (ids, timings, finish reason) are complete afterwards."""

    def __init__(
        self,
        engine: Generates,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        thinking: bool = True,
        sampling: SamplingParams | None = None,
        max_tokens: int = 1024,
        stop: Sequence[str] = (),
        prompt_ids: Sequence[int] | None = None,
    ) -> None:
        """`prompt_ids`: the conversation already rendered (chat_format.encode of the same messages, tools and
        thinking), when the caller has checked it; otherwise it is rendered here."""
        if prompt_ids is None:
            prompt_ids = engine.chat_format.encode(messages, tools, thinking=thinking)
        self.prompt_ids = list(prompt_ids)
        self.generation: Generation = engine.generate(self.prompt_ids, sampling, max_tokens, stop)
        self._split = ReasoningStream(engine.chat_format.prompt_ends_in_thinking(self.prompt_ids))
        self._done = False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for piece in self.generation:
            reasoning, content = self._split.push(piece)
            if reasoning or content:
                yield reasoning, content
        reasoning, content = self._split.finish()
        self._done = True
        if reasoning or content:
            yield reasoning, content

    def run(self) -> AssistantOutput:
        """Run to the end without streaming."""
        for _ in self:
            pass
        return self.output

    def cancel(self) -> None:
        """Stop after the current token (thread-safe)."""
        self.generation.cancel()

    @property
    def output(self) -> AssistantOutput:
        if not self._done:
            raise RuntimeError("the turn has not finished; iterate it or call run() first")
        return self._split.output()

    @property
    def result(self) -> GenerationResult:
        return self.generation.result
