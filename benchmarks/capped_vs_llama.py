"""kimi-offload and llama.cpp on one GGUF file under a memory cap (a benchmark, not a CI test; needs root).

Each run is one process alone in a memory cgroup (v1 `memory.limit_in_bytes` or v2 `memory.max`, page cache
included) capped at a fraction of the file's size, or uncapped; the page cache is dropped before every run; runs
alternate per cap: llama-bench with its defaults, llama-bench `--repack 0 -lm mmap` (it maps instead of copying),
then `kimi-offload bench --cold` with default flags (its budget comes from the cap, offload/planner/cgroup.py).

Reported per run: decode and prefill tok/s, disk bytes read per token (/proc/PID/io read_bytes over prompt +
generated tokens; for kimi-offload this includes `bench`'s own sequential read of the file, its disk probe, so its
decode reads are also given from its JSON, against the disk limit), major page faults, whether the OOM killer ended
it or --timeout did (a run thrashing past it is killed and reported as timed out, with no tok/s); and the file's
sequential read from a cold page cache, measured in the same run (the disk limit).

    sudo python benchmarks/capped_vs_llama.py --gguf FILE --llama-bin DIR [--caps 0.3,0.5,0.7,none]
        [--threads 2] [--prompt-len 32] [--gen-len 16] [--timeout 300] [--json OUT]
        [--runners llama,llama-mmap,ours,ours-profile,ours-baseline] [--expert-profile FILE] [--baseline DIR]

ours-profile is ours with `--expert-profile FILE`; ours-baseline is ours run from another checkout (e.g.
`git worktree add /tmp/base COMMIT`), so that one change is measured on its own in the same alternation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CG = Path("/sys/fs/cgroup")


@dataclass
class Outcome:
    runner: str
    cap_fraction: float | None
    cap_bytes: int | None
    decode_tok_s: float | None
    prefill_tok_s: float | None
    read_bytes: int
    read_bytes_per_token: float
    major_faults: int
    oom_killed: bool
    exit_code: int
    wall_s: float
    decode_disk_gbs: float | None = None  # kimi-offload's own measure of its decode reads
    timed_out: bool = False  # killed after --timeout seconds (thrashing)


class Cgroup:
    """One memory cgroup, v2 when the unified hierarchy is mounted at /sys/fs/cgroup, v1 otherwise."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.v2 = (CG / "cgroup.controllers").exists()
        self.path = (CG / name) if self.v2 else (CG / "memory" / name)
        self.path.mkdir(exist_ok=True)
        if self.v2:
            (self.path / "memory.max").write_text("max" if limit is None else str(limit))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text("-1" if limit is None else str(limit))
        self.procs = self.path / ("cgroup.procs" if self.v2 else "tasks")

    def oom_kills(self) -> int:
        f = self.path / ("memory.events" if self.v2 else "memory.oom_control")
        for line in f.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def disk_gbs(path: Path, limit: int = 4 << 30) -> float:
    """Sequential read of the file (at most `limit` bytes) from a cold page cache, GB/s."""
    drop_caches()
    n, t = 0, time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while n < limit and (chunk := f.read(64 << 20)):
            n += len(chunk)
    return n / (time.perf_counter() - t) / 1e9


def run_capped(
    cmd: list[str], group: Cgroup, timeout: float, cwd: Path | None = None
) -> tuple[int, str, int, int, float, bool, bool]:
    """(exit code, stdout, read bytes, major faults, wall s, OOM-killed, timed out) of `cmd` run inside `group`;
    killed after `timeout` seconds."""
    drop_caches()
    kills = group.oom_kills()

    def enter() -> None:
        group.procs.write_text(str(os.getpid()))

    with tempfile.TemporaryFile(mode="w+") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, preexec_fn=enter, cwd=cwd)
        read, faults, timed_out = 0, 0, False
        while proc.poll() is None:
            if time.perf_counter() - t > timeout:
                proc.kill()
                proc.wait()
                timed_out = True
                break
            try:
                io = dict(line.split(": ") for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines())
                read = int(io["read_bytes"])
                faults = int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[9])  # majflt
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.2)
        wall = time.perf_counter() - t
        out.seek(0)
        stdout = out.read()
    oom = group.oom_kills() > kills or (not timed_out and proc.returncode in (-9, 137))
    return proc.returncode, stdout, read, faults, wall, oom, timed_out


def llama_bench(bin_dir: Path, gguf: Path, args: argparse.Namespace, extra: list[str]) -> list[str]:
    cmd = [str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(args.threads), "-r", "1", "-o", "json"]
    return [*cmd, "-p", str(args.prompt_len), "-n", str(args.gen_len), *extra]


