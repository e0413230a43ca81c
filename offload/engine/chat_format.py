"""Kimi's chat format: a conversation becomes prompt ids, by the checkpoint's chat template or a built-in renderer.

Only the format's own marker text may become special ids. Message text (content, reasoning, names, tool-call ids
and arguments) is always encoded as plain text, so a user who types "<|im_end|>" gets those characters, never the
token. Text between two special tokens is encoded as one run, exactly as encoding the whole rendered string would,
so separating message text from template text never changes the BPE merges at their boundary.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from offload.engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
ROLES = ("system", "user", "assistant", "tool")
_HEADER = {"system": "<|im_system|>", "user": "<|im_user|>", "assistant": "<|im_assistant|>", "tool": "<|im_system|>"}
Message = Mapping[str, Any]


class ChatFormatError(ValueError):
    """A conversation or chat template that cannot be rendered; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Piece:
    """Rendered text: trusted template text may hold special tokens; message text never does."""

    text: str
    trusted: bool


class ChatFormat:
    """Renders conversations for one tokenizer, by the checkpoint's chat template or the built-in Kimi renderer."""

    def __init__(self, tokenizer: Tokenizer, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template_source = template
        self._template = _compile(template) if template is not None else None
        names = sorted(tokenizer.special_ids, key=len, reverse=True)  # longest first: no token hides a longer one
        self._specials = re.compile("|".join(map(re.escape, names)))
        self._think_id = tokenizer.special_ids.get("<think>")
        by_id = {i: t for t, i in tokenizer.special_ids.items()}
        self._bos, self._eos = by_id[tokenizer.bos_id], by_id[tokenizer.eos_id]

    @classmethod
    def from_dir(cls, folder: str | Path, tokenizer: Tokenizer) -> ChatFormat:
        """Template from chat_template.jinja, else tokenizer_config.json's chat_template, else the built-in one."""
        folder = Path(folder)
        template: str | None = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        elif (folder / "tokenizer_config.json").is_file():
            value = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
            if isinstance(value, list):  # HF's named templates: [{"name": "default", "template": ...}, ...]
                value = {t.get("name"): t.get("template") for t in value}.get("default")
            template = value if isinstance(value, str) else None
        log.debug("chat format for %s: %s", folder, "its chat template" if template else "built-in")
        return cls(tokenizer, template)

    def encode(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None,
               thinking: bool = True, add_generation_prompt: bool = True,
               use_template: bool | None = None) -> list[int]:  # fmt: skip
        """Prompt ids; use_template None: the checkpoint's template when it has one, else the built-in renderer."""
        pieces = self._pieces(messages, tools, thinking, add_generation_prompt, use_template)
        ids: list[int] = []
        run: list[str] = []  # plain text since the last special token
        for piece in pieces:
            if not piece.trusted:
                run.append(piece.text)
                continue
            pos = 0
            for m in self._specials.finditer(piece.text):
                run.append(piece.text[pos : m.start()])
                ids += self.tokenizer.encode("".join(run))
                run.clear()
                ids.append(self.tokenizer.special_ids[m.group()])
                pos = m.end()
            run.append(piece.text[pos:])
        return ids + self.tokenizer.encode("".join(run))

    def render_text(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None,
                    thinking: bool = True, add_generation_prompt: bool = True,
                    use_template: bool | None = None) -> str:  # fmt: skip
        """The same prompt as text (for --verbose and debugging)."""
        return "".join(p.text for p in self._pieces(messages, tools, thinking, add_generation_prompt, use_template))

    def prompt_ends_in_thinking(self, ids: Sequence[int]) -> bool:
        """True when the prompt's last special token is <think>: the model starts inside its reasoning."""
        last = next((i for i in reversed(ids) if self.tokenizer.is_special(i)), None)
        return last is not None and last == self._think_id

    def _pieces(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None, thinking: bool,
                add_generation_prompt: bool, use_template: bool | None) -> list[Piece]:  # fmt: skip
        msgs = checked_messages(messages)
        tool_list = self._checked_tools(tools)
        if use_template and self._template is None:
            raise ChatFormatError("use_template=True but this checkpoint ships no chat template; pass None or False")
        if self._template is None or use_template is False:
            return builtin_pieces(msgs, tool_list, thinking, add_generation_prompt)
        return self._template_pieces(self._template, msgs, tool_list, thinking, add_generation_prompt)

    def _template_pieces(self, template: jinja2.Template, msgs: list[dict[str, Any]], tools: list[Any] | None,
                         thinking: bool, add_generation_prompt: bool) -> list[Piece]:  # fmt: skip
        # Render with every message string replaced by a sentinel (a code point no message or tool text holds, then
        # the string's index), then cut the output there: what the template wrote is trusted, the strings are not.
        blob = json.dumps([msgs, tools], ensure_ascii=False, default=str)
        mark = next(chr(c) for c in range(0xF0000, 0xFFFFE) if chr(c) not in blob)
        strings: list[str] = []

        def hide(s: str) -> str:
            strings.append(s)
            return f"{mark}{len(strings) - 1}{mark}" if s else s  # "" stays "" so the template's truth tests hold

        hidden = [_map_strings(m, hide) for m in msgs]
        try:
            text = template.render(messages=hidden, tools=tools, add_generation_prompt=add_generation_prompt,
                                   thinking=thinking, bos_token=self._bos, eos_token=self._eos)  # fmt: skip
        except jinja2.TemplateError as e:
            raise ChatFormatError(f"the chat template failed: {e}") from e
        pieces: list[Piece] = []
        pos = 0
        for m in re.finditer(f"{mark}(\\d+){mark}", text):
            pieces += [Piece(text[pos : m.start()], True), Piece(strings[int(m.group(1))], False)]
            pos = m.end()
        pieces.append(Piece(text[pos:], True))
        if any(mark in p.text for p in pieces if p.trusted):
            raise ChatFormatError(
                "the chat template cut or transformed message text, so it cannot be encoded safely; "
                "render with use_template=False (the built-in Kimi renderer)"
            )
        return pieces

    def _checked_tools(self, tools: Sequence[Mapping[str, Any]] | None) -> list[Any] | None:
        """Tools as plain JSON data; their text may not spell special tokens (templates write it as trusted text)."""
        if tools is None:
            return None
        if isinstance(tools, (str, Mapping)) or not all(isinstance(t, Mapping) for t in tools):
            raise ChatFormatError("tools must be a list of OpenAI tool objects ({'type': 'function', ...})")
        try:
            data = json.loads(json.dumps(list(tools)))
        except (TypeError, ValueError) as e:
            raise ChatFormatError(f"tools must be JSON data (dicts, lists, strings, numbers): {e}") from e
        found = self._specials.search(json.dumps(data, ensure_ascii=False))
        if found:
            raise ChatFormatError(f"a tool definition contains the special token text {found.group()!r}; remove it")
        return data


def builtin_pieces(msgs: list[dict[str, Any]], tools: list[Any] | None, thinking: bool,
                   add_generation_prompt: bool) -> list[Piece]:  # fmt: skip
    """KIMI.md §5's layout, for checked messages (see checked_messages)."""
    out: list[Piece] = []

    def mark(s: str) -> None:
        out.append(Piece(s, True))

    def text(s: str) -> None:
        if s:
            out.append(Piece(s, False))

    if tools:
        mark("<|im_system|>tool_declare<|im_middle|>")
        text(json.dumps(tools, ensure_ascii=False))  # as HF's tojson filter writes it
        mark("<|im_end|>")
    if not msgs or msgs[0]["role"] != "system":
        mark(f"<|im_system|>system<|im_middle|>{DEFAULT_SYSTEM_PROMPT}<|im_end|>")
    # Assistant turns up to the last plain (no tool calls) reply are history and lose their reasoning; later ones,
    # the tool-calling steps of the current answer, keep it.
    plain = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and not m.get("tool_calls")]
    last_plain = plain[-1] if plain else -1
    for i, m in enumerate(msgs):
        role = m["role"]
        mark(_HEADER[role])
        if role == "tool" and m.get("name"):  # a tool result's turn is named after the tool
            text(m["name"])
        else:
            mark(role)
        mark("<|im_middle|>")
        if role == "tool":
            mark("## Return of ")
            text(m["tool_call_id"])
            mark("\n")
        if role == "assistant":
            mark("<think>")
            if i > last_plain:
                text(m.get("reasoning_content") or "")
            mark("</think>")
        text(content_text(m))
        if m.get("tool_calls"):
            mark("<|tool_calls_section_begin|>")
            for k, call in enumerate(m["tool_calls"]):
                mark("<|tool_call_begin|>")
                if call.get("id"):
                    text(call["id"])
                else:
                    mark("functions.")
                    text(call["function"]["name"])
                    mark(f":{k}")
                mark("<|tool_call_argument_begin|>")
                text(call["function"]["arguments"])
                mark("<|tool_call_end|>")
            mark("<|tool_calls_section_end|>")
        mark("<|im_end|>")
    if add_generation_prompt:
        mark("<|im_assistant|>assistant<|im_middle|>" + ("<think>" if thinking else "<think></think>"))
    return out


