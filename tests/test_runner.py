import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from oodbench.cli import main
from oodbench.results import ResultStore
from oodbench.runner import IncompatibleError, RunSpec, check_compatible, parse_params, run, select_pool

from conftest import needs_matbench

TINY = ["--preset", "small", "--epochs", "2"]


@needs_matbench
def test_end_to_end_tiny_run(tmp_path, capsys):
    rc = main(["run", "--method", "erm", "--backbone", "irnet", "--task", "phonons-top", "--seed", "1",
               "--results", str(tmp_path), "--json", *TINY])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    c = rec["config"]
    assert (c["task"], c["method"], c["backbone"], c["seed"]) == ("phonons-top", "erm", "irnet", 1)
    assert c["method_params"]["max_epochs"] == 2 and c["backbone_params"]["widths"] == [64, 32]
    assert rec["task"]["split_hash"] == c["split_hash"] and rec["task"]["version"] == 1
    assert rec["task"]["dataset_source"]["kind"] == "matminer-exact"
    assert set(rec["metrics"]) >= {"mae", "rmse", "r2", "spearman", "gmean", "extrap_recall"}
    assert len(rec["predictions"]["y_pred"]) == rec["task"]["sizes"]["test"]
    env = rec["environment"]
    assert env["packages"]["torch"].startswith("2.") and env["device"]["type"] == "cpu"
    assert "commit" in env["git"] and rec["timing"]["wall_s"] > 0
    # the record on disk is the same, and a second run is skipped, not re-trained
    stored = list(ResultStore(tmp_path))
    assert len(stored) == 1 and stored[0]["metrics"] == rec["metrics"]
    again = run(RunSpec(task="phonons-top", method="erm", backbone="irnet", seed=1, preset="small", epochs=2),
                ResultStore(tmp_path))
    assert again.get("skipped")


@needs_matbench
def test_killed_sweep_resumes_without_losing_results(tmp_path):
    cmd = [sys.executable, "-m", "oodbench.cli", "sweep", "--method", "erm", "--task", "phonons-top",
           "--seeds", "0,1,2", "--results", str(tmp_path),
           # runs long enough (seconds) that the kill lands between the first result and the last
           "--preset", "cpu", "--epochs", "25", "-M", "patience=100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.rglob("*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.name for p in tmp_path.rglob("*.json")}
    assert 1 <= len(first) < 3, "the sweep should have been killed after its first result"
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert len(summary["skipped"]) == len(first) and len(summary["done"]) == 3 - len(first)
    recs = list(ResultStore(tmp_path))
    assert sorted(r["seed"] for r in recs) == [0, 1, 2]


