"""MEX's trainable parts: material encoder (the backbone), label encoder, score module; and the NCE loss.

The score module is an MLP on concat[h, e(y)]. Its first layer is one
``nn.Linear(2D, H)``, but it is applied as ``W_h h + b`` (once per material)
plus ``W_y e(y)`` (once per label), so M noisy labels or C inference
candidates cost no extra backbone or ``W_h`` work: everything label-shaped
is a [B, L, ·] tensor and nothing loops in Python. With a ReLU / leaky-ReLU
label encoder, ``W_y e(y)`` is itself piecewise linear in the scalar y, so it
is read from per-segment tables (:meth:`MEXModule.label_tables`) instead of
multiplying a D-vector per label; :meth:`MEXModule.score_direct` is the plain
form the tables are tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from oodbench.api import BackboneModule

LABEL_ACTIVATIONS = {"relu": F.relu, "leaky_relu": F.leaky_relu, "silu": F.silu, "tanh": torch.tanh,
                     "softplus": F.softplus}
PIECEWISE_SLOPE = {"relu": 0.0, "leaky_relu": 0.01}  # slope left of the kink (F.leaky_relu's default)
SCORES = ("mlp", "mlp+cos", "cos")


class MEXModule(BackboneModule):
    """Backbone + label encoder + score module, trained and checkpointed together.

    ``label_range`` (standardised [l, u] searched at inference) is a buffer so
    the fitted module carries everything ``MEX.predict`` needs.
    """

    def __init__(self, backbone: BackboneModule, score: str, hidden: int, label_activation: str,
                 cos_temperature: float, label_range: tuple):
        super().__init__()
        self.backbone = backbone
        d = int(backbone.embedding_dim)
        self.embedding_dim = d
        self.score_kind = score
        self.label_activation = label_activation
        self.cos_temperature = float(cos_temperature)
        self.label_encoder = nn.Linear(1, d)
        self.uses_mlp = score in ("mlp", "mlp+cos")
        self.uses_cos = score in ("mlp+cos", "cos")
        if self.uses_mlp:
            self.first = nn.Linear(2 * d, hidden)
            self.rest = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("label_range", torch.tensor([float(label_range[0]), float(label_range[1])]))

    # ---- encoders
    def embed(self, x) -> torch.Tensor:
        return self.backbone.embed(x)

    def head(self, z):
        raise RuntimeError("a MEX model has no regression head: it predicts by maximising its score over "
                           "labels; call MEX.predict(model, inputs, ctx)")

    def encode_labels(self, y: torch.Tensor) -> torch.Tensor:
        """e(y): [...] standardised labels → [..., D]."""
        w = self.label_encoder.weight[:, 0]
        return LABEL_ACTIVATIONS[self.label_activation](torch.addcmul(self.label_encoder.bias, y.unsqueeze(-1), w))

    # ---- score s(x, y)
    @property
    def piecewise_linear(self) -> bool:
        return self.label_activation in PIECEWISE_SLOPE

    def label_tables(self) -> dict:
        """The label path as exact per-segment linear maps (ReLU / leaky ReLU encoders only).

        e(y) = φ(w y + b) is linear between the sorted knots −b_j / w_j: on
        segment k, e(y) = y·Sw_k + Sb_k with Sw_k = slope_k ⊙ w, Sb_k = slope_k ⊙ b.
        So W_y e(y) = y·A_k + C_k, and a label costs an O(H) gather instead of
        the O(D·H) product. Which units are active on which segment follows
        from the knots' ranks (no floating-point sign tests); gradients reach
        w, b and W_y through Sw, Sb, A, C exactly as in the direct form.
        """
        w = self.label_encoder.weight[:, 0]
        b = self.label_encoder.bias
        d = w.numel()
        with torch.no_grad():
            moving = w != 0
            knots_all = torch.where(moving, -b / torch.where(moving, w, torch.ones_like(w)), torch.zeros_like(w))
            n_moving = int(moving.sum())
            order = torch.argsort(torch.where(moving, knots_all, torch.full_like(w, torch.inf)))
            knots = knots_all[order[:n_moving]].contiguous()
            rank = torch.empty(d, dtype=torch.long, device=w.device)
            rank[order] = torch.arange(d, device=w.device)
            seg = torch.arange(n_moving + 1, device=w.device).unsqueeze(1)  # [K+1, 1]
            active = torch.where(moving, torch.where(w > 0, seg > rank, seg <= rank), (b > 0).expand(n_moving + 1, d))
            slope = torch.where(active, torch.ones((), dtype=w.dtype, device=w.device),
                                torch.full((), PIECEWISE_SLOPE[self.label_activation], dtype=w.dtype,
                                           device=w.device))
        tab = {"knots": knots, "Sw": slope * w, "Sb": slope * b}
        if self.uses_mlp:
            w_y = self.first.weight[:, self.embedding_dim:]
            tab["AC"] = torch.cat([F.linear(tab["Sw"], w_y), F.linear(tab["Sb"], w_y)], dim=-1)  # one gather
        if self.uses_cos:
            tab["P"] = (tab["Sw"] * tab["Sw"]).sum(-1)
            tab["Q"] = (tab["Sw"] * tab["Sb"]).sum(-1)
            tab["R"] = (tab["Sb"] * tab["Sb"]).sum(-1)
        return tab

    def material_part(self, h: torch.Tensor, tables: bool = True) -> dict:
        """Everything of the score that is computed once per material (and once per call for the tables)."""
        out = {"h": h}
        if self.uses_mlp:
            out["a"] = F.linear(h, self.first.weight[:, : self.embedding_dim], self.first.bias)
        if self.uses_cos:
            out["h_unit"] = F.normalize(h, dim=-1)
        if tables and self.piecewise_linear:
            tab = self.label_tables()
            if self.uses_cos:
                tab["alpha"] = F.linear(out["h_unit"], tab["Sw"])  # [B, K+1]: h·Sw_k
                tab["beta"] = F.linear(out["h_unit"], tab["Sb"])
            out["tables"] = tab
        return out

    def score(self, mat: dict, y: torch.Tensor) -> torch.Tensor:
        """Scores [B, L] of labels ``y`` [B, L] for the materials summarised in ``mat`` ([B, ·])."""
        tab = mat.get("tables")
        if tab is None:
            return self.score_direct(mat, y)
        k = torch.searchsorted(tab["knots"], y.detach().contiguous())  # segment of every label
        yy = y.unsqueeze(-1)
        s = 0.0
        if self.uses_mlp:
            ac = F.embedding(k, tab["AC"])  # [B, L, 2H]
            hid = ac.shape[-1] // 2
            if torch.is_grad_enabled():
                z = torch.addcmul(ac[..., hid:], yy, ac[..., :hid]) + mat["a"].unsqueeze(1)
                s = self.rest(z).squeeze(-1)
            else:  # inference: same arithmetic in place, since the [B, C, H] passes are memory-bound
                z = ac[..., hid:].addcmul_(yy, ac[..., :hid]).add_(mat["a"].unsqueeze(1))
                s = self._rest_inplace(z.reshape(-1, hid)).view(y.shape)
        if self.uses_cos:
            dot = y * tab["alpha"].gather(1, k) + tab["beta"].gather(1, k)
            sq = (y * y) * tab["P"][k] + 2 * y * tab["Q"][k] + tab["R"][k]
            s = s + dot / torch.sqrt(sq.clamp_min(1e-24)) / self.cos_temperature
        return s

    def _rest_inplace(self, z: torch.Tensor) -> torch.Tensor:
        layers = [m for m in self.rest if isinstance(m, nn.Linear)]
        for lin in layers:
            z = torch.addmm(lin.bias, z.relu_(), lin.weight.t())
        return z

    def score_direct(self, mat: dict, y: torch.Tensor, e: torch.Tensor | None = None) -> torch.Tensor:
        """The same scores computed from e(y) itself (any activation; the reference for the tables)."""
        if e is None:
            e = self.encode_labels(y)
        s = 0.0
        if self.uses_mlp:
            z = F.linear(e, self.first.weight[:, self.embedding_dim:]) + mat["a"].unsqueeze(1)
            s = self.rest(z).squeeze(-1)
        if self.uses_cos:
            cos = torch.matmul(F.normalize(e, dim=-1), mat["h_unit"].unsqueeze(-1)).squeeze(-1)
            s = s + cos / self.cos_temperature
        return s


def mixture_log_q(y: torch.Tensor, centre: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """log q(y | centre) for q = (1/K) Σ_k N(centre, σ_k²); ``centre`` broadcasts against ``y``."""
    d = (y - centre).unsqueeze(-1) / sigmas
    log_comp = -0.5 * d * d - torch.log(sigmas) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_comp, dim=-1) - math.log(sigmas.numel())


def sample_noisy_labels(y: torch.Tensor, m: int, sigmas: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """M draws per label from the Gaussian mixture around it: [B] → [B, M]."""
    comp = torch.randint(sigmas.numel(), (y.shape[0], m), generator=generator, device=y.device)
    eps = torch.randn(y.shape[0], m, generator=generator, device=y.device)
    return y.unsqueeze(1) + sigmas[comp] * eps


def mex_loss(net: MEXModule, x, y: torch.Tensor, m: int, sigmas: torch.Tensor, lam: float,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = L_nce + λ L_abs (MEX eq. 3 and the absolute matching term); returns (L, L_nce, L_abs).

    L_nce is the softmax cross-entropy of the true label against M noisy labels with
    logits s(x, y) − log q(y | y_i), so the score learns log p(y|x) up to a constant.
    """
    h = net.embed(x)
    labels = torch.cat([y.unsqueeze(1), sample_noisy_labels(y, m, sigmas, generator)], dim=1)  # [B, 1+M]
    logits = net.score(net.material_part(h), labels) - mixture_log_q(labels, y.unsqueeze(1), sigmas)
    l_nce = F.cross_entropy(logits, torch.zeros(y.shape[0], dtype=torch.long, device=y.device))
    l_abs = -F.cosine_similarity(h, net.encode_labels(y), dim=-1).mean()
    return l_nce + lam * l_abs, l_nce.detach(), l_abs.detach()
