"""Which elements each row of a composition dataset contains, fast and cached.

``member_matrix`` gives a boolean [rows, symbols] matrix from the formulas. It
reads element symbols with a regular expression instead of pymatgen's
``Composition`` (several times faster: ~1 s for the 87k MP formulas, checked
against pymatgen on all of them), and caches the matrix on disk per dataset
content, so ``oodbench list`` reads it back instead of parsing.
A symbol counts as present when its amount is not an explicit zero; brackets
only multiply amounts, so they cannot remove an element and are ignored.
"""
from __future__ import annotations

import functools
import re

import numpy as np

from oodbench.data import cache_dir
from oodbench.io import atomic_write

CACHE_VERSION = "elements-v1"
_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")
_SYMBOL = re.compile(r"[A-Z][a-z]?")


def elements_of(formula: str) -> set[str]:
    """Element symbols of ``formula`` (e.g. ``'Ag(AuF4)2'`` → {Ag, Au, F}); unknown symbols raise."""
    if "0" in formula:  # only then can an amount be an explicit zero
        out = {sym for sym, amount in _TOKEN.findall(formula) if not (amount and float(amount) == 0.0)}
    else:
        out = set(_SYMBOL.findall(formula))
    unknown = out - element_table().keys()
    if unknown:
        raise ValueError(f"formula {formula!r}: {', '.join(sorted(unknown))} is not an element symbol")
    return out


@functools.lru_cache(maxsize=1)
def element_table() -> dict[str, dict]:
    """Symbol → {Z, group, period} for Z = 1..103, from pymatgen (lanthanides/actinides: group 3, as pymatgen)."""
    from pymatgen.core.periodic_table import Element
    table = {}
    for z in range(1, 104):
        e = Element.from_Z(z)
        table[e.symbol] = {"Z": z, "group": int(e.group), "period": int(e.row)}
    return table


def symbol_matrix(formulas) -> tuple[np.ndarray, list[str]]:
    """[N, S] bool matrix (row contains symbol) and the symbols, ordered by atomic number."""
    table = element_table()
    sets = [elements_of(str(f)) for f in formulas]
    symbols = sorted(set().union(*sets) if sets else set(), key=lambda s: table[s]["Z"])
    col = {s: j for j, s in enumerate(symbols)}
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    cols = np.fromiter((col[x] for s in sets for x in s), dtype=np.int64, count=len(rows))
    M = np.zeros((len(sets), len(symbols)), dtype=bool)
    M[rows, cols] = True
    return M, symbols


_MEMO: dict = {}


def member_matrix(dataset) -> tuple[np.ndarray, list[str]]:
    """``symbol_matrix`` of a dataset's formulas, memoised per process and cached on disk by content."""
    key = (dataset.name, dataset.content_key())
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir("families") / f"{CACHE_VERSION}-{dataset.name}-{dataset.content_key()}.npz"
    n = len(dataset)
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            symbols = [str(s) for s in z["symbols"]]
            M = np.unpackbits(z["bits"], axis=0, count=n).astype(bool)
    else:
        M, symbols = symbol_matrix(dataset.formulas)

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez_compressed(f, symbols=np.array(symbols), bits=np.packbits(M, axis=0))
        atomic_write(path, write)
    _MEMO[key] = (M, symbols)
    return M, symbols


def grouped_matrix(dataset, by: str) -> tuple[np.ndarray, list[str]]:
    """Row contains an element of each key: ``by`` is element, group or period; keys are strings."""
    M, symbols = member_matrix(dataset)
    if by == "element":
        return M, symbols
    if by not in ("group", "period"):
        raise ValueError(f"leave-one-out by {by!r} is not known; use element, group or period")
    table = element_table()
    vals = np.array([table[s][by] for s in symbols])
    keys = sorted(set(vals.tolist()))
    G = np.stack([M[:, vals == k].any(axis=1) for k in keys], axis=1) if keys else np.zeros((len(M), 0), bool)
    return G, [str(k) for k in keys]
