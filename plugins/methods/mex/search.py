"""MEX inference: Monte-Carlo maximisation of a score over a bounded label interval."""
from __future__ import annotations

from typing import Callable

import torch


@torch.no_grad()
def mc_maximise(score_fn: Callable[[torch.Tensor], torch.Tensor], n: int, low: float, high: float,
                candidates: int, iters: int, noise: float, beta: float, generator: torch.Generator,
                device) -> torch.Tensor:
    """argmax_y score_fn(y) per row, for ``n`` rows at once; returns [n].

    ``score_fn`` maps candidates [n, C] to scores [n, C]. Candidates start
    uniform on [low, high]; each of ``iters`` rounds resamples them in
    proportion to softmax(score) and adds N(0, σ_t²) noise with
    σ_t = noise · beta^t, clipped to [low, high]. The answer is the best
    candidate seen in any round (the last round's argmax can only be worse).
    """
    if not high > low:
        raise ValueError(f"MEX label range must have high > low, got [{low}, {high}]")
    y = low + (high - low) * torch.rand(n, candidates, generator=generator, device=device)
    best_s = torch.full((n,), -torch.inf, device=device)
    best_y = y[:, 0].clone()
    sigma = float(noise)
    for t in range(iters + 1):
        s = score_fn(y).float()
        s_max, arg = s.max(dim=1)
        better = s_max > best_s
        best_s = torch.where(better, s_max, best_s)
        best_y = torch.where(better, y.gather(1, arg.unsqueeze(1)).squeeze(1), best_y)
        if t == iters:
            break
        # inverse-CDF resampling: searchsorted on the cumulative softmax is one batched op
        cdf = torch.softmax(s - s_max.unsqueeze(1), dim=1).cumsum(dim=1)
        u = torch.rand(n, candidates, generator=generator, device=device) * cdf[:, -1:]
        idx = torch.searchsorted(cdf, u).clamp_max_(candidates - 1)
        y = y.gather(1, idx)
        y.add_(torch.randn(n, candidates, generator=generator, device=device), alpha=sigma).clamp_(low, high)
        sigma *= beta
    return best_y
