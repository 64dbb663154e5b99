"""Run one (task, method, backbone, seed) config, or a sweep of them, into a results store."""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from . import __version__
from .api import COMPOSITION, STRUCTURE, Context, FitData, Subset
from .metrics import compute_all
from .plugins import registries
from .provenance import environment, git_commit, resolve_device
from .results import SCHEMA_VERSION, ResultStore, config_hash
from .tasks import TaskData, get_task


class IncompatibleError(ValueError):
    """The task, method and backbone cannot be combined; the message says why and what to use instead."""


@dataclass
class RunSpec:
    task: str
    method: str
    backbone: Optional[str] = None          # None: the method's default backbone
    seed: int = 0
    method_params: dict = field(default_factory=dict)
    backbone_params: dict = field(default_factory=dict)
    preset: Optional[str] = None            # backbone preset name ("small", "default", ...)
    adapt_k: int = 0                        # labelled target-pool size (adaptation protocol)
    device: str = "auto"
    epochs: Optional[int] = None            # --epochs: sets the method's max_epochs


def parse_value(text: str):
    """CLI value: JSON if it parses (numbers, true, lists), a comma list → tuple, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return tuple(parse_value(t) for t in text.split(",") if t)
    return {"True": True, "False": False}.get(text, text)


def parse_params(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"hyperparameter {item!r} must look like name=value (e.g. lr=3e-4)")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def make_method(name: str, params: dict, epochs: Optional[int] = None):
    cls = registries().methods.get(name)
    method = cls()
    if epochs is not None:
        if "max_epochs" not in method.get_params():
            raise ValueError(f"method {name!r} has no max_epochs hyperparameter, so --epochs does not apply")
        method.set_params(max_epochs=int(epochs))
    return method.set_params(**params)


def make_backbone(name: str, params: dict, preset: Optional[str] = None):
    cls = registries().backbones.get(name)
    bb = cls()
    if preset:
        if preset not in cls.presets:
            raise ValueError(f"backbone {name!r} has no preset {preset!r}; presets: {', '.join(cls.presets) or 'none'}")
        bb.set_params(**cls.presets[preset])
    return bb.set_params(**params)


def check_compatible(task_name: str, method_name: str, backbone_name: str, adapt_k: int = 0) -> None:
    regs = registries()
    task = get_task(task_name)
    mcls = regs.methods.get(method_name)
    bcls = regs.backbones.get(backbone_name)
    ds = regs.datasets.get(task.dataset)
    missing = bcls.missing_dependency()
    if missing:
        raise IncompatibleError(f"backbone {backbone_name!r} cannot run here: {missing}")
    if bcls.input_kind == STRUCTURE and not ds.has_structures:
        comp = [b for b in regs.backbones.names() if regs.backbones.get(b).input_kind == COMPOSITION]
        raise IncompatibleError(
            f"backbone {backbone_name!r} needs crystal structures but task {task_name!r} (dataset "
            f"{task.dataset!r}) has compositions only; use a composition backbone: {', '.join(comp)}")
    if bcls.gradient_free and (mcls.requires_gradients or mcls.needs_embedding):
        raise IncompatibleError(
            f"method {method_name!r} needs gradients or embeddings, which backbone {backbone_name!r} "
            f"(a gradient-free model) does not have; use method 'erm' with it, or a neural backbone")
    if not adapt_k and getattr(mcls, "requires_target_pool", False):
        raise IncompatibleError(
            f"method {method_name!r} needs labelled target samples; run it with --adapt K "
            f"(CAL tasks record a default K as adapt_k: `oodbench show task {task_name} --json`)")
    if adapt_k and not mcls.uses_target_pool:
        users = [m for m in regs.methods.names() if regs.methods.get(m).uses_target_pool]
        raise IncompatibleError(
            f"method {method_name!r} cannot use a target pool (--adapt {adapt_k}); methods that can: "
            f"{', '.join(users) or 'none'}")


_INPUTS_MEMO: dict = {}


def featurize(backbone, dataset):
    key = (backbone.name, json.dumps(_jsonable(backbone.get_params()), sort_keys=True), dataset.name,
           dataset.content_key())
    if key not in _INPUTS_MEMO:
        from .data import cache_dir
        _INPUTS_MEMO[key] = backbone.featurize(dataset, cache_dir("backbones", backbone.name))
    return _INPUTS_MEMO[key]


def build_config(spec: RunSpec, task_data: TaskData, method, backbone) -> dict:
    return {
        "task": spec.task, "task_version": task_data.spec.version, "split_hash": task_data.split.hash,
        "method": method.name, "method_params": _jsonable(method.get_params()),
        "backbone": backbone.name, "backbone_params": _jsonable(backbone.get_params()),
        "seed": int(spec.seed), "adapt_k": int(spec.adapt_k),
    }


def select_pool(test: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k target-pool rows drawn from the held-out set (seeded), and the rest for evaluation."""
    if k >= len(test):
        raise ValueError(f"--adapt {k} asks for at least the whole held-out set ({len(test)} rows); "
                         f"use k < {len(test)}")
    perm = np.random.default_rng([int(seed), 7919]).permutation(len(test))
    return np.sort(test[perm[:k]]), np.sort(test[perm[k:]])


