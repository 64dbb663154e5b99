import json
import os

import pytest

from oodbench.io import atomic_write
from oodbench.results import ResultStore, config_hash


def _config(seed=0):
    return {"task": "t", "task_version": 1, "split_hash": "abc", "method": "erm", "method_params": {"lr": 1e-3},
            "backbone": "irnet", "backbone_params": {}, "seed": seed, "adapt_k": 0}


def test_config_hash_is_order_independent_and_sensitive():
    a = _config()
    b = dict(reversed(list(a.items())))
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(_config(seed=1))


def test_atomic_write_leaves_old_file_on_crash(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, crash)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind


def test_store_roundtrip_ignores_foreign_json(tmp_path):
    store = ResultStore(tmp_path)
    rec = {"schema_version": 1, "config": _config(), "metrics": {"mae": 1.0}}
    path = store.write(rec)
    assert store.exists(_config()) and not store.exists(_config(seed=2))
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"x": 1}))
    recs = list(store)
    assert len(recs) == 1 and recs[0]["path"] == str(path)


def test_git_state_names_uncommitted_files_and_hashes_the_diff(tmp_path):
    import shutil
    import subprocess
    from oodbench.provenance import git_state
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / "b.txt").write_text("two\n")
    git("add", ".")
    git("commit", "-qm", "init")
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False and "dirty_files" not in clean
    (tmp_path / "a.txt").write_text("changed\n")
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    first = git_state(tmp_path)
    assert first["dirty"] is True and first["dirty_files"] == ["a.txt"]
    (tmp_path / "a.txt").write_text("changed again\n")
    assert git_state(tmp_path)["diff_sha256"] != first["diff_sha256"]
    assert git_state(tmp_path / "missing")["commit"] is None
