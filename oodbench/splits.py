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

    Rows are ordered from the extreme end inwards by a stable sort (ties keep
    dataset order); a run of equal labels at a cut goes wholly to the more
    extreme part, so test labels lie strictly beyond every train and
    validation label.
    """
    y = np.asarray(y, dtype=np.float64)
    if side not in ("top", "bottom"):
        raise ValueError(f"side must be 'top' or 'bottom', got {side!r}")
    key = -y if side == "top" else y
    order = np.argsort(key, kind="stable")
    n = len(y)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    ks = key[order]
    # `ks` ascends from the extreme; cuts must not split equal labels (the cut index belongs to the next part)
    c1 = n_test
    while 0 < c1 < n and ks[c1] == ks[c1 - 1]:
        c1 += 1
    c2 = max(c1, n_test + n_val)
    while 0 < c2 < n and ks[c2] == ks[c2 - 1]:
        c2 += 1
    test, val, train = order[:c1], order[c1:c2], order[c2:]
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
