from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernels import cpu_ggml, cpu_int4
from offload.synth.generator import SynthOptions, write_model
from offload.synth.presets import PRESETS, preset_config

DATA = Path(__file__).parent / "data"
REQUIRE_NATIVE = "KIMI_REQUIRE_NATIVE"  # "1" on machines that must build the native kernel (CI): fail, never skip


def make(
    root: Path, preset: str = "tiny", layout: str = "k2.5", experts: str = "int4", seed: int = 0, **opts: object
) -> Path:
    """A synthetic checkpoint folder under `root` (helper for tests that need their own copy)."""
    cfg = preset_config(preset, layout, experts)
    options = SynthOptions(seed=seed, max_shard_bytes=PRESETS[preset].max_shard_bytes, **opts)  # type: ignore[arg-type]
    suffix = "".join(f"-{k}{v}" for k, v in sorted(opts.items()))
    return write_model(cfg, root / f"{preset}-{layout}-{experts}-{seed}{suffix}", options)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Read-only tiny checkpoints for every (layout, expert format) pair, made once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        (layout, experts): make(root, "tiny", layout, experts)
        for layout in ("k2.5", "k2", "deepseek-v3")
        for experts in ("int4", "fp8", "bf16")
    }


@pytest.fixture(scope="session")
def tiny_k25(tiny_dirs: dict[tuple[str, str], Path]) -> Path:
    return tiny_dirs[("k2.5", "int4")]


@pytest.fixture(scope="session")
def mini_k25(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini preset (384 experts of ~110 KB: several pages each, so page release is real), made once."""
    return make(tmp_path_factory.mktemp("mini"), "mini")


@pytest.fixture(scope="session")
def native() -> None:
    """For tests of the native INT4 CPU kernel: skipped where it cannot build (the reason is logged), failed
    instead when KIMI_REQUIRE_NATIVE=1."""
    if cpu_int4.native_build() is None:
        if os.environ.get(REQUIRE_NATIVE) == "1":
            pytest.fail(f"{REQUIRE_NATIVE}=1 but the native INT4 CPU kernel did not build (see the warning above)")
        pytest.skip("the native INT4 CPU kernel is not available here (no C++ compiler, or no AVX2/FMA)")


@pytest.fixture(scope="session")
def native_ggml() -> None:
    """For tests of the native ggml CPU kernel: skipped where it cannot build, failed when KIMI_REQUIRE_NATIVE=1."""
    if cpu_ggml.native_build() is None:
        if os.environ.get(REQUIRE_NATIVE) == "1":
            pytest.fail(f"{REQUIRE_NATIVE}=1 but the native ggml CPU kernel did not build (see the warning above)")
        pytest.skip("the native ggml CPU kernel is not available here (no C++ compiler, or no AVX2/FMA/F16C)")


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A machine where the native kernels cannot be built: an empty cache and a compiler that fails."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    cpu_int4._native.cache_clear()
    cpu_ggml._native.cache_clear()
    yield
    cpu_int4._native.cache_clear()  # runs before monkeypatch restores the environment; the next call reloads
    cpu_ggml._native.cache_clear()
