"""Profile: what the machine is (memory sizes, bandwidths, compute rates), from a preset, a TOML file, or `auto`."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from offload.errors import OffloadError
from offload.planner.cgroup import memory_limit

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

GIB = 2**30
AUTO = "auto"
PRESET_PACKAGE = "profiles"
NVME_ENV = "KIMI_OFFLOAD_NVME_GBS"
# What `auto` assumes for what it does not time: dual-channel DDR4-3200, an early PCIe 3.0 NVMe drive, and a per-core
# rate well under an AVX2 core's peak, so that an unprobed plan errs slow rather than fast.
DEFAULT_DRAM_GBS = 51.2
DEFAULT_NVME_GBS = 3.0
DEFAULT_GFLOPS_PER_CORE = 50.0
GPU_RATES = ("gpu_bandwidth_gbs", "gpu_tflops", "pcie_gbs")
GPU_FIELDS = ("gpu_name", "gpu_memory_gib", *GPU_RATES)


class ProfileError(OffloadError):
    """A profile that cannot be loaded or does not add up; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What the machine is: memory sizes, bandwidths, compute rates (peak spec values for presets)."""

    name: str
    description: str  # one line
    gpu_name: str  # "" when there is no GPU
    gpu_memory_gib: float  # 0 when there is no GPU
    gpu_bandwidth_gbs: float  # device memory bandwidth, GB/s (1e9 B/s); 0 without GPU
    gpu_tflops: float  # dense bf16 tensor-core TFLOPS (no sparsity); 0 without GPU
    pcie_gbs: float  # host <-> device, GB/s per direction (PCIe 4.0 x16 = 32, 5.0 x16 = 64); 0 without GPU
    ram_gib: float
    dram_gbs: float  # peak DRAM read bandwidth: channels x MT/s x 8 bytes
    nvme_gbs: float  # sequential read of the drive holding the checkpoint
    cpu_cores: int  # physical cores
    cpu_gflops: float  # peak dense bf16/fp32 matmul GFLOPS of all cores (cores x GHz x FLOPs/cycle)
    source: str = "preset"  # "preset", the TOML path, or "auto"
    measured: tuple[str, ...] = ()  # fields auto detection took from this machine; the rest are spec or assumed
    ram_limit: str = ""  # auto: where ram_gib came from when a cgroup's memory limit is below the machine's RAM

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def has_gpu(self) -> bool:
        return self.gpu_memory_gib > 0

    @property
    def gpu_bytes(self) -> int:
        return int(self.gpu_memory_gib * GIB)

    @property
    def ram_bytes(self) -> int:
        return int(self.ram_gib * GIB)


# the keys of a profile TOML: every field but the two that say where the values came from
TOML_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Profile) if f.name not in ("source", "measured", "ram_limit"))
_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(Profile)}


def _validate(p: Profile) -> None:
    where = f"profile {p.name!r} ({p.source})"
    if not p.name:
        raise ProfileError(f"{where}: name is empty; give the profile a name")
    if "\n" in p.description:
        raise ProfileError(f"{where}: description must be one line")
    for key, kind in _TYPES.items():
        value = getattr(p, key)
        if kind in ("float", "int") and not (math.isfinite(value) and value >= 0):
            raise ProfileError(f"{where}: {key} = {value} must be a finite number >= 0")
    if p.cpu_cores < 1:
        raise ProfileError(f"{where}: cpu_cores = {p.cpu_cores}; set it to the number of physical cores (>= 1)")
    if p.ram_gib <= 0:
        raise ProfileError(f"{where}: ram_gib = {p.ram_gib}; set it to the machine's RAM in GiB (> 0)")
    for key in ("dram_gbs", "nvme_gbs", "cpu_gflops"):  # every plan divides by these
        if getattr(p, key) <= 0:
            raise ProfileError(f"{where}: {key} = {getattr(p, key)}; it must be > 0 (see profiles/README.md)")
    if max(p.gpu_memory_gib, p.ram_gib) > 1 << 20:  # 1 PiB: a unit mistake, not a machine
        raise ProfileError(
            f"{where}: gpu_memory_gib / ram_gib are in GiB; {max(p.gpu_memory_gib, p.ram_gib):g} is more than a PiB"
        )
    if p.has_gpu:
        if not p.gpu_name:
            raise ProfileError(
                f"{where}: gpu_memory_gib = {p.gpu_memory_gib} but gpu_name is empty; name the GPU, "
                "or set gpu_memory_gib = 0 for a machine without one"
            )
        for key in GPU_RATES:
            if getattr(p, key) <= 0:
                raise ProfileError(
                    f"{where}: {key} = {getattr(p, key)}; a GPU profile (gpu_memory_gib = {p.gpu_memory_gib}) "
                    "needs it > 0 (see profiles/README.md for its unit)"
                )
    else:
        if p.gpu_name:
            raise ProfileError(
                f"{where}: gpu_name = {p.gpu_name!r} but gpu_memory_gib = 0; set gpu_memory_gib to the card's "
                'memory in GiB, or gpu_name = "" for a machine without a GPU'
            )
        nonzero = [key for key in GPU_RATES if getattr(p, key) != 0]
        if nonzero:
            raise ProfileError(f"{where}: {', '.join(nonzero)} must be 0 without a GPU (gpu_memory_gib = 0)")
    unknown = sorted(set(p.measured) - set(_TYPES))
    if unknown:
        raise ProfileError(f"{where}: measured names unknown fields {unknown}")


# ---- TOML ----------------------------------------------------------------------------------------------------


def _from_mapping(data: Mapping[str, Any], origin: str, source: str) -> Profile:
    unknown = sorted(set(data) - set(TOML_KEYS))
    if unknown:
        raise ProfileError(f"{origin}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TOML_KEYS)}")
    missing = [key for key in TOML_KEYS if key not in data]
    if missing:
        raise ProfileError(
            f"{origin}: missing key(s) {', '.join(missing)}; a profile sets all of: {', '.join(TOML_KEYS)}"
        )
    values: dict[str, Any] = {}
    for key in TOML_KEYS:
        value, kind = data[key], _TYPES[key]
        # bool is an int subclass in Python, but `cpu_cores = true` is a mistake, not 1
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        }[kind]
        if not ok:
            want = {"str": "a string", "int": "an integer", "float": "a number"}[kind]
            raise ProfileError(f"{origin}: {key} must be {want}, got {type(value).__name__} {value!r}")
        values[key] = float(value) if kind == "float" else value
    return Profile(**values, source=source)


def _parse_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message names the line and column
        raise ProfileError(f"{origin}: not valid TOML: {e}") from e


def profile_from_toml(path: Path) -> Profile:
    """A profile from the user's own TOML file, with the same keys as the presets."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ProfileError(f"profile file {path} does not exist; pass a preset name, 'auto', or a .toml path") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"cannot read profile file {path}: {e}") from e
    return _from_mapping(_parse_toml(text, str(path)), str(path), source=str(path))


