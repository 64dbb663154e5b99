"""Plugin: CAL, crystal adversarial learning, with its ablations ``cal-aa`` and ``cal-ps``.

Li, Miklaucic & Hu, "Out-of-distribution materials property prediction using
adversarial learning based fine-tuning" (arXiv:2408.09297; J. Phys. Chem. C
129, 6372, 2025). CAL trains the IR-net with

1. stable adversarial learning (SAL; Liu et al., "Stable adversarial learning
   under distributional shifts", AAAI 2021; equations 3-5 there): adversarial
   samples are grown from seeds by gradient ascent on the loss minus a
   per-covariate weighted transport cost, the model is trained on them, and
   the cost weights are learned through the adversarial samples so that
   unstable covariates are perturbed more (see :mod:`.sal`);
2. partial sampling (Magar & Barati Farimani, "Learning from mistakes:
   sampling strategies to efficiently train machine learning models for
   material property prediction", 2023): after ``warmup_epochs`` on all data
   (paper: 5) only the ``partial_fraction`` (20 %) highest-loss training
   samples are trained on, re-ranked every ``rerank_every`` epochs;
3. the smooth-L1 (Huber) loss and an exponential moving average of the epoch
   checkpoints; validation MAE is measured on the averaged model, which
   drives ReduceLROnPlateau and early stopping, and the best averaged
   checkpoint is returned. Warm-up checkpoints are never returned (nor
   count towards patience): they are not CAL models (no adversarial samples,
   no partial sampling, no averaging; in targeted mode they have never seen
   the pool). Before this rule, early stopping returned a warm-up checkpoint
   whenever partial sampling raised the in-domain validation error, which
   it did in most runs, so "CAL" results were 5-epoch Huber-ERM models.
   (A run with ``max_epochs <= warmup_epochs`` never leaves the warm-up and
   returns its best warm-up checkpoint.)

Targeted mode (the paper's "adversarial learning based fine-tuning"): when
the runner gives a target pool (``--adapt K``), the adversarial seeds are
drawn from the pool instead of the training batch, so the model keeps
training on the high-loss training samples while it also fits perturbed
copies of the k labelled target samples, and the cost weights are learned
from the target environment. Seeds never come from anywhere else: methods
never receive test rows (the runner evaluates on the held-out rows outside
the pool).

What was adapted, and why:

* Every step makes one optimizer step on (clean batch loss + ``adv_weight`` x
  adversarial loss); the CAL code runs 10 extra Adam steps on the
  adversarial batch with a fresh optimizer. One step keeps a CAL epoch within
  about twice an ERM epoch on two CPU cores.
* Adversarial seeds are sub-sampled per step (``n_seeds`` of the batch or
  pool), as in the paper, and ``R(theta)`` splits them into ``n_envs``
  random environments, as the CAL code does.
* A partial-sampling epoch makes ``partial_passes`` (5) passes over the
  high-loss 20 %, as many optimizer steps as a full epoch: under the
  benchmark's fixed 60-epoch budget a single pass leaves the model
  under-trained (on phonons it gets a fifth of ERM's steps and loses to it by
  50 % MAE); the CAL code trains a fixed 5 batches per epoch for up to 1000
  epochs. ``partial_passes=1`` is the literal one-pass variant.
* EMA per epoch (decay ``ema_decay``) instead of per step, since the
  benchmark protocol runs 60 epochs, not 1000.
* Eq. 5's Jacobian-vector chain is a vector-Jacobian product (double
  back-propagation), never the full Jacobian.

Graph backbones: modules without ``normalise``/``embed_normalised`` are
attacked in embedding space (perturb ``model.embed(x)``, predict with
``model.head``), with one SAL weight per embedding dimension; this works for
any :class:`oodbench.api.BackboneModule`, but then only the head is trained
on adversarial points.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from oodbench import hookimpl
from oodbench.api import Context, FitData, Method, Subset
from oodbench.training import EarlyStopping, TrainingMixin, mae, make_optimizer, predict_batched

from .sal import PerturbationSpace, StableAdversary, huber, vjp_through_parameter_gradient
from .sampling import EpochEMA, highest_loss_rows

PAPER = ("Li, Miklaucic & Hu, arXiv:2408.09297 (2024) / J. Phys. Chem. C 129, 6372 (2025); SAL: Liu et al., "
         "AAAI 2021; partial sampling: Magar & Barati Farimani 2023")


class _CALBase(Method):
    """The training loop shared by CAL and its ablations; subclasses switch the two components."""

    adversarial: bool = True     # SAL adversarial samples
    partial: bool = True         # partial sampling of the highest-loss training samples
    default_backbone = "irnet"
    paper = PAPER

    # ---------------------------------------------------------------- helpers
    def _check(self, data: FitData) -> None:
        minimum = {"batch_size": 1, "max_epochs": 1, "warmup_epochs": 0, "rerank_every": 1, "n_seeds": 2,
                   "partial_passes": 1}
        for name, low in minimum.items():
            if hasattr(self, name) and int(getattr(self, name)) < low:
                raise ValueError(f"{self.name}: {name} must be >= {low}, got {getattr(self, name)}")
        if len(data.train) < 2:
            raise ValueError(f"{self.name}: needs at least 2 training samples, got {len(data.train)}")

    def _batches(self, rows: np.ndarray, rng: np.random.Generator):
        """Shuffled batches of ``rows``; the last partial batch is dropped unless it is the only one."""
        order = rng.permutation(rows)
        b = int(self.batch_size)
        stop = len(order) - (len(order) % b) if len(order) > b else len(order)
        for s in range(0, stop, b):
            yield order[s:s + b]

    def _seed_rows(self, batch_rows: np.ndarray, pool: Subset | None, rng: np.random.Generator):
        """Seed positions and their source: the target pool in targeted mode, else the current batch."""
        if pool is not None:
            return rng.choice(len(pool), size=min(int(self.n_seeds), len(pool)), replace=False), "pool"
        pick = rng.choice(len(batch_rows), size=min(int(self.n_seeds), len(batch_rows)), replace=False)
        return batch_rows[pick], "train"

    def _step(self, model, params, opt, x, y) -> float:
        loss = huber(model(x), y, self.huber_beta).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        opt.step()
        return float(loss.detach())

    def _adversarial_step(self, model, params, opt, space, adversary, x, y, xs, ys, epoch, rng) -> float:
        """One SAL step: attack the seeds, train on clean + adversarial samples, update the cost weights."""
        p0 = space.encode(xs)
        if adversary[0] is None:
            adversary[0] = StableAdversary(p0.shape[1], self.adv_steps, self.adv_step_size, self.w_lr,
                                           self.w_floor, self.n_envs, device=p0.device)
        sal = adversary[0]
        loss_of = lambda pred, t: huber(pred, t, self.huber_beta)  # noqa: E731
        model.eval()   # deterministic input gradients for the ascent (no dropout noise)
        p_adv, dxA_dw = sal.attack(space.decode, p0, ys, loss_of)
        model.train()
        # v = dR/dtheta on the seeds' clean versions (SAL eq. 4), at the current theta
        risk = sal.risk(loss_of(space.decode(p0), ys), self.env_alpha / np.sqrt(epoch + 1.0), rng)
        v = [torch.zeros_like(p) if g is None else g
             for p, g in zip(params, torch.autograd.grad(risk, params, allow_unused=True))]
        clean = huber(model(x), y, self.huber_beta).mean()
        g_clean = torch.autograd.grad(clean, params, allow_unused=True)
        p_adv.requires_grad_(True)
        adv = loss_of(space.decode(p_adv), ys).mean()
        g_adv, vjp = vjp_through_parameter_gradient(adv, params, v, p_adv)
        for p, gc, ga in zip(params, g_clean, g_adv):
            g = torch.zeros_like(p) if gc is None else gc.detach()
            p.grad = g if ga is None else g + self.adv_weight * ga
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        beta = opt.param_groups[0]["lr"] * self.adv_weight   # the SGD step size of SAL's dtheta/dx_A
        opt.step()
        sal.update(-beta * vjp, dxA_dw)
        return float(clean.detach())

    # ---------------------------------------------------------------- fit
    def fit(self, model, data: FitData, ctx: Context):
        if getattr(model, "gradient_free", False):
            raise ValueError(f"{self.name} trains by gradients; use a neural backbone such as irnet")
        self._check(data)
        device = ctx.device
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt, sched = make_optimizer(self, model)
        stopper = EarlyStopping(self.patience)
        ema = EpochEMA(self.ema_decay)
        eval_model = None
        space = PerturbationSpace(model)
        adversary = [None]
        targeted = self.adversarial and data.pool is not None
        if data.pool is not None and not self.adversarial:
            raise ValueError(f"{self.name} has no adversarial component and cannot use a target pool; "
                             f"use cal or cal-aa with --adapt")
        pool = data.pool if targeted else None
        y_train = torch.as_tensor(data.train.y, dtype=torch.float32)
        y_pool = torch.as_tensor(pool.y, dtype=torch.float32) if pool is not None else None
        active = np.arange(len(data.train))
        # only averaged post-warm-up checkpoints are candidates, unless the run is too short to get there
        leaves_warmup = int(self.max_epochs) > int(self.warmup_epochs)
        seed_rows_used: set = set()
        n_adv = 0
        reranks = 0
        t0 = time.perf_counter()
        epoch = -1
        for epoch in range(int(self.max_epochs)):
            after_warmup = epoch >= int(self.warmup_epochs)
            if self.partial and after_warmup and (epoch - int(self.warmup_epochs)) % int(self.rerank_every) == 0:
                active = highest_loss_rows(model, data.train, self.partial_fraction, device, self.huber_beta)
                reranks += 1
            model.train()
            passes = int(self.partial_passes) if self.partial and after_warmup else 1
            for rows in (r for _ in range(passes) for r in self._batches(active, ctx.rng)):
                x = data.train.inputs.batch(rows, device)
                y = y_train[torch.as_tensor(rows)].to(device)
                if self.adversarial and after_warmup:
                    seeds, src = self._seed_rows(rows, pool, ctx.rng)
                    source = pool if src == "pool" else data.train
                    ys_all = y_pool if src == "pool" else y_train
                    xs = source.inputs.batch(seeds, device)
                    ys = ys_all[torch.as_tensor(seeds)].to(device)
                    seed_rows_used.update(int(s) for s in seeds)
                    self._adversarial_step(model, params, opt, space, adversary, x, y, xs, ys, epoch, ctx.rng)
                    n_adv += 1
                else:
                    self._step(model, params, opt, x, y)
            if after_warmup:
                ema.update(model)
                if eval_model is None:
                    eval_model = copy.deepcopy(model)
                ema.load_into(eval_model)
                judged = eval_model
            else:
                judged = model
            val_mae = mae(predict_batched(judged, data.val.inputs, device), data.val.y)
            sched.step(val_mae)
            if (after_warmup or not leaves_warmup) and stopper.step(val_mae, epoch, judged):
                break
        stopper.restore(model)
        # provenance of the adversarial seeds: which part of FitData, which ids (tests check these)
        self.seed_source_ = ("pool" if targeted else "train") if self.adversarial else "none"
        src = pool if targeted else data.train
        self.seed_ids_ = np.asarray(src.ids)[sorted(seed_rows_used)] if seed_rows_used else np.array([])
        self.adversary_ = adversary[0]
        info = dict(epochs=epoch + 1, best_epoch=stopper.best_epoch, best_val_mae_std=stopper.best,
                    train_seconds=time.perf_counter() - t0, adversarial_steps=n_adv, partial_reranks=reranks,
                    adversarial_seed_source=self.seed_source_, ema_updates=ema.updates)
        if adversary[0] is not None:
            w = adversary[0].w.detach().cpu().numpy()
            info.update(perturbation_space=space.kind, sal_gamma=adversary[0].gamma,
                        sal_w_min=float(w.min()), sal_w_max=float(w.max()))
            names = getattr(data.train.inputs, "feature_names", None)
            if space.on_inputs and names and len(names) == len(w):
                info["sal_least_stable_features"] = [names[i] for i in np.argsort(w, kind="stable")[:5]]
        ctx.info.update(info)
        return model


def _store(obj, **kw):
    for k, v in kw.items():
        setattr(obj, k, v)


class CAL(TrainingMixin, _CALBase):
    name = "cal"
    description = "crystal adversarial learning: SAL adversarial samples + partial sampling + EMA (Huber loss)"
    uses_target_pool = True

    def __init__(self, adv_steps: int = 3, adv_step_size: float = 0.05, n_seeds: int = 64, adv_weight: float = 1.0,
                 w_lr: float = 0.1, w_floor: float = 0.01, n_envs: int = 5, env_alpha: float = 0.5,
                 partial_fraction: float = 0.2, partial_passes: int = 5, rerank_every: int = 5,
                 warmup_epochs: int = 5, ema_decay: float = 0.9, huber_beta: float = 1.0, **train_kw):
        TrainingMixin.__init__(self, **train_kw)
        _store(self, adv_steps=adv_steps, adv_step_size=adv_step_size, n_seeds=n_seeds, adv_weight=adv_weight,
               w_lr=w_lr, w_floor=w_floor, n_envs=n_envs, env_alpha=env_alpha,
               partial_fraction=partial_fraction, partial_passes=partial_passes, rerank_every=rerank_every,
               warmup_epochs=warmup_epochs,
               ema_decay=ema_decay, huber_beta=huber_beta)


class CALAdversarialOnly(TrainingMixin, _CALBase):
    name = "cal-aa"
    description = "CAL ablation: SAL adversarial samples + EMA on all training data (no partial sampling)"
    uses_target_pool = True
    partial = False

    def __init__(self, adv_steps: int = 3, adv_step_size: float = 0.05, n_seeds: int = 64, adv_weight: float = 1.0,
                 w_lr: float = 0.1, w_floor: float = 0.01, n_envs: int = 5, env_alpha: float = 0.5,
                 warmup_epochs: int = 5, ema_decay: float = 0.9, huber_beta: float = 1.0, **train_kw):
        TrainingMixin.__init__(self, **train_kw)
        _store(self, adv_steps=adv_steps, adv_step_size=adv_step_size, n_seeds=n_seeds, adv_weight=adv_weight,
               w_lr=w_lr, w_floor=w_floor, n_envs=n_envs, env_alpha=env_alpha, warmup_epochs=warmup_epochs,
               ema_decay=ema_decay, huber_beta=huber_beta)


class CALPartialOnly(TrainingMixin, _CALBase):
    name = "cal-ps"
    description = "CAL ablation: partial sampling of the highest-loss 20 % + EMA (no adversarial samples)"
    adversarial = False

    def __init__(self, partial_fraction: float = 0.2, partial_passes: int = 5, rerank_every: int = 5,
                 warmup_epochs: int = 5, ema_decay: float = 0.9, huber_beta: float = 1.0, **train_kw):
        TrainingMixin.__init__(self, **train_kw)
        _store(self, partial_fraction=partial_fraction, partial_passes=partial_passes, rerank_every=rerank_every,
               warmup_epochs=warmup_epochs,
               ema_decay=ema_decay, huber_beta=huber_beta)


@hookimpl
def oodbench_methods():
    return [CAL, CALAdversarialOnly, CALPartialOnly]
