"""Splitting Kimi's output into reasoning, answer and tool calls, at the end or while it streams.

Input is decoded text with special tokens spelled out (`decode(skip_special=False)`), minus the final stop token.
Layout: [<think>] reasoning </think> answer [<|tool_calls_section_begin|> calls <|tool_calls_section_end|>]; a
tool-calls section may also follow the reasoning directly (no </think>): it ends the reasoning, and any text after
the section is answer. One state machine serves both uses, so a streamed split always adds up to the one-shot split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CALL_BEGIN, CALL_ARGS, CALL_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for; arguments is None when raw_arguments is not a JSON object."""

    id: str  # as the model wrote it, e.g. "functions.get_weather:0"
    name: str  # "get_weather"
    arguments: dict[str, Any] | None
    raw_arguments: str


@dataclass(frozen=True, slots=True)
class AssistantOutput:
    """A finished assistant turn; finished_thinking is False when the output ended inside <think> (reasoning cut off,
    not closed by </think> or by a tool-calls section)."""

    reasoning: str
    content: str
    tool_calls: tuple[ToolCall, ...]
    finished_thinking: bool


def parse_output(text: str, started_in_think: bool) -> AssistantOutput:
    """Split a whole output; started_in_think: the prompt ended in <think> (ChatFormat.prompt_ends_in_thinking)."""
    stream = ReasoningStream(started_in_think)
    stream.push(text)
    stream.finish()
    return stream.output()


class ReasoningStream:
    """Incremental splitter: push(text) gives (reasoning_delta, content_delta); tool-call sections are held back."""

    def __init__(self, started_in_think: bool) -> None:
        # start: a model whose prompt did not end in <think> may still open one, after optional whitespace
        self._state = "think" if started_in_think else "start"
        self._buf = ""  # text not yet given out: a possible partial marker, or an unfinished tool section
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._sections: list[str] = []
        self._finished_thinking = not started_in_think
        self._done = False

    def push(self, text: str) -> tuple[str, str]:
        """Split newly decoded text; a marker cut across two pushes is held until it is complete."""
        if self._done:
            raise RuntimeError("ReasoningStream.push after finish(); make a new stream for the next output")
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, str]:
        """The held-back tail at the end of the output (an unterminated tool section still counts as one)."""
        out = self._drain(final=True)
        if self._state == "tools":
            self._sections.append(self._buf)
        self._buf, self._done = "", True
        return out

    def output(self) -> AssistantOutput:
        """The whole split so far (complete after finish())."""
        calls = tuple(call for section in self._sections for call in parse_tool_calls(section))
        return AssistantOutput("".join(self._reasoning), "".join(self._content), calls, self._finished_thinking)

    def _drain(self, final: bool) -> tuple[str, str]:
        reasoning, content = [], []
        while True:
            buf, state = self._buf, self._state
            if state == "start":
                head = buf.lstrip()
                if head.startswith(THINK_OPEN):
                    self._buf, self._state, self._finished_thinking = head[len(THINK_OPEN) :], "think", False
                elif (not head or THINK_OPEN.startswith(head)) and not final:
                    break  # whitespace or a partial "<think" so far: undecided
                else:
                    self._state = "content"
            elif state == "think":
                # K2.5 may call tools straight from its reasoning, with no </think>: the section then ends the
                # reasoning too (finished, not cut off), and its calls are parsed as after </think>.
                end, marker, nxt = _first(buf, (THINK_CLOSE, "content"), (SECTION_BEGIN, "tools"))
                if end >= 0:
                    reasoning.append(buf[:end])
                    self._buf, self._state, self._finished_thinking = buf[end + len(marker) :], nxt, True
                else:
                    keep = 0 if final else max(_partial(buf, THINK_CLOSE), _partial(buf, SECTION_BEGIN))
                    reasoning.append(buf[: len(buf) - keep])
                    self._buf = buf[len(buf) - keep :]
                    break
            elif state == "content":
                begin = buf.find(SECTION_BEGIN)
                if begin >= 0:
                    content.append(buf[:begin])
                    self._buf, self._state = buf[begin + len(SECTION_BEGIN) :], "tools"
                else:
                    keep = 0 if final else _partial(buf, SECTION_BEGIN)
                    content.append(buf[: len(buf) - keep])
                    self._buf = buf[len(buf) - keep :]
                    break
            else:  # tools: hold the section until it ends
                end = buf.find(SECTION_END)
                if end < 0:
                    break
                self._sections.append(buf[:end])
                self._buf, self._state = buf[end + len(SECTION_END) :], "content"
        r, c = "".join(reasoning), "".join(content)
        self._reasoning.append(r)
        self._content.append(c)
        return r, c


def parse_tool_calls(section: str) -> list[ToolCall]:
    """The calls in one tool-calls section; a call cut off before <|tool_call_end|> keeps what it has."""
    calls = []
    for chunk in section.split(CALL_BEGIN)[1:]:
        chunk = chunk.split(CALL_END, 1)[0]
        call_id, _, raw = chunk.partition(CALL_ARGS)
        call_id = call_id.strip()
        try:
            args = json.loads(raw)
        except ValueError:  # invalid JSON is the caller's to report, with raw_arguments
            args = None
        calls.append(ToolCall(call_id, tool_name(call_id), args if isinstance(args, dict) else None, raw))
    return calls


def tool_name(call_id: str) -> str:
    """The function name in a Kimi call id (functions.NAME:IDX): functions.get_weather:0 -> get_weather."""
    base, _, idx = call_id.rpartition(":")
    name = base if base and idx.isdigit() else call_id
    return name.removeprefix("functions.")


def _first(text: str, *markers: tuple[str, str]) -> tuple[int, str, str]:
    """(position, marker, next state) of the earliest marker in text; position -1 when none occurs."""
    found = [(text.find(m), m, nxt) for m, nxt in markers if m in text]
    return min(found) if found else (-1, "", "")


def _partial(text: str, marker: str) -> int:
    """Length of the longest end of text that is a proper beginning of marker (it may be completed later)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
