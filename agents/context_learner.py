"""Policy-gradient training shared by the memory-based meta-learners (RL², SNAIL).

For these learners adaptation *is* context: a sequence model reads the trial so far,
(obs, previous action, previous reward, done flag), and the policy conditions on its
features. A trial of K episodes is one long episode of the meta-MDP, so advantages run
across episode boundaries inside a trial and stop at the trial's end.

Subclasses only provide the sequence model (``build_trunk``); it must offer
``output_size``, ``initial_state(batch, device)``, ``step(x, state) -> (features, state)``
and ``forward(x [T, B, D]) -> features [T, B, H]`` where step-by-step equals full-sequence.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import torch
from torch import nn

from metarl.batch import TrajectoryBatch
from metarl.heads import ActionHead, ContextEncoder
from metarl.learner import Curve, Learner, check_finite
from metarl.pg import (
    gae,
    masked_mean,
    minibatch_rows,
    ppo_policy_loss,
    surrogate_loss,
    trpo_step,
    vpg_loss,
)
from metarl.policy import PolicyStep, StepInput
from metarl.problem import RLProblem

OPTIMIZERS = ("ppo", "trpo", "vpg")


@dataclasses.dataclass
class ContextConfig:
    """Outer-loop settings shared by RL² and SNAIL."""

    optimizer: str = "ppo"
    """Outer-loop algorithm: ``ppo``, ``trpo`` or ``vpg``."""
    trials_per_iteration: int = 256
    """Trials (tasks) collected per iteration; each row of the batch is one trial."""
    gamma: float = 0.99
    """Discount across the whole trial."""
    gae_lambda: float = 0.95
    """GAE λ."""
    lr: float = 1e-3
    """Adam learning rate (policy for PPO/VPG; value function always)."""
    epochs: int = 4
    """PPO epochs per iteration; also the value-function epochs for TRPO and VPG."""
    minibatches: int = 4
    """Minibatches per epoch. They split trials (rows), never time."""
    clip: float = 0.2
    """PPO ratio clip ε."""
    entropy_coef: float = 0.01
    """Entropy bonus weight (PPO and VPG); the starting value when ``entropy_coef_final``
    is set."""
    entropy_coef_final: float | None = None
    """If set, the entropy weight moves linearly from ``entropy_coef`` at the first
    iteration to this at the last (``train.iterations``). A bonus that explores early
    costs return late: the evaluated policy samples its actions, so leftover entropy is
    paid for on every held-out trial."""
    lr_final: float | None = None
    """If set, the Adam learning rate moves linearly from ``lr`` to this over
    ``train.iterations`` (CleanRL-style annealing; None keeps it constant)."""
    value_coef: float = 0.5
    """Value-loss weight in PPO's and VPG's single Adam loss."""
    separate_critic: bool = False
    """PPO and VPG: give the value function its own sequence model (the one TRPO always
    uses) instead of a value head on the policy's features. The policy's memory then
    serves the policy alone, and the value loss no longer pulls on it; acting and training
    cost about twice the sequence-model compute."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip for Adam updates."""
    normalize_advantages: bool = True
    """Standardise advantages over the valid steps of the batch."""
    max_kl: float = 0.01
    """TRPO trust-region radius on the mean KL."""
    damping: float = 0.1
    """TRPO Fisher-vector-product damping."""
    normalize_returns: bool = True
    """Standardise value targets with running return statistics (helps long trials whose
    returns reach 100+; short trials such as 10-pull bandits do as well without)."""
    obs_embed: int = 0
    """If > 0, observations pass through a Linear+ReLU of this width before the sequence
    model (for rich views such as the maze's rays); 0 feeds them raw."""
    prev_obs: bool = False
    """Also feed the previous step's observation, so that each step input holds a whole
    transition (s, a, r, s'). Off by default (the papers' inputs: s', a, r, done); see
    :class:`metarl.heads.ContextEncoder` for why it can help on tabular MDPs."""
    input_embed: int = 0
    """If > 0, the whole step input passes through a Linear+ReLU of this width before the
    sequence model (after ``obs_embed``); 0 feeds the concatenation directly."""
    head_hidden: int = 0
    """If > 0, a Linear+ReLU of this width sits between the sequence model and the
    action and value heads (on each of them, if the critic has its own trunk). The
    heads are otherwise linear in the sequence model's features, so choosing an action
    from what the memory holds (e.g. planning over the transitions seen so far) must be
    done by the recurrent update itself; this layer adds a step of computation per step.
    With RL² it lifted 10-episode tabular MDPs from 0.607 to 0.668 of the optimum at
    1,000 iterations, and 100-pull 5-armed bandits from 0.969x to 0.991x the Gittins
    index (experiments/RESULTS.md)."""
    time_features: bool = False
    """Append two time inputs to every step: steps into the episode / the time limit, and
    episodes finished / episodes per trial. Off by default (the papers' inputs). A
    recurrent net can count done flags itself, but until it does, the value of a state
    (which, over a trial with γ = 1, is mostly *how much trial is left*) is unpredictable
    and the advantages are noisy (Pardo et al. 2018, "Time Limits in RL"). On tabular MDPs
    it made no measurable difference (experiments/RESULTS.md): the GRU counted well
    enough on its own."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"algo.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        positive = (
            "trials_per_iteration",
            "epochs",
            "minibatches",
            "lr",
            "max_kl",
            "clip",
            "max_grad_norm",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"algo.{name} must be > 0, got {getattr(self, name)}")
        for name in ("entropy_coef_final", "lr_final"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"algo.{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "entropy_coef",
            "value_coef",
            "damping",
            "obs_embed",
            "input_embed",
            "head_hidden",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"algo.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("algo.gamma and algo.gae_lambda must lie in [0, 1]")
        if self.minibatches > self.trials_per_iteration:
            # A minibatch holds whole trials, so there can be at most one per trial; running
            # fewer than asked while config.yaml records the request would be a silent lie.
            raise ValueError(
                f"algo.minibatches={self.minibatches} exceeds "
                f"algo.trials_per_iteration={self.trials_per_iteration} (minibatches split "
                f"whole trials); set algo.minibatches <= {self.trials_per_iteration}"
            )


class FeatureMLP(nn.Module):
    """A sequence model followed by a Linear+ReLU (``ContextConfig.head_hidden``).

    It keeps the trunk protocol (``output_size``, ``initial_state``, ``step``,
    ``forward``), so acting and training see the same features.
    """

    def __init__(self, trunk: nn.Module, width: int):
        super().__init__()
        self.trunk = trunk
        self.mlp = nn.Sequential(nn.Linear(trunk.output_size, width), nn.ReLU())
        self.output_size = width

    def initial_state(self, batch_size: int, device: torch.device) -> Any:
        return self.trunk.initial_state(batch_size, device)

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        features, state = self.trunk.step(x, state)
        return self.mlp(features), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.trunk(x))


class ContextPolicyNet(nn.Module):
    """Encoder → sequence model → action head (and value head, or a separate value trunk)."""

    def __init__(
        self,
        encoder: ContextEncoder,
        trunk: nn.Module,
        head: ActionHead,
        value_trunk: nn.Module | None,
    ):
        super().__init__()
        self.encoder = encoder
        self.trunk = trunk
        self.head = head
        self.value_trunk = value_trunk
        value_in = (value_trunk or trunk).output_size
        self.value_head = nn.Linear(value_in, 1)
        # Trial returns reach 100+ (bandits with n=100, MDPs). The value head predicts them
        # standardised by running statistics, so that on a shared trunk the value loss does
        # not swamp the policy gradient under the global gradient-norm clip.
        self.register_buffer("return_mean", torch.zeros(()))
        self.register_buffer("return_std", torch.ones(()))
        self.register_buffer("return_stats_ready", torch.zeros((), dtype=torch.bool))

    def value(self, features: torch.Tensor) -> torch.Tensor:
        """De-standardised value estimate, ``[...]``."""
        return self.value_head(features).squeeze(-1) * self.return_std + self.return_mean

    @torch.no_grad()
    def update_return_stats(
        self, returns: torch.Tensor, mask: torch.Tensor, decay: float = 0.9
    ) -> None:
        """Moves the running return mean/std towards this batch's (first batch: set)."""
        mean = masked_mean(returns, mask)
        std = masked_mean((returns - mean).pow(2), mask).sqrt().clamp_min(1e-3)
        if not bool(self.return_stats_ready):
            self.return_mean.copy_(mean)
            self.return_std.copy_(std)
            self.return_stats_ready.fill_(True)
        else:
            self.return_mean.mul_(decay).add_((1 - decay) * mean)
            self.return_std.mul_(decay).add_((1 - decay) * std)

    def policy_parameters(self) -> list[nn.Parameter]:
        return [*self.trunk.parameters(), *self.head.parameters()]

    def value_parameters(self) -> list[nn.Parameter]:
        if self.value_trunk is None:
            return list(self.parameters())
        return [*self.value_trunk.parameters(), *self.value_head.parameters()]

    def encode_batch(self, batch: TrajectoryBatch) -> torch.Tensor:
        prev_action, prev_reward, prev_done = batch.previous()
        timed = self.encoder.time_scales is not None
        return self.encoder(
            batch.obs,
            prev_action,
            prev_reward,
            prev_done,
            batch.trial_start,
            batch.episode_step if timed else None,
            batch.episode_index if timed else None,
            batch.previous_obs() if self.encoder.prev_obs else None,
        )

    def evaluate(self, batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-trial forward: (action-distribution parameters, values), both ``[T, B, …]``."""
        x = self.encode_batch(batch)
        features = self.trunk(x)
        params = self.head(features)
        value_features = features if self.value_trunk is None else self.value_trunk(x)
        return params, self.value(value_features)


class ContextPolicy:
    """The acting side of :class:`ContextPolicyNet` (a :class:`metarl.policy.Policy`)."""

    def __init__(self, net: ContextPolicyNet, greedy: bool = False):
        self.net = net
        self.greedy = greedy

    def initial_state(self, num_rows: int, device: torch.device) -> Any:
        value_state = (
            None
            if self.net.value_trunk is None
            else self.net.value_trunk.initial_state(num_rows, device)
        )
        # The third slot is the last observation, for encoders that read it (prev_obs);
        # None until the first step, where the encoder zeroes it anyway (trial start).
        return self.net.trunk.initial_state(num_rows, device), value_state, None

    def step(self, inp: StepInput, state: Any, generator: torch.Generator) -> PolicyStep:
        net = self.net
        prev_obs = None
        if net.encoder.prev_obs:
            prev_obs = torch.zeros_like(inp.obs) if state[2] is None else state[2]
        x = net.encoder(
            inp.obs,
            inp.prev_action,
            inp.prev_reward,
            inp.prev_done,
            inp.trial_start,
            inp.episode_step,
            inp.episode_index,
            prev_obs,
        )
        features, trunk_state = net.trunk.step(x, state[0])
        params = net.head(features)
        action = net.head.mode(params) if self.greedy else net.head.sample(params, generator)
        log_prob = net.head.log_prob(params, action)
        if net.value_trunk is None:
            value_features, value_state = features, None
        else:
            value_features, value_state = net.value_trunk.step(x, state[1])
        value = net.value(value_features)
        last_obs = inp.obs if net.encoder.prev_obs else None
        return PolicyStep(action, log_prob, value, (trunk_state, value_state, last_obs))


class ContextLearner(Learner):
    """RL²-style meta-learner over a sequence model; see the module docstring."""

    config_cls = ContextConfig

    def __init__(
        self, problem: RLProblem, config: ContextConfig, device: torch.device | str = "cpu"
    ):
        self.problem = problem
        self.config = config
        self.device = torch.device(device)
        encoder = ContextEncoder(
            problem.observation_space,
            problem.action_space,
            config.obs_embed,
            (problem.max_episode_steps, problem.episodes) if config.time_features else None,
            prev_obs=config.prev_obs,
            input_embed=config.input_embed,
        )
        seq_len = problem.max_trial_steps

        def make_trunk(value: bool) -> nn.Module:
            trunk = self.build_trunk(encoder.output_size, seq_len, value=value)
            return FeatureMLP(trunk, config.head_hidden) if config.head_hidden > 0 else trunk

        trunk = make_trunk(value=False)
        # TRPO constrains the policy alone, so the value function gets its own trunk;
        # PPO and VPG share one trunk and add the value loss, unless separate_critic asks
        # for TRPO's arrangement (one Adam loss still trains both trunks).
        value_trunk = (
            make_trunk(value=True) if config.optimizer == "trpo" or config.separate_critic else None
        )
        head = ActionHead(trunk.output_size, problem.action_space)
        self.net = ContextPolicyNet(encoder, trunk, head, value_trunk).to(self.device)
        params = (
            self.net.value_parameters()
            if config.optimizer == "trpo"
            else list(self.net.parameters())
        )
        self.optimizer = torch.optim.Adam(params, lr=config.lr, eps=1e-5)
        self.policy = ContextPolicy(self.net)
        #: The entropy weight of the current iteration (see :meth:`set_progress`).
        self.entropy_coef = config.entropy_coef

    @abc.abstractmethod
    def build_trunk(self, input_size: int, sequence_length: int, value: bool = False) -> nn.Module:
        """The sequence model (see module docstring); ``value`` asks for a separate critic."""

    # ------------------------------------------------------------------ training
    def tasks_per_iteration(self) -> int:
        return self.config.trials_per_iteration

    def set_progress(self, iteration: int, total: int) -> None:
        """Applies the linear entropy and learning-rate schedules (if configured)."""
        cfg = self.config
        frac = iteration / max(total - 1, 1)

        def lerp(start: float, end: float | None) -> float:
            return start if end is None else start + (end - start) * min(frac, 1.0)

        self.entropy_coef = lerp(cfg.entropy_coef, cfg.entropy_coef_final)
        lr = lerp(cfg.lr, cfg.lr_final)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_iteration(self, tasks: Any, generator: torch.Generator) -> dict[str, float]:
        self.net.eval()
        batch = self.problem.collect(self.policy, tasks, generator)
        advantages, returns = self.advantages(batch)
        if self.config.normalize_returns:
            self.net.update_return_stats(returns, batch.valid)
        self.net.train()
        if self.config.optimizer == "ppo":
            metrics = self._ppo(batch, advantages, returns, generator)
        elif self.config.optimizer == "trpo":
            metrics = self._trpo(batch, advantages, returns, generator)
        else:
            metrics = self._vpg(batch, advantages, returns)
        episode_returns = batch.episode_returns(self.problem.episodes)
        metrics["return"] = float(batch.trial_returns().mean())
        metrics["return_first_episode"] = float(episode_returns[0].mean())
        metrics["return_last_episode"] = float(episode_returns[-1].mean())
        metrics["env_steps"] = float(batch.valid.sum())
        if self.config.entropy_coef_final is not None or self.config.lr_final is not None:
            metrics["entropy_coef"] = self.entropy_coef
            metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return metrics

    def advantages(self, batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over whole trials: the trial's end is the meta-episode's terminal step."""
        end = batch.trial_end | ~batch.valid
        shifted = torch.cat([batch.value[1:], torch.zeros_like(batch.value[:1])])
        adv, ret = gae(
            batch.reward, batch.value, shifted, end, end, self.config.gamma, self.config.gae_lambda
        )
        if self.config.normalize_advantages:
            valid = batch.valid
            mean = masked_mean(adv, valid)
            std = masked_mean((adv - mean).pow(2), valid).sqrt()
            adv = (adv - mean) / (std + 1e-8)
        return adv, ret

    def _value_loss(
        self, value: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Squared error on the standardised scale (see ``ContextPolicyNet.value``)."""
        return masked_mean(((value - returns) / self.net.return_std).pow(2), mask)

    def _losses(self, batch: TrajectoryBatch):
        params, value = self.net.evaluate(batch)
        log_prob = self.net.head.log_prob(params, batch.action)
        entropy = self.net.head.entropy(params)
        return params, log_prob, entropy, value

    def _adam_step(self, loss: torch.Tensor, name: str) -> None:
        check_finite(name, loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]], self.config.max_grad_norm
        )
        check_finite(f"gradient of {name}", grad_norm)
        self.optimizer.step()

    def _ppo(self, batch, advantages, returns, generator) -> dict[str, float]:
        cfg = self.config
        stats: dict[str, list[float]] = {
            "loss_policy": [],
            "loss_value": [],
            "entropy": [],
            "approx_kl": [],
            "clip_fraction": [],
        }
        for _ in range(cfg.epochs):
            for rows in minibatch_rows(batch.num_trials, cfg.minibatches, generator):
                rows = rows.to(self.device)
                sub = batch.select(rows)
                _, log_prob, entropy, value = self._losses(sub)
                policy_loss, info = ppo_policy_loss(
                    log_prob, sub.log_prob, advantages[:, rows], sub.valid, cfg.clip
                )
                value_loss = self._value_loss(value, returns[:, rows], sub.valid)
                ent = masked_mean(entropy, sub.valid)
                self._adam_step(
                    policy_loss + cfg.value_coef * value_loss - self.entropy_coef * ent, "loss"
                )
                stats["loss_policy"].append(float(policy_loss.detach()))
                stats["loss_value"].append(float(value_loss.detach()))
                stats["entropy"].append(float(ent.detach()))
                stats["approx_kl"].append(info["approx_kl"])
                stats["clip_fraction"].append(info["clip_fraction"])
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def _vpg(self, batch, advantages, returns) -> dict[str, float]:
        cfg = self.config
        _, log_prob, entropy, value = self._losses(batch)
        policy_loss = vpg_loss(log_prob, advantages, batch.valid)
        value_loss = self._value_loss(value, returns, batch.valid)
        ent = masked_mean(entropy, batch.valid)
        self._adam_step(policy_loss + cfg.value_coef * value_loss - self.entropy_coef * ent, "loss")
        return {
            "loss_policy": float(policy_loss.detach()),
            "loss_value": float(value_loss.detach()),
            "entropy": float(ent.detach()),
        }

    def _trpo(self, batch, advantages, returns, generator) -> dict[str, float]:
        cfg, net = self.config, self.net
        with torch.no_grad():
            old_params = net.head(net.trunk(net.encode_batch(batch)))
            old_log_std = None if net.head.discrete else net.head.log_std.detach().clone()
        x = net.encode_batch(batch).detach()

        def policy_params() -> torch.Tensor:
            # The Fisher-vector products differentiate this twice; cuDNN's RNN kernels have
            # no double backward (RL²'s GRU/LSTM on CUDA), torch's native ones do. On CPU,
            # and for SNAIL (no RNN), the flag changes nothing.
            with torch.backends.cudnn.flags(enabled=False):
                return net.head(net.trunk(x))

        def loss_fn() -> torch.Tensor:
            return surrogate_loss(
                net.head.log_prob(policy_params(), batch.action),
                batch.log_prob,
                advantages,
                batch.valid,
            )

        def kl_fn() -> torch.Tensor:
            return masked_mean(net.head.kl(old_params, policy_params(), old_log_std), batch.valid)

        result = trpo_step(net.policy_parameters(), loss_fn, kl_fn, cfg.max_kl, cfg.damping)
        value_losses = []
        for _ in range(cfg.epochs):
            for rows in minibatch_rows(batch.num_trials, cfg.minibatches, generator):
                rows = rows.to(self.device)
                sub = batch.select(rows)
                value = net.value(net.value_trunk(net.encode_batch(sub)))
                value_loss = self._value_loss(value, returns[:, rows], sub.valid)
                self._adam_step(value_loss, "loss_value")
                value_losses.append(float(value_loss.detach()))
        with torch.no_grad():
            entropy = masked_mean(net.head.entropy(policy_params()), batch.valid)
        return {
            "loss_policy": result.loss_after,
            "loss_value": sum(value_losses) / len(value_losses),
            "entropy": float(entropy),
            "kl": result.kl,
            "trpo_accepted": float(result.accepted),
            "trpo_backtracks": float(result.backtracks),
        }

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self, tasks: Any, generator: torch.Generator, *, baselines: bool | None = None
    ) -> dict[str, Curve]:
        del baselines  # no learner-specific baselines (the env's are added by eval)
        self.net.eval()
        batch = self.problem.collect(self.policy, tasks, generator)
        episodes = self.problem.episodes
        return {
            self.name: Curve(
                list(range(1, episodes + 1)),
                batch.episode_returns(episodes).cpu(),
                "episode",
                lengths=batch.episode_lengths(episodes).cpu(),
                batch=batch,
            )
        }

    @property
    def name(self) -> str:
        return getattr(self, "registered_name", type(self).__name__.lower())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
