import numpy as np

from oodbench.leaderboard import build, metric_table, group


def rec(method, task, seed, mae, k=0, preset=None):
    return {"config": {"task": task, "method": method, "backbone": "irnet", "seed": seed, "adapt_k": k},
            "method": {"name": method, "params": {"max_epochs": 5}}, "backbone": {"name": "irnet", "params": {},
                                                                                 "preset": preset},
            "seed": seed, "adapt": {"k": k}, "metrics": {"mae": mae, "spearman": 1 - mae},
            "environment": {"device": {"type": "cpu", "name": "x"}, "git": {"commit": "abc"}}}


RECS = [rec("erm", "a", 0, 1.0), rec("erm", "a", 1, 3.0), rec("lds", "a", 0, 1.5), rec("lds", "a", 1, 1.5),
        rec("erm", "b", 0, 0.2), rec("lds", "b", 0, 0.4), rec("lds", "b", 1, 0.6), rec("erm", "a", 0, 9.0, k=8)]


def test_mean_std_bold_and_rank():
    table, header = metric_table(group(RECS), 0, "mae", False, ["a", "b"])
    rows = {line[0]: line for line in table}
    assert header == ["method × backbone", "a", "b", "avg rank"]
    assert rows["erm × irnet"][1] == f"2.0000 ± {np.std([1.0, 3.0], ddof=1):.4f}"
    assert rows["lds × irnet"][1] == "**1.5000 ± 0.0000**"
    assert rows["erm × irnet"][2] == "**0.2000 (n=1)**"    # one seed: no ± part, and the count is shown
    assert rows["erm × irnet"][3] == "1.50" and rows["lds × irnet"][3] == "1.50"


def test_higher_is_better_ranks_reverse():
    table, _ = metric_table(group(RECS), 0, "spearman", True, ["a", "b"])
    rows = {line[0]: line for line in table}
    assert rows["lds × irnet"][1].startswith("**")


def test_adapted_results_are_a_separate_table():
    md = build(RECS, "t", metrics=["mae"])
    assert "## Zero-shot" in md and "## Adapted (k = 8" in md
    zero = md.split("## Adapted")[0]
    assert "9.0000" not in zero


def test_publish_writes_gzipped_raw_records_that_rebuild_the_table(tmp_path):
    from oodbench.leaderboard import publish
    from oodbench.results import ResultStore
    recs = [dict(r, schema_version=1) for r in RECS]
    publish(recs, tmp_path, "t", metrics=["mae"])
    raw = sorted(tmp_path.glob("raw/**/*.json.gz"))
    assert raw, "raw records must be written beside the table"
    back = list(ResultStore(tmp_path / "raw"))
    assert sorted(r["metrics"]["mae"] for r in back) == sorted(r["metrics"]["mae"] for r in recs)
    assert build(back, "t", metrics=["mae"]) == build(recs, "t", metrics=["mae"])


def test_relative_table_against_baseline_hand_computed():
    from oodbench.leaderboard import relative_table
    table, header, base = relative_table(group(RECS), 0, "mae", False, ["a", "b"], ["erm"])
    assert base == "erm" and header[-2:] == ["better than erm on", "mean change"]
    (line,) = table  # erm itself is not a row of its own comparison
    # a: lds 1.5 vs erm mean 2.0 -> -25 %; b: lds 0.5 vs erm 0.2 -> +150 %
    assert line == ["lds × irnet", "-25.0 %", "+150.0 %", "1/2", "+62.5 %"]


def test_relative_table_falls_back_to_the_next_baseline_per_section():
    from oodbench.leaderboard import relative_table
    recs = RECS + [rec("finetune", "a", 0, 4.5, k=8)]
    table, _, base = relative_table(group(recs), 8, "mae", False, ["a"], ["finetune"])
    assert base == "finetune" and table == [["erm × irnet", "+100.0 %", "0/1", "+100.0 %"]]
    assert relative_table(group(RECS), 8, "mae", False, ["a"], ["finetune"]) is None
    # zero-shot has erm, the adapted section only finetune and cal: each section takes its own baseline
    adapted = [r for r in RECS if r["adapt"]["k"] == 0] + [rec("finetune", "a", 0, 4.0, k=8), rec("cal", "a", 0, 3.0, k=8)]
    md = build(adapted, "t", metrics=["mae"], baselines=["erm", "finetune"])
    assert "### mae relative to erm" in md.split("## Adapted")[0]
    assert "### mae relative to finetune" in md.split("## Adapted")[1] and "-25.0 %" in md.split("## Adapted")[1]


