"""rllab's linear feature baseline (Duan et al. 2016), the value baseline of MAML's inner loop.

Finn et al. (2017) fit, for every task, a linear regression of the discounted return on
the features ``[clip(o, -10, 10), clip(o, -10, 10)², t/100, (t/100)², (t/100)³, 1]`` of
each visited state (``t`` is the step within the episode) by ridge regression with a tiny
ridge (``1e-5``), and use its prediction as the baseline of the task's policy gradient
(``rllab/baselines/linear_feature_baseline.py`` in cbfinn/maml_rl). The fit is closed-form,
so it adds no learnable parameters and no optimiser to the meta-learner.

Here the fit is batched: rows of a :class:`~metarl.batch.TrajectoryBatch` are split into
``groups`` consecutive blocks (one block per task), and every block gets its own ridge
solution from one batched ``torch.linalg.solve``. Padding steps (``valid == False``) are
excluded from the fit.
"""

from __future__ import annotations

import torch

from metarl.batch import TrajectoryBatch
from metarl.pg import discounted_returns

#: rllab clips observations to this range before building features.
OBS_CLIP = 10.0
#: rllab divides the time index by 100 (whatever the horizon).
TIME_SCALE = 100.0


def episode_steps(batch: TrajectoryBatch) -> torch.Tensor:
    """Index of every step within its episode (0 at each episode start), ``[T, B]`` long."""
    t = torch.arange(batch.num_steps, device=batch.obs.device).unsqueeze(1)
    start = torch.where(batch.episode_start, t, torch.zeros_like(t))
    # The latest episode start at or before t; trials begin with an episode start.
    return t - start.cummax(0).values


def linear_features(obs: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """rllab's baseline features ``[o, o², s, s², s³, 1]`` with ``s = step / 100``.

    Args:
        obs: Observations ``[..., *obs_shape]`` (flattened after the leading dims of ``step``).
        step: Step within the episode, shaped like the leading dims of ``obs``.

    Returns:
        ``[..., 2 * obs_size + 4]`` float features.
    """
    o = obs.reshape(*step.shape, -1).to(torch.get_default_dtype()).clamp(-OBS_CLIP, OBS_CLIP)
    s = (step.to(o.dtype) / TIME_SCALE).unsqueeze(-1)
    return torch.cat([o, o * o, s, s * s, s * s * s, torch.ones_like(s)], dim=-1)


def fit_ridge(
    features: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    reg_coeff: float = 1e-5,
    attempts: int = 5,
) -> torch.Tensor:
    """Per-group ridge regression ``(XᵀX + λI)⁻¹ Xᵀy`` on the masked rows.

    Solved in float64 (``o²`` features make XᵀX badly scaled). As in rllab, a group whose
    solution is not finite is solved again with ten times the ridge, up to ``attempts``
    times; a group that still fails gets zero coefficients (baseline 0).

    Args:
        features: ``[G, N, F]``.
        targets: ``[G, N]``.
        mask: ``[G, N]`` bool or float; rows with 0 are ignored.
        reg_coeff: Ridge ``λ``.
        attempts: Solves before giving up.

    Returns:
        Coefficients ``[G, F]`` in ``features``' dtype.
    """
    x = features.double() * mask.double().unsqueeze(-1)
    y = targets.double() * mask.double()
    xtx = x.transpose(1, 2) @ x
    xty = (x.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(x.shape[-1], dtype=torch.float64, device=x.device)
    coeffs = torch.zeros_like(xty)
    todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    reg = reg_coeff
    for _ in range(attempts):
        sol = torch.linalg.solve_ex(xtx[todo] + reg * eye, xty[todo])[0]
        ok = torch.isfinite(sol).all(-1)
        idx = todo.nonzero().squeeze(-1)
        coeffs[idx[ok]] = sol[ok]
        todo[idx[ok]] = False
        if not bool(todo.any()):
            break
        reg *= 10
    return coeffs.to(features.dtype)


def linear_baseline_values(
    batch: TrajectoryBatch,
    groups: int,
    gamma: float,
    reg_coeff: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fits one linear baseline per group of rows and predicts every step's value.

    Args:
        batch: Rows ordered group-major (group ``g`` owns rows ``g*R .. (g+1)*R - 1``).
        groups: Number of groups (tasks); must divide the number of rows.
        gamma: Discount of the regression targets (the discounted reward-to-go).
        reg_coeff: Ridge coefficient (rllab: 1e-5).

    Returns:
        ``(values, returns)``, both ``[T, B]``: the fitted baseline and the discounted
        reward-to-go it was fitted on (0 on padding).
    """
    t, b = batch.num_steps, batch.num_trials
    if b % groups:
        raise ValueError(f"{b} rows do not split into {groups} equal groups")
    cut = batch.done | ~batch.valid
    returns = discounted_returns(batch.reward * batch.valid, cut, gamma)
    feats = linear_features(batch.obs, episode_steps(batch))  # [T, B, F]
    per = b // groups

    def grouped(x: torch.Tensor) -> torch.Tensor:
        # [T, G*R, ...] -> [G, T*R, ...]
        x = x.reshape(t, groups, per, *x.shape[2:]).transpose(0, 1)
        return x.reshape(groups, t * per, *x.shape[3:])

    coeffs = fit_ridge(grouped(feats), grouped(returns), grouped(batch.valid), reg_coeff)
    values = (grouped(feats) @ coeffs.unsqueeze(-1)).squeeze(-1)  # [G, T*R]
    values = values.reshape(groups, t, per).transpose(0, 1).reshape(t, b)
    return values * batch.valid, returns
