"""Is a task really out of distribution? Coverage of its test set by the training data.

Li et al., "Probing out-of-distribution generalization in machine learning
for materials" (Commun. Mater. 6, 2025) found that most heuristic OOD tasks
(leave out an element, group, period, crystal system) have test materials in
regions of representation space the training data already covers: those
tasks test interpolation, and only tasks whose test data lie outside the
training domain are hard. This module measures that per task:

* representation coverage: the inputs are the 145 Magpie composition
  features standardised over the whole dataset (one fixed representation for
  every task on it, so numbers are comparable across a family). A seeded
  subsample R of the training rows is the reference; each point's distance to
  the training domain is its mean distance to its k nearest points of R (for
  points of R, leaving itself out). ``ood_fraction`` is the fraction of test
  points farther than the ``quantile`` (0.95) of R's own distances, so a test
  set drawn like the training data scores about 1 - quantile = 0.05 and one
  entirely outside the training domain scores 1. The paper judged coverage
  with kernel densities in a UMAP/t-SNE map; a k-NN distance in the full
  feature space is used here because it needs no fitted projection.
* label shift: the fraction of test labels outside the training label range.

Results are cached on disk by split hash (and the diagnostic settings), shown
by ``oodbench show task`` and plotted by ``oodbench diagnose``.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from .data import cache_dir
from .io import atomic_write_json

SETTINGS = {"representation": "magpie145 standardised over the dataset", "k": 5, "n_ref": 5000,
            "n_test_max": 20000, "quantile": 0.95, "seed": 0, "version": 1}


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def standardise(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature over all rows; constant features are left at 0."""
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    return ((X - X.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)).astype(np.float32)


def knn_coverage(Z_train: np.ndarray, Z_test: np.ndarray, k: int = 5, n_ref: int = 5000,
                 quantile: float = 0.95, seed: int = 0, n_test_max: int = 20000) -> dict:
    """Fraction of test points outside the training domain by k-NN distance (see the module docstring)."""
    from sklearn.neighbors import NearestNeighbors
    if len(Z_train) <= k + 1 or len(Z_test) == 0:
        raise ValueError(f"coverage needs more than {k + 1} training points and a test point "
                         f"(got {len(Z_train)} and {len(Z_test)})")
    rng = np.random.default_rng(seed)
    ref = Z_train[rng.choice(len(Z_train), size=min(n_ref, len(Z_train)), replace=False)]
    test = Z_test if len(Z_test) <= n_test_max else Z_test[rng.choice(len(Z_test), n_test_max, replace=False)]
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(ref)
    d_ref = nn.kneighbors(ref, n_neighbors=k + 1)[0][:, 1:].mean(axis=1)   # column 0 is the point itself
    d_test = nn.kneighbors(test, n_neighbors=k)[0].mean(axis=1)
    tau = float(np.quantile(d_ref, quantile))
    return {"ood_fraction": float(np.mean(d_test > tau)), "threshold": tau,
            "median_distance_ratio": float(np.median(d_test) / max(np.median(d_ref), 1e-12)),
            "n_ref": int(len(ref)), "n_test_used": int(len(test))}


def label_shift(y_train: np.ndarray, y_test: np.ndarray) -> dict:
    lo, hi = float(np.min(y_train)), float(np.max(y_train))
    y_test = np.asarray(y_test, dtype=np.float64)
    sd = float(np.std(y_train)) or 1.0
    return {"label_outside_fraction": float(np.mean((y_test < lo) | (y_test > hi))) if len(y_test) else float("nan"),
            "label_mean_shift_sd": float((np.mean(y_test) - np.mean(y_train)) / sd) if len(y_test) else float("nan"),
            "train_label_range": [lo, hi]}


def dataset_features(dataset) -> np.ndarray:
    """Standardised composition features of every row (the disk-cached Magpie features)."""
    from .data.features import magpie_features
    key = (dataset.name, dataset.content_key())
    if key not in _FEATURES:
        _FEATURES[key] = standardise(magpie_features(dataset.formulas))
    return _FEATURES[key]


_FEATURES: dict = {}


def _cache_path(split_hash: str, settings: dict) -> Path:
    return cache_dir("diagnostics") / f"{split_hash}-{_settings_key(settings)}.json"


def load_cached(split_hash: str, settings: dict = SETTINGS) -> Optional[dict]:
    path = _cache_path(split_hash, settings)
    return json.loads(path.read_text()) if path.exists() else None