def fit_key(config: dict, task_data: TaskData, data: FitData) -> str:
    """Hash of everything a zero-shot fit depends on: the same key means the same trained model.

    The shift sets of one dataset (``*-covariate``, ``*-prior``, ``*-relation``, ``*-iid``) share their
    training and validation rows, so a method trained for one of them is the model for all of them.
    """
    def digest(a) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

    d = task_data.dataset
    return config_hash({
        "dataset": task_data.spec.dataset, "source": d.source.get("sha256"), "rows": len(d),
        "label": task_data.spec.label, "transform": task_data.spec.transform,
        "train": digest(task_data.split.train), "val": digest(task_data.split.val),
        "pool": digest(data.pool.ids.astype(str)) if data.pool is not None else None,
        "label_range": data.label_range, "y": [data.y_mean, data.y_scale],
        "method": config["method"], "method_params": config["method_params"],
        "backbone": config["backbone"], "backbone_params": config["backbone_params"], "seed": config["seed"],
    })


def prepare(spec: RunSpec):
    """Resolve names and build (task data, method, backbone, config) without training."""
    regs = registries()
    task = get_task(spec.task)
    mcls = regs.methods.get(spec.method)
    backbone_name = spec.backbone or mcls.default_backbone
    check_compatible(spec.task, spec.method, backbone_name, spec.adapt_k)
    method = make_method(spec.method, spec.method_params, spec.epochs)
    backbone = make_backbone(backbone_name, spec.backbone_params, spec.preset)
    task_data = task.load()
    spec.backbone = backbone_name
    return task_data, method, backbone, build_config(spec, task_data, method, backbone)


