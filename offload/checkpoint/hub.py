"""A Hugging Face repo id as `--model`, resolved offline in the local Hugging Face cache (nothing is downloaded).

`moonshotai/Kimi-K2.5` is the repo's cached snapshot folder; `unsloth/Kimi-K2.5-GGUF:UD-TQ1_0` is the first part of
that quant's GGUF set inside the snapshot (the name or folder holding `UD-TQ1_0`, case-insensitive). When the repo
or the quant is not cached, the error gives the command that downloads it.
"""

from __future__ import annotations

import re
from pathlib import Path

from offload.checkpoint.safetensors_file import CheckpointError

REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<quant>[\w.-]+))?")


def is_repo_id(spec: str) -> bool:
    """`owner/name` or `owner/name:QUANT` that is not a path on this machine."""
    return REPO_ID.fullmatch(spec) is not None and not Path(spec).exists()


def resolve_repo(spec: str, cache_dir: str | Path | None = None) -> Path:
    """The local path of repo id `spec` in the Hugging Face cache (`cache_dir`: default HF_HUB_CACHE)."""
    m = REPO_ID.fullmatch(spec)
    if m is None:
        raise CheckpointError(f"--model {spec!r} is not a Hugging Face repo id (owner/name or owner/name:QUANT)")
    repo, quant = m.group("repo"), m.group("quant")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)
    include = f" --include '*{quant}*'" if quant else ""
    get = f"hf download {repo}{include}" + ("" if cache_dir is None else f" --cache-dir {cache}")
    try:
        snapshot = Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo} is not in the local Hugging Face cache ({cache}); nothing is downloaded here. Get it with: {get}"
        ) from None
    if quant is None:
        return snapshot
    token = re.compile(rf"(^|[-_./]){re.escape(quant.lower())}($|[-_./])")
    found = sorted(p for p in snapshot.rglob("*.gguf") if token.search(str(p.relative_to(snapshot)).lower()))
    found = [p for p in found if not p.name.lower().startswith("mmproj")]
    if not found:
        have = sorted({p.parent.name if p.parent != snapshot else p.stem for p in snapshot.rglob("*.gguf")})
        raise CheckpointError(
            f"{repo} is cached at {snapshot} but holds no {quant} GGUF"
            + (f" (it has: {', '.join(have)})" if have else "")
            + f"; get it with: {get}"
        )
    return found[0]
