"""One stats object for the expert runtime: where experts came from, disk traffic, prediction quality, time.

Counters are cumulative since loading; subtract two snapshots for one answer or one benchmark run. `generate
--stats`, `chat /stats`, the server's /metrics and `bench` all read this object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

PHASES = ("prefill", "decode")  # decode: forward passes of one token


@dataclass(slots=True)
class PhaseCounts:
    """Counters of one phase. Expert uses are (layer, expert) pairs a forward pass needed, by where they ran from."""

    tokens: int = 0
    passes: int = 0  # forward passes
    from_gpu: int = 0  # in a GPU slot (or copied into one this step)
    from_ram: int = 0  # resident in RAM
    from_disk: int = 0  # waited for the disk
    disk_bytes: int = 0  # read from disk on the compute path
    disk_wait_s: float = 0.0  # compute path time waiting for disk reads
    prefetch_bytes: int = 0  # read from disk ahead of use by the prefetcher
    prefetch_s: float = 0.0  # prefetcher time reading
    slot_copies: int = 0  # experts copied into GPU slots
    cpu_s: float = 0.0  # wall time of the CPU expert work
    gpu_s: float = 0.0  # wall time of the GPU-slot expert work
    predicted: int = 0  # prediction: experts guessed, experts chosen, guessed and chosen (summed over layers)
    chosen: int = 0
    hit: int = 0

    def __sub__(self, other: PhaseCounts) -> PhaseCounts:
        return PhaseCounts(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def copy(self) -> PhaseCounts:
        return replace(self)

    @property
    def expert_uses(self) -> int:
        return self.from_gpu + self.from_ram + self.from_disk

    @property
    def precision(self) -> float:
        return self.hit / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.hit / self.chosen if self.chosen else 0.0

    def per_token(self, value: float) -> float:
        return value / self.tokens if self.tokens else 0.0


@dataclass(frozen=True, slots=True)
class ExpertStats:
    """A snapshot of the expert runtime's counters (cumulative) and state (current)."""

    phases: Mapping[str, PhaseCounts]
    calls: int = 0  # MoE layer calls
    expert_runs: int = 0  # routed experts run (each (layer, expert) once per call that needs it)
    layer_recall: Mapping[int, tuple[int, int, int]] = field(default_factory=dict)  # decode: predicted, chosen, hit
    choices: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # per MoE layer: router picks per expert
    ram_budget_bytes: int | None = None  # None: unbounded
    resident_bytes: int = 0  # routed expert bytes resident now (accounted)
    peak_resident_bytes: int = 0
    released_bytes: int = 0  # pages given back to the OS past the budget
    expert_bytes: int = 0
    gpu_slots: int = 0
    slot_evictions: int = 0
    prefetch: bool = False
    prefetched: int = 0
    prefetch_used: int = 0  # prefetched experts used before being evicted
    prefetch_skipped: int = 0  # guesses dropped: the budget was full of experts in use or in flight
    held: int = 0  # experts a routing profile named, held resident since load (state)
    held_bytes: int = 0  # what reading them in at load time brought from disk
    device: str = "cpu"

    def __sub__(self, other: ExpertStats) -> ExpertStats:
        """Counters since `other` (state fields keep this snapshot's values)."""
        layers = {}
        for layer, (pred, chosen, hit) in self.layer_recall.items():
            p0, c0, h0 = other.layer_recall.get(layer, (0, 0, 0))
            layers[layer] = (pred - p0, chosen - c0, hit - h0)
        picks = {}
        for layer, counts in self.choices.items():
            before = other.choices.get(layer, (0,) * len(counts))
            picks[layer] = tuple(a - b for a, b in zip(counts, before, strict=True))
        return replace(
            self,
            phases={p: self.phases[p] - other.phases[p] for p in PHASES},
            calls=self.calls - other.calls,
            expert_runs=self.expert_runs - other.expert_runs,
            layer_recall=layers,
            choices=picks,
            released_bytes=self.released_bytes - other.released_bytes,
            slot_evictions=self.slot_evictions - other.slot_evictions,
            prefetched=self.prefetched - other.prefetched,
            prefetch_used=self.prefetch_used - other.prefetch_used,
            prefetch_skipped=self.prefetch_skipped - other.prefetch_skipped,
        )

    def top_share(self, fraction: float) -> float:
        """Mean over MoE layers of the share of router picks that went to the most picked `fraction` of experts
        (uniform routing: `fraction`); 0 when nothing was routed."""
        shares = []
        for counts in self.choices.values():
            total = sum(counts)
            if total:
                k = max(1, round(fraction * len(counts)))
                shares.append(sum(sorted(counts, reverse=True)[:k]) / total)
        return sum(shares) / len(shares) if shares else 0.0

    def to_dict(self, wall_s: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Every figure with its unit in its name; `wall_s` (phase -> seconds) adds the disk GB/s of each phase."""
        out: dict[str, Any] = {
            "device": self.device,
            "moe_calls": self.calls,
            "expert_runs": self.expert_runs,
            "ram_budget_bytes": self.ram_budget_bytes,
            "resident_bytes": self.resident_bytes,
            "peak_resident_bytes": self.peak_resident_bytes,
            "released_bytes": self.released_bytes,
            "expert_bytes": self.expert_bytes,
            "gpu_slots": self.gpu_slots,
            "slot_evictions": self.slot_evictions,
            "prefetch": self.prefetch,
            "prefetched_experts": self.prefetched,
            "prefetch_used": self.prefetch_used,
            "prefetch_skipped": self.prefetch_skipped,
            "held_experts": self.held,
            "held_load_bytes": self.held_bytes,
        }
        for name, c in self.phases.items():
            d = {f.name: getattr(c, f.name) for f in fields(c)}
            d.update(
                experts_per_token={
                    "gpu": c.per_token(c.from_gpu),
                    "ram": c.per_token(c.from_ram),
                    "disk": c.per_token(c.from_disk),
                },
                disk_bytes_per_token=c.per_token(c.disk_bytes + c.prefetch_bytes),
                precision=c.precision,
                recall=c.recall,
                cpu_ms_per_token=1e3 * c.per_token(c.cpu_s),
                gpu_ms_per_token=1e3 * c.per_token(c.gpu_s),
            )
            if wall_s and wall_s.get(name):
                d["wall_s"] = wall_s[name]
                d["disk_gbs"] = (c.disk_bytes + c.prefetch_bytes) / wall_s[name] / 1e9
            out[name] = d
        out["routing"] = {
            "top10_share": self.top_share(0.1),
            "top25_share": self.top_share(0.25),
            "picks": sum(sum(c) for c in self.choices.values()),
        }
        out["decode_recall_by_layer"] = {
            str(layer): (hit / chosen if chosen else 0.0)
            for layer, (_, chosen, hit) in sorted(self.layer_recall.items())
        }
        return out

    def lines(self, wall_s: Mapping[str, float] | None = None) -> list[str]:
        """Human-readable summary, one phase per line plus the state."""
        out = []
        for name, c in self.phases.items():
            if not c.tokens:
                continue
            uses = c.expert_uses or 1
            disk = c.disk_bytes + c.prefetch_bytes
            rate = ""
            if wall_s and wall_s.get(name):
                rate = f" = {disk / wall_s[name] / 1e9:.2f} GB/s over {wall_s[name]:.2f} s"
            guess = f"; next-layer guesses: precision {c.precision:.0%}, recall {c.recall:.0%}" if c.chosen else ""
            out.append(
                f"{name}: {c.tokens:,} tokens; experts per token {c.per_token(c.expert_uses):.1f} "
                f"(GPU slot {c.from_gpu / uses:.0%}, RAM {c.from_ram / uses:.0%}, disk {c.from_disk / uses:.0%}); "
                f"disk {c.per_token(disk) / 1e6:.2f} MB/token{rate} (prefetched {c.prefetch_bytes / 1e6:,.1f} MB, "
                f"waited {c.disk_wait_s:.2f} s){guess}; CPU experts {1e3 * c.per_token(c.cpu_s):.2f} ms/token, "
                f"GPU experts {1e3 * c.per_token(c.gpu_s):.2f} ms/token"
            )
        if any(sum(c) for c in self.choices.values()):
            out.append(
                f"routing: the most picked 10% of experts take {self.top_share(0.1):.0%} of picks, the top 25% "
                f"take {self.top_share(0.25):.0%} (uniform: 10% and 25%)"
            )
        budget = "unbounded" if self.ram_budget_bytes is None else f"{self.ram_budget_bytes / 1e9:.3f} GB"
        out.append(
            f"experts in RAM: {self.resident_bytes / 1e9:.3f} GB now, peak {self.peak_resident_bytes / 1e9:.3f} GB, "
            f"budget {budget}, released {self.released_bytes / 1e9:.3f} GB; GPU slots {self.gpu_slots} on "
            f"{self.device}; prefetch {'on' if self.prefetch else 'off'} ({self.prefetched:,} read ahead, "
            f"{self.prefetch_used:,} used, {self.prefetch_skipped:,} skipped for budget)"
            + (
                f"; {self.held:,} held from a routing profile ({self.held_bytes / 1e9:.3f} GB read at load)"
                if self.held
                else ""
            )
        )
        return out
