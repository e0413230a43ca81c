"""Building the C++ CPU kernels (csrc/*.cpp): compiled once per machine with the system C++ compiler into a cache
next to torch's JIT extensions, keyed by source, flags and compiler, and loaded through ctypes (which releases the GIL
while a kernel runs).

The kernels use OpenMP. torch's CPU wheel ships its own libgomp.so.1 and loads it first; a library linked against
libgomp.so.1 then shares that one runtime (the dynamic linker matches by soname), so torch's threads and the
kernels' never spin against each other. `openmp_runtimes()` says which ones a process has loaded.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BASE_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
AVX2_FLAGS = ("-mavx2", "-mfma", "-mf16c")
AVX512_FLAGS = (*AVX2_FLAGS, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mbmi2")  # BMI2: fast on these


@dataclass(frozen=True, slots=True)
class NativeBuild:
    """Where a compiled kernel lives; `compile_s` is 0.0 when it came from the cache."""

    path: Path
    compile_s: float
    isa: str = "avx2"  # the instruction set it was compiled for: "avx2" or "avx512vnni"


def cache_dir() -> Path:
    """Next to torch's JIT extensions: $TORCH_EXTENSIONS_DIR, else $XDG_CACHE_HOME (or ~/.cache)/torch_extensions."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"


def compiler() -> str | None:
    """$CXX when set (and it must exist), else g++ or c++ from PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return shutil.which("g++") or shutil.which("c++")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo ('avx2', 'fma', 'avx512_vnni', ...); empty
    elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def best_isa(flags: frozenset[str] | None = None) -> str | None:
    """The widest build this CPU runs: 'avx512vnni', 'avx2', or None (not x86-64, or no AVX2/FMA/F16C).
    $KIMI_CPU_ISA=avx2 forces the AVX2 build (to compare the two on one machine)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = cpu_flags() if flags is None else flags
    if not {"avx2", "fma", "f16c"} <= flags:
        return None
    forced = os.environ.get("KIMI_CPU_ISA", "")
    if forced and forced not in ("avx2", "avx512vnni"):
        raise RuntimeError(f"KIMI_CPU_ISA={forced!r}: use avx2 or avx512vnni (or unset it)")
    if forced == "avx2":
        return "avx2"
    wide = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "bmi2"} <= flags
    if forced == "avx512vnni" and not wide:
        raise RuntimeError("KIMI_CPU_ISA=avx512vnni, but this CPU lacks AVX-512 BW/VL/VNNI or BMI2")
    return "avx512vnni" if wide else "avx2"


def build(source: Path, stem: str, flags: tuple[str, ...], isa: str = "avx2", force: bool = False) -> NativeBuild:
    """Compile `source` with BASE_FLAGS + `flags` into the cache as `{stem}_{key}.so` unless it is there already
    (the key covers the source, the headers in its folder, the compiler and the flags).
    Raises RuntimeError saying why when it cannot."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError(f"no C++ compiler found (CXX={os.environ.get('CXX', '')!r}; set CXX or install g++)")
    all_flags = (*BASE_FLAGS, *flags)
    # the headers beside the source are part of it (#include "x.h"): a change to one rebuilds
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
    key = hashlib.sha256(source.read_bytes() + headers + " ".join((cxx, *all_flags)).encode()).hexdigest()[:16]
    path = cache_dir() / f"{stem}_{key}.so"
    if path.exists() and not force:
        return NativeBuild(path, 0.0, isa)
    path.parent.mkdir(parents=True, exist_ok=True)
    # compile to a private name, then rename: concurrent builders (test workers, two processes) never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    t0 = time.perf_counter()
    proc = subprocess.run([cxx, *all_flags, "-o", tmp, str(source)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeError(f"{cxx} failed ({proc.returncode}) on {source}:\n{proc.stderr[-2000:]}")
    os.replace(tmp, path)
    return NativeBuild(path, seconds, isa)


def openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes (libgomp, libiomp, libomp) mapped into this process (Linux; else [])."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    names = ("libgomp", "libiomp", "libomp")
    found = {line.split()[-1] for line in maps.splitlines() if any(n in line.rsplit("/", 1)[-1] for n in names)}
    return sorted(found)
