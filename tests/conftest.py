import os
from pathlib import Path

import pytest

# Tests read the real datasets; default to the shared/ folder beside the clone, as CI lays it out.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("OODBENCH_DATA") and _SHARED.exists():
    os.environ["OODBENCH_DATA"] = str(_SHARED)


def has_data(*rel: str) -> bool:
    home = Path(os.environ.get("OODBENCH_DATA", ""))
    return all((home / r).exists() for r in rel)


needs_matbench = pytest.mark.skipif(
    not has_data("matminer/matbench_phonons.json.gz", "other/matbench_dielectric"),
    reason="matbench data not found: set OODBENCH_DATA to a folder laid out like shared/data")
