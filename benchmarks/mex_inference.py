"""MEX vs ERM: inference time per sample with the same IR-net backbone (and optionally one training epoch).

Both predict the same inputs with the same backbone weights (random, or trained by neither: timing does
not depend on the weights). ERM is one forward pass; MEX embeds each sample once and then scores
C candidates per sample for T + 1 rounds, all samples of a chunk in one [B, C] call.

    python benchmarks/mex_inference.py                       # CPU, random inputs, paper's C=1500, T=10
    python benchmarks/mex_inference.py --task phonons-top    # the task's test inputs (needs OODBENCH_DATA)
    python benchmarks/mex_inference.py --settings 1500:10,256:5,64:3 --score mlp,cos --train-epoch
    python benchmarks/mex_inference.py --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from oodbench.api import Context, Subset, TensorInputs
from oodbench.training import make_optimizer
from oodbench_plugins.backbones.irnet import IRNet
from oodbench_plugins.methods.erm import ERM
from oodbench_plugins.methods.mex import MEX
from oodbench_plugins.methods.mex.model import MEXModule, mex_loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter


def timed(fn, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = CLOCK()
        fn()
        sync(device)
        times.append(CLOCK() - t)
    return statistics.median(times)


def load_inputs(args):
    """(test inputs, train subset for the backbone's normalisation, standardised label range)."""
    if args.task:
        from oodbench.runner import featurize, make_backbone
        from oodbench.tasks import get_task
        td = get_task(args.task).load()
        inputs = featurize(make_backbone("irnet", {}, args.preset), td.dataset)
        y = td.y[td.split.train]
        ys = (td.y - y.mean()) / y.std()
        train = Subset(inputs.take(td.split.train), ys[td.split.train].astype(np.float32), td.split.train)
        return inputs.take(td.split.test), train, (float(ys.min()), float(ys.max()))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 145, generator=g)
    inputs = TensorInputs(x)
    return inputs, Subset(inputs, np.zeros(args.n, np.float32), np.arange(args.n)), (-3.4, 5.0)


def flops_note(backbone, hidden: int, candidates: int, iters: int) -> tuple[int, int]:
    """Multiply-adds per sample: the backbone forward, and MEX's candidate scoring on top of it."""
    sizes = [145, *backbone.widths]
    bb = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    per_candidate = 2 * hidden * hidden + hidden * 2  # two H×H layers, the H→1 layer, the segment-table lookup
    return bb, candidates * (iters + 1) * per_candidate


def train_epoch_times(args, backbone_cls, train, device):
    """Seconds for one training epoch (steps only, no validation) of ERM and of MEX on ``train``."""
    n = len(train)
    y = torch.randn(n, generator=torch.Generator().manual_seed(1))
    train = Subset(train.inputs, y.numpy(), train.ids)
    out = {}
    for name in ("erm", "mex"):
        model = backbone_cls.build(train, seed=0).to(device)
        if name == "erm":
            method, net = ERM(batch_size=args.batch_size), model
            step_loss = lambda b: torch.nn.functional.mse_loss(net(b.x), b.y)  # noqa: E731
        else:
            method = MEX(batch_size=args.batch_size, score=args.score.split(",")[0])
            net = MEXModule(model, method.score, method.score_hidden, method.label_activation,
                            method.cos_temperature, (-3.4, 5.0)).to(device)
            sig = torch.tensor(method.noise_sigmas, device=device)
            gen = torch.Generator(device=device).manual_seed(0)
            step_loss = lambda b: mex_loss(net, b.x, b.y, method.n_noise, sig, method.lam, gen)[0]  # noqa: E731
        opt, _ = make_optimizer(method, net)
        rng = np.random.default_rng(0)

        def epoch():
            net.train()
            for b in train.batches(args.batch_size, device, shuffle=True, generator=rng, drop_last=True):
                loss = step_loss(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        out[name] = timed(epoch, device, 1, args.train_repeats)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--preset", default="cpu", help="IR-net preset (cpu: 512-256-128, default: 2048-1024-512)")
    ap.add_argument("--task", default=None, help="use this task's test inputs instead of random ones")
    ap.add_argument("--n", type=int, default=200, help="number of random test inputs (without --task)")
    ap.add_argument("--settings", default="1500:10", help="comma list of MEX candidates:iters to time")
    ap.add_argument("--score", default="mlp", help="comma list of MEX score variants (mlp, mlp+cos, cos)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (with --threads 1, robust to other jobs on a shared machine)")
    ap.add_argument("--train-epoch", action="store_true", help="also time one training epoch of each")
    ap.add_argument("--n-train", type=int, default=2048, help="training samples for --train-epoch")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--train-repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if args.device != "cpu":
            raise SystemExit("--clock cpu measures CPU time and cannot time GPU work; use --clock wall")
        global CLOCK
        CLOCK = time.process_time
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device; use --device cpu")

    backbone_cls = IRNet().set_params(**IRNet.presets[args.preset])
    inputs, train, label_range = load_inputs(args)
    n = len(inputs)
    model = backbone_cls.build(train, seed=0).to(device).eval()
    ctx = Context(device, 0, np.random.default_rng(0), log=lambda *a: None)
    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} IR-net widths={backbone_cls.widths} "
          f"test samples={n} ({'task ' + args.task if args.task else 'random inputs'})")

    t_erm = timed(lambda: ERM().predict(model, inputs, ctx), device, args.warmup, args.repeats)
    print(f"{'ERM':<28} {t_erm / n:.3e} s/sample")
    for score in args.score.split(","):
        for setting in args.settings.split(","):
            c, t = (int(v) for v in setting.split(":"))
            mex = MEX(candidates=c, iters=t, score=score)
            net = MEXModule(model, score, mex.score_hidden, mex.label_activation, mex.cos_temperature,
                            label_range).to(device)
            t_mex = timed(lambda: mex.predict(net, inputs, ctx), device, args.warmup, args.repeats)
            bb, extra = flops_note(backbone_cls, mex.score_hidden, c, t)
            extra_note = f"~{extra / bb:.0f}x the backbone's" if "mlp" in score else "O(1) per candidate"
            print(f"MEX {score:<8} C={c:<5} T={t:<3}  {t_mex / n:.3e} s/sample   ratio MEX/ERM = "
                  f"{t_mex / t_erm:8.1f}   (scoring multiply-adds per sample: {extra_note})")
    if args.train_epoch:
        sub = Subset(TensorInputs(torch.randn(args.n_train, 145, generator=torch.Generator().manual_seed(2))),
                     np.zeros(args.n_train, np.float32), np.arange(args.n_train))
        times = train_epoch_times(args, backbone_cls, sub, device)
        print(f"one training epoch, {args.n_train} samples, batch {args.batch_size}: ERM {times['erm']:.3f} s, "
              f"MEX (M={MEX().n_noise}) {times['mex']:.3f} s, ratio {times['mex'] / times['erm']:.1f}")


if __name__ == "__main__":
    main()
