"""RL² (Duan et al. 2016; Wang et al. 2016): a recurrent policy as the meta-learner.

The GRU (or LSTM) reads (obs, previous action, previous reward, done flag) at every step.
Its hidden state is the agent's memory of the task: it carries across the episodes of a
trial and is reset between trials. The outer loop is PPO or TRPO (``algo.optimizer``)
over whole trials; see :mod:`agents.context_learner`.

Example:
    >>> from envs.bandit import BanditDistribution
    >>> from metarl.problem import RLProblem
    >>> problem = RLProblem(BanditDistribution(arms=5), episodes=10)
    >>> learner = RL2(problem, RL2Config(hidden_size=32, trials_per_iteration=16))
    >>> import torch
    >>> tasks = problem.sample_train_tasks(16, seed=0, iteration=0)
    >>> metrics = learner.train_iteration(tasks, torch.Generator().manual_seed(0))
    >>> 0.0 <= metrics["return"] <= 10.0
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from agents.context_learner import ContextConfig, ContextLearner

CELLS = ("gru", "lstm")


@dataclasses.dataclass
class RL2Config(ContextConfig):
    """RL² settings: the outer loop's (see :class:`ContextConfig`) plus the RNN's."""

    hidden_size: int = 256
    """Recurrent state size (the RL² paper uses 256 GRU units)."""
    cell: str = "gru"
    """Recurrent cell: ``gru`` or ``lstm``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cell not in CELLS:
            raise ValueError(f"algo.cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.hidden_size < 1:
            raise ValueError(f"algo.hidden_size must be >= 1, got {self.hidden_size}")


class RecurrentTrunk(nn.Module):
    """A single-layer GRU or LSTM with the step/forward protocol of context learners.

    Both paths run the same ``nn.GRU``/``nn.LSTM`` module (a length-1 sequence when
    stepping), so acting and training use identical kernels and agree to float precision.
    """

    def __init__(self, input_size: int, hidden_size: int, cell: str = "gru"):
        super().__init__()
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(input_size, hidden_size)
        self.lstm = cell == "lstm"
        self.output_size = hidden_size

    def initial_state(self, batch_size: int, device: torch.device) -> Any:
        h = torch.zeros(1, batch_size, self.output_size, device=device)
        return (h, torch.zeros_like(h)) if self.lstm else h

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = self.rnn(x.unsqueeze(0), state)
        return out.squeeze(0), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return out


class RL2(ContextLearner):
    """RL² meta-learner (GRU or LSTM) trained with PPO, TRPO or VPG."""

    config_cls = RL2Config
    description = "RL²: GRU/LSTM policy over (obs, prev action, prev reward, done); PPO or TRPO"

    def build_trunk(self, input_size: int, sequence_length: int, value: bool = False) -> nn.Module:
        return RecurrentTrunk(input_size, self.config.hidden_size, self.config.cell)
