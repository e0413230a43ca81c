"""What a wheel ships: every native source the kernels compile at run time (a header left out of package data
builds in the source tree and fails after `pip install`, where the slow torch fallback would hide it)."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as offload/planner/profile.py reads profiles
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_package_data_ships_every_native_source() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kernels"]
    sources = sorted(p.relative_to(ROOT / "kernels").as_posix() for p in (ROOT / "kernels" / "csrc").iterdir())
    assert sources, "kernels/csrc is empty"
    missing = [s for s in sources if not any(fnmatch.fnmatch(s, g) for g in globs)]
    assert not missing, f"pyproject.toml's package-data for kernels leaves out {missing}"