def run(spec: RunSpec, store: Optional[ResultStore] = None, force: bool = False,
        log: Callable = print, fit_cache: Optional[dict] = None) -> dict:
    """Train and evaluate one config; write and return its record (or the existing one).

    ``fit_cache`` (a dict a sweep keeps across the tasks of one method × backbone × seed): a zero-shot
    run whose :func:`fit_key` is already in it evaluates that trained model instead of training an
    identical one again; its record says which task the model was trained for.
    """
    git_commit()  # pin the provenance to the code as it was when the run started
    t_start = time.perf_counter()
    task_data, method, backbone, config = prepare(spec)
    if store is not None and not force and store.exists(config):
        rec = store.load(config)
        rec["skipped"] = True
        return rec
    device = resolve_device(spec.device)
    seed_everything(spec.seed)
    split = task_data.split
    y = task_data.y.astype(np.float64)
    ids = task_data.dataset.ids
    test_rows, pool_rows = split.test, None
    if spec.adapt_k:
        pool_rows, test_rows = select_pool(split.test, spec.adapt_k, spec.seed)

    y_mean = float(y[split.train].mean())
    y_scale = float(y[split.train].std()) or 1.0
    ys = ((y - y_mean) / y_scale).astype(np.float32)

    inputs = featurize(backbone, task_data.dataset)

    def subset(rows):
        return Subset(inputs.take(rows), ys[rows], ids[rows])

    data = FitData(train=subset(split.train), val=subset(split.val),
                   pool=subset(pool_rows) if pool_rows is not None else None,
                   label_range=(float(ys.min()), float(ys.max())) if method.uses_label_range_prior else None,
                   y_mean=y_mean, y_scale=y_scale)
    ctx = Context(device=device, seed=spec.seed, rng=np.random.default_rng(spec.seed), log=log)

    key = fit_key(config, task_data, data)
    reuse = fit_cache is not None and not spec.adapt_k
    fit_info = {"key": key, "reused_from": None}
    if reuse and key in fit_cache:
        model, info, fit_s, fit_info["reused_from"] = fit_cache[key]
        ctx.info.update(info)
        log(f"{spec.task}: same training rows and settings as {fit_info['reused_from']}; evaluating that model")
    else:
        model = backbone.build(data.train, spec.seed)
        t_fit = time.perf_counter()
        model = method.fit(model, data, ctx)
        fit_s = time.perf_counter() - t_fit
        if reuse:
            fit_cache.clear()  # one model at a time: a sweep runs the tasks of one fit back to back
            fit_cache[key] = (model, dict(ctx.info), fit_s, spec.task)
    t_pred = time.perf_counter()
    pred_std = method.predict(model, inputs.take(test_rows), ctx)
    predict_s = time.perf_counter() - t_pred
    y_pred = pred_std.astype(np.float64) * y_scale + y_mean
    y_true = y[test_rows]
    info = {"extrapolation": split.extrapolation}
    metrics = compute_all(y_true, y_pred, info)

    record = {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "config_hash": config_hash(config),
        "task": {**task_data.spec.describe(), "split_hash": split.hash, "sizes": split.sizes(),
                 "dataset_source": task_data.dataset.source, "extrapolation": split.extrapolation,
                 "eval_size": int(len(test_rows))},
        "method": {"name": method.name, "params": config["method_params"], "paper": method.paper},
        "backbone": {"name": backbone.name, "params": config["backbone_params"], "preset": spec.preset},
        "seed": int(spec.seed),
        "adapt": {"k": int(spec.adapt_k),
                  "pool_ids": [str(i) for i in ids[pool_rows]] if pool_rows is not None else []},
        "metrics": metrics,
        "training": _jsonable(ctx.info),
        "fit": fit_info,
        "timing": {"fit_s": fit_s,  # of the fit this model came from, also when it was reused "predict_s": predict_s, "predict_s_per_sample": predict_s / max(1, len(test_rows)),
                   "wall_s": time.perf_counter() - t_start},
        "environment": environment(device),
        "oodbench_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "predictions": {"ids": [str(i) for i in ids[test_rows]],
                        "y_true": [float(v) for v in y_true], "y_pred": [float(v) for v in y_pred]},
    }
    if store is not None:
        record["path"] = str(store.write(record))
    return record


def expand(spec: str, names: list[str]) -> list[str]:
    if spec in ("all", "*"):
        return list(names)
    return [s.strip() for s in spec.split(",") if s.strip()]


def _worker_init(threads: int) -> None:
    # one process per run slot, each with a fixed share of the cores: on a small CPU, torch's default of
    # one thread per core in every process oversubscribes and runs many times slower than this
    torch.set_num_threads(threads)
    # the same share for backbones whose libraries size their own thread pools (the tree backbones read it)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _training_rule(task: str) -> str:
    """What decides a task's training rows, read from its declaration (no data loaded)."""
    spec = get_task(task)
    if spec.split.get("kind") == "frozen-ids":  # train and val are named parts of the file; the rest is evaluation
        rule = {k: spec.split.get(k) for k in ("kind", "file", "sha256", "train", "val")}
    else:
        rule = {k: v for k, v in spec.split.items() if k != "test"}
    return json.dumps([spec.dataset, spec.label, spec.transform, rule], sort_keys=True, default=str)


