"""Routing profiles: the file's format, its bad-input errors, and the store holding a profile's hottest experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offload.checkpoint import open_checkpoint
from offload.experts.profile import FORMAT, VERSION, ProfileError, load_profile, save_profile
from offload.experts.store import ExpertStore
from offload.planner.shapes import shape_config

K25 = shape_config("kimi-k2.5").model  # 61 layers, MoE 1..60, 384 routed experts


def _picks(cfg=K25):  # type: ignore[no-untyped-def]
    """Expert e of layer l picked (l + e) % 7 times: ties and zeros on purpose."""
    return {layer: tuple((layer + e) % 7 for e in range(cfg.n_routed_experts)) for layer in cfg.moe_layers}


def test_a_profile_round_trips_and_ranks_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    saved = save_profile(path, K25, _picks(), 1234, "k2.5: bench")
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT == "kimi-offload expert profile" and doc["version"] == VERSION == 1
    assert doc["model"] == {"num_hidden_layers": 61, "n_routed_experts": 384, "moe_layers": list(range(1, 61))}
    assert doc["tokens"] == 1234 and doc["source"] == "k2.5: bench" and sorted(doc["picks"], key=int)[0] == "1"
    back = load_profile(path, K25)
    assert back.picks == saved.picks == _picks() and back.tokens == 1234 and back.source == "k2.5: bench"
    # the most picked: count 6 where (l + e) % 7 == 6; ties by layer, then expert: layer 1's experts 5, 12, 19 ...
    assert back.hottest(4) == [(1, 5), (1, 12), (1, 19), (1, 26)]
    never = sum(1 for layer in K25.moe_layers for e in range(384) if (layer + e) % 7 == 0)
    assert len(back.hottest()) == 60 * 384 - never  # experts never picked are not ranked
    total = sum(sum(c) for c in _picks().values())
    assert back.share([(1, 5), (2, 0)]) == pytest.approx((6 + 2) / total)
    assert not list(tmp_path.glob("*.tmp"))  # written beside, then renamed


def _write(tmp_path: Path, **change: object) -> Path:
    doc: dict = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"num_hidden_layers": 61, "n_routed_experts": 384, "moe_layers": list(range(1, 61))},
        "source": "",
        "tokens": 10,
        "picks": {str(layer): list(c) for layer, c in _picks().items()},
    }
    doc.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


def test_bad_profiles_are_refused_with_what_to_do(tmp_path: Path) -> None:
    def refused(path: Path, match: str) -> None:
        with pytest.raises(ProfileError, match=match):
            load_profile(path, K25)

    refused(tmp_path / "missing.json", r"no such file; write one with `kimi-offload bench --save-expert-profile")
    (tmp_path / "text.json").write_text("layer,expert\n1,2\n")
    refused(tmp_path / "text.json", r"not JSON .* at line 1\); is it an expert profile\?")
    (tmp_path / "list.json").write_text("[1, 2]")
    refused(tmp_path / "list.json", "not an expert profile")
    refused(_write(tmp_path, format="something else"), "not an expert profile")
    refused(_write(tmp_path, version=2), "version 2; this kimi-offload reads version 1: write it again")
    other = {"num_hidden_layers": 6, "n_routed_experts": 64, "moe_layers": [1, 2, 3, 4, 5]}
    refused(
        _write(tmp_path, model=other),
        r"for another model \(6 layers, 5 MoE, 64 routed experts\); this one has "
        r"61 layers, 60 MoE, 384 routed experts",
    )
    refused(_write(tmp_path, tokens=-1), r"\"tokens\" is -1")
    refused(_write(tmp_path, tokens=True), r"\"tokens\" is True")
    refused(_write(tmp_path, picks=[1, 2]), r"\"picks\" must be an object")
    picks = {str(layer): list(c) for layer, c in _picks().items()}
    refused(_write(tmp_path, picks={**picks, "x": [0] * 384}), "picks key 'x' is not a layer number")
    refused(_write(tmp_path, picks={**picks, "3": [1] * 383}), "layer 3 has 383 counts; the model has 384")
    refused(_write(tmp_path, picks={**picks, "3": [-1] + [1] * 383}), "picks of layer 3 must be a list of counts >= 0")
    refused(_write(tmp_path, picks={**picks, "3": [1.5] * 384}), "picks of layer 3 must be a list of counts >= 0")
    del picks["60"]
    refused(_write(tmp_path, picks=picks), r"do not match the model's MoE layers \(missing \[60\], not MoE \[\]\)")
    refused(_write(tmp_path, picks={**picks, "60": [0] * 384, "0": [1] * 384}), r"not MoE \[0\]")
    zeros = {str(layer): [0] * 384 for layer in K25.moe_layers}
    refused(_write(tmp_path, picks=zeros), "every count is 0")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    refused(tmp_path / "bin.json", "cannot be read")


def test_saving_checks_the_picks_against_the_model(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="layer 2 has 3 counts"):
        save_profile(tmp_path / "p.json", K25, {**_picks(), 2: (1, 2, 3)}, 5)
    with pytest.raises(ProfileError, match="tokens = -3"):
        save_profile(tmp_path / "p.json", K25, _picks(), -3)
    assert not (tmp_path / "p.json").exists()


def test_the_store_holds_the_hottest_within_its_share_and_never_evicts_them(mini_k25: Path) -> None:
    with open_checkpoint(mini_k25) as ckpt:
        cfg = ckpt.config
        assert cfg.n_routed_experts == 384
        eb = ExpertStore(ckpt, None).expert_bytes
        assert ExpertStore(ckpt, None).hold([(1, 0)]) == 0  # unbounded: nothing is released, nothing held
        layer = cfg.moe_layers[0]
        hot = [(layer, e) for e in range(100, 130)]
        small = ExpertStore(ckpt, 390 * eb)
        assert small.hold(hot, 0.5) == 390 - 384  # the rest keeps one layer's 384 experts, whatever the share
        store = ExpertStore(ckpt, 400 * eb)
        with pytest.raises(ValueError, match=r"share = 1\.0"):
            store.hold(hot, 1.0)
        assert store.hold(hot[:10] + hot[:1], 0.02) == 8  # int(0.02 x 400) = 8, most picked first, duplicates once
        assert store.held() == frozenset(hot[:8]) and store.capacity == 400 - 8
        assert store.counters.held == 8 and store.resident_bytes == 8 * eb
        assert store.hold(hot, 0.5) == 16 - 8  # up to 400 - 384 = 16 in all
        held = hot[:16]
        assert store.held() == frozenset(held) and store.capacity == 384
        # a working set larger than the rest of the budget goes through: the held ones are never given up
        others = [(lay, e) for lay in cfg.moe_layers for e in range(cfg.n_routed_experts) if (lay, e) not in held]
        for i in range(0, 600, 6):
            keys = others[i : i + 6]
            store.acquire(keys)
            store.release(keys)
            assert store.resident_bytes <= 400 * eb
        assert all(store.resident(k) for k in held) and store.counters.released >= 600 - 384
        assert store.acquire(held[:2]) == ["ram", "ram"]
        store.release(held[:2])
        assert store.hold(hot, 0.5) == 0  # already at its share
