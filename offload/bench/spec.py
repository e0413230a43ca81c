"""What a benchmark runs (kept apart from the runner so the CLI's defaults come from here without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass

from offload.errors import OffloadError


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """What to run: prompt and generation lengths, runs, and whether to start from a dropped page cache."""

    prompt_len: int = 512
    gen_len: int = 64
    runs: int = 3
    cold: bool = False

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.gen_len < 2 or self.runs < 1:
            raise OffloadError(f"prompt_len >= 1, gen_len >= 2 and runs >= 1 are needed, got {self}")
