import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from oodbench.splits import held_out, label_extrapolation, random_split
from oodbench.tasks import get_task

from conftest import needs_matbench

MEX_TASKS = ["formation-energy-bottom", "shear-modulus-bottom", "shear-modulus-top", "refractive-index-bottom",
             "refractive-index-top", "phonons-bottom", "phonons-top"]


def assert_partition(split, n):
    parts = [split.train, split.val, split.test]
    allrows = np.concatenate(parts)
    assert len(allrows) == n, "split is not complete"
    assert len(np.unique(allrows)) == n, "parts overlap"


@settings(max_examples=60, deadline=None)
@given(y=st.lists(st.integers(-20, 20).map(float), min_size=10, max_size=200), side=st.sampled_from(["top", "bottom"]))
def test_label_extrapolation_properties(y, side):
    y = np.asarray(y)
    ids = np.arange(len(y)).astype(str)
    try:
        s = label_extrapolation(y, ids, side)
    except ValueError as e:  # only when ties swallow every row
        assert "equal labels" in str(e)
        return
    assert_partition(s, len(y))
    if len(s.test) and len(s.train) + len(s.val):
        seen = y[np.concatenate([s.train, s.val])]
        if side == "top":
            assert y[s.test].min() > y[s.train].max() and y[s.test].min() >= y[s.val].max()
            assert s.extrapolation["boundary"] == seen.max()
        else:
            assert y[s.test].max() < y[s.train].min() and y[s.test].max() <= y[s.val].min()
    if len(s.val) and len(s.train):
        if side == "top":
            assert y[s.val].min() >= y[s.train].max()
        else:
            assert y[s.val].max() <= y[s.train].min()


def test_label_extrapolation_sizes_and_ties():
    y = np.arange(100, dtype=float)
    s = label_extrapolation(y, y.astype(str), "top")
    assert (len(s.test), len(s.val), len(s.train)) == (15, 15, 70)
    assert set(s.test) == set(range(85, 100))
    # ties at a cut keep exact sizes, broken by dataset order (stable sort)
    y2 = np.arange(100.0)
    y2[80:] = 90.0
    s2 = label_extrapolation(y2, y.astype(str), "top")
    assert list(s2.test) == list(range(80, 95))
    assert list(s2.val) == [95, 96, 97, 98, 99, *range(79, 69, -1)]
    with pytest.raises(ValueError, match="equal labels"):
        label_extrapolation(np.zeros(100), y.astype(str), "top")


def test_split_hash_is_deterministic_and_content_sensitive():
    y = np.random.default_rng(0).normal(size=50)
    ids = np.array([f"m{i}" for i in range(50)])
    a, b = label_extrapolation(y, ids, "bottom"), label_extrapolation(y, ids, "bottom")
    assert a.hash == b.hash
    assert label_extrapolation(y, ids, "top").hash != a.hash


def test_random_and_held_out_are_partitions():
    ids = np.arange(97).astype(str)
    assert_partition(random_split(97, ids, 0.2, 0.1, seed=3), 97)
    s = held_out(ids, np.arange(10), 0.1, seed=1)
    assert_partition(s, 97)
    assert set(s.test) == set(range(10))


@needs_matbench
@pytest.mark.parametrize("name", MEX_TASKS)
def test_mex_tasks(name):
    td = get_task(name).load()
    s = td.split
    n = len(td.y)
    assert_partition(s, n)
    assert len(s.test) == round(0.15 * n) and len(s.val) == round(0.15 * n)
    ytr, yte = td.y[s.train], td.y[s.test]
    if name.endswith("top"):
        assert yte.min() > ytr.max() and yte.min() >= td.y[s.val].max()
    else:
        assert yte.max() < ytr.min() and yte.max() <= td.y[s.val].min()
    assert np.all(np.isfinite(td.y))
