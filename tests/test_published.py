"""Invariants of the published raw records (leaderboards/*/raw): what a table shows must be what its
records claim to be."""
from pathlib import Path

import pytest

from oodbench.results import ResultStore, config_hash

RAW = sorted((Path(__file__).resolve().parents[1] / "leaderboards").glob("*/raw"))


@pytest.fixture(scope="module")
def records():
    recs = [r for raw in RAW for r in ResultStore(raw)]
    if not recs:
        pytest.skip("no published records in this checkout")
    return recs


def test_every_record_is_filed_under_its_config_hash(records):
    # a sweep recognises an existing result by this hash; a mismatch would make it rerun or mix configs
    wrong = [r["path"] for r in records
             if config_hash(r["config"]) != r["config_hash"] or r["config_hash"] not in Path(r["path"]).name]
    assert not wrong, wrong[:5]


def test_no_published_model_is_a_warm_up_checkpoint(records):
    # CAL and its ablations start adversarial training / partial sampling after a warm-up; a model picked
    # from inside the warm-up is plain ERM (and in targeted mode has never seen the pool)
    early = [r["path"] for r in records
             if "warmup_epochs" in r["method"]["params"]
             and r["method"]["params"].get("max_epochs", 0) > r["method"]["params"]["warmup_epochs"]
             and r["training"].get("best_epoch", 10 ** 9) < r["method"]["params"]["warmup_epochs"]]
    assert not early, early[:5]
