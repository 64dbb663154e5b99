"""Plugin: IR-net, the individual-residual network on the 145 composition features.

Jha et al., "Enabling deeper learning on big data for materials informatics
applications", Sci. Rep. 11, 4244 (2021) (IRNet), as used by the CAL paper
(Li, Miklaucic & Hu): every block is Linear → LayerNorm → ReLU → Dropout with
its own input added back (through a linear projection where the widths
differ). IRNet's BatchNorm is replaced by LayerNorm, as in the CAL code, so a
prediction does not depend on batch-mates. Input features are standardised
with statistics of the training split only (kept as buffers in the module).

``input_clip`` (off by default) clips the standardised features to
[-c, c]. Why it exists: a feature that is almost constant on the training
split has a tiny standard deviation, so a test material where it is not
gets a huge standardised value and the network's output explodes. On
``mp-eform-prior``, "MagpieData minimum GSmagmom" is 0 for nearly every
training material; 31 held-out materials made only of magnetic elements sit
92,343 standard deviations out, and ERM's errors on them reach 79 eV/atom
(labels span -0.35 to 5.4), which dominates the MAE of the MP covariate and
prior sets. It is off by default because the published leaderboards were
produced without it; a backbone parameter (``-B input_clip=10``) is
recorded with each result, so clipped and unclipped runs never mix silently.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from oodbench import hookimpl
from oodbench.api import COMPOSITION, Backbone, BackboneModule, Subset, TensorInputs
from oodbench.data.features import feature_names, magpie_features


class ResidualBlock(nn.Module):
    def __init__(self, d_in: int, d_out: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.ReLU(), nn.Dropout(dropout))
        self.skip = nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.body(x) + self.skip(x)


class IRNetModule(BackboneModule):
    def __init__(self, n_in: int, widths, dropout: float, mean: torch.Tensor, std: torch.Tensor,
                 input_clip: float | None = None):
        super().__init__()
        self.input_clip = input_clip
        self.register_buffer("x_mean", mean)
        self.register_buffer("x_std", std)
        dims = [n_in, *widths]
        self.blocks = nn.Sequential(*[ResidualBlock(a, b, dropout) for a, b in zip(dims[:-1], dims[1:])])
        self.out = nn.Linear(dims[-1], 1)
        self.embedding_dim = dims[-1]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.x_mean) / self.x_std
        return z if self.input_clip is None else z.clamp(-self.input_clip, self.input_clip)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_normalised(self.normalise(x))

    def embed_normalised(self, xn: torch.Tensor) -> torch.Tensor:
        """Embedding of already-standardised features (methods that perturb or mix inputs use this)."""
        return self.blocks(xn)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(z).squeeze(-1)


class IRNet(Backbone):
    name = "irnet"
    description = "individual-residual MLP on the 145 Magpie composition features (Jha et al. 2021; CAL paper)"
    input_kind = COMPOSITION
    presets = {
        "default": {"widths": (2048, 1024, 512)},
        # The committed CPU leaderboards use "cpu": the default costs ~7.6 s per perovskites epoch on
        # 2 cores, 7x more, which a 7-task x 3-seed x many-method sweep cannot afford there.
        "cpu": {"widths": (512, 256, 128)},
        "small": {"widths": (64, 32)},
    }

    def __init__(self, widths=(2048, 1024, 512), dropout: float = 0.1, input_clip: float | None = None):
        self.widths = widths
        self.dropout = dropout
        self.input_clip = input_clip

    def get_params(self) -> dict:
        params = super().get_params()
        # Recorded only when set: the switch came after the published leaderboards, and leaving it out
        # while off keeps their records' config hashes, so sweeps still recognise (and skip) them.
        if params["input_clip"] is None:
            del params["input_clip"]
        return params

    def featurize(self, dataset, cache=None) -> TensorInputs:
        X = magpie_features(dataset.formulas)
        return TensorInputs(torch.from_numpy(X), kind=COMPOSITION, feature_names=feature_names())

    def build(self, train: Subset, seed: int) -> IRNetModule:
        X = train.inputs.tensor.double()
        mean = X.mean(0)
        std = X.std(0)
        # a feature constant on the training split carries no information there; scale 1 avoids 0/0
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        torch.manual_seed(seed)
        return IRNetModule(X.shape[1], tuple(int(w) for w in self.widths), float(self.dropout),
                           mean.float(), std.float(),
                           None if self.input_clip is None else float(self.input_clip))


@hookimpl
def oodbench_backbones():
    return [IRNet]
