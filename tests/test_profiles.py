"""Hardware profiles: presets, user TOML files and their errors, and `auto` detection on this machine."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import torch

from offload.planner import profile as profile_module
from offload.planner.profile import (
    DEFAULT_DRAM_GBS,
    DEFAULT_NVME_GBS,
    NVME_ENV,
    TOML_KEYS,
    Profile,
    ProfileError,
    _probe_gpu,
    detect_profile,
    list_profiles,
    load_profile,
    profile_from_toml,
)

PRESETS = (
    "rtx4090-256gb",
    "rtx3090-128gb",
    "rtx5090-256gb",
    "a100-80gb-512gb",
    "h100-80gb-1tb",
    "h200-141gb-2tb",
    "cpu-only-256gb",
    "epyc-12ch-768gb",
    "laptop-4060-64gb",
)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU machine")


def toml_text(values: dict[str, object]) -> str:
    # JSON strings and numbers are valid TOML values for these plain strings and floats
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def toml_values(profile: Profile) -> dict[str, object]:
    return {key: value for key, value in asdict(profile).items() if key in TOML_KEYS}


def write(tmp_path: Path, values: dict[str, object], name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(toml_text(values))
    return path


def test_presets_load_and_validate() -> None:
    profiles = list_profiles()
    names = [p.name for p in profiles]
    assert names == sorted(names)
    assert set(PRESETS) <= set(names)
    for p in profiles:
        assert load_profile(p.name) == p
        assert p.source == "preset" and p.measured == ()
        assert p.description and "\n" not in p.description
        assert p.dram_gbs > 0 and p.nvme_gbs > 0 and p.cpu_gflops > 0
    gpu_names = [p.gpu_name for p in profiles if p.has_gpu]
    assert len(gpu_names) == len(set(gpu_names)), "auto looks GPUs up by name: one preset per card"


def test_rtx4090_by_hand() -> None:
    p = load_profile("rtx4090-256gb")
    assert p.has_gpu and p.gpu_name == "NVIDIA GeForce RTX 4090"
    assert p.gpu_memory_gib == 23.65 and p.gpu_bytes == int(23.65 * 2**30)  # what torch reports for a 24 GB card
    assert p.ram_gib == 256 and p.ram_bytes == 256 * 2**30
    assert p.dram_gbs == pytest.approx(2 * 5600e6 * 8 / 1e9)  # 89.6: two channels of DDR5-5600
    assert p.gpu_bandwidth_gbs == 1008 and p.gpu_tflops == 165.2 and p.pcie_gbs == 32
    assert p.nvme_gbs == 7 and p.cpu_cores == 16


def test_spec_arithmetic() -> None:
    assert load_profile("epyc-12ch-768gb").dram_gbs == pytest.approx(12 * 4800e6 * 8 / 1e9)
    assert load_profile("rtx5090-256gb").pcie_gbs == 64
    assert not load_profile("cpu-only-256gb").has_gpu
    assert load_profile("cpu-only-256gb").gpu_bytes == 0


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ProfileError, match="unknown profile 'rtx9090'") as e:
        load_profile("rtx9090")
    for name in PRESETS:
        assert name in str(e.value)
    assert "auto" in str(e.value)


def test_user_toml_round_trip(tmp_path: Path) -> None:
    preset = load_profile("rtx4090-256gb")
    mine = replace(preset, name="my-box", description="my own box", ram_gib=192.0, cpu_cores=24)
    path = write(tmp_path, toml_values(mine))
    assert load_profile(str(path)) == replace(mine, source=str(path))
    assert profile_from_toml(path) == replace(mine, source=str(path))


def test_user_toml_integers_and_no_suffix(tmp_path: Path) -> None:
    values = toml_values(load_profile("cpu-only-256gb")) | {"ram_gib": 64, "dram_gbs": 51}
    path = write(tmp_path, values, name="box")  # an existing file without .toml is a path too
    p = load_profile(str(path))
    assert p.ram_gib == 64.0 and isinstance(p.ram_gib, float) and p.source == str(path)


def test_user_toml_errors(tmp_path: Path) -> None:
    good = toml_values(load_profile("rtx4090-256gb"))
    missing = {k: v for k, v in good.items() if k != "pcie_gbs"}
    with pytest.raises(ProfileError, match=r"missing key.*pcie_gbs"):
        profile_from_toml(write(tmp_path, missing))
    with pytest.raises(ProfileError, match=r"unknown key.*vram_gb; allowed: name, description") as e:
        profile_from_toml(write(tmp_path, good | {"vram_gb": 24}))
    assert "cpu_gflops" in str(e.value)
    with pytest.raises(ProfileError, match="dram_gbs must be a number, got str"):
        profile_from_toml(write(tmp_path, good | {"dram_gbs": "89.6"}))
    with pytest.raises(ProfileError, match="cpu_cores must be an integer, got float"):
        profile_from_toml(write(tmp_path, good | {"cpu_cores": 16.0}))
    with pytest.raises(ProfileError, match="cpu_cores must be an integer, got bool"):
        profile_from_toml(write(tmp_path, good | {"cpu_cores": True}))
    with pytest.raises(ProfileError, match="gpu_name must be a string"):
        profile_from_toml(write(tmp_path, good | {"gpu_name": 4090}))
    with pytest.raises(ProfileError, match=r"pcie_gbs = 0\.0; a GPU profile"):
        profile_from_toml(write(tmp_path, good | {"pcie_gbs": 0}))


def test_bad_syntax_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\ndescription = "y"\ngpu_name = \n')
    with pytest.raises(ProfileError, match=r"broken\.toml: not valid TOML: .*line 3"):
        load_profile(str(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ProfileError, match=r"nope\.toml does not exist"):
        load_profile(str(path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpu_tflops": 0.0}, "gpu_tflops = 0.0; a GPU profile"),
        ({"gpu_bandwidth_gbs": -1.0}, "gpu_bandwidth_gbs = -1.0 must be a finite number >= 0"),
        ({"dram_gbs": float("nan")}, "dram_gbs = nan must be a finite number"),
        ({"cpu_cores": 0}, "cpu_cores = 0; set it to the number of physical cores"),
        ({"ram_gib": 0.0}, "ram_gib = 0.0; set it to the machine's RAM"),
        ({"gpu_name": ""}, "gpu_name is empty"),
        ({"gpu_memory_gib": 0.0}, "gpu_name = 'NVIDIA GeForce RTX 4090' but gpu_memory_gib = 0"),
        ({"gpu_memory_gib": 0.0, "gpu_name": ""}, "gpu_bandwidth_gbs, gpu_tflops, pcie_gbs must be 0 without a GPU"),
        ({"description": "two\nlines"}, "description must be one line"),
        ({"measured": ("vram",)}, "measured names unknown fields"),
    ],
)
def test_validation(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        replace(load_profile("rtx4090-256gb"), **change)


@no_cuda
def test_detect_without_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NVME_ENV, raising=False)
    p = detect_profile(probe=False)
    assert p.name == "auto" and p.source == "auto" and not p.has_gpu and p.gpu_name == ""
    assert p.ram_gib == pytest.approx(psutil.virtual_memory().total / 2**30, rel=0.01)
    assert 1 <= p.cpu_cores <= (psutil.cpu_count() or 1)
    assert {"ram_gib", "cpu_cores", "gpu_memory_gib"} <= set(p.measured)
    assert not {"dram_gbs", "nvme_gbs", "cpu_gflops"} & set(p.measured)
    assert p.dram_gbs == DEFAULT_DRAM_GBS and p.nvme_gbs == DEFAULT_NVME_GBS
    assert p.cpu_gflops == p.cpu_cores * 50
    assert "no GPU" in p.description and "assumed" in p.description
    assert load_profile("auto", probe=False).measured == p.measured


def test_detect_nvme_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NVME_ENV, "6.5")
    assert detect_profile(probe=False).nvme_gbs == 6.5
    assert detect_profile(probe=False, nvme_gbs=12.0).nvme_gbs == 12.0
    assert "nvme_gbs" not in detect_profile(probe=False).measured
    monkeypatch.setenv(NVME_ENV, "fast")
    with pytest.raises(ProfileError, match=f"{NVME_ENV}='fast' is not a number"):
        detect_profile(probe=False)


def test_detect_with_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NVME_ENV, raising=False)
    p = detect_profile(probe=True)
    assert p.dram_gbs > 1 and p.cpu_gflops > 0
    assert {"dram_gbs", "cpu_gflops"} <= set(p.measured) and "nvme_gbs" not in p.measured
    assert "timed" in p.description


def test_gpu_probe_logic_on_cpu() -> None:
    # the CUDA probe's arithmetic and timing, run on the CPU with small buffers
    pcie, memory, tflops = _probe_gpu(torch.device("cpu"), nbytes=2**20, matmul_n=64, reps=2)
    assert pcie > 0 and memory > 0 and tflops > 0


def fake_cuda(monkeypatch: pytest.MonkeyPatch, name: str, gib: float) -> None:
    """Make torch.cuda report one GPU, so that the lookup runs on a machine without one."""
    props = SimpleNamespace(name=name, total_memory=int(gib * 2**30))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)


def test_detect_known_gpu_uses_preset_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, "NVIDIA GeForce RTX 4090", 23.65)
    monkeypatch.setattr(profile_module, "_probe_gpu", lambda device: pytest.fail("a known GPU is not timed"))
    p = detect_profile(probe=False)
    assert p.has_gpu and p.gpu_name == "NVIDIA GeForce RTX 4090" and p.gpu_memory_gib == pytest.approx(23.65)
    assert (p.gpu_bandwidth_gbs, p.gpu_tflops, p.pcie_gbs) == (1008, 165.2, 32)
    assert "gpu_memory_gib" in p.measured and "gpu_tflops" not in p.measured
    assert "spec of rtx4090-256gb" in p.description


def test_detect_unknown_gpu_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, "NVIDIA RTX PRO 6000 Blackwell", 95.6)
    monkeypatch.setattr(profile_module, "_probe_gpu", lambda device: (55.0, 1500.0, 400.0))
    p = detect_profile(probe=False)
    assert (p.pcie_gbs, p.gpu_bandwidth_gbs, p.gpu_tflops) == (55.0, 1500.0, 400.0)
    assert {"gpu_bandwidth_gbs", "gpu_tflops", "pcie_gbs"} <= set(p.measured)
    assert "(timed:" in p.description


@pytest.mark.parametrize("key", ["dram_gbs", "nvme_gbs", "cpu_gflops"])
def test_zero_rates_every_plan_divides_by_are_refused(key):
    base = {f: getattr(load_profile("cpu-only-256gb"), f) for f in TOML_KEYS}
    with pytest.raises(ProfileError, match=f"{key} = 0.0; it must be > 0"):
        Profile(**{**base, key: 0.0})