def list_profiles() -> list[Profile]:
    """All presets shipped in the `profiles` package, sorted by name."""
    found = []
    for entry in resources.files(PRESET_PACKAGE).iterdir():
        if not entry.name.endswith(".toml"):
            continue
        origin = f"preset {entry.name}"
        profile = _from_mapping(_parse_toml(entry.read_text(encoding="utf-8"), origin), origin, source="preset")
        if profile.name != entry.name.removesuffix(".toml"):
            raise ProfileError(f"{origin}: name = {profile.name!r} must match the file name")
        found.append(profile)
    return sorted(found, key=lambda p: p.name)


def load_profile(spec: str, probe: bool = True) -> Profile:
    """A preset by name, `auto` (this machine), or a path to a .toml file."""
    if spec == AUTO:
        return detect_profile(probe)
    presets = {p.name: p for p in list_profiles()}
    if spec in presets:
        return presets[spec]
    path = Path(spec).expanduser()
    if spec.endswith(".toml") or path.is_file():
        return profile_from_toml(path)
    raise ProfileError(
        f"unknown profile {spec!r}; known: {', '.join(presets)}; or '{AUTO}' to detect this machine, "
        "or a path to a .toml file (see profiles/README.md)"
    )


# ---- auto detection ------------------------------------------------------------------------------------------


def best_seconds(fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None, inner: int = 1) -> float:
    """Fastest of `reps` timings of `inner` calls, per call; one untimed call first pays for allocation and setup."""
    fn()
    sync()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def probe_dram_gbs(nbytes: int = 512 * 2**20, reps: int = 4) -> float:
    import torch  # torch takes seconds to import; presets and TOML files do not need it

    # ones, not empty: untouched pages all map the one zero page, which reads from cache, not DRAM
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    return nbytes / best_seconds(x.sum, reps) / 1e9


def probe_cpu_gflops(n: int = 1024, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)  # [n, n] float32: bf16 matmuls are slow on AVX2-only CPUs
    return 2 * n**3 / best_seconds(lambda: a @ b, reps) / 1e9


def _probe_gpu(
    device: torch.device, nbytes: int = 256 * 2**20, matmul_n: int = 4096, reps: int = 5
) -> tuple[float, float, float]:
    """(PCIe GB/s host -> device, device memory GB/s, bf16 matmul TFLOPS), timed on `device` (cpu works, for tests)."""
    import torch

    cuda = device.type == "cuda"
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda)  # pinned, as the prefetcher's staging buffers
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    pcie = nbytes / best_seconds(lambda: src.copy_(host, non_blocking=True), reps, sync) / 1e9
    # a device-to-device copy reads and writes every byte; several per timing, as one is too short to time
    memory = 2 * nbytes / best_seconds(lambda: dst.copy_(src), reps, sync, inner=10) / 1e9
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)  # [n, n]
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16)
    tflops = 2 * matmul_n**3 / best_seconds(lambda: a @ b, reps, sync, inner=10) / 1e12
    return pcie, memory, tflops


