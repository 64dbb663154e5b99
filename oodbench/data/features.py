"""The 145 general-purpose composition attributes of Ward et al. (npj Comput. Mater. 2, 16028, 2016).

Stoichiometry (6 p-norms) + ElementProperty('magpie') (22 properties × 6
statistics) + ValenceOrbital(frac) (4) + IonProperty (3), computed with
matminer. This is the input of IR-net (Jha et al. 2019) and of the CAL paper.
Features are cached on disk keyed by the content (the formulas and this
module's FEATURE_VERSION), so a second run does not recompute them.
"""
from __future__ import annotations

import hashlib
import warnings

import numpy as np

from ..io import atomic_write
from .core import cache_dir

FEATURE_VERSION = "magpie145-v1"
N_FEATURES = 145


def _featurizer():
    from matminer.featurizers.base import MultipleFeaturizer
    from matminer.featurizers.composition import ElementProperty, IonProperty, Stoichiometry, ValenceOrbital
    # IonProperty(fast=True): one oxidation state per element, as in Ward et al.; the
    # exhaustive oxidation-state search is minutes per thousand compositions.
    return MultipleFeaturizer([Stoichiometry(), ElementProperty.from_preset("magpie"),
                               ValenceOrbital(props=["frac"]), IonProperty(fast=True)])


def feature_names() -> list[str]:
    return _featurizer().feature_labels()


def _compute(formulas: list[str], n_jobs: int) -> np.ndarray:
    from pymatgen.core import Composition
    f = _featurizer()
    f.set_n_jobs(n_jobs)
    comps = [Composition(s) for s in formulas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = f.featurize_many(comps, ignore_errors=True, pbar=False)
    X = np.asarray(rows, dtype=np.float64)
    # Elements without a tabulated property give NaN; 0 keeps the row usable, as matminer's users do.
    return np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def magpie_features(formulas: list[str], n_jobs: int = 1) -> np.ndarray:
    """[N, 145] float32 features for ``formulas`` (computed once per unique formula, cached).

    Serial unless ``n_jobs`` > 1 is asked for: matminer's process pool starts fresh interpreters that
    re-import everything, and from a sweep's worker process it was 50x slower than serial (600 formulas:
    41 s against 0.84 s; 4,359 refractive-index formulas had not finished after 10 min).
    """
    key = hashlib.sha256((FEATURE_VERSION + "\n" + "\n".join(formulas)).encode()).hexdigest()[:24]
    path = cache_dir("features") / f"{FEATURE_VERSION}-{key}.npy"
    if path.exists():
        return np.load(path)
    uniq, inverse = np.unique(np.asarray(formulas, dtype=object).astype(str), return_inverse=True)
    X = _compute(list(uniq), max(1, int(n_jobs)))[inverse]
    atomic_write(path, lambda tmp: _save(tmp, X))
    return X


def _save(tmp: str, X: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, X)
