"""Aggregate result records into markdown leaderboards (tabulate), with the raw records beside them."""
from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from tabulate import tabulate

from .io import atomic_write, atomic_write_text
from .plugins import registries
from .results import ResultStore


def row_label(rec: dict) -> str:
    preset = rec["backbone"].get("preset")
    b = rec["backbone"]["name"] + (f"[{preset}]" if preset and preset != "default" else "")
    return f"{rec['method']['name']} × {b}"


def _params(rec: dict) -> dict:
    return {**{f"M.{k}": v for k, v in rec["method"]["params"].items()},
            **{f"B.{k}": v for k, v in rec["backbone"]["params"].items()}}


def row_labels(records: list[dict]) -> list[str]:
    """:func:`row_label` of each record, plus the hyperparameters that tell apart records sharing a label.

    Two variants of one method × backbone[preset] in one store (e.g. ``-B input_clip=10`` and without)
    must not be averaged, or one replace the other's seeds: each gets its own row, named by what differs.
    """
    base = [row_label(r) for r in records]
    sigs: dict = defaultdict(dict)
    for b, r in zip(base, records):
        p = _params(r)
        sigs[b].setdefault(json.dumps(p, sort_keys=True, default=str), p)
    out = []
    for b, r in zip(base, records):
        variants = list(sigs[b].values())
        if len(variants) == 1:
            out.append(b)
            continue
        keys = sorted({k for v in variants for k in v})
        differ = [k for k in keys if len({json.dumps(v.get(k), default=str) for v in variants}) > 1]
        p = _params(r)
        out.append(b + " {" + ", ".join(f"{k[2:]}={p.get(k)}" for k in differ) + "}")
    return out


def group(records: Iterable[dict]) -> dict:
    """{(adapt_k, row, task): {seed: record}}; a later record of the same seed and row replaces an earlier one."""
    records = list(records)
    out: dict = defaultdict(dict)
    for r, label in zip(records, row_labels(records)):
        out[(r["adapt"]["k"], label, r["config"]["task"])][r["seed"]] = r
    return out


def _fmt(vals: list[float], n_expected: int) -> str:
    short = f" (n={len(vals)})" if len(vals) < n_expected else ""  # fewer seeds than the rest: say so
    if len(vals) == 1:
        return f"{vals[0]:.4f}{short}"
    return f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}{short}"


def seed_values(groups: dict, adapt_k: int, metric: str) -> dict:
    """{(row, task): [the metric of each seed]} for one section (zero-shot or one adaptation k)."""
    return {(r, t): [rec["metrics"][metric] for rec in seeds.values()]
            for (k, r, t), seeds in groups.items() if k == adapt_k}


def metric_table(groups: dict, adapt_k: int, metric: str, higher_is_better: bool,
                 tasks: list[str]) -> tuple[list[list[str]], list[str]]:
    rows = sorted({r for (k, r, _t) in groups if k == adapt_k})
    vals = seed_values(groups, adapt_k, metric)
    means = {rt: np.mean(v) for rt, v in vals.items()}
    n_expected = max((len(v) for v in vals.values()), default=1)
    best = {}
    ranks: dict = defaultdict(list)
    for t in tasks:
        col = [(means[(r, t)], r) for r in rows if (r, t) in means and np.isfinite(means[(r, t)])]
        if not col:
            continue
        col.sort(key=lambda x: -x[0] if higher_is_better else x[0])
        best[t] = col[0][0]
        order = np.array([v for v, _ in col])
        for v, r in col:
            # average rank for ties
            better = np.sum(order > v) if higher_is_better else np.sum(order < v)
            ties = np.sum(order == v)
            ranks[r].append(better + (ties + 1) / 2)
    table = []
    for r in rows:
        line = [r]
        for t in tasks:
            if (r, t) not in vals:
                line.append("–")
                continue
            if not np.any(np.isfinite(vals[(r, t)])):
                line.append("n/a")  # the metric does not apply to this task (e.g. recall off extrapolation)
                continue
            cell = _fmt(vals[(r, t)], n_expected)
            if t in best and means[(r, t)] == best[t] and sum(1 for rr in rows if (rr, t) in means) > 1:
                cell = f"**{cell}**"
            line.append(cell)
        line.append(f"{np.mean(ranks[r]):.2f}" if ranks[r] else "–")
        table.append(line)
    table.sort(key=lambda line: float(line[-1]) if line[-1] != "–" else 1e9)
    return table, ["method × backbone", *tasks, "avg rank"]


