"""AdamW for models whose item-id table is too large for dense updates (model.head_candidates):
rows with a sparse gradient are updated lazily, and gradient clipping counts them."""

from __future__ import annotations

import torch


class LazyAdamW(torch.optim.AdamW):
    """torch's AdamW, except that a parameter with a sparse gradient (nn.Embedding(sparse=True))
    updates only the rows the step looked up: their moments, their decoupled weight decay and
    the global step's bias correction, as TensorFlow's LazyAdam does. Untouched rows keep their
    values and moments, so a step costs the rows it used, not the whole table."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lazy = []  # the dense AdamW step skips parameters without a gradient
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    lazy.append((p, p.grad, group))
                    p.grad = None
        super().step()
        for p, grad, group in lazy:
            p.grad = grad
            self._lazy_step(p, grad.coalesce(), group)
        return loss

    def _lazy_step(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        rows, g = grad.indices()[0], grad.values()
        (beta1, beta2), lr, step = group["betas"], group["lr"], float(state["step"])
        m = state["exp_avg"][rows].mul_(beta1).add_(g, alpha=1 - beta1)
        v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        state["exp_avg"][rows], state["exp_avg_sq"][rows] = m, v
        denom = (v / (1 - beta2**step)).sqrt_().add_(group["eps"])
        value = p[rows].mul_(1 - lr * group["weight_decay"]).addcdiv_(m, denom, value=-lr / (1 - beta1**step))
        p[rows] = value


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ that also counts sparse gradients (which it refuses)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    for i, g in enumerate(grads):
        if g.is_sparse:
            grads[i] = g.coalesce()
    norms = [(g.values() if g.is_sparse else g).float().norm() for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in parameters:
        if p.grad is not None:
            p.grad = p.grad.coalesce() * scale if p.grad.is_sparse else p.grad.mul_(scale)
    return total
