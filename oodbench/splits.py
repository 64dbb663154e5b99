"""Split rules: functions ``(labels, ids, rng-free params) -> Split``; all deterministic."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Split:
    """Row positions of each part. ``hash`` identifies the split by the ids in each part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    ids: np.ndarray = field(repr=False, default=None)
    extrapolation: Optional[dict] = None   # {"side": "top"|"bottom", "boundary": float} for label-extrapolation

    def __post_init__(self):
        for part in ("train", "val", "test"):
            setattr(self, part, np.asarray(getattr(self, part), dtype=np.int64))

    @property
    def hash(self) -> str:
        ids = self.ids if self.ids is not None else np.arange(max(self.sizes().values()) + 1)
        payload = {p: sorted(map(str, ids[getattr(self, p)])) for p in ("train", "val", "test")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def label_extrapolation(y: np.ndarray, ids: np.ndarray, side: str, test_fraction: float = 0.15,
                        val_fraction: float = 0.15) -> Split:
    """MEX split: the most extreme ``test_fraction`` of labels is test, the next ``val_fraction`` validation.

    Rows are ordered from the extreme end inwards by a stable sort, so equal
    labels keep dataset order and the part sizes are exact. A test label may
    equal a validation label at that cut, but every test label lies strictly
    beyond the training range; a split where ties make that impossible is an error.
    """
    y = np.asarray(y, dtype=np.float64)
    if side not in ("top", "bottom"):
        raise ValueError(f"side must be 'top' or 'bottom', got {side!r}")
    key = -y if side == "top" else y
    order = np.argsort(key, kind="stable")
    n = len(y)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    if len(train) == 0 or (len(test) and key[test].max() >= key[train].min()):
        raise ValueError(f"cannot make a {side} label-extrapolation split of {n} rows: equal labels span the "
                         f"validation part, so test labels would not lie beyond the training range")
    seen = y[np.concatenate([train, val])]
    boundary = float(seen.max() if side == "top" else seen.min())
    return Split(train, val, test, ids=np.asarray(ids),
                 extrapolation={"side": side, "boundary": boundary})


def random_split(n: int, ids: np.ndarray, test_fraction: float, val_fraction: float, seed: int = 0,
                 candidates: Optional[np.ndarray] = None) -> Split:
    """A seeded random split of ``candidates`` (default all rows); val is a fraction of the non-test part."""
    rows = np.arange(n) if candidates is None else np.asarray(candidates)
    perm = np.random.default_rng(seed).permutation(rows)
    n_test = int(round(test_fraction * len(perm)))
    rest = perm[n_test:]
    n_val = int(round(val_fraction * len(rest)))
    return Split(rest[n_val:], rest[:n_val], perm[:n_test], ids=np.asarray(ids))


def held_out(ids: np.ndarray, test_rows: np.ndarray, val_fraction: float, seed: int = 0,
             exclude: Optional[np.ndarray] = None) -> Split:
    """Test = ``test_rows``; validation = a seeded random ``val_fraction`` of the rest; train = the remainder."""
    n = len(ids)
    test_rows = np.unique(np.asarray(test_rows, dtype=np.int64))
    mask = np.ones(n, bool)
    mask[test_rows] = False
    if exclude is not None:
        mask[np.asarray(exclude, dtype=np.int64)] = False
    rest = np.random.default_rng(seed).permutation(np.flatnonzero(mask))
    n_val = int(round(val_fraction * len(rest)))
    return Split(rest[n_val:], rest[:n_val], test_rows, ids=np.asarray(ids))


def from_id_groups(ids: np.ndarray, groups: dict, train: str, val: str, test: str, y: Optional[np.ndarray] = None,
                   side: Optional[str] = None, source: str = "split file") -> Split:
    """A split read from named groups of dataset ids (frozen split files); every id must be in the dataset.

    ``groups`` maps names to id lists; ``train``/``val``/``test`` name the groups
    to use, which must be pairwise disjoint. Given ``side`` ("top"/"bottom")
    and the labels ``y``, the split also records its extrapolation boundary
    (the extreme train/validation label), as label-extrapolation splits do.
    """
    ids = np.asarray(ids)
    pos = {str(i): k for k, i in enumerate(ids)}
    if len(pos) != len(ids):
        raise ValueError(f"{source}: the dataset has duplicate ids, so ids cannot name rows")
    parts = {}
    for part, name in (("train", train), ("val", val), ("test", test)):
        if name not in groups:
            raise ValueError(f"{source} has no group {name!r} (for {part}); groups: {', '.join(sorted(groups))}")
        missing = [i for i in groups[name] if str(i) not in pos]
        if missing:
            raise ValueError(f"{source}: {len(missing)} ids of group {name!r} (e.g. {missing[0]!r}) are not in the "
                             f"dataset; the dataset changed since the split was made: regenerate the split "
                             f"file and bump the task version")
        parts[part] = np.sort(np.array([pos[str(i)] for i in groups[name]], dtype=np.int64))
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = np.intersect1d(parts[a], parts[b])
        if len(both):
            raise ValueError(f"{source}: {a} and {b} share {len(both)} rows (e.g. id {ids[both[0]]!r})")
    extrapolation = None
    if side is not None:
        if side not in ("top", "bottom") or y is None:
            raise ValueError(f"{source}: side must be 'top' or 'bottom' (with labels), got {side!r}")
        seen = np.asarray(y, dtype=np.float64)[np.concatenate([parts["train"], parts["val"]])]
        extrapolation = {"side": side, "boundary": float(seen.max() if side == "top" else seen.min())}
    return Split(parts["train"], parts["val"], parts["test"], ids=ids, extrapolation=extrapolation)
