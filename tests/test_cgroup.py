"""Issue 18, item 2: the planner's RAM is the smaller of the machine's and the process's cgroup memory limit
(v1 and v2, faked in a temporary directory), and the plan says which it used."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.planner import profile as profile_mod
from offload.planner.cgroup import MemoryLimit, memory_limit

GIB = 1 << 30


def _tree(tmp: Path, proc: str, files: dict[str, str], v2_root: bool = False) -> tuple[Path, Path]:
    root = tmp / "cgroup"
    root.mkdir()
    if v2_root:
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc_file = tmp / "cgroup.proc"
    proc_file.write_text(proc)
    return proc_file, root


def test_v2_takes_the_smallest_limit_up_the_tree(tmp_path):
    proc, root = _tree(
        tmp_path,
        "0::/user.slice/job42\n",
        {"user.slice/memory.max": f"{8 * GIB}\n", "user.slice/job42/memory.max": "max\n"},
        v2_root=True,
    )
    limit = memory_limit(proc, root)
    assert limit is not None and limit.bytes == 8 * GIB
    assert limit.source == f"{root / 'user.slice' / 'memory.max'} (cgroup v2)"


def test_v2_inside_a_namespace_reads_the_mount_root(tmp_path):
    proc, root = _tree(tmp_path, "0::/kubepods/pod1/ctr\n", {"memory.max": f"{2 * GIB}\n"}, v2_root=True)
    limit = memory_limit(proc, root)  # the path is the host's; the mount's root is the container's group
    assert limit is not None and limit.bytes == 2 * GIB


def test_v1_memory_controller(tmp_path):
    proc, root = _tree(
        tmp_path,
        "9:name=systemd:/\n4:memory:/process_api/abc\n3:cpuset:/\n",
        {
            "memory/process_api/abc/memory.limit_in_bytes": "9223372036854771712\n",  # unlimited: 2^63 - 4096
            "memory/process_api/memory.limit_in_bytes": f"{3584 << 20}\n",  # 3.5 GiB on the parent
            "memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    limit = memory_limit(proc, root)
    assert limit is not None and limit.bytes == 3584 << 20 and "(cgroup v1)" in limit.source


def test_hybrid_takes_the_smaller_of_v1_and_v2(tmp_path):
    proc, root = _tree(
        tmp_path,
        "4:memory:/job\n0::/job\n",
        {
            "memory/job/memory.limit_in_bytes": f"{6 * GIB}\n",
            "unified/cgroup.controllers": "memory\n",
            "unified/job/memory.max": f"{5 * GIB}\n",
        },
    )
    limit = memory_limit(proc, root)
    assert limit is not None and limit.bytes == 5 * GIB and "(cgroup v2)" in limit.source


@pytest.mark.parametrize(
    ("proc", "files", "v2"),
    [
        ("0::/a\n", {"a/memory.max": "max\n"}, True),  # v2, no limit
        ("4:memory:/a\n", {"memory/a/memory.limit_in_bytes": "9223372036854771712\n"}, False),  # v1, no limit
        ("4:memory:/a\n", {"memory/a/memory.limit_in_bytes": "lots\n"}, False),  # unreadable value
        ("garbage\n", {}, False),
        ("", {}, False),
    ],
)
def test_no_limit(tmp_path, proc, files, v2):
    p, root = _tree(tmp_path, proc, files, v2_root=v2)
    assert memory_limit(p, root) is None


def test_no_cgroup_files_at_all(tmp_path):
    assert memory_limit(tmp_path / "missing", tmp_path / "none") is None


def test_auto_profile_and_the_plan_use_the_cgroup_limit(monkeypatch):
    import psutil

    from offload.planner.plan import RuntimeConfig, make_plan
    from offload.planner.report import plan_sections
    from offload.planner.shapes import resolve_model

    machine = psutil.virtual_memory().total
    fake = MemoryLimit(4 * GIB, "/sys/fs/cgroup/memory/job/memory.limit_in_bytes (cgroup v1)")
    monkeypatch.setattr(profile_mod, "memory_limit", lambda: fake)
    p = profile_mod.detect_profile(probe=False)
    if machine <= 4 * GIB:
        pytest.skip("this machine has no more RAM than the fake limit")
    assert p.ram_gib == 4.0 and "cgroup" in p.description and "4.00 GiB from /sys/fs/cgroup/memory/job" in p.ram_limit
    name, cfg, storage = resolve_model("kimi-k2.5")
    plan = make_plan(name, cfg, storage, p, RuntimeConfig(context=4096))
    assert plan.ram_bytes <= 4 * GIB or not plan.fits
    titles = [t for t, _ in plan_sections(plan)]
    assert any(t.startswith("RAM (4 GiB: the cgroup's memory limit") for t in titles), titles
    monkeypatch.setattr(profile_mod, "memory_limit", lambda: MemoryLimit(machine * 2, "x"))
    assert profile_mod.detect_profile(probe=False).ram_limit == ""  # a limit above the machine's RAM changes nothing
