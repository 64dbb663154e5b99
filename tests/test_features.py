"""Composition features: hand-checkable values, and serial computation unless a pool is asked for."""
import numpy as np
import pytest

from oodbench.data import features


def test_stoichiometry_norms_match_hand_values(tmp_path, monkeypatch):
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path))
    X = features.magpie_features(["Fe2O3", "NaCl"])
    assert X.shape == (2, features.N_FEATURES)
    # Stoichiometry p-norms (Ward et al.): p=0 counts the elements; p=2 of fractions (0.4, 0.6)
    assert X[0, 0] == 2 and X[1, 0] == 2
    assert X[0, 1] == pytest.approx(np.sqrt(0.4 ** 2 + 0.6 ** 2), rel=1e-6)
    assert X[1, 1] == pytest.approx(np.sqrt(0.5), rel=1e-6)


def test_a_large_list_is_computed_without_a_process_pool(tmp_path, monkeypatch):
    # matminer's pool was 50x slower than serial inside a sweep's worker process; more than 3,000
    # distinct formulas used to switch it on
    import matminer.featurizers.base as base

    def no_pool(*a, **k):
        raise AssertionError("featurization started a process pool")

    monkeypatch.setattr(base, "Pool", no_pool)
    monkeypatch.setenv("OODBENCH_CACHE", str(tmp_path))
    formulas = [f"Fe{a}O{b}" for a in range(1, 56) for b in range(1, 56)][:3001]
    X = features.magpie_features(formulas)
    assert X.shape == (3001, features.N_FEATURES) and np.isfinite(X).all()