@needs_matbench
def test_parallel_sweep_writes_the_same_records_as_a_serial_one(tmp_path, capsys):
    import torch
    args = ["sweep", "--method", "erm", "--backbone", "irnet", "--task", "phonons-top", "--seeds", "0,1", *TINY]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' share on a 2-core machine; keeps the float arithmetic alike
    try:
        assert main([*args, "--results", str(tmp_path / "serial")]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    assert main([*args, "--jobs", "2", "--results", str(tmp_path / "parallel"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["done"]) == 2 and not summary["failed"]
    serial = {r["config_hash"]: r for r in ResultStore(tmp_path / "serial")}
    parallel = {r["config_hash"]: r for r in ResultStore(tmp_path / "parallel")}
    assert serial.keys() == parallel.keys() and len(serial) == 2
    for h, rec in serial.items():
        assert parallel[h]["metrics"]["mae"] == pytest.approx(rec["metrics"]["mae"], rel=1e-3)
    # re-running in parallel finds everything done
    assert main([*args, "--jobs", "2", "--results", str(tmp_path / "parallel"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["skipped"]) == 2


@needs_matbench
def test_shift_sets_sharing_training_rows_train_once_and_match_a_fresh_fit(tmp_path, capsys):
    tasks = "phonons-cal-covariate,phonons-cal-prior-max,phonons-cal-iid,phonons-top"
    assert main(["sweep", "--method", "erm", "--backbone", "irnet", "--task", tasks, "--seeds", "0",
                 "--results", str(tmp_path / "sweep"), *TINY]) == 0
    recs = {r["config"]["task"]: r for r in ResultStore(tmp_path / "sweep")}
    assert recs["phonons-cal-covariate"]["fit"]["reused_from"] is None
    assert recs["phonons-cal-iid"]["fit"]["reused_from"] == "phonons-cal-covariate"
    # prior-max declares an extrapolation side for its metrics, which does not change its training rows
    assert recs["phonons-cal-prior-max"]["fit"]["reused_from"] == "phonons-cal-covariate"
    assert recs["phonons-cal-iid"]["fit"]["key"] == recs["phonons-cal-covariate"]["fit"]["key"]
    assert recs["phonons-top"]["fit"]["reused_from"] is None  # other training rows: its own fit
    assert recs["phonons-top"]["fit"]["key"] != recs["phonons-cal-iid"]["fit"]["key"]
    # the reused model predicts exactly what a model trained for that task alone predicts
    alone = run(RunSpec(task="phonons-cal-iid", method="erm", backbone="irnet", seed=0, preset="small", epochs=2),
                ResultStore(tmp_path / "alone"))
    assert alone["fit"]["reused_from"] is None
    np.testing.assert_allclose(recs["phonons-cal-iid"]["predictions"]["y_pred"], alone["predictions"]["y_pred"],
                               rtol=1e-5)
    assert recs["phonons-cal-iid"]["training"]["epochs"] == alone["training"]["epochs"]


@needs_matbench
def test_adapted_runs_never_reuse_a_fit(tmp_path):
    cache = {}
    recs = [run(RunSpec(task=t, method="finetune", backbone="irnet", seed=0, preset="small", epochs=2, adapt_k=16),
                ResultStore(tmp_path), fit_cache=cache) for t in ("phonons-cal-covariate", "phonons-cal-prior-max")]
    assert [r["fit"]["reused_from"] for r in recs] == [None, None] and not cache
    # the pool is part of what the model was trained on, so the key says these are different fits
    other_pool = run(RunSpec(task="phonons-cal-covariate", method="finetune", backbone="irnet", seed=0, preset="small",
                       epochs=2, adapt_k=8), ResultStore(tmp_path))
    assert len({r["fit"]["key"] for r in [*recs, other_pool]}) == 3


def test_unknown_names_suggest_close_ones(capsys):
    assert main(["run", "--method", "ermm", "--task", "phonons-top"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'ermm'" in err and "erm" in err
    assert main(["show", "task", "phonon-top"]) == 2
    assert "phonons-top" in capsys.readouterr().err


def test_adapt_refused_for_method_without_pool():
    with pytest.raises(IncompatibleError, match="cannot use a target pool"):
        check_compatible("phonons-top", "erm", "irnet", adapt_k=16)


def test_pool_is_drawn_from_held_out_and_excluded_from_evaluation():
    test = np.arange(100, 150)
    pool, rest = select_pool(test, 10, seed=0)
    assert len(pool) == 10 and len(rest) == 40
    assert not set(pool) & set(rest) and set(pool) | set(rest) == set(test)
    assert np.array_equal(select_pool(test, 10, seed=0)[0], pool)
    with pytest.raises(ValueError, match="whole held-out set"):
        select_pool(test, 50, seed=0)


def test_parse_params():
    assert parse_params(["lr=3e-4", "widths=512,256", "name=cos", "flag=true"]) == {
        "lr": 3e-4, "widths": (512, 256), "name": "cos", "flag": True}
    with pytest.raises(ValueError, match="name=value"):
        parse_params(["lr"])


@needs_matbench
def test_show_task_json(capsys):
    assert main(["show", "task", "refractive-index-bottom", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["splits"]) == {"train", "val", "test"}
    for s in out["splits"].values():
        assert set(s) >= {"n", "label_min", "label_max"}
    assert out["splits"]["test"]["label_max"] < out["splits"]["train"]["label_min"]


def test_a_sweep_worker_gives_tree_backbones_its_share_of_the_cores(monkeypatch):
    # two workers on two cores: a forest that took every core in each would oversubscribe the machine
    import torch
    from oodbench.runner import _worker_init
    from oodbench_plugins.backbones.trees import _n_jobs
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # restored after the test
    before = torch.get_num_threads()
    try:
        _worker_init(1)
        assert _n_jobs() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
