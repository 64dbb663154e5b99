"""Cost of a CAL epoch against an ERM epoch on the same data: wall time and peak memory.

Each method trains ``--epochs`` epochs (default 5, so CAL's partial-sampling
ranking, done every 5 epochs, is paid once) in a fresh subprocess, so every
peak resident set size (``ru_maxrss``) is that method's own. CAL runs with
``warmup_epochs=0``: every timed epoch is a full CAL epoch (ranking, the
high-loss 20 %, SAL adversarial steps, EMA, validation of the averaged
model); ERM is the shared loop. Targets: CAL <= 2x ERM time, <= 1.3x peak memory.
One torch thread by default: on two shared cores, two threads thrash (15x slower here).

    python benchmarks/cal_epoch.py --task shear-modulus-cal-iid [--preset cpu] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ["erm", "cal", "cal-aa", "cal-ps"]


def child(args) -> dict:
    import numpy as np
    import torch
    from oodbench.api import Context, FitData, Subset
    from oodbench.runner import RunSpec, featurize, prepare
    torch.set_num_threads(args.threads)
    spec = RunSpec(task=args.task, method=args.method, preset=args.preset, epochs=args.epochs,
                   method_params={"batch_size": args.batch_size, "patience": 10 ** 6,
                                  **({"warmup_epochs": 0} if args.method != "erm" else {})})
    td, method, backbone, _ = prepare(spec)
    y = td.y.astype(np.float64)
    s = td.split
    ys = ((y - y[s.train].mean()) / y[s.train].std()).astype(np.float32)
    inputs = featurize(backbone, td.dataset)
    sub = lambda rows: Subset(inputs.take(rows), ys[rows], td.dataset.ids[rows])  # noqa: E731
    data = FitData(train=sub(s.train), val=sub(s.val))
    model = backbone.build(data.train, 0)
    torch.manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ctx = Context(device=torch.device("cpu"), seed=0, rng=np.random.default_rng(0), log=lambda *a: None)
    t0 = time.perf_counter()
    method.fit(model, data, ctx)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": args.method, "epochs": ctx.info.get("epochs"), "seconds_per_epoch": wall / args.epochs,
            "peak_rss_mib": peak / 1024, "rss_after_load_mib": base_rss / 1024,
            "train_rows": len(data.train), "adversarial_steps": ctx.info.get("adversarial_steps")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="shear-modulus-cal-iid")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--method", help=argparse.SUPPRESS)   # child mode
    args = ap.parse_args()
    if args.method:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for m in args.methods.split(","):
        cmd = [sys.executable, __file__, "--method", m, "--task", args.task, "--preset", args.preset,
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(json.dumps(rows[-1]), flush=True)
    erm = next(r for r in rows if r["method"] == "erm")
    print(f"\n{args.task}, IR-net[{args.preset}], batch {args.batch_size}, {erm['train_rows']} training rows, "
          f"{args.epochs} epochs, {args.threads} torch thread(s)")
    print(f"{'method':8s} {'s/epoch':>8s} {'x ERM':>6s} {'peak RSS MiB':>13s} {'x ERM':>6s}")
    for r in rows:
        print(f"{r['method']:8s} {r['seconds_per_epoch']:8.2f} {r['seconds_per_epoch'] / erm['seconds_per_epoch']:6.2f} "
              f"{r['peak_rss_mib']:13.0f} {r['peak_rss_mib'] / erm['peak_rss_mib']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
