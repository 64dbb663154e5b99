import math

import numpy as np
import pytest

from oodbench.metrics import CORE_METRICS

M = {m.name: m for m in CORE_METRICS}
Y = np.array([1.0, 2.0, 3.0, 4.0])
P = np.array([1.5, 2.0, 2.0, 6.0])   # errors 0.5, 0, 1, 2


def test_mae_rmse_by_hand():
    assert M["mae"](Y, P) == pytest.approx((0.5 + 0 + 1 + 2) / 4)
    assert M["rmse"](Y, P) == pytest.approx(math.sqrt((0.25 + 0 + 1 + 4) / 4))


def test_r2_by_hand():
    ss_res = 0.25 + 0 + 1 + 4
    ss_tot = 2.25 + 0.25 + 0.25 + 2.25
    assert M["r2"](Y, P) == pytest.approx(1 - ss_res / ss_tot)
    assert M["r2"](Y, Y) == 1.0


def test_spearman_by_hand():
    # ranks of P with the tie averaged: [1, 2.5, 2.5, 4]; of Y: [1, 2, 3, 4]
    ry, rp = np.array([1, 2, 3, 4.0]), np.array([1, 2.5, 2.5, 4])
    expected = np.corrcoef(ry, rp)[0, 1]
    assert M["spearman"](Y, P) == pytest.approx(expected)
    assert M["spearman"](Y, -Y) == pytest.approx(-1.0)


def test_gmean_floors_zero_errors():
    expected = math.exp((math.log(0.5) + math.log(1e-10) + math.log(1) + math.log(2)) / 4)
    assert M["gmean"](Y, P) == pytest.approx(expected)


def test_extrapolation_recall():
    info = {"extrapolation": {"side": "top", "boundary": 2.5}}
    assert M["extrap_recall"](Y, P, info) == pytest.approx(0.25) 
    info_b = {"extrapolation": {"side": "bottom", "boundary": 2.5}}
    assert M["extrap_recall"](Y, P, info_b) == pytest.approx(0.75)
    assert math.isnan(M["extrap_recall"](Y, P, {}))


def test_higher_is_better_flags():
    assert not M["mae"].higher_is_better and M["spearman"].higher_is_better and M["extrap_recall"].higher_is_better


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        M["mae"](Y, P[:3])