def test_many_tasks_are_laid_out_as_rows():
    from oodbench.leaderboard import transpose
    table, header = metric_table(group(RECS), 0, "mae", False, ["a", "b"])
    body, head = transpose(table, header)
    assert head == ["task", *[line[0] for line in table]]
    assert [line[0] for line in body] == ["a", "b", "avg rank"]
    assert body[0][1:] == [line[1] for line in table]
    many = [rec("erm", f"t{i:02d}", 0, 1.0 + i) for i in range(13)]
    md = build(many, "t", metrics=["mae"])
    assert "| task " in md and "| t12 " in md


def test_footer_names_uncommitted_files():
    r = rec("erm", "a", 0, 1.0)
    r["environment"]["git"] = {"commit": "abcdef1234567", "dirty": True, "dirty_files": ["x.py", "y.py"]}
    assert "commit abcdef1234 (uncommitted changes to x.py, y.py)" in build([r], "t", metrics=["mae"])


def test_a_section_shows_only_the_tasks_it_has_results_for():
    md = build(RECS, "t", tasks=["a", "b"], metrics=["mae"])
    adapted = md.split("## Adapted")[1].split("## How")[0]
    header = [c.strip() for c in adapted.split("### mae")[1].splitlines()[2].split("|")[1:-1]]
    assert header == ["method × backbone", "a", "avg rank"]


def test_many_tasks_relative_table_has_tasks_as_rows_with_summary_rows_last():
    many = [rec(m, f"t{i:02d}", 0, v * (1.0 + i)) for i in range(13) for m, v in (("erm", 1.0), ("lds", 0.5))]
    md = build(many, "t", metrics=["mae"], baselines=["erm"])
    rel = md.split("### mae relative to erm")[1].split("## How")[0]
    lines = [ln for ln in rel.splitlines() if ln.startswith("| ")]
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["task", "lds × irnet"]
    cells = {c[0]: c[1] for c in ([x.strip() for x in ln.split("|")[1:-1]] for ln in lines[1:])}
    assert cells["t00"] == "-50.0 %" and cells["better than erm on"] == "13/13" and cells["mean change"] == "-50.0 %"


def test_adapted_section_names_the_methods_that_cannot_use_a_pool():
    recs = [rec("erm", "a", 0, 1.0), rec("cal-ps", "a", 0, 1.1), rec("cal", "a", 0, 1.2),
            rec("finetune", "a", 0, 0.9, k=8), rec("cal", "a", 0, 0.8, k=8), rec("erm", "z", 0, 1.0)]
    md = build(recs, "t", metrics=["mae"])
    zero, adapted = md.split("## Adapted")
    assert "cannot use a target pool" not in zero
    note = next(ln for ln in adapted.splitlines() if "cannot use a target pool" in ln)
    assert "`cal-ps × irnet`" in note and "`erm × irnet`" in note and "`cal × irnet`" not in note


def test_variants_of_one_method_and_backbone_get_their_own_rows():
    # the same seed of a clipped and an unclipped IR-net used to share a row, one replacing the other
    clipped = [rec("erm", "a", s, m) for s, m in ((0, 0.3), (1, 0.5))]
    for r in clipped:
        r["backbone"] = dict(r["backbone"], params={"input_clip": 10})
    table, _ = metric_table(group(RECS[:2] + clipped), 0, "mae", False, ["a"])
    rows = {line[0]: line[1] for line in table}
    assert rows == {"erm × irnet {input_clip=None}": f"2.0000 ± {np.std([1.0, 3.0], ddof=1):.4f}",
                    "erm × irnet {input_clip=10}": f"**0.4000 ± {np.std([0.3, 0.5], ddof=1):.4f}**"}
