"""Plugin: MEX, matching-based extrapolation ("On extrapolation in material property regression", ICLR 2025 submission).

MEX recasts regression as matching a material to a label. A material encoder
(the backbone's ``embed``, h = f(x)), a label encoder (e(y) = act(w·y + b), one
linear layer to the embedding width) and a score module s(x, y) (a 4-layer MLP
on concat[h, e(y)]) are trained with

    L = L_nce + λ · L_abs,

where L_nce is the paper's eq. 3: for each sample, M noisy labels are drawn
from q(y | y_i) = (1/K) Σ_k N(y; y_i, σ_k²) and the softmax cross-entropy over
[true, noisy…] of s(x, y) − log q(y | y_i) is minimised, and L_abs =
−cos(h, e(y_i)) aligns each material with its own label. Prediction is
argmax_y s(x, y) by Monte-Carlo search: C candidates uniform on the label range
[l, u] of the whole dataset (a prior the runner supplies; searching only the
training range could never extrapolate), T rounds of softmax(s)-weighted
resampling plus Gaussian noise shrinking by β per round, then the best
candidate. ``score`` selects the paper's ablation variants: "mlp" (main),
"mlp+cos" (MLP plus cos(h, e(y))/τ) and "cos" (cos(h, e(y))/τ alone).

Choices the paper leaves open, made here:
- σ = (0.075, 0.15, 0.3) are in standardised label units (training mean/std),
  so one setting suits every task whatever its physical unit.
- λ = 0.5 by default: the middle of the paper's grid {0.25, 0.5, 0.75, 1}.
  The validation split lies inside the training label range, so tuning λ on
  it would not select for extrapolation; a mid value is the neutral choice.
- the label encoder's activation is ReLU (unbounded, so labels beyond the
  training range still get distinct embeddings; tanh would saturate there);
  the score MLP is 2D → H → H → H → 1 with ReLU and H = ``score_hidden`` = 64: it runs on
  1 + M = 501 labels per sample in training and C·(T + 1) = 16,500 candidates per sample at
  inference, so its H×H layers set both costs (H = 128 made a training step ~4x slower).
- the cosine variants divide the cosine by a temperature τ
  (``cos_temperature``): a logit bounded by ±1 cannot express a sharp
  preference among 1 + M labels.
- inference noise starts at ``infer_noise`` (standardised units) and the
  best candidate of any round is returned.
- validation (early stopping, LR plateau) runs the same search with fewer
  candidates/rounds (``val_candidates``, ``val_iters``) because it runs every
  epoch; the test predictions use ``candidates``/``iters`` (paper: 1500, 10).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from oodbench import hookimpl
from oodbench.api import Method
from oodbench.training import EarlyStopping, TrainingMixin, make_optimizer, mae

from .model import LABEL_ACTIVATIONS, SCORES, MEXModule, mex_loss
from .search import mc_maximise

# Candidate rows ([samples × C]) scored per chunk at inference: enough to amortise per-op overhead
# (on CPU, 2 to 60 samples per chunk timed within 10 %), few enough that the [rows, 2H] activations
# stay small; a GPU needs more rows in flight to be busy.
INFER_ROWS = {"cpu": 1 << 16, "cuda": 1 << 19}


class MEX(TrainingMixin, Method):
    name = "mex"
    description = "matching-based extrapolation: NCE-trained material/label score, Monte-Carlo argmax over the label range"
    paper = "On extrapolation in material property regression (MEX), ICLR 2025 submission"
    needs_embedding = True
    uses_label_range_prior = True

    def __init__(self, n_noise: int = 500, noise_sigmas=(0.075, 0.15, 0.3), lam: float = 0.5,
                 score: str = "mlp", score_hidden: int = 64, label_activation: str = "relu",
                 cos_temperature: float = 0.1, candidates: int = 1500, iters: int = 10,
                 infer_noise: float = 0.1, infer_beta: float = 0.5, val_candidates: int = 256,
                 val_iters: int = 5, range_margin: float = 0.0, label_range=None, **train_kw):
        TrainingMixin.__init__(self, **train_kw)
        self.n_noise = n_noise
        self.noise_sigmas = noise_sigmas
        self.lam = lam
        self.score = score
        self.score_hidden = score_hidden
        self.label_activation = label_activation
        self.cos_temperature = cos_temperature
        self.candidates = candidates
        self.iters = iters
        self.infer_noise = infer_noise
        self.infer_beta = infer_beta
        self.val_candidates = val_candidates
        self.val_iters = val_iters
        self.range_margin = range_margin
        self.label_range = label_range

    # ---- checks
    def _validate(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"MEX score={self.score!r} is unknown; use one of {', '.join(SCORES)}")
        if self.label_activation not in LABEL_ACTIVATIONS:
            raise ValueError(f"MEX label_activation={self.label_activation!r} is unknown; "
                             f"use one of {', '.join(LABEL_ACTIVATIONS)}")
        sig = np.atleast_1d(np.asarray(self.noise_sigmas, dtype=float))
        if sig.size == 0 or np.any(sig <= 0):
            raise ValueError(f"MEX noise_sigmas={self.noise_sigmas!r} must be positive numbers, "
                             f"e.g. -M noise_sigmas=0.075,0.15,0.3")
        for k in ("n_noise", "candidates", "val_candidates", "score_hidden"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"MEX {k}={getattr(self, k)!r} must be at least 1")
        if int(self.iters) < 0 or int(self.val_iters) < 0:
            raise ValueError("MEX iters and val_iters must be >= 0 (0 = pure uniform sampling)")
        if not 0 < float(self.infer_beta) <= 1:
            raise ValueError(f"MEX infer_beta={self.infer_beta!r} must lie in (0, 1]")
        if float(self.range_margin) < 0:
            raise ValueError(f"MEX range_margin={self.range_margin!r} must be >= 0")

    def label_range_std(self, data) -> tuple[float, float, str]:
        """The standardised [l, u] searched at inference, and where it came from."""
        if self.label_range is not None:
            try:
                lo, hi = (float(v) for v in self.label_range)
            except (TypeError, ValueError):
                raise ValueError(f"MEX label_range={self.label_range!r} must be two numbers in the task's "
                                 f"label units, e.g. -M label_range=-1.5,7.2") from None
            lo, hi = (lo - data.y_mean) / data.y_scale, (hi - data.y_mean) / data.y_scale
            source = "label_range hyperparameter"
        elif data.label_range is not None:
            lo, hi = (float(v) for v in data.label_range)
            source = "dataset label range (runner prior)"
        else:
            raise ValueError("MEX needs a label range to search: FitData.label_range is None. Run it through "
                             "oodbench's runner (it supplies the dataset range because MEX sets "
                             "uses_label_range_prior), or pass -M label_range=LOW,HIGH in label units")
        if not hi > lo:
            raise ValueError(f"MEX label range [{lo}, {hi}] (standardised) is empty; give label_range=LOW,HIGH "
                             f"with LOW < HIGH")
        pad = float(self.range_margin) * (hi - lo)
        return lo - pad, hi + pad, source

    # ---- training
    def fit(self, model, data, ctx):
        if getattr(model, "gradient_free", False):
            raise ValueError("MEX trains the backbone's embedding, which a gradient-free backbone does not have; "
                             "use a neural backbone such as irnet")
        self._validate()
        lo, hi, source = self.label_range_std(data)
        with torch.random.fork_rng(devices=[]):
            # the extra modules get seed-determined weights whatever happened to the global RNG before
            torch.manual_seed(int(ctx.seed) + 104729)
            net = MEXModule(model, self.score, int(self.score_hidden), self.label_activation,
                            float(self.cos_temperature), (lo, hi))
        net.to(ctx.device)
        sigmas = torch.as_tensor(np.atleast_1d(np.asarray(self.noise_sigmas, dtype=np.float32)), device=ctx.device)
        gen = torch.Generator(device=ctx.device).manual_seed(int(ctx.seed) + 1)
        opt, sched = make_optimizer(self, net)
        stopper = EarlyStopping(self.patience)
        t0 = time.perf_counter()
        train_s = val_s = 0.0
        epoch, l_nce, l_abs = -1, None, None
        for epoch in range(self.max_epochs):
            t_ep = time.perf_counter()
            net.train()
            for batch in data.train.batches(self.batch_size, ctx.device, shuffle=True, generator=ctx.rng,
                                            drop_last=True):
                loss, l_nce, l_abs = mex_loss(net, batch.x, batch.y, int(self.n_noise), sigmas, float(self.lam), gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
                opt.step()
            t_val = time.perf_counter()
            train_s += t_val - t_ep
            val_mae = mae(self.search(net, data.val.inputs, ctx, int(self.val_candidates), int(self.val_iters)),
                          data.val.y)
            val_s += time.perf_counter() - t_val
            sched.step(val_mae)
            if stopper.step(val_mae, epoch, net):
                break
        stopper.restore(net)
        n_ep = epoch + 1
        ctx.info.update(
            epochs=n_ep, best_epoch=stopper.best_epoch, best_val_mae_std=stopper.best,
            train_seconds=time.perf_counter() - t0,
            mex_train_epoch_seconds=train_s / max(1, n_ep), mex_val_epoch_seconds=val_s / max(1, n_ep),
            mex_last_loss_nce=None if l_nce is None else float(l_nce),
            mex_last_loss_abs=None if l_abs is None else float(l_abs),
            mex_lambda=float(self.lam), mex_score=self.score, mex_n_noise=int(self.n_noise),
            mex_noise_sigmas_std=[float(s) for s in sigmas.tolist()],
            mex_label_range_std=[lo, hi],
            mex_label_range=[lo * data.y_scale + data.y_mean, hi * data.y_scale + data.y_mean],
            mex_label_range_source=source, mex_range_margin=float(self.range_margin),
            mex_candidates=int(self.candidates), mex_iters=int(self.iters),
            mex_val_candidates=int(self.val_candidates), mex_val_iters=int(self.val_iters))
        return net

    # ---- inference
    @torch.no_grad()
    def search(self, net: MEXModule, inputs, ctx, candidates: int, iters: int) -> np.ndarray:
        """Standardised argmax-score labels for every row of ``inputs``; seeded by ``ctx.seed``."""
        net.eval()
        lo, hi = (float(v) for v in net.label_range.tolist())
        gen = torch.Generator(device=ctx.device).manual_seed(int(ctx.seed) + 2)
        rows = max(1, INFER_ROWS.get(torch.device(ctx.device).type, 1 << 16) // candidates)
        out = []
        n = len(inputs)
        for s in range(0, n, rows):
            idx = np.arange(s, min(n, s + rows))
            mat = net.material_part(net.embed(inputs.batch(idx, ctx.device)))
            out.append(mc_maximise(lambda y: net.score(mat, y), len(idx), lo, hi, candidates, iters,
                                   float(self.infer_noise), float(self.infer_beta), gen, ctx.device).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def predict(self, model, inputs, ctx, batch_size: int = 1024) -> np.ndarray:
        if not isinstance(model, MEXModule):
            raise TypeError(f"MEX.predict needs the model MEX.fit returned (a MEXModule), got "
                            f"{type(model).__name__}; pass fit's return value, not the backbone")
        return self.search(model, inputs, ctx, int(self.candidates), int(self.iters))


@hookimpl
def oodbench_methods():
    return [MEX]
