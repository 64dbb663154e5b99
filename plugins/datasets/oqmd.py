"""Plugin: dataset ``oqmd``, the OQMD compositions of the ElemNet/CrabNet benchmarks (no structures).

File ``other/oqmd_crabnet/oqmd_crabnet_formation_enthalpy_bandgap.csv.gz``
(341,700 unique compositions, read from the CrabNet 2.0.8 wheel; see its
README). Columns kept: ``id`` (``oqmd:<formula>``: the file has no OQMD ids
and formulas are unique), ``formula``, ``e_form`` (``delta_h_f``, eV/atom),
``gap`` (``band_gap``, eV; blank for 92 formulas).

Outlier rule (recorded in the dataset source): rows with
|delta_h_f| > 5 eV/atom are dropped. The README documents them as errors
(6 rows below -5 down to -198.7, 80 above 5 up to 43.5, while 99.8 % lie in
-3.59 … 2.47); the cut is the one Li et al. ("Probing out-of-distribution
generalization in machine learning for materials", 2024) apply to formation
energies (they drop e_form >= 5), made symmetric because the values below -5
are just as unphysical.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from oodbench import hookimpl
from oodbench.data import DataNotFoundError, Dataset, DatasetSpec, file_sha256

OQMD_FILE = Path("other") / "oqmd_crabnet" / "oqmd_crabnet_formation_enthalpy_bandgap.csv.gz"
OUTLIER_EV = 5.0


def load_oqmd(home: Path) -> Dataset:
    path = home / OQMD_FILE
    if not path.exists():
        raise DataNotFoundError(f"dataset oqmd: missing {path}. Copy shared/data/{OQMD_FILE} there, or set "
                                f"OODBENCH_DATA (or --data-home) to a folder laid out like shared/data.")
    # the formula "NaN" is sodium nitride, not a missing value
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], usecols=["formula", "delta_h_f", "band_gap"])
    keep = np.abs(df["delta_h_f"].to_numpy(dtype=np.float64)) <= OUTLIER_EV
    df = df[keep].reset_index(drop=True)
    formula = df["formula"].astype(str)
    table = pd.DataFrame({"id": "oqmd:" + formula, "formula": formula,
                          "e_form": df["delta_h_f"].astype(float), "gap": df["band_gap"].astype(float)})
    return Dataset("oqmd", table, {
        "kind": "csv", "path": str(path), "sha256": file_sha256(path), "rows": len(table),
        "row_rule": f"dropped |delta_h_f| > {OUTLIER_EV} eV/atom ({int((~keep).sum())} rows)"})


@hookimpl
def oodbench_datasets():
    return [DatasetSpec("oqmd", load_oqmd, "341,614 OQMD compositions (CrabNet set), formation enthalpy and "
                        "band gap; |delta_h_f| > 5 eV/atom outliers dropped", False)]