def content_text(m: Message) -> str:
    """A checked message's content as one string (text parts joined)."""
    c = m.get("content")
    return "" if c is None else c if isinstance(c, str) else "".join(p["text"] for p in c)


def checked_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Validated copies of OpenAI-style messages, tool-call arguments as JSON text."""
    if isinstance(messages, (str, Mapping)) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    return [_checked(i, m) for i, m in enumerate(messages)]


def _checked(i: int, m: Message) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, Mapping):
        raise ChatFormatError(f"{where} is a {type(m).__name__}; expected {{'role': ..., 'content': ...}}")
    role = m.get("role")
    if role not in ROLES:
        raise ChatFormatError(f"{where}.role is {role!r}; use one of {', '.join(ROLES)}")
    out = dict(m)
    c = m.get("content")
    if c is None and not (role == "assistant" and m.get("tool_calls")):
        need = "a string (or tool_calls)" if role == "assistant" else "a string"
        raise ChatFormatError(f"{where} ({role}) has no content; set content to {need}")
    if isinstance(c, list):
        for k, part in enumerate(c):
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatFormatError(
                    f"{where}.content[{k}] is a {kind!r} part; only {{'type': 'text', 'text': str}} parts are "
                    "supported (this runtime is text-only)"
                )
    elif c is not None and not isinstance(c, str):
        raise ChatFormatError(f"{where}.content is a {type(c).__name__}; use a string or a list of text parts")
    for key in ("reasoning_content", "name", "tool_call_id"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise ChatFormatError(f"{where}.{key} is a {type(m[key]).__name__}; use a string")
    if role == "tool" and not m.get("tool_call_id"):
        raise ChatFormatError(f"{where} (tool) has no tool_call_id; set it to the id of the call it answers")
    if m.get("tool_calls"):
        if role != "assistant":
            raise ChatFormatError(f"{where} ({role}) has tool_calls; only assistant messages may")
        out["tool_calls"] = [_checked_call(f"{where}.tool_calls[{k}]", t) for k, t in enumerate(m["tool_calls"])]
    return out


def _checked_call(where: str, call: Any) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ChatFormatError(f"{where} needs {{'function': {{'name': str, 'arguments': str | dict}}}}")
    if call.get("id") is not None and not isinstance(call["id"], str):
        raise ChatFormatError(f"{where}.id is a {type(call['id']).__name__}; use a string")
    args = fn.get("arguments")
    if isinstance(args, Mapping):
        args = json.dumps(args, ensure_ascii=False)  # as HF's tojson writes a dict
    elif not isinstance(args, str):
        raise ChatFormatError(f"{where}.function.arguments is {type(args).__name__}; use a JSON string or a dict")
    return {**call, "function": {**fn, "arguments": args}}


def _map_strings(m: dict[str, Any], f: Callable[[str], str]) -> dict[str, Any]:
    """A checked message with f applied to every string that came from the caller (not role or type names)."""
    out = dict(m)
    for key in ("reasoning_content", "name", "tool_call_id"):
        if isinstance(m.get(key), str):
            out[key] = f(m[key])
    c = m.get("content")
    out["content"] = f(c) if isinstance(c, str) else c and [{**p, "text": f(p["text"])} for p in c]
    calls = []
    for t in m.get("tool_calls") or []:
        fn = t["function"]
        call = {**t, "function": {**fn, "name": f(fn["name"]), "arguments": f(fn["arguments"])}}
        if isinstance(t.get("id"), str):
            call["id"] = f(t["id"])
        calls.append(call)
    if calls:
        out["tool_calls"] = calls
    return out


def _compile(source: str) -> jinja2.Template:
    """A chat template compiled as Hugging Face does (sandboxed, trim/lstrip blocks, loop controls, tojson)."""

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatFormatError(f"the chat template does not compile: {e.message} (line {e.lineno})") from e
