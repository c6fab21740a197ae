"""Meta Networks (Munkhdalai & Yu, 2017): fast weights generated from loss gradients.

Two learners, each with slow weights (trained by the outer optimiser) and fast weights
(generated per task or per example from *meta information*: loss gradients):

* **Base learner** ``b`` — a Conv-4 encoder and two augmented layers (hidden, output).
  For each support example ``x'_i``, the gradient ``∇_i`` of its classification loss
  w.r.t. the slow head weights ``W`` is turned coordinate-wise into example-level fast
  weights ``W*_i = m(Z, ∇_i)`` (``m``: a small MLP on preprocessed gradients) and
  written to memory ``M``.
* **Representation learner** ``u`` — a second Conv-4 and one augmented layer. ``T``
  pairs of support examples give a representation (contrastive) loss; their gradients
  w.r.t. the slow layer ``Q`` are read by an LSTM ``d`` (coordinate-wise, over the
  ``T`` gradients, like Andrychowicz et al.'s optimiser) into task-level fast weights
  ``Q*``. ``u(Q, Q*, x'_i)`` are the memory keys ``R`` — task-specific embeddings.

A query ``x`` reads its fast weights from memory by attention over the keys, with the
softmax of (scaled) cosine similarities: ``W*_x = Σ_i softmax_i(s·cos(u(x), R_i)) M_i``; it is then
classified by the base learner with ``W`` and ``W*_x``. *Layer augmentation*: an
augmented layer computes its slow and fast pre-activations separately and **sums them
after the ReLU**, ``y = relu(W h + b) + relu(W* h + b*)`` (the output layer sums logits).
The query cross-entropy trains every slow weight (encoders, ``W``, ``Q``, ``m``, ``d``).

Simplifications (documented choices): fast weights are generated for the dense layers
(the augmented head) rather than the convolutions, which keeps per-query fast weights a
batched matmul; meta information (gradients) is treated as data (detached, no
third-order terms); gradients are preprocessed as in Andrychowicz et al. (2016), section
3.2, with ``p = grad_preprocess_p``; the representation loss is a binary cross-entropy
on pairs (same class or not) over cosine similarity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.fewshot.base import (
    EpisodicConfig,
    FewShotLearner,
    build_backbone,
    check_positive,
    split_tasks,
)


@dataclasses.dataclass
class MetaNetConfig(EpisodicConfig):
    """Meta Networks settings."""

    lr: float = 1e-3
    """Adam step size."""
    hidden: int = 64
    """Conv-4 filters per block, in both encoders."""
    head_hidden: int = 64
    """Width of the base learner's augmented hidden layer."""
    rep_dim: int = 64
    """Width of the representation learner's augmented layer (the memory key size)."""
    meta_hidden: int = 20
    """Hidden width of the fast-weight generators m (MLP) and d (LSTM)."""
    emb_pairs: int = 4
    """T, support pairs whose representation-loss gradients feed d."""
    grad_preprocess_p: float = 10.0
    """p of the gradient preprocessing (log-magnitude / sign, Andrychowicz et al.)."""
    m_skip_init: float = -1.0
    """Initial β of m's linear gradient skip, ``W* = MLP(preprocessed ∇) + β ∇``. With
    β < 0, m starts as one SGD step on each support example's loss, so reading memory
    is a similarity-weighted vote from the first update. The paper-form m (β = 0) stayed
    at chance for 60+ meta-batches on Omniglot: a random MLP barely separates the
    label-carrying gradient signs, and uniform attention averages them away."""
    attention_scale: float = 10.0
    """Multiplier of the cosine similarities in the memory read. The paper's 1 leaves the
    softmax over a 5-example memory nearly uniform (cosines of ReLU features are all close
    to 1), so every query reads the same average fast weights and training stalls; 10
    learns within ~100 steps on small synthetic tasks."""
    grad_clip: float = 0.0
    """Clip the gradient's global norm to this (0 = off)."""
    tasks_per_pass: int = 1
    """Tasks embedded per forward pass (0 = the whole meta-batch). Batch-norm statistics
    are those of one pass; 1 is the paper's one episode per pass and, on the CPU, ~2x
    faster than embedding 32 tasks at once (activations stay cache-resident)."""

    def __post_init__(self) -> None:
        check_positive(
            self,
            "meta_batch",
            "lr",
            "hidden",
            "head_hidden",
            "rep_dim",
            "meta_hidden",
            "emb_pairs",
            "grad_preprocess_p",
            "attention_scale",
        )
        check_positive(self, "grad_clip", "tasks_per_pass", allow_zero=True)


