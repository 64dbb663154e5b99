"""Plugin: leave-one-crystal-system / space-group out families on matbench sets with structures.

Li et al. 2024 ("Probing out-of-distribution generalization in machine
learning for materials") also hold out structural symmetry: every material of
one crystal system or one space group. The datasets here are
``matbench_log_gvrh`` (10,987 MP crystals, log10 shear modulus) and
``matbench_dielectric`` (4,764, ln refractive index): they have structures,
their composition features are already cached by the MEX tasks, and spglib on
them takes about a minute. ``matbench_perovskites`` is left out because its
crystals share one cubic prototype, so a crystal-system family would be
empty; the 106k-structure ``matbench_mp_gap`` CIF set would need ~10 min of
CIF parsing + spglib and a 106k-formula featurisation on 2 cores, and has no
dataset plugin yet.

Symmetry is found with spglib (symprec 0.1 Å, the Materials Project's
tolerance) once per dataset content and cached on disk. Split: test = the
left-out class; validation = a seeded random ``VAL_FRACTION`` of the rest.
Members need at least ``MIN_TEST`` test rows (lower than the MP families'
200 because these sets are 8-18x smaller).
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass

import numpy as np

from oodbench import hookimpl
from oodbench.data import cache_dir, load_dataset
from oodbench.io import atomic_write_json
from oodbench.splits import held_out
from oodbench.tasks import TaskFamily, TaskSpec

SYMPREC = 0.1
VAL_FRACTION = 0.1
SPLIT_SEED = 0
MIN_TEST = 100
VERSION = 1
CACHE_VERSION = "symmetry-v1"
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
_FIRST_SG = (1, 3, 16, 75, 143, 168, 195, 231)


def crystal_system(spacegroup: int) -> str:
    if not 1 <= spacegroup <= 230:
        return "unknown"
    return CRYSTAL_SYSTEMS[int(np.searchsorted(_FIRST_SG, spacegroup, side="right")) - 1]


def spacegroup_number(structure, symprec: float = SYMPREC) -> int:
    """International space-group number by spglib; 0 when spglib finds none."""
    import spglib
    cell = (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
    ds = spglib.get_symmetry_dataset(cell, symprec=symprec)
    return int(ds.number) if ds is not None else 0


_MEMO: dict = {}


def spacegroups(dataset) -> np.ndarray:
    """Space-group number of every row (cached on disk by dataset content and symprec)."""
    key = (dataset.name, dataset.content_key())
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir("families") / f"{CACHE_VERSION}-{dataset.name}-{dataset.content_key()}-{SYMPREC:g}.json"
    if path.exists():
        sg = np.asarray(json.loads(path.read_text())["spacegroup"], dtype=np.int64)
    else:
        print(f"oodbench: finding space groups of {len(dataset)} {dataset.name} crystals with spglib "
              f"(once; cached in {path.parent})", file=sys.stderr)
        sg = np.array([spacegroup_number(s) for s in dataset.structures], dtype=np.int64)
        atomic_write_json(path, {"dataset": dataset.name, "symprec": SYMPREC, "spacegroup": sg.tolist()})
    if len(sg) != len(dataset):
        raise ValueError(f"symmetry cache {path} has {len(sg)} rows, dataset {dataset.name} {len(dataset)}; "
                         f"delete the file to recompute it")
    _MEMO[key] = sg
    return sg


def classes(dataset, by: str) -> np.ndarray:
    sg = spacegroups(dataset)
    if by == "spacegroup":
        return sg.astype(str)
    if by == "crystal-system":
        return np.array([crystal_system(int(n)) for n in sg])
    raise ValueError(f"unknown symmetry grouping {by!r}; use crystal-system or spacegroup")


@dataclass(frozen=True)
class SymFamilyDef:
    name: str
    dataset: str
    label: str
    transform: str
    by: str
    what: str


FAMILIES = [SymFamilyDef(f"{stem}-loo-{by}", ds, label, tr, by, what)
            for stem, ds, label, tr, what in (
                ("shear-modulus", "matbench_log_gvrh", "log10(G_VRH)", "identity", "log10 shear modulus (GPa)"),
                ("refractive-index", "matbench_dielectric", "n", "ln", "ln refractive index"))
            for by in ("crystal-system", "spacegroup")]


def symmetry_split(dataset, y, by: str, key: str, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED):
    cls = classes(dataset, by)
    finite = np.isfinite(np.asarray(y, dtype=np.float64))
    test = np.flatnonzero((cls == key) & finite)
    if len(test) == 0:
        raise ValueError(f"no row of {dataset.name!r} has {by} {key!r}")
    return held_out(dataset.ids, test, val_fraction, seed, exclude=np.flatnonzero(~finite))


@functools.lru_cache(maxsize=None)
def _member_sizes(fam: SymFamilyDef) -> dict:
    ds = load_dataset(fam.dataset)
    cls = classes(ds, fam.by)
    n = len(ds)
    keys, counts = np.unique(cls[(cls != "unknown") & (cls != "0")], return_counts=True)
    out = {}
    for k, t in zip(keys.tolist(), counts.tolist()):
        if t >= MIN_TEST:
            n_val = int(round(VAL_FRACTION * (n - t)))
            out[k] = {"train": n - t - n_val, "val": n_val, "test": t}
    return out


def make_family(fam: SymFamilyDef) -> TaskFamily:
    order = (lambda k: CRYSTAL_SYSTEMS.index(k)) if fam.by == "crystal-system" else int

    def members() -> list[str]:
        return sorted(_member_sizes(fam), key=order)

    def make(key: str) -> TaskSpec:
        sizes = _member_sizes(fam)
        if key not in sizes:
            raise ValueError(f"{fam.name}: {key!r} is not a member (fewer than {MIN_TEST} test rows, or absent)")
        return TaskSpec(
            name=f"{fam.name}:{key}", version=VERSION, dataset=fam.dataset, label=fam.label,
            transform=fam.transform,
            description=f"leave out every {fam.dataset} crystal of {fam.by} {key}; {fam.what}",
            split={"kind": f"leave-one-{fam.by}-out", "key": key, "val_fraction": VAL_FRACTION,
                   "seed": SPLIT_SEED, "min_test": MIN_TEST, "symprec": SYMPREC},
            make_split=lambda ds, y: symmetry_split(ds, y, fam.by, key),
            family=fam.name, tags=("loo", fam.by), meta={"sizes": dict(sizes[key])})

    desc = (f"{fam.what} on {fam.dataset}: test = every crystal of the left-out {fam.by} (spglib, symprec "
            f"{SYMPREC:g}); val = {VAL_FRACTION:g} of the rest; members with >= {MIN_TEST} test rows")
    return TaskFamily(fam.name, desc, members, make, tags=("loo", fam.by))


@hookimpl
def oodbench_task_families():
    return [make_family(f) for f in FAMILIES]