def _with_method(row: str, method: str) -> str:
    return f"{method} × {row.split(' × ', 1)[1]}"


def relative_table(groups: dict, adapt_k: int, metric: str, higher_is_better: bool, tasks: list[str],
                   baselines: list[str]) -> Optional[tuple[list[list[str]], list[str], str]]:
    """Each row's change of the seed-mean ``metric`` against the baseline method on the same backbone.

    The baseline is the first of ``baselines`` with rows in this section (e.g. ERM zero-shot, fine-tuning
    when adapted). Cells are 100·(m − b)/|b| in %; "better on" counts the tasks where the row's mean beats
    the baseline's, which is what "does method X beat ERM, and on every task?" asks. None when no listed
    baseline has rows here.
    """
    rows = sorted({r for (k, r, _t) in groups if k == adapt_k})
    present = {r.split(" × ", 1)[0] for r in rows}
    base = next((b for b in baselines if b in present), None)
    if base is None:
        return None
    mean = {rt: float(np.mean(v)) for rt, v in seed_values(groups, adapt_k, metric).items()}
    table = []
    for r in rows:
        if r.split(" × ", 1)[0] == base:
            continue
        b_row = _with_method(r, base)
        line, deltas, wins = [r], [], 0
        for t in tasks:
            m, b = mean.get((r, t)), mean.get((b_row, t))
            if m is None or b is None or not (np.isfinite(m) and np.isfinite(b)) or b == 0:
                line.append("–")
                continue
            d = 100.0 * (m - b) / abs(b)
            deltas.append(d)
            wins += (m > b) if higher_is_better else (m < b)
            line.append(f"{d:+.1f} %")
        if not deltas:
            continue
        line += [f"{wins}/{len(deltas)}", f"{np.mean(deltas):+.1f} %"]
        table.append(line)
    sign = -1.0 if higher_is_better else 1.0
    table.sort(key=lambda line: sign * float(line[-1].rstrip(" %")))
    return table, ["method × backbone", *tasks, f"better than {base} on", "mean change"], base


def transpose(table: list[list[str]], header: list[str]) -> tuple[list[list[str]], list[str]]:
    """Tasks as rows, method × backbone as columns: the readable layout for a family of many tasks.

    The summary columns after the tasks (avg rank; "better on" and mean change) become the last rows.
    """
    body = [[header[j]] + [line[j] for line in table] for j in range(1, len(header))]
    return body, ["task", *[line[0] for line in table]]


def wide(section: list[str], table: list) -> bool:
    """More tasks than a page is wide, and more tasks than rows: lay the table out with tasks as rows."""
    return len(section) > 12 and len(section) > len(table)


def poolless(groups: dict, adapt_k: int, section: list[str]) -> list[str]:
    """Zero-shot rows on this adapted section's tasks whose registered method cannot use a target pool."""
    methods = registries().methods
    rows = {r for (k, r, t) in groups if k == 0 and t in section}
    name = lambda r: r.split(" × ", 1)[0]  # noqa: E731
    return sorted(r for r in rows if name(r) in methods.names()
                  and not getattr(methods.get(name(r)), "uses_target_pool", False))


