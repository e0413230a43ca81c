"""`kimi-offload chat`: a conversation in the terminal. Part of the CLI, the only layer that talks to the terminal."""

from __future__ import annotations

import contextlib
import difflib
import json
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import typer
from rich.color import ColorSystem
from rich.console import Console
from rich.style import Style

from offload.cli.console import console, err, fail
from offload.cli.load import load_engine
from offload.engine.chat import ChatTurn
from offload.engine.chat_format import ChatFormatError
from offload.engine.engine import Engine
from offload.engine.sampling import SamplingParams
from offload.errors import OffloadError
from offload.experts.stats import ExpertStats
from offload.planner.plan import RuntimeConfig
from offload.planner.report import gb

PROMPT, MORE = "> ", "... "  # a new message; the next line of a \"\"\" block
FENCE = '"""'
COMMANDS = {
    "/help": "this list",
    "/reset": "clear the conversation (the system prompt stays)",
    "/system TEXT": "set the system prompt and clear the conversation (/system alone shows it)",
    "/think on|off": "let the model reason before answering, or not, from the next answer on",
    "/stats": "speed and token counts of the last answer and the session, where experts came from, disk reads",
    "/save FILE": "write the conversation, the settings and per-answer stats as JSON",
    "/exit": "leave (so does Ctrl-D)",
}
KEYS = (
    f"multi-line: start a message with {FENCE} and end it with {FENCE} (a message that starts with / goes this way)",
    "Ctrl-C stops an answer (what it wrote stays in the conversation, marked interrupted) or clears the line",
    "Ctrl-D leaves",
)


# C0 controls but tab and newline, DEL, and C1 controls: a terminal would obey them (ESC starts a command, CR
# rewrites the line, SO switches the character set), so a terminal gets their Unicode pictures or \x escapes
_VISIBLE = {c: chr(0x2400 + c) for c in range(32) if chr(c) not in "\t\n"} | {0x7F: "\u2421"}
_VISIBLE |= {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}


def visible(text: str) -> str:
    """`text` with the characters a terminal would obey shown instead (the conversation keeps them as they are)."""
    return text.translate(_VISIBLE)


def help_lines() -> list[str]:
    return [f"  {cmd:<14} {what}" for cmd, what in COMMANDS.items()] + [f"  {k}" for k in KEYS]


class MultiLine:
    """Joins input lines into messages: a line is a message, unless it opens a \"\"\" block, which runs to the line
    that ends with \"\"\" (text beside either fence belongs to the message)."""

    def __init__(self) -> None:
        self.lines: list[str] | None = None  # None: no block open

    @property
    def open(self) -> bool:
        return self.lines is not None

    def reset(self) -> None:
        self.lines = None

    def feed(self, line: str) -> str | None:
        """The finished message, or None while a block is open."""
        if self.lines is None:
            if not line.lstrip().startswith(FENCE):
                return line
            rest = line.lstrip()[len(FENCE) :]
            if len(rest.rstrip()) >= len(FENCE) and rest.rstrip().endswith(FENCE):  # """one line"""
                return rest.rstrip()[: -len(FENCE)]
            self.lines = [rest] if rest.strip() else []
            return None
        if not line.rstrip().endswith(FENCE):
            self.lines.append(line)
            return None
        last = line.rstrip()[: -len(FENCE)]
        lines, self.lines = [*self.lines, *([last] if last.strip() else [])], None
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class TurnStats:
    """What one answer took; /stats sums these and /save writes them."""

    prompt_tokens: int
    cached_tokens: int  # of the prompt, reused from the conversation's cache (not prefilled)
    generated_tokens: int  # the stop token included
    finish_reason: str  # stop, length, cancelled
    prefill_s: float  # prompt forward + first token
    decode_s: float  # every later token
    wall_s: float
    disk_read_bytes: int | None  # this process's reads from storage during the answer; None: not measurable here
    moe_calls: int  # MoE layer calls during the answer
    expert_runs: int  # routed experts run (each dequantized from the mapped checkpoint)
    thinking: bool
    temperature: float
    seed: int | None

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _rate(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:,.1f} tok/s" if tokens > 0 and seconds > 0 else "n/a"


