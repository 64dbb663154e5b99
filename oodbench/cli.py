"""The ``oodbench`` command line."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

DEFAULT_RESULTS = "results"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-home", help="folder laid out like shared/data (default: $OODBENCH_DATA)")


def _run_args(p: argparse.ArgumentParser, sweep: bool) -> None:
    p.add_argument("--task", required=True, help="task name, comma list, 'all', or family:*")
    p.add_argument("--method", default="erm", help="method name, comma list or 'all'")
    p.add_argument("--backbone", default=None,
                   help="backbone name, comma list or 'all' (default: each method's default backbone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2" if sweep else None, help="comma list of seeds")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (sets the method's max_epochs)")
    p.add_argument("--preset", default=None, help="backbone preset (e.g. small, default)")
    p.add_argument("--adapt", type=int, default=0, metavar="K",
                   help="give the method K labelled samples of the held-out set (adaptation protocol)")
    p.add_argument("--method-param", "-M", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--backbone-param", "-B", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results store folder (default: results/)")
    p.add_argument("--force", action="store_true", help="re-run even if the result exists")
    if sweep:
        p.add_argument("--jobs", "-j", type=int, default=1,
                       help="configs run at once, each in its own process with cores/JOBS torch threads "
                            "(on a CPU, -j <cores> is fastest; on one GPU keep 1)")
    p.add_argument("--json", action="store_true", help="print the record(s) as JSON")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="oodbench", description="Out-of-distribution materials property benchmark")
    sub = ap.add_subparsers(dest="command", required=True)
    _run_args(sub.add_parser("run", help="train + evaluate one config (or a sweep with lists/'all')"), sweep=False)
    _run_args(sub.add_parser("sweep", help="every method × backbone × task × seed (default seeds 0,1,2)"),
              sweep=True)
    lp = sub.add_parser("list", help="list tasks, methods, backbones, metrics, datasets or families")
    lp.add_argument("what", choices=["tasks", "methods", "backbones", "metrics", "datasets", "families", "plugins"])
    lp.add_argument("--family", help="with 'tasks': list the members of this family with their sizes")
    lp.add_argument("--json", action="store_true")
    _common(lp)
    sp = sub.add_parser("show", help="show a task: split sizes and label ranges")
    sp.add_argument("what", choices=["task"])
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")
    _common(sp)
    dp = sub.add_parser("diagnose", help="is a task really OOD? test-set coverage by the training data (+ plots)")
    dp.add_argument("--task", help="task name: coverage and label shift (cached by split hash)")
    dp.add_argument("--family", help="family name (or a unique part): test error vs coverage over its tasks")
    dp.add_argument("--results", default=DEFAULT_RESULTS, help="results store for --family (default: results/)")
    dp.add_argument("--metric", default="mae", help="metric plotted against coverage with --family")
    dp.add_argument("--all", action="store_true", help="with --family: every member, not only those with results")
    dp.add_argument("--plot", help="write a PNG: the task's 2-D map, or the family's error-vs-coverage plot")
    dp.add_argument("--json", action="store_true")
    _common(dp)
    bp = sub.add_parser("leaderboard", help="aggregate results into markdown tables under leaderboards/")
    bp.add_argument("--results", default=DEFAULT_RESULTS)
    bp.add_argument("--out", default="leaderboards/mex", help="output folder (README.md + raw/)")
    bp.add_argument("--title", default="oodbench leaderboard")
    bp.add_argument("--task", default=None, help="task names (comma list; default: all in the results)")
    bp.add_argument("--method", default=None, help="only these methods (comma list)")
    bp.add_argument("--backbone", default=None, help="only these backbones (comma list)")
    bp.add_argument("--metric", default=None, help="only these metrics (comma list)")
    bp.add_argument("--baseline", default=None,
                    help="comma list of baseline methods (e.g. erm,finetune): adds a table of each row's change "
                         "in MAE (else the first metric) against the first of them present in each section")
    bp.add_argument("--print", action="store_true", help="also print the markdown")
    return ap


def _list(args) -> int:
    from .plugins import registries
    regs = registries()
    if args.what == "tasks" and args.family:
        from .tasks import get_task
        # an exact family name, else every family whose name contains the text (e.g. "loo-element")
        names = [args.family] if args.family in regs.families else [
            f for f in regs.families.names() if args.family in f] or [regs.families.get(args.family).name]
        rows = []
        for fam in map(regs.families.get, names):
            for m in fam.members():
                t = get_task(f"{fam.name}:{m}")
                sizes = t.meta.get("sizes", {})
                rows.append({"task": f"{fam.name}:{m}", **sizes})
        _emit(rows, args.json)
        return 0
    if args.what == "plugins":
        from .plugins import get_manager
        rows = [{"plugin": n, "module": getattr(p, "__name__", repr(p))} for n, p in get_manager().list_name_plugin()]
        rows += [{"plugin": n, "module": f"FAILED: {e}"} for n, e in regs.failed.items()]
        _emit(rows, args.json)
        return 0
    reg = getattr(regs, args.what)
    rows = []
    for name in reg.names():
        item = reg.get(name)
        row = {"name": name, "description": getattr(item, "description", "")}
        if args.what == "tasks":
            row.update(version=item.version, dataset=item.dataset)
        if args.what == "families":
            row["members"] = len(item.members())
        if args.what == "methods":
            row["default_backbone"] = item.default_backbone
        if args.what == "backbones":
            row["input"] = item.input_kind
        if args.what == "metrics":
            row["higher_is_better"] = item.higher_is_better
        row["plugin"] = reg.origin(name)
        rows.append(row)
    _emit(rows, args.json)
    return 0


def _emit(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    from tabulate import tabulate
    print(tabulate(rows, headers="keys", tablefmt="simple") if rows else "(none)")


def _show(args) -> int:
    import numpy as np
    from .tasks import get_task
    td = get_task(args.name).load()
    out = {"task": td.spec.name, "version": td.spec.version, "dataset": td.spec.dataset,
           "dataset_source": td.dataset.source.get("kind"), "label": td.spec.label,
           "transform": td.spec.transform, "split_hash": td.split.hash, "splits": {}}
    for part in ("train", "val", "test"):
        rows = getattr(td.split, part)
        ys = td.y[rows]
        out["splits"][part] = {"n": int(len(rows)), "label_min": float(np.min(ys)) if len(ys) else None,
                               "label_max": float(np.max(ys)) if len(ys) else None}
    if td.split.extrapolation:
        out["extrapolation"] = td.split.extrapolation
    out.update({k: v for k, v in td.spec.meta.items() if k not in out})
    from .diagnose import load_cached
    out["coverage"] = load_cached(td.split.hash) or f"not computed: oodbench diagnose --task {td.spec.name}"
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['task']} (v{out['version']}): {out['dataset']} [{out['dataset_source']}], label "
          f"{out['transform']}({out['label']}), split {out['split_hash']}")
    for part, s in out["splits"].items():
        print(f"  {part:5s} n={s['n']:6d}  label ∈ [{s['label_min']:.4f}, {s['label_max']:.4f}]")
    cov = out["coverage"]
    print(f"  coverage: {cov}" if isinstance(cov, str) else
          f"  coverage: {cov['ood_fraction']:.3f} of test outside the training domain (k-NN, ~0.05 if "
          f"in-distribution); {cov['label_outside_fraction']:.3f} of test labels outside the training range")
    return 0


def _run(args, sweep_mode: bool) -> int:
    from .plugins import registries
    from .results import ResultStore
    from .runner import RunSpec, expand, parse_params, run, sweep
    from .tasks import expand_tasks
    regs = registries()
    tasks = expand_tasks(args.task)
    methods = expand(args.method, regs.methods.names())
    for m in methods:
        regs.methods.get(m)
    backbones = expand(args.backbone, regs.backbones.names()) if args.backbone else None
    for b in backbones or []:
        regs.backbones.get(b)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    base = RunSpec(task="", method="", backbone=None, seed=0, method_params=parse_params(args.method_param),
                   backbone_params=parse_params(args.backbone_param), preset=args.preset, adapt_k=args.adapt,
                   device=args.device, epochs=args.epochs)
    store = ResultStore(args.results)
    single = not sweep_mode and len(tasks) == 1 and len(methods) == 1 and len(seeds) == 1 and (
        backbones is None or len(backbones) == 1)
    if single:
        spec = RunSpec(**{**base.__dict__, "task": tasks[0], "method": methods[0],
                          "backbone": backbones[0] if backbones else None, "seed": seeds[0]})
        rec = run(spec, store, force=args.force, log=lambda *a: print(*a, file=sys.stderr))
        if args.json:
            print(json.dumps(rec, indent=1))
            return 0
        _print_record(rec)
        return 0
    if getattr(args, "jobs", 1) < 1:
        print(f"--jobs {args.jobs}: give a positive number of parallel runs, e.g. --jobs 2", file=sys.stderr)
        return 2
    summary = sweep(tasks, methods, backbones, seeds, store, base, progress=sys.stderr.isatty() or True,
                    log=lambda *a: print(*a, file=sys.stderr), jobs=getattr(args, "jobs", 1))
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(f"planned {summary['planned']}: ran {len(summary['done'])}, skipped (already in {args.results}/) "
              f"{len(summary['skipped'])}, failed {len(summary['failed'])}, incompatible pairs "
              f"{len(summary['incompatible'])}")
        for t, m, b, why in summary["incompatible"]:
            print(f"  not run: {t} × {m} × {b}: {why}")
        for f in summary["failed"]:
            print(f"  FAILED: {f}")
    return 1 if summary["failed"] else 0


def _print_record(rec: dict) -> None:
    c = rec["config"]
    state = " (existing result, not re-run; --force re-runs)" if rec.get("skipped") else ""
    print(f"{c['task']} × {c['method']} × {c['backbone']} seed {c['seed']}"
          + (f" adapt k={c['adapt_k']}" if c["adapt_k"] else "") + state)
    t = rec["task"]
    print(f"  split {t['split_hash']}: train {t['sizes']['train']}, val {t['sizes']['val']}, "
          f"test {t['sizes']['test']} (evaluated on {t['eval_size']})")
    for k, v in rec["metrics"].items():
        print(f"  {k:14s} {v:.4f}")
    tr = rec.get("training", {})
    print(f"  epochs {tr.get('epochs')} (best {tr.get('best_epoch')}), device "
          f"{rec['environment']['device']['type']}, wall {rec['timing']['wall_s']:.1f} s")
    if rec.get("path"):
        print(f"  record: {rec['path']}")


def _leaderboard(args) -> int:
    from .leaderboard import publish
    from .results import ResultStore
    recs = list(ResultStore(args.results))
    def keep(values, get):
        return lambda r: values is None or get(r) in values.split(",")
    filters = [keep(args.task, lambda r: r["config"]["task"]), keep(args.method, lambda r: r["config"]["method"]),
               keep(args.backbone, lambda r: r["config"]["backbone"])]
    recs = [r for r in recs if all(f(r) for f in filters)]
    if not recs:
        print(f"no results in {args.results}/ match; run `oodbench run …` first", file=sys.stderr)
        return 1
    tasks = args.task.split(",") if args.task else None
    metrics = args.metric.split(",") if args.metric else None
    baselines = args.baseline.split(",") if args.baseline else None
    path = publish(recs, args.out, args.title, tasks, metrics, baselines)
    print(f"wrote {path} from {len(recs)} records")
    if args.print:
        print(Path(path).read_text())
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data_home", None):
        from .data.core import set_data_home
        set_data_home(args.data_home)
    from .registry import UnknownNameError
    from .runner import IncompatibleError
    from .data import DataNotFoundError
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        if args.command == "list":
            return _list(args)
        if args.command == "show":
            return _show(args)
        if args.command == "leaderboard":
            return _leaderboard(args)
        if args.command == "diagnose":
            from .diagnose import cli_diagnose
            return cli_diagnose(args)
        return _run(args, sweep_mode=args.command == "sweep")
    except (UnknownNameError, IncompatibleError, DataNotFoundError, ValueError) as e:
        print(f"oodbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
