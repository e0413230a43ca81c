"""The memory limit of this process's control group (Docker, Kubernetes, SLURM, systemd): the RAM it may use,
page cache included, which can be far below the machine's.

cgroup v2: `memory.max` ("max" when unlimited) in the process's group and each ancestor, under the unified mount.
cgroup v1: `memory.limit_in_bytes` under the memory controller's mount (a huge number when unlimited). Inside a
container's cgroup namespace /proc/self/cgroup says "/" and the mount's root is the container's group, so the
path is tried as given and then as the mount's root. The smallest limit on the way up applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60  # v1 reports 2^63 - 4096 (rounded to pages) for "no limit"


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    bytes: int
    source: str  # the file it came from, e.g. "/sys/fs/cgroup/memory/job42/memory.limit_in_bytes (cgroup v1)"


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < UNLIMITED else None


def _groups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(the v2 group path, the v1 memory group path) of the process, from /proc/<pid>/cgroup."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _smallest(base: Path, group: str, name: str, kind: str) -> MemoryLimit | None:
    """The smallest limit in `group` and its ancestors under the mount `base` (the group as given, else the
    mount's root as the group: a cgroup namespace)."""
    best: MemoryLimit | None = None
    parts = [p for p in group.strip("/").split("/") if p]
    candidates = [base.joinpath(*parts)] if parts else []
    candidates.append(base)
    for start in candidates:
        if not start.is_dir():
            continue
        here = start
        while True:
            value = _read_limit(here / name)
            if value is not None and (best is None or value < best.bytes):
                best = MemoryLimit(value, f"{here / name} ({kind})")
            if here == base or base not in here.parents:
                break
            here = here.parent
        return best
    return best


def memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> MemoryLimit | None:
    """This process's cgroup memory limit, v2 or v1; None when there is none (or no cgroup file system)."""
    v2, v1 = _groups(proc_cgroup)
    found: list[MemoryLimit] = []
    if v2 is not None:
        base = root / "unified" if (root / "unified").is_dir() and not (root / "cgroup.controllers").exists() else root
        if (base / "cgroup.controllers").exists():
            hit = _smallest(base, v2, "memory.max", "cgroup v2")
            if hit is not None:
                found.append(hit)
    if v1 is not None and (root / "memory").is_dir():
        hit = _smallest(root / "memory", v1, "memory.limit_in_bytes", "cgroup v1")
        if hit is not None:
            found.append(hit)
    return min(found, key=lambda m: m.bytes) if found else None
