"""Trust-region policy optimisation (Schulman et al. 2015).

Natural-gradient direction by conjugate gradient on Fisher-vector products (the Hessian of
the KL divergence, by double backpropagation), scaled to the KL bound, then a backtracking
line search that accepts only a finite, improving step inside the trust region. A step
that cannot be accepted leaves the parameters exactly as they were.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch


def flat_grad(
    output: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool = False
) -> torch.Tensor:
    """Gradient of a scalar w.r.t. ``params`` as one flat vector (zeros for unused params)."""
    grads = torch.autograd.grad(output, params, create_graph=create_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
    )


def get_flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parameters concatenated into one detached vector."""
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def set_flat(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Writes a flat vector back into ``params`` in place."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int = 10,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximately solves ``A x = b`` for symmetric positive-definite ``A``.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> x = conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 2.0]))
        >>> torch.allclose(A @ x, torch.tensor([1.0, 2.0]), atol=1e-5)
        True
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        Ap = matvec(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclasses.dataclass(frozen=True)
class TRPOResult:
    """Outcome of one :func:`trpo_step`.

    Attributes:
        accepted: A step was taken. If False, parameters are unchanged.
        loss_before: Surrogate loss before the step.
        loss_after: Surrogate loss after the step (``loss_before`` if rejected).
        kl: Mean KL between old and new policy after the step (0 if rejected).
        backtracks: Number of step halvings tried.
        reason: Why the step was rejected ("" if accepted).
    """

    accepted: bool
    loss_before: float
    loss_after: float
    kl: float
    backtracks: int
    reason: str = ""


def trpo_step(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    kl_fn: Callable[[], torch.Tensor],
    max_kl: float = 0.01,
    damping: float = 0.1,
    cg_iters: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
) -> TRPOResult:
    """One TRPO update of ``params`` in place.

    Args:
        params: The policy parameters to update.
        loss_fn: Recomputes the surrogate loss (to minimise) at the current parameters.
        kl_fn: Recomputes the mean KL(old ‖ current) at the current parameters, with the
            old distribution detached; must be twice differentiable.
        max_kl: Trust-region radius δ on the mean KL.
        damping: Tikhonov damping added to the Fisher-vector product (numerical stability).
        cg_iters: Conjugate-gradient iterations.
        backtrack_ratio: Step shrink factor per line-search trial.
        max_backtracks: Line-search trials before giving up.

    Returns:
        A :class:`TRPOResult`. A non-finite or non-improving step is rejected, and the
        parameters are restored, never left half-updated.
    """
    params = list(params)
    old = get_flat(params)
    loss = loss_fn()
    loss_before = float(loss.detach())
    if not math.isfinite(loss_before):
        return TRPOResult(False, loss_before, loss_before, 0.0, 0, "non-finite surrogate loss")
    g = flat_grad(loss, params)
    if not torch.isfinite(g).all():
        return TRPOResult(False, loss_before, loss_before, 0.0, 0, "non-finite policy gradient")

    grad_kl = flat_grad(kl_fn(), params, create_graph=True)

    # Keep the KL graph alive across CG iterations: each matvec backprops through it.
    def fvp_retained(v: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(grad_kl @ v, params, retain_graph=True, allow_unused=True)
        flat = torch.cat(
            [
                (torch.zeros_like(p) if gr is None else gr).reshape(-1)
                for gr, p in zip(grads, params)
            ]
        )
        return flat + damping * v

    direction = conjugate_gradient(fvp_retained, -g, iters=cg_iters)
    shs = 0.5 * (direction @ fvp_retained(direction))
    if not torch.isfinite(shs) or shs <= 0:
        return TRPOResult(False, loss_before, loss_before, 0.0, 0, "degenerate Fisher matrix")
    step = direction * torch.sqrt(2 * max_kl / shs)

    for k in range(max_backtracks):
        set_flat(params, old + (backtrack_ratio**k) * step)
        with torch.no_grad():
            new_loss = float(loss_fn())
            kl = float(kl_fn())
        if (
            math.isfinite(new_loss)
            and math.isfinite(kl)
            and kl <= max_kl
            and new_loss < loss_before
        ):
            return TRPOResult(True, loss_before, new_loss, kl, k)
    set_flat(params, old)
    return TRPOResult(
        False, loss_before, loss_before, 0.0, max_backtracks, "line search found no improving step"
    )
