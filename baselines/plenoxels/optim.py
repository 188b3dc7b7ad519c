"""Adam / RMSProp over the grid's data tensors, with per-group learning rates.

Updates are lazy: only the rows a step touched are read and written (moments of other rows do
not decay), as svox2 updates only voxels that received gradient. This keeps a step's cost
proportional to the rays' footprint instead of the grid. The state follows the grid when it is
pruned (`select_rows`) and is reset when it is resampled. Learning rates decay log-linearly
from `lr` to `lr * final_factor` over `decay_steps`, optionally after svox2's delayed warm-up
(`lr_factor`). RMSProp is Adam's second moment without the first (svox2's default, beta 0.95).
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adam", "rmsprop")
_TINY = 1e-30  # moments below this are flushed to 0: subnormal floats are ~100x slower on x86


def lr_factor(step: int, final_factor: float, decay_steps: int, delay_steps: int = 0,
              delay_mult: float = 1.0) -> float:
    """Multiplier of the initial learning rate at `step`: log-linear decay to `final_factor` over
    `decay_steps`, times svox2's warm-up delay, which rises from `delay_mult` to 1 as
    sin(pi/2 * step / delay_steps) over the first `delay_steps` (svox2 delays lr_sigma 15,000
    steps with multiplier 1e-2)."""
    decay = 1.0
    if decay_steps > 0:
        decay = float(final_factor) ** (min(step, decay_steps) / decay_steps)
    if delay_steps > 0:
        ramp = math.sin(0.5 * math.pi * min(max(step / delay_steps, 0.0), 1.0))
        decay *= delay_mult + (1.0 - delay_mult) * ramp
    return decay


class GridOptimizer:
    def __init__(self, kind: str, lrs: dict[str, float], beta1: float = 0.9, beta2: float = 0.99,
                 eps: float = 1e-8):
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
        for name, lr in lrs.items():
            if not lr > 0:
                raise ValueError(f"learning rate for '{name}' must be > 0, got {lr}")
        self.kind, self.lrs = kind, dict(lrs)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.state: dict[str, dict] = {}

    def reset(self) -> None:
        """Forget moments and step counts (after the parameters were resampled)."""
        self.state = {}

    def select_rows(self, keep: torch.Tensor, groups=("density", "sh")) -> None:
        """Keep the moments of rows `keep` of `groups` (after the grid was pruned to those rows)."""
        for name, st in self.state.items():
            if name not in groups:
                continue
            for key in ("m", "v"):
                if key in st:
                    st[key] = st[key][keep].contiguous()

    @torch.no_grad()
    def step(self, name: str, param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
             lr_scale: float) -> None:
        """Update param[rows] (rows: (k,) int64, sorted unique) from grad (k, C)."""
        if name not in self.state:
            self.state[name] = {"t": 0, "v": torch.zeros_like(param)}
            if self.kind == "adam":
                self.state[name]["m"] = torch.zeros_like(param)
        st = self.state[name]
        st["t"] += 1
        t, lr = st["t"], self.lrs[name] * lr_scale
        v = st["v"].index_select(0, rows).mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        v.masked_fill_(v < _TINY, 0.0)
        st["v"].index_copy_(0, rows, v)
        denom = v.mul_(1 / (1 - self.beta2 ** t)).sqrt_().add_(self.eps)
        if self.kind == "adam":
            m = st["m"].index_select(0, rows).mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
            m.masked_fill_(m.abs() < _TINY, 0.0)
            st["m"].index_copy_(0, rows, m)
            update = m.div_(denom).mul_(-lr / (1 - self.beta1 ** t))
        else:
            update = grad.div(denom).mul_(-lr)
        param.index_add_(0, rows, update)

    def state_dict(self) -> dict:
        return {name: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                for name, st in self.state.items()}

    def load_state_dict(self, state: dict, device) -> None:
        self.state = {name: {k: (v.to(device).clone() if torch.is_tensor(v) else v)
                             for k, v in st.items()} for name, st in state.items()}
