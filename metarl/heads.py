"""Action distributions and the context encoder shared by all policy networks.

The heads work on raw distribution parameters (logits, or mean and log-std) rather than
``torch.distributions`` objects: sampling must draw from an explicit generator, and the
collector's hot loop should not build Python objects per step.
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import nn
from torch.nn import functional as F

from metarl.learner import check_finite
from metarl.vector import space_dims


class ActionHead(nn.Module):
    """Maps features to a categorical (Discrete) or diagonal Gaussian (Box) policy.

    Args:
        in_features: Size of the feature vector.
        action_space: The env's single action space.
        init_log_std: Initial log standard deviation of the Gaussian head.
    """

    def __init__(self, in_features: int, action_space: gym.spaces.Space, init_log_std: float = 0.0):
        super().__init__()
        size, n, self.discrete = space_dims(action_space)
        self.linear = nn.Linear(in_features, n if self.discrete else size)
        # Small initial outputs: a near-uniform (or zero-mean) initial policy explores.
        nn.init.orthogonal_(self.linear.weight, gain=0.01)
        nn.init.zeros_(self.linear.bias)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((size,), float(init_log_std)))
            self.action_shape = tuple(action_space.shape)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Distribution parameters: logits ``[..., n]`` or mean ``[..., d]``."""
        return self.linear(features)

    def sample(self, params: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draws one action per row from ``generator``.

        Raises:
            NonFiniteError: If the policy's outputs are NaN or infinite (diverged weights).
        """
        check_finite("policy output", params)
        if self.discrete:
            probs = torch.softmax(params, dim=-1)
            flat = probs.reshape(-1, probs.shape[-1])
            return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
        noise = torch.randn(
            params.shape, generator=generator, device=params.device, dtype=params.dtype
        )
        return (params + noise * self.log_std.exp()).view(*params.shape[:-1], *self.action_shape)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        """The most likely action (greedy evaluation)."""
        if self.discrete:
            return params.argmax(-1)
        return params.view(*params.shape[:-1], *self.action_shape)

    def log_prob(self, params: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log π(action)``, one value per row."""
        if self.discrete:
            return torch.log_softmax(params, -1).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        action = action.reshape(params.shape)
        z = (action - params) / self.log_std.exp()
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            logp = torch.log_softmax(params, -1)
            return -(logp.exp() * logp).sum(-1)
        ent = (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
        return ent.expand(params.shape[:-1])

    def kl(
        self,
        old_params: torch.Tensor,
        params: torch.Tensor,
        old_log_std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """KL(old ‖ new) per row; ``old_*`` must be detached by the caller."""
        if self.discrete:
            old_logp = torch.log_softmax(old_params, -1)
            return (old_logp.exp() * (old_logp - torch.log_softmax(params, -1))).sum(-1)
        old_log_std = self.log_std.detach() if old_log_std is None else old_log_std
        var, old_var = (2 * self.log_std).exp(), (2 * old_log_std).exp()
        kl = self.log_std - old_log_std + (old_var + (old_params - params).pow(2)) / (2 * var) - 0.5
        return kl.sum(-1)


class ContextEncoder(nn.Module):
    """Concatenates (obs, one-hot previous action, previous reward, done flag).

    These are the inputs of RL² and SNAIL. At a trial start the previous action, reward
    and done flag are zero, so the one-hot of action 0 is masked out too.

    Two options (off by default, i.e. the papers' inputs) make the step input easier to
    learn from. ``prev_obs`` also feeds the previous step's observation, so that one step
    input holds a whole transition (s, a, r, s'); without it the sequence model has to
    recall s from its own memory to tell which state-action pair the reward belongs to.
    ``input_embed`` passes the concatenation through a Linear+ReLU, whose units can
    form conjunctions such as "this reward, after this action, in this state" that a
    recurrent cell's single linear input layer cannot.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        obs_embed: int = 0,
        time_scales: tuple[int, int] | None = None,
        prev_obs: bool = False,
        input_embed: int = 0,
    ):
        super().__init__()
        self.prev_obs = prev_obs
        # (max episode steps, episodes per trial): if given, two more inputs tell the
        # sequence model where it is in time, so it need not learn to count.
        self.time_scales = time_scales
        self.obs_size = int(torch.Size(observation_space.shape).numel())
        size, n, self.discrete = space_dims(action_space)
        self.num_actions = n
        self.action_size = n if self.discrete else size
        # Rich observations (the maze's ray-cast view) go through a small MLP first, so the
        # sequence model sees a compact embedding next to the action/reward/done inputs.
        self.obs_net = (
            nn.Sequential(nn.Linear(self.obs_size, obs_embed), nn.ReLU()) if obs_embed > 0 else None
        )
        obs_out = obs_embed if obs_embed > 0 else self.obs_size
        size = obs_out * (2 if prev_obs else 1) + self.action_size + 2 + (2 if time_scales else 0)
        self.input_net = (
            nn.Sequential(nn.Linear(size, input_embed), nn.ReLU()) if input_embed > 0 else None
        )
        self.output_size = input_embed if input_embed > 0 else size

    def forward(
        self,
        obs: torch.Tensor,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        prev_done: torch.Tensor,
        trial_start: torch.Tensor,
        episode_step: torch.Tensor | None = None,
        episode_index: torch.Tensor | None = None,
        prev_obs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Concatenates the inputs along the last axis (then embeds them, if configured).

        ``episode_step`` and ``episode_index`` (steps into the current episode, episodes
        finished in the trial; long, the shape of ``prev_reward``) are required when the
        encoder was built with ``time_scales`` and ignored otherwise. ``prev_obs`` (the
        previous step's observation, the shape of ``obs``; anything at a trial start, where
        it is zeroed) is required when it was built with ``prev_obs``.
        """
        lead = prev_reward.shape
        not_start = (~trial_start).unsqueeze(-1).to(obs.dtype)
        if self.discrete:
            act = F.one_hot(prev_action.long(), self.num_actions).to(obs.dtype) * not_start
        else:
            act = prev_action.reshape(*lead, -1).to(obs.dtype)
        obs = obs.reshape(*lead, -1)
        if self.obs_net is not None:
            obs = self.obs_net(obs)
        parts = [obs]
        if self.prev_obs:
            if prev_obs is None:
                raise ValueError("this encoder reads the previous observation: pass prev_obs")
            prev = prev_obs.reshape(*lead, -1).to(obs.dtype)
            if self.obs_net is not None:
                prev = self.obs_net(prev)
            parts.append(prev * not_start)
        parts += [act, prev_reward.unsqueeze(-1), prev_done.unsqueeze(-1)]
        if self.time_scales is not None:
            if episode_step is None or episode_index is None:
                raise ValueError("this encoder has time features: pass episode_step/index")
            horizon, episodes = self.time_scales
            parts.append((episode_step.to(obs.dtype) / horizon).unsqueeze(-1))
            parts.append((episode_index.to(obs.dtype) / episodes).unsqueeze(-1))
        x = torch.cat(parts, dim=-1)
        return x if self.input_net is None else self.input_net(x)