def _physical_cores() -> int:
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or 1
    # a container or taskset may allow fewer CPUs than the host has, and only those run our threads
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return cores


def _detect_gpu() -> tuple[dict[str, Any], tuple[str, ...], str]:
    """GPU fields, the ones this machine gave, and a phrase for the description."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu_name": "", "gpu_memory_gib": 0.0, **dict.fromkeys(GPU_RATES, 0.0)}, GPU_FIELDS, "no GPU"
    if torch.cuda.device_count() > 1:
        log.info("%d GPUs visible; profiling the current one only", torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    found = {"gpu_name": props.name, "gpu_memory_gib": props.total_memory / GIB}
    how: str
    measured: tuple[str, ...]
    known = {p.gpu_name.lower(): p for p in list_profiles() if p.has_gpu}
    preset = known.get(props.name.strip().lower())
    if preset is not None:
        found |= {key: getattr(preset, key) for key in GPU_RATES}
        how, measured = f"spec of {preset.name}", ("gpu_name", "gpu_memory_gib")
    else:
        # no spec to fall back on, so an unknown GPU is timed even without `probe` (well under a second)
        pcie, memory, tflops = _probe_gpu(device)
        torch.cuda.empty_cache()  # hand the probe's buffers back, so they do not count against the engine's budget
        found |= {"pcie_gbs": pcie, "gpu_bandwidth_gbs": memory, "gpu_tflops": tflops}
        how, measured = "timed", GPU_FIELDS
    phrase = (
        f"{props.name} {found['gpu_memory_gib']:.1f} GiB ({how}: {found['gpu_bandwidth_gbs']:.0f} GB/s, "
        f"{found['gpu_tflops']:.1f} TFLOPS, PCIe {found['pcie_gbs']:.1f} GB/s)"
    )
    return found, measured, phrase


def _nvme_gbs(given: float | None) -> tuple[float, str]:
    if given is not None:
        return given, "given"
    env = os.environ.get(NVME_ENV, "").strip()
    if not env:
        return DEFAULT_NVME_GBS, "assumed"
    try:
        return float(env), f"from {NVME_ENV}"
    except ValueError as e:
        raise ProfileError(
            f"{NVME_ENV}={env!r} is not a number; set the drive's sequential read in GB/s, e.g. 7"
        ) from e


def detect_profile(probe: bool = True, nvme_gbs: float | None = None) -> Profile:
    """This machine (`auto`): RAM, cores and GPU detected; DRAM and CPU rates timed when `probe`; NVMe assumed."""
    start = time.perf_counter()
    gpu, measured, gpu_phrase = _detect_gpu()
    measured += ("ram_gib", "cpu_cores")
    ram_gib, ram_limit = _usable_ram()
    cores = _physical_cores()
    if probe:
        dram, gflops, how = probe_dram_gbs(), probe_cpu_gflops(), "timed"
        measured += ("dram_gbs", "cpu_gflops")
    else:
        dram, gflops, how = DEFAULT_DRAM_GBS, cores * DEFAULT_GFLOPS_PER_CORE, "assumed"
    nvme, nvme_how = _nvme_gbs(nvme_gbs)
    description = (
        f"detected: {gpu_phrase}, {ram_gib:.1f} GiB RAM{' (a cgroup limit)' if ram_limit else ''}, "
        f"{cores} cores, DRAM {dram:.1f} GB/s ({how}), "
        f"CPU {gflops:.0f} GFLOPS ({how}), NVMe {nvme:.1f} GB/s ({nvme_how})"
    )
    log.info("%s [%.2f s]", description, time.perf_counter() - start)
    return Profile(
        name=AUTO,
        description=description,
        **gpu,
        ram_gib=ram_gib,
        dram_gbs=dram,
        nvme_gbs=nvme,
        cpu_cores=cores,
        cpu_gflops=gflops,
        source=AUTO,
        measured=tuple(f.name for f in fields(Profile) if f.name in measured),
        ram_limit=ram_limit,
    )


def _usable_ram() -> tuple[float, str]:
    """GiB of RAM this process may use: the machine's, or its cgroup's memory limit (page cache included) when
    that is smaller, with a sentence saying so."""
    machine = psutil.virtual_memory().total
    limit = memory_limit()
    if limit is None or limit.bytes >= machine:
        return machine / GIB, ""
    return limit.bytes / GIB, (
        f"the cgroup's memory limit, {limit.bytes / GIB:.2f} GiB from {limit.source}; the machine has "
        f"{machine / GIB:.2f} GiB"
    )