# ---------------------------------------------------------------- building blocks
def augmented_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    fast_weight: Tensor,
    fast_bias: Tensor,
    relu: bool = True,
) -> Tensor:
    """Layer augmentation: slow and fast outputs, each through ReLU, then summed.

    Args:
        x: ``[..., in]``.
        weight: Slow ``[out, in]``.
        bias: Slow ``[out]``.
        fast_weight: Fast ``[..., out, in]`` (per example or per task, broadcast).
        fast_bias: Fast ``[..., out]``.
        relu: Apply ReLU to both parts (hidden layers); False sums the raw outputs (the
            output layer's logits).
    """
    slow = F.linear(x, weight, bias)
    fast = (fast_weight @ x.unsqueeze(-1)).squeeze(-1) + fast_bias
    if relu:
        return F.relu(slow) + F.relu(fast)
    return slow + fast


def preprocess_gradients(grad: Tensor, p: float) -> Tensor:
    """Andrychowicz et al.'s gradient preprocessing: ``[..., 2]`` features per coordinate.

    ``(log|g| / p, sign g)`` if ``|g| ≥ e^{-p}``, else ``(−1, e^p · g)``: scale-free
    inputs for coordinate-wise networks whatever the gradient's magnitude.
    """
    big = grad.abs() >= math.exp(-p)
    log_mag = torch.where(big, grad.abs().clamp_min(1e-38).log() / p, torch.full_like(grad, -1.0))
    sign = torch.where(big, grad.sign(), grad * math.exp(p))
    return torch.stack([log_mag, sign], dim=-1)


@dataclasses.dataclass
class FastWeights:
    """What MetaNet generates for a meta-batch (for inspection and tests).

    Attributes:
        example: Example-level fast weights ``W*_i`` of the support set,
            ``{name: [tasks, S, *shape]}`` for the base head (``w1, b1, w2, b2``).
        task: Task-level fast weights ``Q*``, ``{"q": [tasks, R, D], "c": [tasks, R]}``.
        keys: Memory keys ``R = u(Q, Q*, x'_i)``, ``[tasks, S, R]``.
        query: Fast weights read for each query, ``{name: [tasks, Q, *shape]}``.
        attention: Memory read weights ``[tasks, Q, S]``.
    """

    example: dict[str, Tensor]
    task: dict[str, Tensor]
    keys: Tensor
    query: dict[str, Tensor]
    attention: Tensor


