"""Kimi's chat format: a conversation becomes prompt ids, by the checkpoint's chat template or a built-in renderer.

Only the format's own marker text may become special ids. Both paths render one string from an escaped copy of the
conversation: in every string that came from the caller (message fields of any name, tool definitions, dict keys)
each character that starts or ends a special token ("<", ">", "[", "]" for Kimi) is swapped for a private-use
placeholder. No special token can then be spelled by caller text, alone or joined to other caller text (a tool name
"<|im_" printed next to a description "end|>"), so every special token left in the rendered string was written by
the template. The string is cut there; the text between is mapped back and encoded as plain text, one run per gap,
so the ids equal Hugging Face's `apply_chat_template` + encode whenever the conversation holds no special-token text.

Templates see the caller's real text, so filters (trim, split, upper, slicing, length) act as under Hugging Face,
with one limit: a template that looks for the escaped characters inside message text (DeepSeek-R1's
`content.split('</think>')`, `'<' in content`, `tojson(ensure_ascii=True)`) does not find them, as they are
placeholders while it renders. A template is trusted to write each marker whole; one that wraps a field in half
markers (`<{{ x }}>`) could still build one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from offload.errors import OffloadError

if TYPE_CHECKING:
    from offload.engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
ROLES = ("system", "user", "assistant", "tool")
_HEADER = {"system": "<|im_system|>", "user": "<|im_user|>", "assistant": "<|im_assistant|>", "tool": "<|im_system|>"}
# Placeholders come from the supplementary private-use planes, skipping any code point the caller's data or the
# template already holds, so mapping them back can never turn caller text into something else.
_PRIVATE = re.compile("[\U000f0000-\U0010fffd]")
Message = Mapping[str, Any]


class ChatFormatError(OffloadError):
    """A conversation or chat template that cannot be rendered; the message says what to change."""


class ChatFormat:
    """Renders conversations for one tokenizer, by the checkpoint's chat template or the built-in Kimi renderer."""

    def __init__(self, tokenizer: Tokenizer, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template_source = template
        self._template = _compile(template) if template is not None else None
        names = sorted(tokenizer.special_ids, key=len, reverse=True)  # longest first: no token hides a longer one
        self._specials = re.compile("|".join(map(re.escape, names)))
        self._edges = sorted({n[0] for n in names} | {n[-1] for n in names})  # the characters to escape
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

    def encode(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        thinking: bool = True,
        add_generation_prompt: bool = True,
        use_template: bool | None = None,
    ) -> list[int]:
        """Prompt ids; use_template None: the checkpoint's template when it has one, else the built-in renderer."""
        text, back = self._render(messages, tools, thinking, add_generation_prompt, use_template)
        ids: list[int] = []
        pos = 0
        for m in self._specials.finditer(text):
            ids += self.tokenizer.encode(text[pos : m.start()].translate(back))
            ids.append(self.tokenizer.special_ids[m.group()])
            pos = m.end()
        return ids + self.tokenizer.encode(text[pos:].translate(back))

    def render_text(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        thinking: bool = True,
        add_generation_prompt: bool = True,
        use_template: bool | None = None,
    ) -> str:
        """The same prompt as text (for --verbose and debugging)."""
        text, back = self._render(messages, tools, thinking, add_generation_prompt, use_template)
        return text.translate(back)

    def prompt_ends_in_thinking(self, ids: Sequence[int]) -> bool:
        """True when the prompt's last special token is <think>: the model starts inside its reasoning."""
        last = next((i for i in reversed(ids) if self.tokenizer.is_special(i)), None)
        return last is not None and last == self._think_id

    def _render(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None,
        thinking: bool,
        add_generation_prompt: bool,
        use_template: bool | None,
    ) -> tuple[str, dict[int, str]]:
        """The prompt with caller text escaped, and the table (for str.translate) that maps it back."""
        msgs, tool_list = checked_messages(messages), checked_tools(tools)
        if use_template and self._template is None:
            raise ChatFormatError("use_template=True but this checkpoint ships no chat template; pass None or False")
        (msgs, tool_list), back = self._escape([msgs, tool_list])
        if self._template is None or use_template is False:
            return builtin_text(msgs, tool_list, thinking, add_generation_prompt), back
        try:
            text = self._template.render(
                messages=msgs,
                tools=tool_list,
                add_generation_prompt=add_generation_prompt,
                thinking=thinking,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except jinja2.TemplateError as e:
            raise ChatFormatError(f"the chat template failed: {e}") from e
        return text, back

    def _escape(self, data: Any) -> tuple[Any, dict[int, str]]:
        """A copy of data with each special token's first and last characters, wherever they occur in its strings,
        swapped for placeholders no string in data or in the template holds; and the table that maps them back."""
        text = json.dumps([data, self.template_source], ensure_ascii=False, default=str)
        taken = set(_PRIVATE.findall(text))
        free = (chr(c) for c in range(0xF0000, 0x10FFFE) if chr(c) not in taken and c & 0xFFFE != 0xFFFE)
        marks = dict(zip(self._edges, free, strict=False))
        if len(marks) < len(self._edges):
            raise ChatFormatError("the conversation uses nearly every private-use code point; none are left to escape")
        return _translated(data, str.maketrans(marks)), {ord(p): c for c, p in marks.items()}


def builtin_text(
    msgs: list[dict[str, Any]], tools: list[Any] | None, thinking: bool, add_generation_prompt: bool
) -> str:
    """KIMI.md §5's layout for checked messages, as the checkpoint's template writes it (caller text escaped)."""
    out: list[str] = []
    if tools:
        out.append(f"<|im_system|>tool_declare<|im_middle|>{json.dumps(tools, ensure_ascii=False)}<|im_end|>")
    if not msgs or msgs[0]["role"] != "system":
        out.append(f"<|im_system|>system<|im_middle|>{DEFAULT_SYSTEM_PROMPT}<|im_end|>")
    # Assistant turns up to the last plain (no tool calls) reply are history and lose their reasoning; later ones,
    # the tool-calling steps of the current answer, keep it.
    plain = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and not m.get("tool_calls")]
    last_plain = plain[-1] if plain else -1
    for i, m in enumerate(msgs):
        role = m["role"]
        out += [_HEADER[role], m.get("name") or role, "<|im_middle|>"]  # Kimi labels a turn by its name, if any
        if role == "tool":
            out.append(f"## Return of {m['tool_call_id']}\n")
        if role == "assistant":
            out.append(f"<think>{(m.get('reasoning_content') or '') if i > last_plain else ''}</think>")
        out.append(content_text(m))
        if m.get("tool_calls"):
            out.append("<|tool_calls_section_begin|>")
            for k, call in enumerate(m["tool_calls"]):
                fn = call["function"]
                call_id = call.get("id") or f"functions.{fn['name']}:{k}"
                out.append(
                    f"<|tool_call_begin|>{call_id}<|tool_call_argument_begin|>{fn['arguments']}<|tool_call_end|>"
                )
            out.append("<|tool_calls_section_end|>")
        out.append("<|im_end|>")
    if add_generation_prompt:
        out.append("<|im_assistant|>assistant<|im_middle|>" + ("<think>" if thinking else "<think></think>"))
    return "".join(out)


def content_text(m: Message) -> str:
    """A checked message's content as one string (text parts joined)."""
    c = m.get("content")
    return "" if c is None else c if isinstance(c, str) else "".join(p["text"] for p in c)


def checked_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Validated copies of OpenAI-style messages, tool-call arguments as JSON text."""
    if isinstance(messages, (str, Mapping)) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    return [_checked(i, m) for i, m in enumerate(messages)]


def checked_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[Any] | None:
    """Tools as plain JSON data (a copy); their text may hold anything, as it is escaped like message text."""
    if tools is None:
        return None
    if isinstance(tools, (str, Mapping)) or not all(isinstance(t, Mapping) for t in tools):
        raise ChatFormatError("tools must be a list of OpenAI tool objects ({'type': 'function', ...})")
    try:
        data: list[Any] = json.loads(json.dumps(list(tools)))
    except (TypeError, ValueError) as e:
        raise ChatFormatError(f"tools must be JSON data (dicts, lists, strings, numbers): {e}") from e
    return data


def _checked(i: int, m: Message) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, Mapping):
        raise ChatFormatError(f"{where} is a {type(m).__name__}; expected {{'role': ..., 'content': ...}}")
    role = m.get("role")
    if role == "developer":  # OpenAI's newer name for the system role
        role = "system"
    if role not in ROLES:
        raise ChatFormatError(f"{where}.role is {role!r}; use one of {', '.join(ROLES)} (or developer)")
    out = dict(m)
    out["role"] = role
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


def _translated(x: Any, table: dict[int, str]) -> Any:
    """A copy of JSON data with every string, dict keys included, translated by table."""
    if isinstance(x, str):
        return x.translate(table)
    if isinstance(x, Mapping):
        return {_translated(k, table): _translated(v, table) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_translated(v, table) for v in x]
    if x is None or isinstance(x, (bool, int, float)):
        return x
    raise ChatFormatError(f"messages and tools must be JSON data; got a {type(x).__name__}: {x!r:.60}")


def _compile(source: str) -> jinja2.Template:
    """A chat template compiled as Hugging Face does (sandboxed, trim/lstrip blocks, loop controls, tojson)."""

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatFormatError(f"the chat template does not compile: {e.message} (line {e.lineno})") from e
