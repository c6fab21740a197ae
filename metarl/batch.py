"""Typed, shape-checked trajectory batches.

Every tensor is time-major, ``[T, B, ...]``: ``T`` steps of ``B`` parallel trials. A row
``b`` holds exactly one trial (``K`` episodes on one task); rows whose trial ended before
``T`` are padded and marked ``valid == False``.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class TrajectoryBatch:
    """Trials collected by :class:`metarl.collect.Collector`.

    Attributes:
        obs: Observation at each step, ``[T, B, *obs_shape]`` float.
        action: Action taken, ``[T, B, *action_shape]`` (long for discrete spaces).
        reward: Reward received, ``[T, B]`` float (0 on padding).
        terminated: The env ended the episode in a terminal state, ``[T, B]`` bool.
        truncated: The episode was cut by a time limit, ``[T, B]`` bool. Kept apart from
            ``terminated`` because value targets bootstrap on truncation only.
        episode_start: ``obs`` is the first observation of an episode, ``[T, B]`` bool.
        trial_start: ``obs`` is the first observation of a trial (memory is reset here),
            ``[T, B]`` bool.
        valid: The step belongs to the row's trial (False on padding), ``[T, B]`` bool.
        log_prob: Log-probability of ``action`` under the acting policy, ``[T, B]``.
        value: The acting policy's value estimate of ``obs``, ``[T, B]`` (0 if none).
        final_obs: Observation that followed the last step of an episode, at steps where
            ``terminated | truncated``; zeros elsewhere. ``[T, B, *obs_shape]``. Needed to
            bootstrap truncated episodes, whose next observation in ``obs`` is already the
            next episode's first.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    episode_start: torch.Tensor
    trial_start: torch.Tensor
    valid: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    final_obs: torch.Tensor

    def __post_init__(self) -> None:
        if self.obs.dim() < 2:
            raise ValueError(f"obs must be [T, B, ...], got shape {tuple(self.obs.shape)}")
        tb = tuple(self.obs.shape[:2])
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"TrajectoryBatch.{f.name} must be a tensor, got {type(value)}")
            if tuple(value.shape[:2]) != tb:
                raise ValueError(
                    f"TrajectoryBatch.{f.name} has shape {tuple(value.shape)}, expected [T, B]={tb}"
                )
        for name in (
            "reward",
            "terminated",
            "truncated",
            "episode_start",
            "trial_start",
            "valid",
            "log_prob",
            "value",
        ):
            if getattr(self, name).dim() != 2:
                raise ValueError(
                    f"TrajectoryBatch.{name} must be [T, B], got {tuple(getattr(self, name).shape)}"
                )
        for name in ("terminated", "truncated", "episode_start", "trial_start", "valid"):
            if getattr(self, name).dtype != torch.bool:
                raise TypeError(f"TrajectoryBatch.{name} must be bool")
        if self.final_obs.shape != self.obs.shape:
            raise ValueError("TrajectoryBatch.final_obs must have the shape of obs")

    # ------------------------------------------------------------------ shape helpers
    @property
    def num_steps(self) -> int:
        """``T``, the padded trial length."""
        return self.obs.shape[0]

    @property
    def num_trials(self) -> int:
        """``B``, the number of trials (rows)."""
        return self.obs.shape[1]

    def select(self, rows: torch.Tensor | slice) -> TrajectoryBatch:
        """The sub-batch of the given rows (whole trials: never slices along time)."""
        return TrajectoryBatch(
            **{f.name: getattr(self, f.name)[:, rows] for f in dataclasses.fields(self)}
        )

    def to(self, device: torch.device | str) -> TrajectoryBatch:
        return TrajectoryBatch(
            **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        )

    @staticmethod
    def cat(batches: list[TrajectoryBatch]) -> TrajectoryBatch:
        """Concatenates along ``B``, padding shorter batches in time."""
        t_max = max(b.num_steps for b in batches)

        def pad(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] == t_max:
                return x
            return torch.cat([x, x.new_zeros((t_max - x.shape[0], *x.shape[1:]))])

        return TrajectoryBatch(
            **{
                f.name: torch.cat([pad(getattr(b, f.name)) for b in batches], dim=1)
                for f in dataclasses.fields(TrajectoryBatch)
            }
        )

    # ------------------------------------------------------------------ derived views
    @property
    def done(self) -> torch.Tensor:
        """The episode ended at this step (terminated or truncated)."""
        return self.terminated | self.truncated

    @property
    def trial_end(self) -> torch.Tensor:
        """The last valid step of each row's trial, ``[T, B]`` bool."""
        next_valid = torch.cat([self.valid[1:], torch.zeros_like(self.valid[:1])])
        return self.valid & ~next_valid

    @property
    def episode_index(self) -> torch.Tensor:
        """Index (0-based) of the episode within its trial, ``[T, B]`` long."""
        return torch.cumsum(self.episode_start.long(), dim=0) - 1

    @property
    def episode_step(self) -> torch.Tensor:
        """Steps taken in the current episode before this one, ``[T, B]`` long."""
        t = torch.arange(self.num_steps, device=self.episode_start.device).unsqueeze(1)
        return t - torch.where(self.episode_start, t, 0).cummax(dim=0).values

    def previous(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (previous action, previous reward, done flag) inputs of context learners.

        At a trial start all three are zero. At the first step of a later episode they
        hold the last action and reward of the previous episode and ``done == 1``, so
        memory learners see the episode boundary. This matches what the collector feeds
        online, step by step.
        """
        prev_action = torch.cat([torch.zeros_like(self.action[:1]), self.action[:-1]])
        prev_reward = torch.cat([torch.zeros_like(self.reward[:1]), self.reward[:-1]])
        keep = ~self.trial_start
        prev_action = prev_action * keep.view(*keep.shape, *([1] * (prev_action.dim() - 2))).to(
            prev_action.dtype
        )
        prev_reward = prev_reward * keep
        prev_done = (self.episode_start & keep).float()
        return prev_action, prev_reward, prev_done

    def previous_obs(self) -> torch.Tensor:
        """The observation of the previous step, ``[T, B, *obs_shape]``; zero at a trial start.

        At the first step of a later episode it is the last observation of the previous
        episode (the one the previous action was taken in), as for :meth:`previous`.
        """
        prev = torch.cat([torch.zeros_like(self.obs[:1]), self.obs[:-1]])
        keep = ~self.trial_start
        return prev * keep.view(*keep.shape, *([1] * (prev.dim() - 2))).to(prev.dtype)

    def episode_returns(self, episodes: int) -> torch.Tensor:
        """Undiscounted return of each episode of each trial, ``[episodes, B]``."""
        index = self.episode_index.clamp(0, episodes - 1)
        out = self.reward.new_zeros(episodes, self.num_trials)
        out.scatter_add_(0, index, self.reward * self.valid)
        return out

    def episode_lengths(self, episodes: int) -> torch.Tensor:
        """Number of steps of each episode of each trial, ``[episodes, B]``."""
        index = self.episode_index.clamp(0, episodes - 1)
        out = torch.zeros(episodes, self.num_trials, device=self.reward.device)
        out.scatter_add_(0, index, self.valid.to(out.dtype))
        return out

    def trial_returns(self) -> torch.Tensor:
        """Undiscounted return of each trial, ``[B]``."""
        return (self.reward * self.valid).sum(0)