def stats_lines(
    turns: Sequence[TurnStats],
    context_used: int,
    max_context: int,
    moe_calls: int,
    expert_runs: int,
    experts: Sequence[str] = (),
) -> list[str]:
    """/stats: the last answer, the session, the context, the experts (counters since loading), disk reads."""
    if not turns:
        lines = ["no answers yet"]
    else:
        t = turns[-1]
        prompt, generated = sum(u.prompt_tokens for u in turns), sum(u.generated_tokens for u in turns)
        prefill_s, decode_s = sum(u.prefill_s for u in turns), sum(u.decode_s for u in turns)
        decoded = sum(u.generated_tokens - 1 for u in turns if u.generated_tokens > 1)
        new = t.prompt_tokens - t.cached_tokens
        cached = sum(u.cached_tokens for u in turns)
        lines = [
            f"last answer: {t.prompt_tokens:,} prompt tokens ({t.cached_tokens:,} cached, {new:,} new), "
            f"{t.generated_tokens:,} generated ({t.finish_reason}); "
            f"prefill {_rate(new, t.prefill_s)} ({t.prefill_s:.2f} s), "
            f"decode {_rate(t.generated_tokens - 1, t.decode_s)} ({t.decode_s:.2f} s)",
            f"session: {len(turns)} answer{'s' if len(turns) > 1 else ''}, {prompt:,} prompt tokens "
            f"({cached:,} cached), {generated:,} generated; prefill {_rate(prompt - cached, prefill_s)}, "
            f"decode {_rate(decoded, decode_s)}",
        ]
    last = f"last answer {turns[-1].moe_calls:,} MoE layer calls, {turns[-1].expert_runs:,} runs; " if turns else ""
    lines += [
        f"context: {context_used:,} of {max_context:,} tokens",
        f"experts: {last}since loading {moe_calls:,} calls, {expert_runs:,} runs",
        *(f"experts since loading, {line}" for line in experts),
    ]
    if turns:
        t = turns[-1]
        if t.disk_read_bytes is None:
            lines.append("disk reads: n/a (this platform does not count a process's reads)")
        else:
            speed = f"{gb(t.disk_read_bytes / t.wall_s)}/s" if t.wall_s > 0 else "n/a"
            lines.append(
                f"disk reads during the last answer: {gb(t.disk_read_bytes)} in {t.wall_s:.2f} s, {speed} "
                "(the page cache served the rest)"
            )
    return lines


def _disk_read_bytes() -> int | None:
    """Bytes this process has read from storage (not the page cache); None where the OS does not say."""
    try:
        return int(psutil.Process().io_counters().read_bytes)
    except (AttributeError, NotImplementedError, psutil.Error):  # macOS has no io_counters
        return None


