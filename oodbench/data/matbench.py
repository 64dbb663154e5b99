"""Plugin: the matbench datasets of the MEX tasks, loaded through matminer.

For each dataset the loader prefers the byte-exact matminer file
``<data home>/matminer/<name>.json.gz`` and reads it with
``matminer.datasets.load_dataset(name, data_home=…)``, which checks its
sha256 against matminer's metadata (and downloads it when it is missing and
the machine is online). Otherwise it reads the faithful copy
``<data home>/other/<name>/<name>.json.gz`` (structures rebuilt from CIF, so
its hash differs) with ``matminer.utils.io.load_dataframe_from_json``. The
result records which of the two it used and the file's sha256.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from .. import hookimpl
from ..io import atomic_write
from .core import DataNotFoundError, Dataset, DatasetSpec, cache_dir, file_sha256

MATBENCH = {
    # name: (target column, id prefix, description)
    "matbench_phonons": ("last phdos peak", "mb-phonons", "1,265 crystals, last phonon DOS peak (1/cm)"),
    "matbench_dielectric": ("n", "mb-dielectric", "4,764 crystals, refractive index n"),
    "matbench_log_gvrh": ("log10(G_VRH)", "mb-log-gvrh", "10,987 crystals, log10 shear modulus (GPa)"),
    "matbench_perovskites": ("e_form", "mb-perovskites", "18,928 perovskites, formation energy (eV/atom)"),
}


def _matbench_ids(prefix: str, n: int) -> list[str]:
    width = len(str(n))
    return [f"{prefix}-{i + 1:0{width}d}" for i in range(n)]


def _read_frame(name: str, home: Path) -> tuple[pd.DataFrame, dict]:
    exact = home / "matminer" / f"{name}.json.gz"
    copy = home / "other" / name / f"{name}.json.gz"
    if exact.exists() or not copy.exists():
        try:
            from matminer.datasets import load_dataset as mm_load
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = mm_load(name, data_home=str(exact.parent))
            return df, {"kind": "matminer-exact", "path": str(exact), "sha256": file_sha256(exact)}
        except Exception as exc:
            if not copy.exists():
                raise DataNotFoundError(
                    f"dataset {name!r} not found. Looked for the matminer file {exact} and the copy {copy}; "
                    f"matminer could not fetch it either ({type(exc).__name__}: {exc}). Put {name}.json.gz "
                    f"in {exact.parent}/ (or set OODBENCH_DATA / --data-home to a folder laid out like "
                    f"shared/data), or run once with internet access so matminer downloads it.") from exc
            warnings.warn(f"{exact} was not accepted by matminer ({exc}); using the copy {copy}")
    from matminer.utils.io import load_dataframe_from_json
    df = load_dataframe_from_json(str(copy), pbar=False)
    return df, {"kind": "faithful-copy", "path": str(copy), "sha256": file_sha256(copy)}


def _light_table_path(name: str, sha: str) -> Path:
    return cache_dir("tables") / f"{name}-{sha[:16]}.csv.gz"


def load_matbench(name: str, home: Path) -> Dataset:
    target, prefix, _ = MATBENCH[name]
    exact = home / "matminer" / f"{name}.json.gz"
    copy = home / "other" / name / f"{name}.json.gz"
    path = exact if exact.exists() else copy
    frame_cache: dict = {}

    def frame():
        if "df" not in frame_cache:
            frame_cache["df"], frame_cache["src"] = _read_frame(name, home)
        return frame_cache["df"], frame_cache["src"]

    light = _light_table_path(name, file_sha256(path)) if path.exists() else None
    if light is not None and light.exists():
        table = pd.read_csv(light, keep_default_na=False, na_values=[""])
        kind = "matminer-exact" if path == exact else "faithful-copy"
        source = {"kind": kind, "path": str(path), "sha256": file_sha256(path)}
    else:
        df, source = frame()
        table = pd.DataFrame({
            "id": _matbench_ids(prefix, len(df)),
            "formula": [s.composition.formula for s in df["structure"]],
            target: df[target].to_numpy(),
        })
        atomic_write(_light_table_path(name, source["sha256"]), lambda tmp: table.to_csv(tmp, index=False, compression="gzip"))
    source["rows"] = len(table)
    return Dataset(name=name, table=table, source=source,
                   _structures=lambda: list(frame()[0]["structure"]))


@hookimpl
def oodbench_datasets():
    return [DatasetSpec(name=n, load=(lambda home, n=n: load_matbench(n, home)), description=d,
                        has_structures=True)
            for n, (_, _, d) in MATBENCH.items()]