def _run_group(group: list, store: ResultStore, log: Callable, before: Callable = lambda key: None,
               after: Callable = lambda key: None) -> list:
    """Runs one method × backbone × seed over its tasks, sharing zero-shot fits between them.

    Returns [(key, "done" | "skipped" | "failed", detail)]; the records themselves are in ``store``.
    """
    cache, out = {}, []
    for key, spec in group:
        before(key)
        try:
            rec = run(spec, store, log=log, fit_cache=cache)
        except Exception as e:
            out.append((key, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))
        else:
            out.append((key, "skipped" if rec.get("skipped") else "done", ""))
        after(key)
    return out


def _run_group_in_worker(group: list, root: str) -> list:
    return _run_group(group, ResultStore(root), log=lambda *a: print(*a, file=sys.stderr, flush=True))


def sweep(tasks: list[str], methods: list[str], backbones: Optional[list[str]], seeds: list[int],
          store: ResultStore, base: RunSpec, progress: bool = True, log: Callable = print,
          jobs: int = 1) -> dict:
    """Every compatible (task, method, backbone, seed); skips existing results; never stops on one failure.

    Zero-shot tasks that share their training rows (e.g. ``mp-eform-covariate/prior/relation/iid``)
    train one model per method × backbone × seed and evaluate it on each; their records name the task
    the model was trained for (``fit.reused_from``).

    ``jobs`` > 1 runs that many groups at once in separate processes, each limited to
    cpu_count // jobs torch threads. Results are the same records (each written atomically by its
    own run); plugins reach the workers through entry points, not through in-process registration.
    """
    from tqdm import tqdm
    regs = registries()
    plan, incompatible = [], []
    for t in tasks:
        for m in methods:
            for b in (backbones or [regs.methods.get(m).default_backbone]):
                try:
                    check_compatible(t, m, b, base.adapt_k)
                except IncompatibleError as e:
                    incompatible.append((t, m, b, str(e)))
                    continue
                plan += [(t, m, b, s) for s in seeds]
    # tasks whose split rules differ only in the test part (the shift sets of one dataset) share their
    # training rows: one method × backbone × seed runs them back to back in one process, so the model is
    # trained once and evaluated on each (``run``'s fit_cache); everything else is a group of its own
    rules = {t: _training_rule(t) for t in tasks}
    groups: dict = {}
    for t, m, b, s in plan:
        spec = RunSpec(task=t, method=m, backbone=b, seed=s, method_params=base.method_params,
                       backbone_params=base.backbone_params, preset=base.preset, adapt_k=base.adapt_k,
                       device=base.device, epochs=base.epochs)
        groups.setdefault((m, b, s, rules[t]), []).append(((t, m, b, s), spec))
    done, skipped, failed = [], [], []
    outcome = {"done": done, "skipped": skipped}

    def collect(results: list) -> None:
        for key, status, detail in results:
            if status == "failed":
                failed.append((*key, detail.splitlines()[0]))
                log(f"FAILED {' '.join(map(str, key))}: {detail}")
            else:
                outcome[status].append(key)

    parallel = jobs > 1 and len(groups) > 1
    bar = tqdm(total=len(plan), disable=not progress, unit="run",
               desc=f"oodbench sweep ({jobs} jobs)" if parallel else "oodbench sweep")
    if parallel:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(min(jobs, len(groups)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_group_in_worker, g, str(store.root)): g for g in groups.values()}
            for fut in as_completed(futures):
                try:
                    results = fut.result()
                except Exception as e:  # the worker process itself died (e.g. out of memory)
                    results = [(key, "failed", f"{type(e).__name__}: {e}") for key, _ in futures[fut]]
                collect(results)
                bar.update(len(results))
    else:
        for group in groups.values():
            collect(_run_group(group, store, log,
                               before=lambda key: bar.set_postfix_str(" ".join(map(str, key[:3])) + f" seed{key[3]}"),
                               after=lambda key: bar.update(1)))
    bar.close()
    return {"planned": len(plan), "done": done, "skipped": skipped, "failed": failed,
            "incompatible": incompatible}