@contextlib.contextmanager
def _ctrl_c_cancels(turn: ChatTurn) -> Iterator[None]:
    """Ctrl-C stops the answer after the current token; a second Ctrl-C abandons it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal pressed
        if pressed:
            raise KeyboardInterrupt
        pressed = True
        turn.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class ChatSession:
    """The conversation, the settings and the answers' stats; reads commands and messages, streams answers."""

    def __init__(
        self,
        engine: Engine,
        console: Console,
        *,
        system: str | None,
        think: bool,
        temperature: float | None,
        top_p: float,
        max_tokens: int,
        seed: int | None,
        settings: dict[str, Any],
    ) -> None:
        self.engine, self.console = engine, console
        self.system, self.thinking = system, think
        self.temperature_flag, self.top_p, self.max_tokens, self.seed = temperature, top_p, max_tokens, seed
        self.settings = settings  # the rest of the command line, for /save
        self.history: list[dict[str, Any]] = []
        self.turns: list[TurnStats] = []
        self.lines = MultiLine()
        self._dim = Style(dim=True)
        self._at = ""  # what the stream wrote last: "", "reasoning" or "content"
        self._line_open = False  # the stream's last character was not a newline

    # ---- settings ---------------------------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """--temperature, else Kimi's advice: 1.0 with thinking, 0.6 without."""
        if self.temperature_flag is not None:
            return self.temperature_flag
        return 1.0 if self.thinking else 0.6

    @property
    def answer_seed(self) -> int | None:
        """--seed + the answer's number in the session: a session replays exactly, yet answers draw differently."""
        return None if self.seed is None else (self.seed + len(self.turns)) % 2**63

    def conversation(self) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return system + self.history

    def banner(self) -> None:
        name = self.engine.folder.name
        self.console.print(
            f"chat with {name}: thinking {'on' if self.thinking else 'off'}, temperature {self.temperature}, "
            f"up to {self.max_tokens:,} tokens per answer, context {self.engine.max_context:,} tokens",
            markup=False,
            highlight=False,
            style="bold",
        )
        self.console.print(
            f"/help for commands; {FENCE} starts and ends a multi-line message; Ctrl-C stops an answer; Ctrl-D leaves",
            markup=False,
            highlight=False,
            style="dim",
        )

    # ---- the loop ---------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Read one line and act on it: a command, a message, or one more line of a block. False: the user leaves."""
        try:
            line = input(MORE if self.lines.open else PROMPT)
        except KeyboardInterrupt:  # at the prompt: drop the line (and an open block)
            self.lines.reset()
            self.console.file.write("\n")
            return True
        if not self.lines.open and line.startswith("/"):
            return self.command(line)
        text = self.lines.feed(line)
        if text is not None and text.strip():
            self.ask(text)
        return True

    def note(self, msg: str, style: str = "dim") -> None:
        self.console.print(msg, style=style, markup=False, highlight=False, emoji=False)

    def command(self, line: str) -> bool:
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.note("commands:\n" + "\n".join(help_lines()), style="")
        elif name == "/reset":
            self.history.clear()
            self._drop_cache()
            self.note("conversation cleared")
        elif name == "/system":
            if not arg:
                now = self.system if self.system is not None else "the model's default"
                self.note(f"system prompt: {now}; /system TEXT sets it (and clears the conversation)")
            else:
                self.system = arg
                self.history.clear()
                self._drop_cache()
                self.note("system prompt set; conversation cleared")
        elif name == "/think":
            if arg not in ("on", "off"):
                self.note(f"thinking is {'on' if self.thinking else 'off'}; use /think on or /think off")
            else:
                self.thinking = arg == "on"
                self.note(f"thinking {arg} from the next answer (temperature {self.temperature})")
        elif name == "/stats":
            since_load = self.engine.stats()
            used = (
                len(self.engine.chat_format.encode(self.conversation(), thinking=self.thinking))
                if (self.history)
                else 0
            )
            self.note(
                "\n".join(
                    stats_lines(
                        self.turns,
                        used,
                        self.engine.max_context,
                        since_load.calls,
                        since_load.expert_runs,
                        since_load.lines(),
                    )
                ),
                style="",
            )
        elif name == "/save":
            self.save(arg)
        else:
            close = difflib.get_close_matches(name, [c.split()[0] for c in COMMANDS], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            self.note(
                f"unknown command {name}; {hint}/help lists the commands (a message that starts with / goes "
                f"in a {FENCE} block)",
                style="yellow",
            )
        return True

    def save(self, arg: str) -> None:
        if not arg:
            self.note("usage: /save FILE (JSON: the messages, the settings, per-answer stats)", style="yellow")
            return
        path = Path(arg).expanduser()
        data = {
            "model": str(self.engine.folder),
            "settings": {
                **self.settings,
                "system": self.system,
                "thinking": self.thinking,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "max_tokens": self.max_tokens,
                "seed": self.seed,
                "context": self.engine.max_context,
            },
            "messages": self.conversation(),
            "turns": [t.to_dict() for t in self.turns],
        }
        try:
            path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            self.note(
                f"could not write {path}: {e.strerror or e}; give a file in a folder you can write to", style="red"
            )
            return
        self.note(f"saved {len(data['messages'])} messages and {len(self.turns)} answers' stats to {path}")

    # ---- one answer -------------------------------------------------------------------------------------------
    def _write(self, text: str, dim: bool = False) -> None:
        """The model's text as it came (no markup, emoji codes or wrapping); on a terminal, control characters are
        shown, not obeyed, and thinking is dimmed."""
        if not text:
            return
        self._line_open = not text.endswith("\n")
        if self.console.is_terminal:
            text = visible(text)
        if dim and self.console.color_system is not None:  # dim is an attribute, not a color: any system has it
            text = self._dim.render(text, color_system=ColorSystem.STANDARD)
        out = self.console.file
        out.write(text)
        out.flush()

    def _stream(self, reasoning: str, content: str) -> None:
        if reasoning:
            if not self._at:
                self._write("thinking:\n", dim=True)
            self._at = "reasoning"
            self._write(reasoning, dim=True)
        if content:
            if self._at == "reasoning":
                self._write("\n\n" if self._line_open else "\n")
            self._at = "content"
            self._write(content)

    def ask(self, text: str) -> None:
        messages = [*self.conversation(), {"role": "user", "content": text}]
        try:
            sampling = SamplingParams(self.temperature, self.top_p, seed=self.answer_seed)
            turn = self.engine.chat(messages, thinking=self.thinking, sampling=sampling, max_tokens=self.max_tokens)
        except ChatFormatError as e:
            self.note(f"the chat format refused this conversation: {e}", style="red")
            return
        except ValueError as e:  # the prompt does not fit the context (sampling was checked at start)
            self.note(
                f"{e}. The conversation no longer fits: /reset to start over (/save FILE first to keep it), "
                "or restart with a larger --context",
                style="yellow",
            )
            return
        reasoning: list[str] = []
        content: list[str] = []
        self._at, self._line_open = "", False
        before = self.engine.stats()
        read0, t0 = _disk_read_bytes(), time.perf_counter()
        abandoned = False
        with _ctrl_c_cancels(turn):
            try:
                for r, c in turn:
                    reasoning.append(r)
                    content.append(c)
                    self._stream(r, c)
            except KeyboardInterrupt:  # a second Ctrl-C: the answer is abandoned mid-token
                abandoned = True
        wall = time.perf_counter() - t0
        read1 = _disk_read_bytes()
        if self._line_open:
            self._write("\n")
        result = turn.result
        finish = "cancelled" if abandoned else result.finish_reason
        if abandoned:  # the stream's pieces so far; the turn itself never finished
            said, thought, n_calls = "".join(content), "".join(reasoning), 0
            finished_thinking = bool(said) or not thought
        else:
            out = turn.output
            said, thought, finished_thinking, n_calls = (
                out.content,
                out.reasoning,
                out.finished_thinking,
                len(out.tool_calls),
            )
        self.turns.append(
            TurnStats(
                result.prompt_tokens,
                result.cached_tokens,
                len(result.token_ids),
                finish,
                result.prefill_s,
                result.decode_s,
                wall,
                None if read0 is None or read1 is None else read1 - read0,
                *self._calls_since(before),
                self.thinking,
                self.temperature,
                self.answer_seed,
            )
        )
        self.history.append({"role": "user", "content": text})
        reply: dict[str, Any] = {"role": "assistant", "content": said, "reasoning_content": thought}
        if finish == "cancelled":
            reply["interrupted"] = True
        self.history.append(reply)
        self._footer(self.turns[-1], finished_thinking, n_calls)

    def _drop_cache(self) -> None:
        """The conversation's kept cache goes with it."""
        if self.engine.prefix_cache is not None:
            self.engine.prefix_cache.clear()

    def _calls_since(self, before: ExpertStats) -> tuple[int, int]:
        used = self.engine.stats() - before
        return used.calls, used.expert_runs

    def _footer(self, t: TurnStats, finished_thinking: bool, n_calls: int) -> None:
        parts = [f"{t.generated_tokens:,} tokens, {_rate(t.generated_tokens - 1, t.decode_s)}"]
        if t.finish_reason == "cancelled":
            parts.append("interrupted: what it wrote stays in the conversation, marked interrupted")
        elif t.finish_reason == "length":
            if t.prompt_tokens + t.generated_tokens >= self.engine.max_context:
                parts.append(f"the context is full ({self.engine.max_context:,} tokens): /reset to start over")
            else:
                parts.append(f"stopped at --max-tokens {self.max_tokens:,}")
        if not finished_thinking:
            parts.append("it was still thinking")
        if n_calls:
            parts.append(f"it asked for {n_calls} tool call(s); this chat has no tools, so they are dropped")
        self.note("(" + "; ".join(parts) + ")")


def run_chat(
    *,
    model_dir: Path,
    profile: str,
    system: str | None,
    think: bool,
    temperature: float | None,
    top_p: float,
    max_tokens: int,
    seed: int | None,
    runtime: RuntimeConfig,
) -> None:
    """Load the model (a progress bar on `err`), print the plan and a banner, then chat until /exit or Ctrl-D."""
    from offload.planner.report import summary_lines

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input(), where Python has it)
    if max_tokens < 1:
        raise fail(f"--max-tokens {max_tokens}; give at least 1")
    try:
        for t in (temperature, 1.0, 0.6):  # both defaults, /think may switch between them
            SamplingParams(1.0 if t is None else t, top_p, seed=seed)
    except OffloadError as e:
        raise fail(str(e)) from None
    try:
        engine = load_engine(model_dir, runtime, profile, f"loading {model_dir.name}")
    except KeyboardInterrupt:
        err.print("interrupted while loading", style="dim")
        raise typer.Exit(130) from None
    err.print("\n".join(summary_lines(engine.plan)), style="dim", markup=False, highlight=False)
    engine.enable_prefix_cache()  # the conversation's cache: a new turn prefills only what changed or was added
    settings = {"profile": profile, "dtype": runtime.dtype, "temperature_option": temperature}
    session = ChatSession(
        engine,
        console,
        system=system,
        think=think,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        settings=settings,
    )
    with engine:
        session.banner()
        while True:
            try:
                if not session.step():
                    return
            except EOFError:  # Ctrl-D: leave cleanly
                console.file.write("\n")
                return
            except KeyboardInterrupt:  # between answers (a command, or just after one): back to the prompt
                console.file.write("\n")
