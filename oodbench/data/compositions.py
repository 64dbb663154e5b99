"""Plugin: composition-only Materials Project data (no structures), read with pandas.

``mp_2019``: the mid-2019 MP snapshot kept by the Roost authors
(``other/mp_2019_roost/mp_2019_unique_composition_eform_gap.csv.gz``), one
row per composition, restricted to the 84,295 rows that have both formation
energy and PBE band gap (the CAL paper used an 84,190-row MP snapshot).
Columns: ``id`` (MP id), ``formula``, ``e_form`` (eV/atom), ``gap_pbe`` (eV).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import hookimpl
from .core import DataNotFoundError, Dataset, DatasetSpec, file_sha256

MP_2019_FILE = Path("other") / "mp_2019_roost" / "mp_2019_unique_composition_eform_gap.csv.gz"


def read_csv(path: Path) -> pd.DataFrame:
    # The formula "NaN" is sodium nitride, not a missing value.
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def require(home: Path, rel: Path, what: str) -> Path:
    path = home / rel
    if not path.exists():
        raise DataNotFoundError(
            f"{what}: missing {path}. Copy shared/data/{rel} there, or set OODBENCH_DATA (or --data-home) "
            f"to a folder laid out like shared/data.")
    return path


def load_mp_2019(home: Path) -> Dataset:
    path = require(home, MP_2019_FILE, "dataset mp_2019")
    df = read_csv(path).dropna(subset=["e_form", "gap_pbe"]).reset_index(drop=True)
    table = pd.DataFrame({"id": df["material_id"].astype(str), "formula": df["formula"].astype(str),
                          "e_form": df["e_form"].astype(float), "gap_pbe": df["gap_pbe"].astype(float)})
    return Dataset("mp_2019", table, {"kind": "csv", "path": str(path), "sha256": file_sha256(path),
                                      "rows": len(table)})


@hookimpl
def oodbench_datasets():
    return [DatasetSpec("mp_2019", load_mp_2019,
                        "84,295 MP (2019) compositions with formation energy and PBE band gap", False)]
