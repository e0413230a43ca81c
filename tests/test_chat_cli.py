"""`kimi-offload chat` typed into a pseudo-terminal as a user would; its pure helpers; examples/chat_minimal.py."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from offload.cli.chat_session import COMMANDS, MultiLine, TurnStats, help_lines, stats_lines, visible

ROOT = Path(__file__).resolve().parents[1]
ANSI = r"(?:\x1b\[[0-9;?]*[a-zA-Z])*"  # styles, and the modes readline switches
PROMPT = rf"\r\n{ANSI}> "  # the prompt, at the start of a line
FOOTER = r"\((\d+) tokens, "  # each answer ends with one


def spawn(tmp_path: Path, model: Path | str, *args: str) -> pexpect.spawn:
    env = {
        **os.environ,
        "COLUMNS": "120",
        "LINES": "40",
        "TERM": "xterm-256color",
        "KIMI_OFFLOAD_CACHE": str(tmp_path / "cache"),
    }
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "offload.cli", "chat", "--model", str(model), *args],
        cwd=ROOT,
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    child.logfile_read = io.StringIO()  # the whole screen, for leave()
    return child


def say(child: pexpect.spawn, line: str, until: str = PROMPT) -> str:
    """Type a line; what the chat printed before the next prompt (echo included), styles removed."""
    child.sendline(line)
    child.expect(until)
    return re.sub(ANSI, "", child.before)


def leave(child: pexpect.spawn) -> None:
    child.sendeof()  # Ctrl-D at the prompt
    child.expect(pexpect.EOF)
    child.close()
    assert (child.exitstatus, child.signalstatus) == (0, None)
    assert "Traceback" not in child.logfile_read.getvalue()


def test_a_session(tiny_k25, tmp_path):
    child = spawn(tmp_path, tiny_k25, "--max-tokens", "8", "--seed", "1")
    child.expect(PROMPT)
    banner = re.sub(ANSI, "", child.before)
    assert "plan:" in banner and "thinking on" in banner and '"""' in banner and "/help" in banner

    out = say(child, "Hello, who are you?")  # thinking on: a dim thinking block, streamed, then the footer
    assert "thinking:" in out and "\x1b[2m" in child.before and re.search(FOOTER, out)
    assert "thinking off" in say(child, "/think off")
    out = say(child, "What is 2+2?")
    assert "thinking:" not in out and re.search(FOOTER, out)
    assert "system prompt set; conversation cleared" in say(child, "/system You are terse.")

    say(child, '"""first line', until=r"\.\.\. ")  # a block: one message over several lines
    assert re.search(FOOTER, say(child, 'second line"""'))
    assert "thinking on" in say(child, "/think on")
    assert re.search(FOOTER, say(child, "Why?"))
    child.send("half typed")
    child.expect("half typed")  # readline has the keys (a Ctrl-C in the same instant would discard them unread)
    child.sendintr()  # Ctrl-C at the prompt drops the line
    child.expect(PROMPT)

    stats = say(child, "/stats")
    assert re.search(
        r"last answer: \d+ prompt tokens \([\d,]+ cached, [\d,]+ new\), 8 generated \(length\); prefill [\d,.]+ tok/s",
        stats,
    )
    assert re.search(
        r"session: 4 answers, [\d,]+ prompt tokens \([\d,]+ cached\), 32 generated; .*decode [\d,.]+ tok/s", stats
    )
    assert "experts since loading, decode:" in stats and "experts since loading, experts in RAM:" in stats
    assert re.search(r"disk reads (during the last answer: [\d.]+ [MG]B in [\d.]+ s, [\d.]+ [MG]B/s|: n/a)", stats)
    out = say(child, "/stats please")
    assert "/stats" in out and "last answer" in out  # extra words after a command are ignored where it takes none
    out = say(child, "/frobnicate")
    assert "unknown command /frobnicate" in out and "/help" in out
    assert "did you mean /stats?" in say(child, "/stat")
    help_text = say(child, "/help")
    assert all(cmd.split()[0] in help_text for cmd in COMMANDS) and '"""' in help_text

    saved = tmp_path / "chat.json"
    assert f"saved 5 messages and 4 answers' stats to {saved}" in say(child, f"/save {saved}")
    assert "could not write" in say(child, f"/save {tmp_path / 'no' / 'such' / 'dir.json'}")
    leave(child)

    data = json.loads(saved.read_text(encoding="utf-8"))
    msgs = data["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "You are terse." and msgs[1]["content"] == "first line\nsecond line"
    assert msgs[3]["content"] == "Why?" and all("half typed" not in m["content"] for m in msgs)
    assert msgs[2]["reasoning_content"] == "" and msgs[4]["reasoning_content"]  # thinking off, then on
    s = data["settings"]
    assert (s["system"], s["thinking"], s["temperature"], s["max_tokens"], s["seed"]) == (
        "You are terse.",
        True,
        1.0,
        8,
        1,
    )
    turns = data["turns"]
    assert [t["thinking"] for t in turns] == [True, False, False, True] and [t["seed"] for t in turns] == [1, 2, 3, 4]
    assert [t["temperature"] for t in turns] == [1.0, 0.6, 0.6, 1.0]
    assert all(t["generated_tokens"] == 8 and t["prompt_tokens"] > 0 and t["expert_runs"] > 0 for t in turns)


def test_a_second_turn_prefills_only_what_the_conversation_added(tiny_k25, tmp_path):
    """Issue 17: the chat keeps its conversation's cache; /stats shows cached vs new prompt tokens; /reset drops
    it. With thinking off the history renders as it was generated, so the match runs through the whole answer.
    (With thinking on, the template drops the history's reasoning: the match ends where the reasoning began.)"""
    demo = ROOT / "offload" / "demo_model"  # trained: its answers re-tokenize as they were generated
    child = spawn(tmp_path, demo, "--max-tokens", "12", "--seed", "1", "--no-think", "--temperature", "0")
    child.expect(PROMPT)
    say(child, "Tell me about the os module in Python, please.")
    first = re.search(r"(\d+) prompt tokens \((\d+) cached, (\d+) new\)", say(child, "/stats"))
    assert first is not None and first.group(2) == "0"
    say(child, "And sys?")
    second = re.search(r"(\d+) prompt tokens \((\d+) cached, (\d+) new\)", say(child, "/stats"))
    assert second is not None
    prompt, cached, new = (int(g) for g in second.groups())
    # the first prompt and the 11 answer tokens that were fed back (the 12th never was) are reused
    assert cached == int(first.group(1)) + 12 - 1 and new == prompt - cached and new < 30
    say(child, "/reset")
    say(child, "Tell me about the os module in Python, please.")
    third = re.search(r"(\d+) prompt tokens \((\d+) cached, (\d+) new\)", say(child, "/stats"))
    assert third is not None and third.group(2) == "0"  # /reset dropped the cache
    leave(child)


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(tiny_k25, tmp_path):
    child = spawn(tmp_path, tiny_k25, "--max-tokens", "400", "--seed", "2")
    child.expect(PROMPT)
    for attempt in range(5):  # a random-weight model may stop on its own first: then ask again
        child.sendline(f"Tell me a long story, part {attempt}.")
        if child.expect(["thinking:", FOOTER]) == 0:  # the answer has started streaming
            child.sendintr()
            child.expect(PROMPT)
            if "interrupted" in child.before:
                break
        else:
            child.expect(PROMPT)
        child.expect([PROMPT, pexpect.TIMEOUT], timeout=0.5)  # a Ctrl-C that came late re-prompts: skip that one
    else:
        pytest.fail("no answer ran long enough to interrupt")
    child.sendline("And then?")  # the chat continues; expecting the footer skips a late Ctrl-C's extra prompt
    child.expect(FOOTER)
    child.expect(PROMPT)
    saved = tmp_path / "chat.json"
    say(child, f"/save {saved}")
    leave(child)
    msgs = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    cut = [m for m in msgs if m.get("interrupted")]
    assert len(cut) == 1 and cut[0]["role"] == "assistant" and "reasoning_content" in cut[0]
    assert msgs[-2]["content"] == "And then?" and not msgs[-1].get("interrupted")


def test_a_full_context_says_so_and_reset_recovers(tiny_k25, tmp_path):
    child = spawn(tmp_path, tiny_k25, "--max-tokens", "400", "--seed", "2", "--context", "70")
    child.expect(PROMPT)
    out = say(child, "Tell me a long story.")
    assert re.search(FOOTER, out)  # it stops where the context ends, whatever the model does
    out = say(child, "And then?")
    assert "the context holds 70" in out and "/reset" in out and "Traceback" not in out
    assert "conversation cleared" in say(child, "/reset")
    assert re.search(FOOTER, say(child, "Hi"))
    leave(child)


def test_a_bad_model_folder_is_a_clear_error(tmp_path):
    child = spawn(tmp_path, tmp_path / "nothing")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "error:" in child.before and "does not exist" in child.before and "Traceback" not in child.before


def test_multi_line_blocks():
    ml = MultiLine()
    assert ml.feed("one line") == "one line" and not ml.open
    assert ml.feed('"""inline"""') == "inline"
    assert ml.feed('"""') is None and ml.open
    assert ml.feed("a") is None and ml.feed("") is None and ml.feed("  b") is None
    assert ml.feed('"""') == "a\n\n  b" and not ml.open
    assert ml.feed('  """first') is None and ml.feed('last"""') == "first\nlast"
    assert ml.feed('"""/not a command') is None and ml.feed('"""') == "/not a command"
    assert ml.feed('"""x') is None
    ml.reset()
    assert not ml.open and ml.feed("fresh") == "fresh"


def _turn(
    prompt: int, generated: int, prefill_s: float, decode_s: float, read: int | None = 0, cached: int = 0
) -> TurnStats:
    args = (prefill_s, decode_s, prefill_s + decode_s, read, 3, 24, True, 1.0, 0)
    return TurnStats(prompt, cached, generated, "stop", *args)


def test_stats_lines():
    lines = stats_lines([], 0, 4096, 0, 0)
    assert lines[0] == "no answers yet" and "context: 0 of 4,096 tokens" in lines
    assert not any("disk" in line for line in lines)
    turns = [_turn(100, 11, 0.5, 2.0), _turn(300, 1, 0.5, 0.0, read=2_000_000_000, cached=200)]
    lines = stats_lines(turns, 412, 4096, 6, 48)
    assert lines[0] == (
        "last answer: 300 prompt tokens (200 cached, 100 new), 1 generated (stop); prefill 200.0 tok/s (0.50 s), "
        "decode n/a (0.00 s)"
    )
    assert lines[1] == (
        "session: 2 answers, 400 prompt tokens (200 cached), 12 generated; prefill 200.0 tok/s, decode 5.0 tok/s"
    )
    assert "context: 412 of 4,096 tokens" in lines
    assert any("last answer 3 MoE layer calls, 24 runs; since loading 6 calls, 48 runs" in line for line in lines)
    assert lines[-1].startswith("disk reads during the last answer: 2.00 GB in 0.50 s, 4.00 GB/s")
    assert stats_lines([_turn(1, 2, 1.0, 1.0, read=None)], 3, 8, 1, 1)[-1].startswith("disk reads: n/a")
    assert [t.to_dict()["prefill_s"] for t in [_turn(1, 1, 0.123456, 0)]] == [0.1235]


def test_control_characters_are_shown_not_obeyed():
    assert (
        visible("a\x1b[31mb\rc\td\ne\x0e\x7f\x9b [bold]:smile:")
        == "a\u241b[31mb\u240dc\td\ne\u240e\u2421\\x9b [bold]:smile:"
    )


def test_help_lists_every_command():
    text = "\n".join(help_lines())
    assert all(cmd in text for cmd in COMMANDS) and '"""' in text and "Ctrl-C" in text and "Ctrl-D" in text


def test_chat_minimal_example_reads_piped_lines(tiny_k25):
    r = subprocess.run(
        [sys.executable, "examples/chat_minimal.py", str(tiny_k25), "6"],
        cwd=ROOT,
        input="Hi\nWhy?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert len(re.findall(r"\[\d+ tokens, (stop|length)\]", r.stdout)) == 2 and "\x1b[" not in r.stdout