class MetaNetModule(nn.Module):
    """All of MetaNet's slow weights (encoders, heads, and the generators m and d).

    Args:
        input_shape: One image's shape.
        num_ways: N.
        config: Widths.
    """

    def __init__(self, input_shape: tuple[int, ...], num_ways: int, config: MetaNetConfig):
        super().__init__()
        self.base_encoder = build_backbone(
            input_shape, None, hidden=config.hidden, track_running_stats=True
        )
        self.rep_encoder = build_backbone(
            input_shape, None, hidden=config.hidden, track_running_stats=True
        )
        dim = self.base_encoder.feature_dim
        self.head1 = nn.Linear(dim, config.head_hidden)  # W1, b1 (augmented, ReLU)
        self.head2 = nn.Linear(config.head_hidden, num_ways)  # W2, b2 (augmented, logits)
        self.rep = nn.Linear(dim, config.rep_dim)  # Q, c (augmented, ReLU)
        h = config.meta_hidden
        self.m = nn.Sequential(nn.Linear(2, h), nn.ReLU(), nn.Linear(h, 1))  # Z
        # m's gradient skip: W* = m(pre(∇)) + β∇, β learnable (part of Z).
        self.m_skip = nn.Parameter(torch.tensor(float(config.m_skip_init)))
        self.d_cell = nn.LSTMCell(2, h)  # G
        self.d_out = nn.Linear(h, 1)
        self.num_ways = num_ways
        self.p = config.grad_preprocess_p
        self.attention_scale = config.attention_scale

    # ------------------------------------------------------------ helpers
    def head_params(self) -> dict[str, Tensor]:
        """The base learner's slow head weights ``W`` by name."""
        return {
            "w1": self.head1.weight,
            "b1": self.head1.bias,
            "w2": self.head2.weight,
            "b2": self.head2.bias,
        }

    @staticmethod
    def slow_head(params: dict[str, Tensor], h: Tensor) -> Tensor:
        """Base head with slow weights only: ``W2 relu(W1 h + b1) + b2``."""
        return F.linear(F.relu(F.linear(h, params["w1"], params["b1"])), params["w2"], params["b2"])

    def generate_m(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """``W* = m(Z, ∇)`` coordinate-wise, same shapes as ``grads``."""
        return {
            k: self.m(preprocess_gradients(g, self.p)).squeeze(-1) + self.m_skip * g
            for k, g in grads.items()
        }

    def generate_d(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """``Q* = d(G, {∇_t})``: an LSTM over the T gradients of each coordinate.

        Args:
            grads: ``{name: [tasks, T, *shape]}``.

        Returns:
            ``{name: [tasks, *shape]}``.
        """
        out = {}
        for name, g in grads.items():
            tasks, steps = g.shape[:2]
            shape = g.shape[2:]
            seq = preprocess_gradients(g.reshape(tasks, steps, -1), self.p)  # [T', P, C, 2]
            seq = seq.transpose(1, 2).reshape(-1, steps, 2)  # [T'·C, P, 2]
            h = seq.new_zeros(seq.shape[0], self.d_cell.hidden_size)
            c = torch.zeros_like(h)
            for t in range(steps):
                h, c = self.d_cell(seq[:, t], (h, c))
            out[name] = self.d_out(h).view(tasks, *shape)
        return out

    def represent(self, h: Tensor, fast: dict[str, Tensor] | None) -> Tensor:
        """``u``: slow-only (``fast=None``) or augmented with task fast weights ``Q*``.

        Args:
            h: Representation-encoder features ``[tasks, n, D]``.
            fast: ``{"q": [tasks, R, D], "c": [tasks, R]}`` or None.
        """
        if fast is None:
            return F.relu(self.rep(h))
        return augmented_linear(
            h, self.rep.weight, self.rep.bias, fast["q"].unsqueeze(1), fast["c"].unsqueeze(1)
        )

    # ------------------------------------------------------------ forward
    def forward(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        generator: torch.Generator | None = None,
        pairs: int = 4,
    ) -> tuple[Tensor, FastWeights]:
        """Query logits ``[tasks, Q, N]`` and the generated fast weights."""
        tasks, s = support_x.shape[:2]
        q = query_x.shape[1]
        images = torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)])
        hb = self.base_encoder(images)
        hu = self.rep_encoder(images)
        hb_s, hb_q = hb[: tasks * s].view(tasks, s, -1), hb[tasks * s :].view(tasks, q, -1)
        hu_s, hu_q = hu[: tasks * s].view(tasks, s, -1), hu[tasks * s :].view(tasks, q, -1)

        # Task-level fast weights Q* from representation-loss gradients of T pairs.
        first, second = sample_pairs(tasks, s, pairs, generator, support_x.device)
        rows = torch.arange(tasks, device=support_x.device)[:, None]
        same = (support_y[rows, first] == support_y[rows, second]).float()  # [T, P]
        rep_grads = pair_gradients(
            self.rep.weight, self.rep.bias, hu_s[rows, first], hu_s[rows, second], same
        )
        task_fast = self.generate_d(rep_grads)

        # Example-level fast weights W*_i from each support example's loss gradient.
        example_grads = example_gradients(self.head_params(), hb_s, support_y, self.num_ways)
        example_fast = self.generate_m(example_grads)

        # Memory: keys R = u(Q, Q*, x'_i), values M = W*_i; queries read by cosine attention.
        keys = self.represent(hu_s, task_fast)  # [T, S, R]
        query_keys = self.represent(hu_q, task_fast)  # [T, Q, R]
        sims = F.normalize(query_keys, dim=-1) @ F.normalize(keys, dim=-1).transpose(1, 2)
        attention = torch.softmax(self.attention_scale * sims, dim=-1)  # [T, Q, S]
        query_fast = {
            k: torch.einsum("tqs,ts...->tq...", attention, v) for k, v in example_fast.items()
        }

        hidden = augmented_linear(
            hb_q, self.head1.weight, self.head1.bias, query_fast["w1"], query_fast["b1"], relu=True
        )
        logits = augmented_linear(
            hidden,
            self.head2.weight,
            self.head2.bias,
            query_fast["w2"],
            query_fast["b2"],
            relu=False,
        )
        return logits, FastWeights(example_fast, task_fast, keys, query_fast, attention)