def parse_llama(stdout: str) -> tuple[float | None, float | None]:
    try:
        rows = json.loads(stdout)
    except json.JSONDecodeError:
        return None, None
    tg = next((r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0), None)
    pp = next((r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0), None)
    return tg, pp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--llama-bin", type=Path, required=True, help="llama.cpp's build/bin")
    ap.add_argument("--caps", default="0.3,0.5,0.7,none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--runners", default="llama,llama-mmap,ours")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a thrashing run is killed")
    ap.add_argument(
        "--expert-profile", type=Path, help="runner ours-profile: ours with --expert-profile FILE (bench wrote it)"
    )
    ap.add_argument(
        "--baseline", type=Path, help="runner ours-baseline: ours run from this checkout (an earlier commit's worktree)"
    )
    args = ap.parse_args()
    runners = args.runners.split(",")
    if "ours-profile" in runners and args.expert_profile is None:
        sys.exit("runner ours-profile needs --expert-profile FILE")
    if "ours-baseline" in runners and (args.baseline is None or not (args.baseline / "offload").is_dir()):
        sys.exit("runner ours-baseline needs --baseline DIR, a kimi-offload checkout")
    if os.geteuid() != 0:
        sys.exit("run as root: it writes cgroup limits and drops the page cache")
    size = args.gguf.stat().st_size
    tokens = args.prompt_len + args.gen_len
    disk = disk_gbs(args.gguf)
    results: list[Outcome] = []
    for cap in args.caps.split(","):
        frac = None if cap == "none" else float(cap)
        limit = None if frac is None else int(size * frac)
        group = Cgroup("kimi-offload-bench", limit)
        try:
            for runner in runners:
                json_out = Path(tempfile.mkdtemp()) / "bench.json"
                if runner == "llama":
                    cmd = llama_bench(args.llama_bin, args.gguf, args, [])
                elif runner == "llama-mmap":
                    cmd = llama_bench(args.llama_bin, args.gguf, args, ["--repack", "0", "-lm", "mmap"])
                elif runner in ("ours", "ours-profile", "ours-baseline"):
                    cmd = [sys.executable, "-m", "offload.cli", "bench", "--model", str(args.gguf), "--cold"]
                    cmd += ["--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len), "--runs", "1"]
                    cmd += ["--device", "cpu", "--json", str(json_out)]
                    if runner == "ours-profile":
                        cmd += ["--expert-profile", str(args.expert_profile)]
                else:
                    sys.exit(f"unknown runner {runner!r}: llama, llama-mmap, ours, ours-profile, ours-baseline")
                cwd = args.baseline if runner == "ours-baseline" else ROOT
                rc, stdout, read, faults, wall, oom, late = run_capped(cmd, group, args.timeout, cwd=cwd)
                if runner.startswith("ours"):
                    data = json.loads(json_out.read_text()) if rc == 0 and json_out.exists() else {}
                    tg, pp = data.get("decode_tok_s"), data.get("prefill_tok_s")
                    dgbs = data.get("decode_disk_gbs")
                else:
                    dgbs = None
                    tg, pp = parse_llama(stdout) if rc == 0 else (None, None)
                o = Outcome(runner, frac, limit, tg, pp, read, read / tokens, faults, oom, rc, wall, dgbs, late)
                results.append(o)
                print(json.dumps(asdict(o)), flush=True)
        finally:
            group.remove()
    print(f"\n{args.gguf.name}: {size / 1e9:.2f} GB; disk {disk:.2f} GB/s sequential (cold, this run)\n")
    print(
        "| cap | runner | decode tok/s | prefill tok/s | disk MB / token | decode reads, of the disk | major faults | "
        "OOM-killed | timed out |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for o in results:
        cap = "none" if o.cap_fraction is None else f"{o.cap_fraction:.0%} ({o.cap_bytes / 1e9:.2f} GB)"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        reads = "-" if o.decode_disk_gbs is None else f"{o.decode_disk_gbs:.2f} GB/s, {o.decode_disk_gbs / disk:.0%}"
        print(
            f"| {cap} | {o.runner} | {fmt(o.decode_tok_s)} | {fmt(o.prefill_tok_s)} | "
            f"{o.read_bytes_per_token / 1e6:.1f} | {reads} | "
            f"{o.major_faults:,} | {'yes' if o.oom_killed else 'no'} | "
            f"{f'yes ({o.wall_s:.0f} s)' if o.timed_out else 'no'} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"file": str(args.gguf), "size": size, "disk_gbs": disk, "runs": [asdict(o) for o in results]}, indent=2
            )
        )


if __name__ == "__main__":
    main()
