"""Plugin: leave-one-element / group / period out task families (Li et al. 2024).

Li, Rubungo, Lei, Persaud, Choudhary, DeCost, Dieng & Hattrick-Simpers,
"Probing out-of-distribution generalization in machine learning for
materials" (Commun. Mater. 6, 2025; arXiv:2406.06489) build OOD tasks by
holding out every material that contains one element (or any element of one
periodic-table group or period). Here, as there: test = every row containing
the left-out key; validation = a seeded random ``VAL_FRACTION`` of the other
rows (the paper has no validation set: the benchmark's methods need one for
early stopping, so it is drawn from the training domain); train = the rest.
Only keys with at least ``MIN_TEST`` = 200 test materials become members
(this benchmark's threshold: with 200 test rows the MAE's standard error is a
few percent of it, so tasks can be compared).

Groups and periods follow pymatgen (lanthanides and actinides are group 3,
periods 6 and 7). Members and their sizes come from a cached
element-membership matrix, so listing a family does not build any split.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from oodbench import hookimpl
from oodbench.data import load_dataset
from oodbench.splits import held_out
from oodbench.tasks import TaskFamily, TaskSpec

from .elements import element_table, grouped_matrix

VAL_FRACTION = 0.1
SPLIT_SEED = 0
MIN_TEST = 200
VERSION = 1


@dataclass(frozen=True)
class LooFamilyDef:
    name: str
    dataset: str
    label: str
    by: str            # element | group | period
    what: str          # human description of the label
    min_test: int = MIN_TEST
    val_fraction: float = VAL_FRACTION
    seed: int = SPLIT_SEED

    def description(self) -> str:
        return (f"{self.what} on {self.dataset}: test = every material containing the left-out {self.by}; "
                f"val = {self.val_fraction:g} of the rest (seed {self.seed}); members with >= {self.min_test} "
                f"test rows")


FAMILIES = [LooFamilyDef(f"mp-{short}-loo-{by}", "mp_2019", label, by, what)
            for short, label, what in (("eform", "e_form", "formation energy (eV/atom)"),
                                       ("gap", "gap_pbe", "PBE band gap (eV)"))
            for by in ("element", "group", "period")]
FAMILIES.append(LooFamilyDef("oqmd-eform-loo-element", "oqmd", "e_form", "element",
                             "formation enthalpy (eV/atom)"))


def key_rows(dataset, label: str, by: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(row-contains-key matrix, keys, rows with a finite label) of a dataset."""
    G, keys = grouped_matrix(dataset, by)
    finite = np.isfinite(dataset.table[label].to_numpy(dtype=np.float64))
    return G, keys, finite


def loo_split(dataset, y: np.ndarray, by: str, key: str, val_fraction: float = VAL_FRACTION,
              seed: int = SPLIT_SEED):
    """The split that leaves out every row containing ``key``; rows with a non-finite label are in no part."""
    G, keys = grouped_matrix(dataset, by)
    if key not in keys:
        raise ValueError(f"no row of {dataset.name!r} contains {by} {key!r}")
    finite = np.isfinite(np.asarray(y, dtype=np.float64))
    has = G[:, keys.index(key)]
    return held_out(dataset.ids, np.flatnonzero(has & finite), val_fraction, seed,
                    exclude=np.flatnonzero(~finite))


@functools.lru_cache(maxsize=None)
def _member_sizes(fam: LooFamilyDef) -> dict:
    """Key → {train, val, test} for keys with at least MIN_TEST test rows (in loo_split's arithmetic)."""
    ds = load_dataset(fam.dataset)
    G, keys, finite = key_rows(ds, fam.label, fam.by)
    n_test = (G & finite[:, None]).sum(axis=0)
    n_all = int(finite.sum())
    out = {}
    for k, t in zip(keys, n_test.tolist()):
        if t < fam.min_test:
            continue
        rest = n_all - t
        n_val = int(round(fam.val_fraction * rest))
        out[k] = {"train": rest - n_val, "val": n_val, "test": t}
    return out


def _sort_key(fam: LooFamilyDef):
    if fam.by == "element":
        return lambda k: element_table()[k]["Z"]
    return int


def make_family(fam: LooFamilyDef) -> TaskFamily:
    def members() -> list[str]:
        return sorted(_member_sizes(fam), key=_sort_key(fam))

    def make(key: str) -> TaskSpec:
        sizes = _member_sizes(fam)
        if key not in sizes:
            raise ValueError(f"{fam.name}: {key!r} is not a member (fewer than {fam.min_test} test rows, or absent)")
        return TaskSpec(
            name=f"{fam.name}:{key}", version=VERSION, dataset=fam.dataset, label=fam.label,
            description=f"leave out every {fam.dataset} material containing {fam.by} {key}; {fam.what}",
            split={"kind": f"leave-one-{fam.by}-out", "key": key, "val_fraction": fam.val_fraction,
                   "seed": fam.seed, "min_test": fam.min_test},
            make_split=lambda ds, y: loo_split(ds, y, fam.by, key, fam.val_fraction, fam.seed),
            family=fam.name, tags=("loo", fam.by), meta={"sizes": dict(sizes[key])})

    return TaskFamily(fam.name, fam.description(), members, make, tags=("loo", fam.by))


@hookimpl
def oodbench_task_families():
    return [make_family(f) for f in FAMILIES]
