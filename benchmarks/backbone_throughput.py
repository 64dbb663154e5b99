"""Training and inference throughput (crystals/s) of structure backbones, and the shared loop's overhead.

For each backbone and device it trains the same model on the same crystals
twice per repeat, alternating:

- **bare**: a plain PyTorch loop (collate → forward → MSE → backward → AdamW
  step, then a forward pass over the validation crystals), the least any
  trainer must do per epoch;
- **shared**: :func:`oodbench.training.fit_loss_method` with ERM (what every
  loss-based method runs: batching through ``Subset.batches``, the method's
  ``loss``, LR plateau scheduler, early-stopping checkpoint, validation MAE).

The overhead is shared / bare per epoch: the median over the repeats of the
ratio of two adjacent runs (which see about the same background load). On a CPU it is
the ratio of this process's CPU time (on a machine shared with other jobs the
wall clock mostly measures them; both ratios are reported), on a GPU of the
synchronised wall clock. The benchmark fails (exit 1) when it exceeds
``--max-overhead`` (1.05). Inference throughput is timed the same way:
``predict_batched`` against a bare ``no_grad`` forward loop.

    python benchmarks/backbone_throughput.py --backbones painn,equiformer-v2 --preset cpu
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from oodbench.api import Context, FitData, Subset
from oodbench.plugins import registries
from oodbench.training import fit_loss_method, predict_batched

PREDICT_BATCH = 1024  # Method.predict's default batch size
med = statistics.median  # of the interleaved repeats: on a shared machine a min picks lucky outliers


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_crystals(name: str, n: int):
    from oodbench.data import DataNotFoundError, load_dataset
    from oodbench.testing import toy_dataset
    try:
        ds = load_dataset(name)
        source = name
    except DataNotFoundError:
        ds, source = toy_dataset(48), "toy (set OODBENCH_DATA for real crystals)"
    n = min(n, len(ds))
    return ds, np.arange(n), source


def bare_epoch(model, opt, inputs, y, val_inputs, batch_size, device, rng, val_batch_size):
    model.train()
    order = rng.permutation(len(inputs))
    for s in range(0, len(order) - batch_size + 1, batch_size):  # drop_last, as the shared loop
        idx = order[s:s + batch_size]
        x = inputs.batch(idx, device)
        loss = F.mse_loss(model(x), y[torch.as_tensor(idx)].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    bare_predict(model, val_inputs, device, val_batch_size)


@torch.no_grad()
def bare_predict(model, inputs, device, batch_size):
    model.eval()
    out = []
    for s in range(0, len(inputs), batch_size):
        out.append(model(inputs.batch(np.arange(s, min(len(inputs), s + batch_size)), device)).cpu())
    return torch.cat(out)


def measure(backbone_name, preset, device, ds, rows, batch_size, epochs, repeats, infer_batch_size,
            val_fraction=0.25):
    from oodbench.data import cache_dir
    regs = registries()
    bcls = regs.backbones.get(backbone_name)
    bb = bcls().set_params(**bcls.presets.get(preset, {}))
    t = time.perf_counter()
    inputs_all = bb.featurize(ds, cache_dir("backbones", bb.name)).take(rows)
    featurize_s = time.perf_counter() - t
    target = [c for c in ds.table.columns if c not in ("id", "formula")][0]
    y_raw = ds.table[target].to_numpy(np.float64)[rows]
    y = ((y_raw - y_raw.mean()) / (y_raw.std() or 1.0)).astype(np.float32)
    n_val = max(batch_size, int(len(rows) * val_fraction))
    perm = np.random.default_rng(0).permutation(len(rows))
    tr, va = perm[n_val:], perm[:n_val]
    ids = np.asarray(ds.ids)[rows]
    data = FitData(Subset(inputs_all.take(tr), y[tr], ids[tr]), Subset(inputs_all.take(va), y[va], ids[va]))
    model0 = bb.build(data.train, seed=0).to(device)
    init = copy.deepcopy(model0.state_dict())
    erm = regs.methods.get("erm")().set_params(max_epochs=epochs, patience=10 ** 6, batch_size=batch_size)
    ytr = torch.as_tensor(data.train.y)
    n_steps = len(tr) // batch_size

    times = {"bare": [], "shared": []}
    cpu = {"bare": [], "shared": []}
    for r in range(repeats):
        for kind in (("bare", "shared") if r % 2 == 0 else ("shared", "bare")):  # no order bias
            model0.load_state_dict(init)
            torch.manual_seed(r)
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            if kind == "bare":
                opt = torch.optim.AdamW(model0.parameters(), lr=erm.lr, weight_decay=erm.weight_decay)
                rng = np.random.default_rng(r)
                for _ in range(epochs):
                    # the shared loop validates through Method.predict, i.e. in batches of PREDICT_BATCH
                    bare_epoch(model0, opt, data.train.inputs, ytr, data.val.inputs, batch_size, device, rng,
                               PREDICT_BATCH)
            else:
                ctx = Context(device=device, seed=r, rng=np.random.default_rng(r), log=lambda *a: None)
                fit_loss_method(erm, model0, data, ctx)
            _sync(device)
            times[kind].append((time.perf_counter() - t) / epochs)
            cpu[kind].append((time.process_time() - c) / epochs)
    infer = {"bare": [], "shared": []}
    infer_cpu = {"bare": [], "shared": []}
    for r in range(repeats):
        for kind in (("bare", "shared") if r % 2 == 0 else ("shared", "bare")):  # no order bias
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            if kind == "bare":
                bare_predict(model0, inputs_all, device, infer_batch_size)
            else:
                predict_batched(model0, inputs_all, device, infer_batch_size)
            _sync(device)
            infer[kind].append(time.perf_counter() - t)
            infer_cpu[kind].append(time.process_time() - c)
    bare, shared = med(times["bare"]), med(times["shared"])
    # On a CPU shared with other processes wall-clock time mostly measures them; the process's own CPU
    # time is what the loop costs. On a GPU the wall clock (with synchronisation) is the measure.
    gate = "wall" if device.type == "cuda" else "cpu"

    def paired(d):  # median of the per-repeat ratios: adjacent runs see the same background load
        return med([s_ / b_ for b_, s_ in zip(d["bare"], d["shared"])])

    overhead = paired(times if gate == "wall" else cpu)
    infer_overhead = paired(infer if gate == "wall" else infer_cpu)
    return {
        "backbone": backbone_name, "preset": preset, "device": str(device), "threads": torch.get_num_threads(),
        "n_train": len(tr), "n_val": len(va), "batch_size": batch_size, "infer_batch_size": infer_batch_size,
        "epochs": epochs, "repeats": repeats,
        "atoms_per_crystal": float(inputs_all.graphs.natoms[inputs_all.rows].float().mean()),
        "params": sum(p.numel() for p in model0.parameters()),
        "featurize_s": featurize_s,
        # training throughput counts the crystals of the optimisation steps (the validation pass is extra)
        "train_crystals_per_s_bare": n_steps * batch_size / bare,
        "train_crystals_per_s_shared": n_steps * batch_size / shared,
        "epoch_s_bare": bare, "epoch_s_shared": shared, "overhead_wall": paired(times),
        "epoch_cpu_s_bare": med(cpu["bare"]), "epoch_cpu_s_shared": med(cpu["shared"]),
        "overhead_cpu": paired(cpu), "overhead": overhead, "overhead_measure": gate,
        "infer_crystals_per_s_bare": len(rows) / med(infer["bare"]),
        "infer_crystals_per_s_shared": len(rows) / med(infer["shared"]),
        # per CPU-second of this process: what an otherwise idle core would give (CPU runs only)
        "train_crystals_per_cpu_s_bare": n_steps * batch_size / med(cpu["bare"]),
        "infer_crystals_per_cpu_s_bare": len(rows) / med(infer_cpu["bare"]),
        "infer_overhead": infer_overhead, "infer_overhead_wall": paired(infer),
        "epoch_s_all": times, "epoch_cpu_s_all": cpu, "infer_s_all": infer, "infer_cpu_s_all": infer_cpu,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="painn,equiformer-v2")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--dataset", default="matbench_phonons")
    p.add_argument("--n", type=int, default=320, help="crystals used (a quarter for validation)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--infer-batch-size", type=int, default=PREDICT_BATCH)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--devices", default="auto", help="auto (cpu, and cuda when present), or a comma list")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-overhead", type=float, default=1.05)
    p.add_argument("--out", help="write the measurements as JSON here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if a.devices == "auto" else a.devices.split(",")
    ds, rows, source = load_crystals(a.dataset, a.n)
    print(f"crystals: {len(rows)} of {source}; preset {a.preset}; batch {a.batch_size}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    results, ok = [], True
    for dev in devices:
        for name in a.backbones.split(","):
            r = measure(name, a.preset, torch.device(dev), ds, rows, a.batch_size, a.epochs, a.repeats,
                        a.infer_batch_size)
            results.append(r)
            ok &= r["overhead"] <= a.max_overhead
            print(f"{name:14s} {dev:5s} train {r['train_crystals_per_s_bare']:8.1f} cr/s bare, "
                  f"{r['train_crystals_per_s_shared']:8.1f} shared | epoch {r['epoch_s_bare']:.2f}s vs "
                  f"{r['epoch_s_shared']:.2f}s wall, overhead {r['overhead']:.3f}x ({r['overhead_measure']} time; "
                  f"wall {r['overhead_wall']:.3f}x) | infer "
                  f"{r['infer_crystals_per_s_bare']:8.1f} cr/s bare, {r['infer_crystals_per_s_shared']:8.1f} "
                  f"shared ({r['infer_overhead']:.3f}x) | per CPU-second: train "
                  f"{r['train_crystals_per_cpu_s_bare']:.1f}, infer {r['infer_crystals_per_cpu_s_bare']:.1f} cr/s | "
                  f"{r['atoms_per_crystal']:.1f} atoms/crystal, "
                  f"{r['params']} params", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"dataset": source, "results": results}, f, indent=1)
    if not ok:
        print(f"FAIL: the shared loop's per-epoch time exceeds {a.max_overhead}x the bare loop", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
