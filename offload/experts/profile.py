"""Expert routing profiles: how often the router picked each (layer, expert) in a past run, saved as JSON.

A profile is a trace-based prior (in the spirit of MoE-Infinity): `kimi-offload bench --save-expert-profile FILE`
writes the router's picks per MoE layer; `--expert-profile FILE` reads them back, and under a RAM budget the
hottest experts are read in at load time and never evicted (`ExpertStore.hold`). The file names the model's shape;
a profile of another model (other layers or expert counts) is refused, as is any malformed file, with what to do.

Format (version 1), one JSON object:

    {"format": "kimi-offload expert profile", "version": 1,
     "model": {"num_hidden_layers": 61, "n_routed_experts": 384, "moe_layers": [1, ..., 60]},
     "source": "free text: which checkpoint and prompt", "tokens": 4096,
     "picks": {"1": [count of expert 0, ..., count of expert 383], ..., "60": [...]}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from offload.config import ModelConfig
from offload.errors import OffloadError

FORMAT = "kimi-offload expert profile"
VERSION = 1
Key = tuple[int, int]  # (layer, expert)


class ProfileError(OffloadError):
    """An expert profile file that cannot be used for this model."""


@dataclass(frozen=True, slots=True)
class ExpertProfile:
    """Router picks per MoE layer: picks[layer][expert]."""

    picks: Mapping[int, tuple[int, ...]]
    tokens: int = 0  # tokens the picks came from (prompt and generated)
    source: str = ""

    def hottest(self, n: int | None = None) -> list[Key]:
        """The `n` most picked (layer, expert) keys, most picked first (ties: lower layer, then lower expert);
        experts never picked are left out. None: all picked ones."""
        ranked = sorted(
            ((c, layer, e) for layer, counts in self.picks.items() for e, c in enumerate(counts) if c > 0),
            key=lambda t: (-t[0], t[1], t[2]),
        )
        return [(layer, e) for _, layer, e in ranked[:n]]

    def share(self, keys: list[Key]) -> float:
        """The fraction of all picks that went to `keys`."""
        total = sum(sum(c) for c in self.picks.values())
        return sum(self.picks[layer][e] for layer, e in keys) / total if total else 0.0


def _shape(cfg: ModelConfig) -> dict[str, object]:
    return {
        "num_hidden_layers": cfg.num_hidden_layers,
        "n_routed_experts": cfg.n_routed_experts,
        "moe_layers": list(cfg.moe_layers),
    }


def save_profile(
    path: Path, cfg: ModelConfig, picks: Mapping[int, tuple[int, ...]], tokens: int, source: str = ""
) -> ExpertProfile:
    """Write `picks` (per MoE layer, one count per routed expert) for a model of cfg's shape; returns what was
    written. The file is replaced whole (written beside it, then renamed)."""
    profile = _checked({int(k): tuple(v) for k, v in picks.items()}, cfg, str(path))
    if tokens < 0:
        raise ProfileError(f"tokens = {tokens}; give 0 or more")
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": _shape(cfg),
        "source": source,
        "tokens": tokens,
        "picks": {str(layer): list(profile[layer]) for layer in sorted(profile)},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return ExpertProfile(profile, tokens, source)


def load_profile(path: Path, cfg: ModelConfig) -> ExpertProfile:
    """Read a profile written by save_profile and check it against the model it is for."""
    where = f"--expert-profile {path}"
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ProfileError(
            f"{where}: no such file; write one with `kimi-offload bench --save-expert-profile {path}`"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{where}: cannot be read ({e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"{where}: not JSON ({e.msg} at line {e.lineno}); is it an expert profile?") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileError(f'{where}: not an expert profile (no "format": "{FORMAT}")')
    if doc.get("version") != VERSION:
        raise ProfileError(
            f"{where}: version {doc.get('version')!r}; this kimi-offload reads version {VERSION}: write it again"
        )
    model = doc.get("model")
    if model != _shape(cfg):
        raise ProfileError(
            f"{where} is for another model ({_describe(model)}); this one has {_describe(_shape(cfg))}: "
            "write a profile with this checkpoint"
        )
    tokens = doc.get("tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ProfileError(f'{where}: "tokens" is {tokens!r}; expected a count >= 0')
    raw = doc.get("picks")
    if not isinstance(raw, dict):
        raise ProfileError(f'{where}: "picks" must be an object of layer -> counts')
    picks: dict[int, tuple[int, ...]] = {}
    for key, counts in raw.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise ProfileError(f"{where}: picks key {key!r} is not a layer number")
        if not isinstance(counts, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
        ):
            raise ProfileError(f"{where}: picks of layer {key} must be a list of counts >= 0")
        picks[int(key)] = tuple(counts)
    return ExpertProfile(_checked(picks, cfg, where), tokens, str(doc.get("source", "")))


def _checked(picks: dict[int, tuple[int, ...]], cfg: ModelConfig, where: str) -> dict[int, tuple[int, ...]]:
    layers = set(cfg.moe_layers)
    if set(picks) != layers:
        missing, extra = sorted(layers - set(picks)), sorted(set(picks) - layers)
        raise ProfileError(
            f"{where}: its layers do not match the model's MoE layers (missing {missing[:5]}, not MoE {extra[:5]})"
        )
    for layer, counts in picks.items():
        if len(counts) != cfg.n_routed_experts:
            raise ProfileError(
                f"{where}: layer {layer} has {len(counts)} counts; the model has {cfg.n_routed_experts} routed experts"
            )
    if not any(any(c) for c in picks.values()):
        raise ProfileError(f"{where}: every count is 0 (a run with no routed tokens); profile a run that generates")
    return picks


def _describe(shape: object) -> str:
    if not isinstance(shape, dict):
        return "no model shape"
    layers = shape.get("moe_layers")
    n = len(layers) if isinstance(layers, list) else "?"
    return f"{shape.get('num_hidden_layers')} layers, {n} MoE, {shape.get('n_routed_experts')} routed experts"