def diagnose_task(task_data, settings: dict = SETTINGS, use_cache: bool = True) -> dict:
    """Coverage and label shift of a loaded task (``Task.load()``), cached by its split hash."""
    split = task_data.split
    if use_cache:
        hit = load_cached(split.hash, settings)
        if hit is not None:
            return hit
    Z = dataset_features(task_data.dataset)
    s = settings
    cov = knn_coverage(Z[split.train], Z[split.test], k=s["k"], n_ref=s["n_ref"], quantile=s["quantile"],
                       seed=s["seed"], n_test_max=s["n_test_max"])
    out = {"task": task_data.spec.name, "split_hash": split.hash, "sizes": split.sizes(), "settings": dict(s),
           **cov, **label_shift(task_data.y[split.train], task_data.y[split.test])}
    atomic_write_json(_cache_path(split.hash, settings), out)
    return out


# ------------------------------------------------------------------ plots

def _embed_2d(Z: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D map: UMAP when umap-learn is installed, else PCA."""
    try:
        import umap  # optional: pulls in numba
    except ImportError:
        umap = None
    if umap is not None:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": seeded runs are serial
            return umap.UMAP(n_components=2, random_state=seed).fit_transform(Z), "UMAP"
    from sklearn.decomposition import PCA
    return PCA(n_components=2, random_state=seed).fit_transform(Z), "PCA"


def plot_task(task_data, path, diag: Optional[dict] = None, n_max: int = 3000, seed: int = 0) -> Path:
    """Train / validation / test of one task in a 2-D map of the standardised features (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    split = task_data.split
    Z = dataset_features(task_data.dataset)
    rng = np.random.default_rng(seed)
    parts = {p: getattr(split, p) for p in ("val", "train", "test")}  # val first: it would hide train
    picked = {p: (r if len(r) <= n_max else rng.choice(r, n_max, replace=False)) for p, r in parts.items()}
    rows = np.concatenate(list(picked.values()))
    E, how = _embed_2d(Z[rows], seed)
    fig, ax = plt.subplots(figsize=(7, 6))
    style = {"train": ("#7f7f7f", 4, 0.45), "val": ("#1f77b4", 5, 0.45), "test": ("#d62728", 4, 0.35)}
    start = 0
    for p, r in picked.items():
        c, sz, a = style[p]
        ax.scatter(E[start:start + len(r), 0], E[start:start + len(r), 1], s=sz, c=c, alpha=a, lw=0,
                   label=f"{p} (n={len(parts[p])}{', shown ' + str(len(r)) if len(r) < len(parts[p]) else ''})")
        start += len(r)
    title = f"{task_data.spec.name}\n{how} of standardised Magpie features"
    if diag:
        title += f"; test outside training domain: {diag['ood_fraction']:.2f}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{how} 1")
    ax.set_ylabel(f"{how} 2")
    ax.legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def family_table(family: str, records: list[dict], metric: str = "mae", log=print,
                 all_members: bool = False) -> list[dict]:
    """One row per member task with results (or every member): coverage, label shift, mean metric per model."""
    from .leaderboard import row_labels
    from .plugins import registries
    from .tasks import get_task
    by_task: dict = defaultdict(lambda: defaultdict(list))
    records = [r for r in records if r["config"]["task"].startswith(family + ":") and not r["adapt"]["k"]
               and metric in r["metrics"]]
    for r, label in zip(records, row_labels(records)):
        by_task[r["config"]["task"]][label].append(float(r["metrics"][metric]))
    tasks = sorted(by_task)
    if all_members:
        tasks = [f"{family}:{m}" for m in registries().families.get(family).members()]
    rows = []
    for t in tasks:
        td = get_task(t).load()
        d = diagnose_task(td)
        log(f"  {t}: test outside training domain {d['ood_fraction']:.3f}")
        rows.append({"task": t, "key": t.split(":", 1)[1], "n_test": d["sizes"]["test"],
                     "ood_fraction": d["ood_fraction"], "label_outside_fraction": d["label_outside_fraction"],
                     "label_mean_shift_sd": d["label_mean_shift_sd"],
                     **{f"{metric}[{m}]": float(np.mean(v)) for m, v in sorted(by_task[t].items())}})
    return rows


def plot_family(rows: list[dict], family: str, metric: str, path) -> tuple[Path, dict]:
    """Test error against coverage over a family's tasks, one series per method × backbone (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr
    series = sorted({k for r in rows for k in r if k.startswith(f"{metric}[")})
    fig, ax = plt.subplots(figsize=(8.5, 6))
    markers = "osD^vP*X"
    rho = {}
    # colour = how far the test labels' mean lies from the training labels' (in training SDs): a task can be
    # covered in input space and still hard when its labels are shifted (a systematic offset)
    shifts = [abs(r.get("label_mean_shift_sd", 0.0)) for r in rows]
    norm = matplotlib.colors.Normalize(0, max(1.0, max(shifts, default=1.0)))
    sc = None
    for i, s in enumerate(series):
        pts = [(r["ood_fraction"], r[s], r["key"], abs(r.get("label_mean_shift_sd", 0.0)))
               for r in rows if s in r and np.isfinite(r[s])]
        if not pts:
            continue
        x, y, keys, shift = map(list, zip(*pts))
        name = s[len(metric) + 1:-1]
        enough = len(x) > 2 and len(set(x)) > 1
        r_s = spearmanr(x, y).statistic if enough else float("nan")
        r_shift = spearmanr(shift, y).statistic if enough and len(set(shift)) > 1 else float("nan")
        rho[name] = {"spearman": float(r_s), "spearman_label_shift": float(r_shift), "n_tasks": len(x)}
        sc = ax.scatter(x, y, marker=markers[i % len(markers)], s=30, alpha=0.8, c=shift, cmap="viridis",
                        norm=norm, edgecolors="k", linewidths=0.3,
                        label=f"{name} (n={len(x)}, Spearman ρ={r_s:.2f})")
        if i == 0:  # name the worst tasks once, so the hard ones can be read off the figure
            worst = np.argsort(y)[:8] if metric in ("r2", "spearman") else np.argsort(y)[::-1][:8]
            for j in worst:
                ax.annotate(keys[j], (x[j], y[j]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="|test − train label mean| / train label SD")
    ax.set_xlabel("fraction of test materials outside the training domain (k-NN distance > 95th pct of train)")
    ax.set_ylabel(f"test {metric}")
    if metric in ("mae", "rmse", "gmean"):
        ax.set_yscale("log")
    n_tasks = sum(1 for r in rows if any(s in r for s in series))
    ax.set_title(f"{family}: test {metric} vs coverage ({n_tasks} tasks)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path, rho


def resolve_family(name: str) -> str:
    """A registered family name from an exact name or a unique part of one."""
    from .plugins import registries
    from .registry import UnknownNameError
    regs = registries()
    if name in regs.families:
        return name
    hits = [f for f in regs.families.names() if name in f]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UnknownNameError(f"{name!r} matches several families ({', '.join(hits)}); give one")
    return regs.families.get(name).name  # raises with "did you mean"


def safe_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]", "_", task.replace(":", "="))


def cli_diagnose(args) -> int:
    """``oodbench diagnose --task NAME`` or ``--family NAME --results DIR`` (see ``oodbench diagnose -h``)."""
    import sys
    if bool(args.task) == bool(args.family):
        raise ValueError("give exactly one of --task NAME or --family NAME")
    if args.task:
        from .tasks import get_task
        td = get_task(args.task).load()
        d = diagnose_task(td)
        if args.plot:
            print(f"wrote {plot_task(td, args.plot, d)}", file=sys.stderr)
        if args.json:
            print(json.dumps(d, indent=1))
        else:
            print(f"{d['task']} (split {d['split_hash']}): train {d['sizes']['train']}, test {d['sizes']['test']}\n"
                  f"  test outside the training domain: {d['ood_fraction']:.3f} (k-NN distance > the "
                  f"{d['settings']['quantile']:.0%} quantile of training points'; ~{1 - d['settings']['quantile']:.2f} "
                  f"for an in-distribution test set)\n"
                  f"  median test/train k-NN distance: {d['median_distance_ratio']:.2f}\n"
                  f"  test labels outside the training range: {d['label_outside_fraction']:.3f}; test mean shift "
                  f"{d['label_mean_shift_sd']:+.2f} training SDs")
        return 0
    from .results import ResultStore
    family = resolve_family(args.family)
    records = [r for r in ResultStore(args.results) if r["config"]["task"].startswith(family + ":")]
    if not records and not args.all:
        raise ValueError(f"no results for family {family!r} in {args.results}/; run e.g. `oodbench sweep "
                         f"--task '{family}:*' --method erm --backbone forest --seeds 0` first, or give --all "
                         f"for the coverage of every member")
    rows = family_table(family, records, args.metric, log=lambda *a: print(*a, file=sys.stderr),
                        all_members=args.all)
    out = {"family": family, "metric": args.metric, "tasks": rows}
    if args.plot:
        path, rho = plot_family(rows, family, args.metric, args.plot)
        out["spearman_vs_ood_fraction"] = rho
        table = Path(path).with_suffix(".csv")
        import pandas as pd
        pd.DataFrame(rows).to_csv(table, index=False, float_format="%.5g")
        print(f"wrote {path} and {table}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        from tabulate import tabulate
        print(tabulate(rows, headers="keys", floatfmt=".4f"))
        for name, r in out.get("spearman_vs_ood_fraction", {}).items():
            print(f"{name}: Spearman ρ({args.metric}, ood_fraction) = {r['spearman']:.3f}, "
                  f"ρ({args.metric}, |label mean shift|) = {r['spearman_label_shift']:.3f} over {r['n_tasks']} tasks")
    return 0