def sample_pairs(
    tasks: int, size: int, pairs: int, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``pairs`` random ordered pairs of distinct support indices per task, ``[T, P]`` each."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    first = torch.randint(size, (tasks, pairs), generator=generator, device=gdev)
    # An offset in 1..size−1 guarantees a different second index (size ≥ 2).
    offset = torch.randint(1, max(size, 2), (tasks, pairs), generator=generator, device=gdev)
    second = (first + offset) % size
    return first.to(device), second.to(device)


def pair_gradients(
    weight: Tensor, bias: Tensor, ha: Tensor, hb: Tensor, same: Tensor
) -> dict[str, Tensor]:
    """Per-pair gradients of the representation loss w.r.t. ``Q`` and ``c`` (detached).

    The loss of a pair is ``BCE(σ(10 · (cos(r_a, r_b) − ½)), same)`` with
    ``r = relu(Q h + c)``: pull same-class pairs together, push others apart.

    Args:
        weight: ``Q`` ``[R, D]``.
        bias: ``c`` ``[R]``.
        ha: First examples' features ``[tasks, P, D]``.
        hb: Second examples' features ``[tasks, P, D]``.
        same: 1.0 where the pair shares a class, ``[tasks, P]``.

    Returns:
        ``{"q": [tasks, P, R, D], "c": [tasks, P, R]}``.
    """

    def loss(w: Tensor, b: Tensor, xa: Tensor, xb: Tensor, target: Tensor) -> Tensor:
        ra, rb = F.relu(F.linear(xa, w, b)), F.relu(F.linear(xb, w, b))
        logit = 10.0 * (F.cosine_similarity(ra, rb, dim=-1, eps=1e-6) - 0.5)
        return F.binary_cross_entropy_with_logits(logit, target)

    grad = torch.func.grad(loss, argnums=(0, 1))
    per_pair = torch.func.vmap(grad, in_dims=(None, None, 0, 0, 0))
    flat = per_pair(
        weight.detach(),
        bias.detach(),
        ha.detach().flatten(0, 1),
        hb.detach().flatten(0, 1),
        same.flatten(),
    )
    tasks, pairs = same.shape
    return {
        "q": flat[0].view(tasks, pairs, *weight.shape),
        "c": flat[1].view(tasks, pairs, *bias.shape),
    }


def example_gradients(
    params: dict[str, Tensor], h: Tensor, y: Tensor, num_ways: int
) -> dict[str, Tensor]:
    """Per-example gradients of the base head's cross-entropy (meta information, detached).

    Args:
        params: Slow head weights ``w1, b1, w2, b2``.
        h: Support features ``[tasks, S, D]``.
        y: Support labels ``[tasks, S]``.
        num_ways: N.

    Returns:
        ``{name: [tasks, S, *shape]}``.
    """

    def loss(p: dict[str, Tensor], x: Tensor, target: Tensor) -> Tensor:
        logits = MetaNetModule.slow_head(p, x)
        return F.cross_entropy(logits, target)

    detached = {k: v.detach() for k, v in params.items()}
    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    tasks, s = y.shape
    flat = per_example(detached, h.detach().flatten(0, 1), y.flatten())
    return {k: v.view(tasks, s, *v.shape[1:]) for k, v in flat.items()}


class MetaNet(FewShotLearner):
    """Meta Networks with Conv-4 encoders and augmented dense heads."""

    config_cls = MetaNetConfig
    description = "MetaNet: gradient-generated fast weights, layer augmentation, memory"

    def __init__(
        self,
        config: MetaNetConfig,
        num_ways: int,
        input_shape: Any,
        device: torch.device | str = "cpu",
        regression: bool = False,
    ):
        if regression:
            raise ValueError("MetaNet is a classifier here (no regression)")
        super().__init__(config, num_ways, input_shape, device, regression)
        self.nets["metanet"] = MetaNetModule(self.input_shape, self.num_ways, config)
        self.nets.to(self.device)
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=config.lr)

    @property
    def module(self) -> MetaNetModule:
        """All slow weights."""
        return self.nets["metanet"]

    def forward(
        self,
        batch: Any,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, FastWeights]:
        """Query logits ``[tasks, Q, N]`` and the generated fast weights."""
        return self.module(
            batch.support_x, batch.support_y, batch.query_x, generator, self.config.emb_pairs
        )

    def loss_and_accuracy(
        self,
        batch: Any,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """Mean query cross-entropy and per-task query accuracy ``[tasks]``."""
        logits, _ = self.forward(batch, generator)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, (logits.argmax(-1) == batch.query_y).float().mean(1)

    def meta_train_step(self, batch: Any, generator: torch.Generator) -> dict[str, float]:
        """One Adam step on the query cross-entropy (``generator`` draws the T pairs)."""
        return self.episodic_step(
            batch,
            self.config.tasks_per_pass,
            lambda group: self.loss_and_accuracy(group, generator),
            self.config.grad_clip,
        )

    @torch.no_grad()
    def evaluate(self, batch: Any) -> dict[int, Tensor]:
        """Per-task query accuracy ``{0: [tasks]}`` (pairs drawn with a fixed seed, so
        evaluation is deterministic)."""
        self.nets.eval()
        generator = torch.Generator(device=batch.support_x.device).manual_seed(0)
        return {
            0: torch.cat(
                [
                    self.loss_and_accuracy(group, generator)[1]
                    for group in split_tasks(batch, self.config.tasks_per_pass)
                ]
            )
        }
