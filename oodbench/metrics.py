"""Plugin: the core metrics. Each takes (y_true, y_pred, info) in the task's label units.

``info`` carries the split's extrapolation facts ({"side", "boundary"}) for
label-extrapolation tasks; metrics that need them return NaN elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from . import hookimpl


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray, dict], float]
    higher_is_better: bool
    description: str = ""

    def __call__(self, y_true, y_pred, info: dict | None = None) -> float:
        y_true = np.asarray(y_true, dtype=np.float64)
        y_pred = np.asarray(y_pred, dtype=np.float64)
        if y_true.shape != y_pred.shape or y_true.ndim != 1:
            raise ValueError(f"metric {self.name}: y_true {y_true.shape} and y_pred {y_pred.shape} "
                             f"must be equal 1-D shapes")
        if len(y_true) == 0:
            return float("nan")
        return float(self.fn(y_true, y_pred, info or {}))


def mae(y, p, info):
    return np.mean(np.abs(y - p))


def rmse(y, p, info):
    return np.sqrt(np.mean((y - p) ** 2))


def r2(y, p, info):
    ss_tot = np.sum((y - y.mean()) ** 2)
    return 1.0 - np.sum((y - p) ** 2) / ss_tot if ss_tot > 0 else float("nan")


def spearman(y, p, info):
    if len(y) < 2 or np.all(y == y[0]) or np.all(p == p[0]):
        return float("nan")
    return stats.spearmanr(y, p).statistic


def error_gmean(y, p, info):
    """Geometric mean of absolute errors, each floored at 1e-10 (Yang et al. 2021's GM)."""
    return np.exp(np.mean(np.log(np.maximum(np.abs(y - p), 1e-10))))


def extrapolation_recall(y, p, info):
    """Fraction of test samples predicted beyond the train/validation boundary (MEX's detection measure)."""
    ex = info.get("extrapolation")
    if not ex:
        return float("nan")
    b = ex["boundary"]
    return np.mean(p > b) if ex["side"] == "top" else np.mean(p < b)


CORE_METRICS = [
    Metric("mae", mae, False, "mean absolute error"),
    Metric("rmse", rmse, False, "root mean squared error"),
    Metric("r2", r2, True, "coefficient of determination"),
    Metric("spearman", spearman, True, "Spearman rank correlation"),
    Metric("gmean", error_gmean, False, "geometric mean of absolute errors (floored at 1e-10)"),
    Metric("extrap_recall", extrapolation_recall, True,
           "fraction of test predictions beyond the train/val label boundary (extrapolation tasks only)"),
]


@hookimpl
def oodbench_metrics():
    return CORE_METRICS


def compute_all(y_true, y_pred, info: dict | None = None) -> dict:
    from .plugins import registries
    regs = registries()
    return {name: regs.metrics.get(name)(y_true, y_pred, info) for name in regs.metrics.names()}
