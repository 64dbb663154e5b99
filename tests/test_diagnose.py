"""The "is this task really OOD?" diagnostic: coverage, label shift, cache, plots, CLI."""
import json
import sys

import numpy as np
import pytest

from oodbench import diagnose, plugins
from oodbench.cli import main
from oodbench.results import ResultStore
from oodbench.runner import RunSpec, run
from oodbench_plugins.families import loo

from test_loo import ToyPlugin


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # PCA maps: UMAP's JIT compile takes a minute
    plugins.registries()
    plugins.register(ToyPlugin(), name="loo-toy")
    yield plugins.registries()
    plugins.reset()
    loo._member_sizes.cache_clear()


def blobs(n, d=20, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) + shift


def test_random_split_is_covered_and_far_test_is_not():
    X = blobs(3000)
    perm = np.random.default_rng(1).permutation(len(X))
    covered = diagnose.knn_coverage(X[perm[:2400]], X[perm[2400:]], n_ref=1000)
    assert covered["ood_fraction"] < 0.1  # ~0.05 by construction (95th percentile threshold)
    far = diagnose.knn_coverage(X, blobs(500, shift=4.0, seed=2), n_ref=1000)
    assert far["ood_fraction"] > 0.95 and far["median_distance_ratio"] > 2
    half = diagnose.knn_coverage(X, np.concatenate([blobs(300, seed=3), blobs(300, shift=4.0, seed=4)]),
                                 n_ref=1000)
    assert 0.4 < half["ood_fraction"] < 0.65


def test_coverage_is_seeded_and_subsamples_large_sets():
    X, T = blobs(4000), blobs(3000, shift=0.5, seed=5)
    a = diagnose.knn_coverage(X, T, n_ref=500, n_test_max=1000, seed=3)
    b = diagnose.knn_coverage(X, T, n_ref=500, n_test_max=1000, seed=3)
    assert a == b and a["n_ref"] == 500 and a["n_test_used"] == 1000
    with pytest.raises(ValueError, match="more than"):
        diagnose.knn_coverage(X[:3], T, k=5)


def test_label_shift():
    out = diagnose.label_shift(np.array([0.0, 1.0, 2.0]), np.array([-1.0, 0.5, 3.0, 2.0]))
    assert out["label_outside_fraction"] == 0.5 and out["train_label_range"] == [0.0, 2.0]


def test_standardise_keeps_constant_features_finite():
    X = np.c_[np.arange(5.0), np.full(5, 7.0)]
    Z = diagnose.standardise(X)
    assert np.all(np.isfinite(Z)) and np.allclose(Z[:, 1], 0) and np.isclose(Z[:, 0].std(), 1)


def test_task_diagnostic_is_cached_by_split_hash(toy, monkeypatch, tmp_path, capsys):
    td = toy.families.get("toy-loo-element").make("Ba").load()
    d = diagnose.diagnose_task(td)
    assert d["split_hash"] == td.split.hash and 0 <= d["ood_fraction"] <= 1
    assert diagnose.load_cached(td.split.hash) == d
    monkeypatch.setattr(diagnose, "knn_coverage", lambda *a, **k: pytest.fail("cache not used"))
    assert diagnose.diagnose_task(td) == d
    png = tmp_path / "task.png"
    assert main(["diagnose", "--task", "toy-loo-element:Ba", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "outside the training domain" in capsys.readouterr().out
    assert main(["show", "task", "toy-loo-element:Ba", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["coverage"]["ood_fraction"] == d["ood_fraction"] and shown["sizes"] == td.split.sizes()


def test_family_error_vs_coverage_plot(toy, tmp_path, capsys):
    store = ResultStore(tmp_path / "results")
    keys = ["Li", "O", "Ba"]
    for key in keys:
        run(RunSpec(task=f"toy-loo-element:{key}", method="erm", backbone="forest", seed=0, preset="small"), store)
    png = tmp_path / "fam.png"
    rc = main(["diagnose", "--family", "toy-loo-elem", "--results", str(tmp_path / "results"),
               "--plot", str(png), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "toy-loo-element" and [r["key"] for r in out["tasks"]] == sorted(keys)
    assert all(np.isfinite(r["mae[erm × forest[small]]"]) for r in out["tasks"])
    assert "erm × forest[small]" in out["spearman_vs_ood_fraction"]
    assert png.exists() and png.with_suffix(".csv").read_text().startswith("task,key,n_test,ood_fraction")
    assert main(["diagnose"]) == 2  # neither --task nor --family
    assert main(["diagnose", "--family", "toy-loo", "--results", str(tmp_path)]) == 2  # ambiguous part


def test_list_tasks_accepts_part_of_a_family_name(toy, capsys):
    assert main(["list", "tasks", "--family", "toy-loo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    fams = {r["task"].split(":")[0] for r in rows}
    assert fams == {"toy-loo-element", "toy-loo-group", "toy-loo-period"}
    assert all(r["test"] >= 15 and r["train"] > 0 for r in rows)
