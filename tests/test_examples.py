"""The scripts in examples/ run as their docstrings say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_read_expert(tiny_k25):
    out = _run("examples/read_expert.py", "--model", str(tiny_k25), "--layer", "1", "--expert", "3")
    assert "bytes" in out and "expert (1, 3) of a kimi_k25 checkpoint" in out


def test_chat_once(tiny_k25):
    out = _run("examples/chat_once.py", "--model", str(tiny_k25), "--max-tokens", "5", "Hello?")
    assert "reasoning:" in out and "tokens" in out


def test_plan_table():
    out = _run("examples/plan_table.py", "--bpw", "2.5")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "profile" not in line]
    assert len(rows) == 9 and all("tok/s" in r for r in rows)