def build(records: list[dict], title: str, tasks: Optional[list[str]] = None,
          metrics: Optional[list[str]] = None, baselines: Optional[list[str]] = None) -> str:
    regs = registries()
    groups = group(records)
    tasks = tasks or sorted({t for (_k, _r, t) in groups})
    metrics = metrics or regs.metrics.names()
    rel_metric = "mae" if "mae" in metrics else metrics[0]  # the headline metric of every task here
    lines = [f"# {title}", ""]
    n_seeds = sorted({len(v) for v in groups.values()})
    lines += [f"Cells: mean ± sample standard deviation (ddof=1) over seeds ({', '.join(map(str, n_seeds))} "
              f"seeds per cell); a single value where one seed ran, and (n=…) where a cell has fewer seeds than "
              f"its table's others. **Bold**: best in its column. "
              f"avg rank: mean of the row's rank (1 = best, ties averaged) over the tasks where it has results. Metrics are in the task's "
              f"label units (after its transform). Produced by `oodbench leaderboard` from the records in `raw/`.", ""]
    for k in sorted({k for (k, _r, _t) in groups}):
        lines += [f"## {'Zero-shot' if k == 0 else f'Adapted (k = {k} labelled target samples)'}", ""]
        section = [t for t in tasks if any(kk == k and tt == t for (kk, _r, tt) in groups)]  # no empty columns
        for m in metrics:
            metric = regs.metrics.get(m)
            table, header = metric_table(groups, k, m, metric.higher_is_better, section)
            if all(all(c in ("–", "n/a") for c in line[1:-1]) for line in table):
                continue
            arrow = "higher is better" if metric.higher_is_better else "lower is better"
            if wide(section, table):  # e.g. a leave-one-element family
                table, header = transpose(table, header)
            lines += [f"### {m} ({metric.description}; {arrow})", "", tabulate(table, header, tablefmt="github"), ""]
        if k and (cannot := poolless(groups, k, section)):
            lines += ["Not in this section, because they cannot use a target pool (their zero-shot results are "
                      "above): " + ", ".join(f"`{r}`" for r in cannot) + ".", ""]
        rel = relative_table(groups, k, rel_metric, regs.metrics.get(rel_metric).higher_is_better, section,
                             baselines) if baselines else None
        if rel and rel[0]:
            table, header, base = rel
            if wide(section, table):
                table, header = transpose(table, header)
            lines += [f"### {rel_metric} relative to {base} (same backbone)", "",
                      f"Change of the seed-mean {rel_metric} against {base} on the same backbone, "
                      f"100·(method − {base}) / |{base}|; negative is better for a lower-is-better metric.", "",
                      tabulate(table, header, tablefmt="github"), ""]
    lines += ["## How these were produced", ""]
    prov = defaultdict(set)
    for (k, r, t), seeds in groups.items():
        for rec in seeds.values():
            env = rec["environment"]
            commit = str(env["git"].get("commit", ""))[:10] + _dirty_note(env["git"])
            prov[r].add((env["device"]["type"], env["device"].get("name", ""), commit, _short_params(rec)))
    for r in sorted(prov):
        for dev, name, commit, params in sorted(prov[r]):
            lines.append(f"- {r}: device {dev} ({name}), commit {commit}, {params}")
    return "\n".join(lines) + "\n"


def _dirty_note(git: dict) -> str:
    if not git.get("dirty"):
        return ""
    files = git.get("dirty_files")
    if not files:  # records from before the file list was kept
        return " (uncommitted changes)"
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    return f" (uncommitted changes to {', '.join(files[:3])}{more})"


def _short_params(rec: dict) -> str:
    mp = rec["method"]["params"]
    # a gradient-free backbone (trees) is fitted in one go: the method's epoch/batch/lr settings did not apply
    trained = rec.get("training", {}).get("epochs", 1) != 0
    keys = [k for k in ("max_epochs", "batch_size", "lr") if k in mp and trained]
    return ", ".join(f"{k}={mp[k]}" for k in keys) + ("; " if keys else "") + f"backbone {rec['backbone']['params']}"


def publish(records: list[dict], out_dir, title: str, tasks=None, metrics=None, baselines=None) -> Path:
    """Write ``out_dir/README.md`` and copy the records into ``out_dir/raw/`` (paths mirror the store)."""
    out_dir = Path(out_dir)
    raw = out_dir / "raw"
    for rec in records:
        c = rec["config"]
        dest = ResultStore(raw).path_for(c).with_suffix(".json.gz")
        body = {k: v for k, v in rec.items() if k != "path"}
        # compact + gzip: per-sample predictions of a 40k-row test set are megabytes as indented JSON
        data = gzip.compress(json.dumps(body, separators=(",", ":")).encode(), mtime=0)
        atomic_write(dest, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return atomic_write_text(out_dir / "README.md", build(records, title, tasks, metrics, baselines))
