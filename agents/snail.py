"""SNAIL building blocks: causal temporal convolutions plus causal soft attention.

Implements the Simple Neural AttentIve Learner of Mishra, Rohaninejad, Chen and Abbeel,
"A Simple Neural Attentive Meta-Learner" (ICLR 2018), as reusable torch modules:

* :class:`DenseBlock`: one causal dilated convolution of kernel 2 with a gated
  activation ``tanh(xf) * sigmoid(xg)``, concatenated to its input.
* :class:`TCBlock`: ``ceil(log2 T)`` dense blocks with dilations ``1, 2, 4, ...``, so the
  receptive field covers a whole sequence of length ``T``.
* :class:`AttentionBlock`: single-head causal softmax attention, its read concatenated
  to its input.
* :class:`SNAILStack`: any sequence of TC and attention blocks (the paper uses different
  stacks for RL and for few-shot classification), see :class:`TCSpec`,
  :class:`AttentionSpec` and :data:`PAPER_OMNIGLOT_BLOCKS`.
* :class:`SNAILSequenceModel`: the bandit/MDP network of the paper (input linear layer,
  two TC blocks, one attention block) behind the context-learner protocol
  (``output_size``, ``initial_state``, ``step``, ``forward``).

All sequence tensors are time-major, ``[T, B, C]``. Every block runs in two modes that
compute the same function:

* ``forward(x [T, B, C])`` processes a whole sequence at once (training).
* ``step(x_t [B, C], cache)`` processes one time step given a cache of the past
  (acting). A dense block caches only the last ``dilation`` inputs in a ring buffer, so a
  step costs ``O(1)`` in the prefix length; an attention block caches the keys and values
  so far in a preallocated buffer, so a step at time ``t`` costs ``O(t * d)``.

Caches are tuples of plain tensors whose first dimension is the batch: rows can be
selected, concatenated or reset (zeroed) independently, and each row carries its own
time index, so rows do not even have to be at the same step. ``step`` updates the cache
tensors in place (copying a cache every step would cost ``O(T)``) and runs without
autograd: gradients flow through ``forward`` only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Cache = tuple[Any, ...]
"""A block's incremental state: a (nested) tuple of batch-first tensors."""


def num_dense_blocks(sequence_length: int) -> int:
    """``ceil(log2(sequence_length))``, the number of dense blocks of a TC block.

    Dilations ``1, 2, ..., 2**(n-1)`` give a receptive field of ``2**n >= sequence_length``
    steps. Computed on integers to avoid float rounding at powers of two.
    """
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
    return (sequence_length - 1).bit_length()


def _batch_rows(batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.arange(batch_size, device=device)


def _common_position(position: torch.Tensor) -> int | None:
    """The position shared by every row, or None if rows differ.

    In a collection every trial starts together, so rows step in lockstep: plain slicing
    then replaces the gathers and scatters of per-row positions (these were ~15% of a
    SNAIL step at B = 1024).
    """
    first = int(position[0])
    return first if bool((position == first).all()) else None


class DenseBlock(nn.Module):
    """Causal dilated convolution (kernel 2) with a gated activation, concatenated to input.

    ``y[t] = concat(x[t], tanh(xf[t]) * sigmoid(xg[t]))`` where
    ``[xf, xg] = W_past x[t - dilation] + W_now x[t] + b`` and ``x[t - dilation] = 0``
    before the sequence start (the zero padding of a causal convolution).

    The two kernel taps are kept as two linear maps rather than an ``nn.Conv1d``: the
    same two matrix products then serve the whole-sequence and the one-step path, so both
    give the same numbers.

    Args:
        in_channels: Channels ``C`` of the input.
        dilation: Distance between the two taps, ``>= 1``.
        filters: Number of gated output channels ``F``; the block outputs ``C + F``.
    """

    def __init__(self, in_channels: int, dilation: int, filters: int) -> None:
        super().__init__()
        if in_channels < 1 or dilation < 1 or filters < 1:
            raise ValueError("in_channels, dilation and filters must be >= 1")
        self.in_channels = in_channels
        self.dilation = dilation
        self.filters = filters
        self.out_channels = in_channels + filters
        # 2 * filters outputs: the first half is xf (tanh), the second xg (sigmoid gate).
        self.tap_now = nn.Linear(in_channels, 2 * filters)
        self.tap_past = nn.Linear(in_channels, 2 * filters, bias=False)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, dilation={self.dilation}, filters={self.filters}"

    def _gate(self, z: torch.Tensor) -> torch.Tensor:
        xf, xg = z.chunk(2, dim=-1)
        # tanh(x) = 2·sigmoid(2x) − 1, exactly; torch 2.13's CPU tanh is ~9x slower than its
        # sigmoid (150 vs 16 µs on [1024, 32]), and the gate runs in every dense block.
        return (2 * torch.sigmoid(2 * xf) - 1) * torch.sigmoid(xg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C] -> [T, B, C + F]``."""
        t, d = x.shape[0], self.dilation
        # Both taps in one product over the whole input (as in step_new): x is read once,
        # and backward sums two gradients into it instead of three. The past tap applied
        # to x[s] lands on output s + d; outputs before d see the zero padding (the past
        # tap has no bias). Shifting the 2F-wide product rather than slicing the C-wide
        # input spares backward a zero-filled C-wide gradient per block.
        weight = torch.cat([self.tap_now.weight, self.tap_past.weight])
        z, past = F.linear(x, weight).split(2 * self.filters, dim=-1)
        z = z + self.tap_now.bias
        if t > d:
            z = z + F.pad(past[: t - d], (0, 0, 0, 0, d, 0))
        return torch.cat([x, self._gate(z)], dim=-1)

    def branches(
        self, prefix: torch.Tensor, ends: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs at step ``S`` of ``R`` one-step continuations of a shared prefix.

        Row ``r`` equals ``forward(cat([prefix, ends[r:r+1]]))[-1]``, differentiably, without
        repeating the prefix per continuation.

        Args:
            prefix: ``[S, B, C]`` input sequence shared by every continuation (S may be 0).
            ends: ``[R, B, C]`` candidate inputs at step ``S``.

        Returns:
            ``forward(prefix)`` ``[S, B, C + F]`` (the next block's prefix) and the
            continuations' outputs ``[R, B, C + F]``.
        """
        z = self.tap_now(ends)
        s, d = prefix.shape[0], self.dilation
        if s >= d:
            z = z + self.tap_past(prefix[s - d])  # the same past input for every continuation
        return self(prefix), torch.cat([ends, self._gate(z)], dim=-1)

    def initial_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Cache:
        """Empty cache: ``(ring [B, dilation, 2F], position [B] long)``, all zeros.

        The ring holds the *past tap's output* ``W_past x[s]`` (2F wide) rather than the
        input ``x[s]`` (C wide, up to hundreds of channels deep in a TC block): the product
        is computed when ``x[s]`` arrives and read ``dilation`` steps later. Slot
        ``t % dilation`` holds ``W_past x[t - dilation]`` when step ``t`` reads it;
        unwritten slots are zero, which is exactly the causal zero padding.
        """
        dtype = dtype or self.tap_now.weight.dtype
        ring = torch.zeros(batch_size, self.dilation, 2 * self.filters, device=device, dtype=dtype)
        position = torch.zeros(batch_size, dtype=torch.long, device=device)
        return ring, position

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
        """One step, ``[B, C] -> [B, C + F]``; updates ``cache`` in place and returns it."""
        return torch.cat([x, self.step_new(x, cache)], dim=-1), cache

    @torch.no_grad()
    def step_new(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Only the ``F`` new channels of one step (what :meth:`step` appends to ``x``)."""
        ring, position = cache
        # Both taps in one matrix product: [now | past] outputs of this input.
        weight = torch.cat([self.tap_now.weight, self.tap_past.weight])
        z_now, p_now = (x @ weight.T).split(2 * self.filters, dim=-1)
        common = _common_position(position)
        if common is not None:
            slot = common % self.dilation
            out = self._gate(z_now + self.tap_now.bias + ring[:, slot])  # read, then overwrite
            ring[:, slot] = p_now
        else:
            rows = _batch_rows(x.shape[0], x.device)
            slot = position % self.dilation
            past = ring[rows, slot]  # advanced indexing copies: safe to overwrite the slot next
            ring[rows, slot] = p_now
            out = self._gate(z_now + self.tap_now.bias + past)
        position += 1
        return out


class TCBlock(nn.Module):
    """``ceil(log2 T)`` dense blocks with dilations ``1, 2, 4, ..., 2**(ceil(log2 T) - 1)``.

    Channels grow by ``filters`` per dense block. For ``sequence_length == 1`` there are no
    dense blocks and the block is the identity (there is no past to look at).

    Args:
        in_channels: Channels ``C`` of the input.
        sequence_length: Longest sequence ``T`` the receptive field must cover.
        filters: Channels added by each dense block.
    """

    def __init__(self, in_channels: int, sequence_length: int, filters: int) -> None:
        super().__init__()
        n = num_dense_blocks(sequence_length)
        self.in_channels = in_channels
        self.sequence_length = sequence_length
        self.filters = filters
        self.blocks = nn.ModuleList(
            DenseBlock(in_channels + i * filters, 2**i, filters) for i in range(n)
        )
        self.out_channels = in_channels + n * filters

    @property
    def dilations(self) -> list[int]:
        return [b.dilation for b in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C] -> [T, B, C + ceil(log2 T) * filters]``."""
        for block in self.blocks:
            x = block(x)
        return x

    def branches(
        self, prefix: torch.Tensor, ends: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(prefix)`` and the continuations' outputs; see :meth:`DenseBlock.branches`."""
        for block in self.blocks:
            prefix, ends = block.branches(prefix, ends)
        return prefix, ends

    def initial_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Cache:
        """One dense-block cache per dense block."""
        return tuple(b.initial_cache(batch_size, device, dtype) for b in self.blocks)

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
        """One step, ``[B, C] -> [B, out_channels]``; updates ``cache`` in place."""
        for block, block_cache in zip(self.blocks, cache, strict=True):
            x, _ = block.step(x, block_cache)
        return x, cache


class AttentionBlock(nn.Module):
    """Single-head causal soft attention, its read concatenated to the input.

    ``read[t] = sum_{s <= t} softmax_s(q[t] . k[s] / sqrt(key_size)) v[s]`` with affine
    query, key and value maps of the input; output ``concat(x[t], read[t])``.

    Args:
        in_channels: Channels ``C`` of the input.
        key_size: Size of queries and keys.
        value_size: Size of values; the block outputs ``C + value_size``.

    Attributes:
        fused: The whole-sequence path uses torch's fused causal attention kernel (the
            default; ~7x faster forward + backward at T = 1000). Its backward cannot be
            differentiated again, so second-order methods (TRPO's Hessian-vector products)
            need ``False``: plain matrix products and a masked softmax, same numbers up to
            float rounding. See :func:`set_fused_attention`.
    """

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.fused = True
        if in_channels < 1 or key_size < 1 or value_size < 1:
            raise ValueError("in_channels, key_size and value_size must be >= 1")
        self.in_channels = in_channels
        self.key_size = key_size
        self.value_size = value_size
        self.out_channels = in_channels + value_size
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self._scale = math.sqrt(key_size)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, key_size={self.key_size}, "
            f"value_size={self.value_size}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C] -> [T, B, C + value_size]``."""
        return self._forward_with_kv(x)[0]

    def _forward_with_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s output and its keys ``[B, T, K]`` and values ``[B, T, V]``."""
        t = x.shape[0]
        q = self.query(x).transpose(0, 1)  # [B, T, K]
        k = self.key(x).transpose(0, 1)
        v = self.value(x).transpose(0, 1)  # [B, T, V]
        if self.fused:
            # torch's fused causal attention (a flash kernel on CPU and CUDA) never builds
            # the [T, T] score matrix: forward + backward at T = 1000 took 0.15 s against
            # 1.0 s for the products below. Future keys are skipped, not down-weighted.
            read = F.scaled_dot_product_attention(
                q.unsqueeze(1),
                k.unsqueeze(1),
                v.unsqueeze(1),
                is_causal=True,
                scale=1 / self._scale,
            ).squeeze(1)
        else:
            scores = torch.bmm(q, k.transpose(1, 2)) / self._scale  # [B, T(query), T(key)]
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            # -inf gives future keys a weight of exactly 0: outputs before t cannot move
            # when an input at t changes. The diagonal is never masked: no row is all -inf.
            probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
            read = torch.bmm(probs, v)
        return torch.cat([x, read.transpose(0, 1)], dim=-1), k, v

    def branches(
        self, prefix: torch.Tensor, ends: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(prefix)`` and the outputs ``[R, B, C + value_size]`` of continuations.

        Continuation ``r`` attends over the prefix's keys and its own key only, exactly as
        :meth:`forward` would on ``cat([prefix, ends[r:r+1]])`` at its last step (see
        :meth:`DenseBlock.branches`).
        """
        q = self.query(ends).transpose(0, 1)  # [B, R, K]
        k_own = self.key(ends).transpose(0, 1)
        v_own = self.value(ends).transpose(0, 1)  # [B, R, V]
        own = (q * k_own).sum(-1, keepdim=True) / self._scale  # [B, R, 1]
        prefix_out, k, v = self._forward_with_kv(prefix)  # the prefix's keys, computed once
        if prefix.shape[0]:
            scores = torch.bmm(q, k.transpose(1, 2)) / self._scale  # [B, R, S]
            probs = torch.softmax(torch.cat([scores, own], dim=-1), dim=-1)
            read = torch.bmm(probs[..., :-1], v) + probs[..., -1:] * v_own
        else:
            read = v_own  # only itself to attend to
        return prefix_out, torch.cat([ends, read.transpose(0, 1)], dim=-1)

    def initial_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        capacity: int = 64,
    ) -> Cache:
        """Empty cache ``(keys [B, capacity, K], values [B, capacity, V], position [B])``.

        Preallocated so that a step writes one row instead of concatenating the whole
        prefix; the buffers double if a sequence outgrows ``capacity``.
        """
        dtype = dtype or self.query.weight.dtype
        capacity = max(1, capacity)
        keys = torch.zeros(batch_size, capacity, self.key_size, device=device, dtype=dtype)
        values = torch.zeros(batch_size, capacity, self.value_size, device=device, dtype=dtype)
        position = torch.zeros(batch_size, dtype=torch.long, device=device)
        return keys, values, position

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
        """One step, ``[B, C] -> [B, C + value_size]``.

        Writes this step's key and value in place. Returns the same cache unless the
        buffers had to grow, in which case the returned cache holds new, larger buffers.
        """
        read, cache = self.step_new(x, cache)
        return torch.cat([x, read], dim=-1), cache

    @torch.no_grad()
    def step_new(self, x: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
        """Only the attention read ``[B, value_size]`` of one step, and the cache."""
        keys, values, position = cache
        length = int(position.max()) + 1  # keys to read this step (rows may differ)
        if length > keys.shape[1]:
            grown = max(length, 2 * keys.shape[1])
            keys = torch.cat(
                [keys, keys.new_zeros(keys.shape[0], grown - keys.shape[1], keys.shape[2])], dim=1
            )
            values = torch.cat(
                [
                    values,
                    values.new_zeros(values.shape[0], grown - values.shape[1], values.shape[2]),
                ],
                dim=1,
            )
        common = _common_position(position)
        if common is not None:
            keys[:, common] = self.key(x)
            values[:, common] = self.value(x)
        else:
            rows = _batch_rows(x.shape[0], x.device)
            keys[rows, position] = self.key(x)
            values[rows, position] = self.value(x)
        q = self.query(x)  # [B, K]
        seen_k, seen_v = keys[:, :length], values[:, :length]
        scores = torch.bmm(seen_k, q.unsqueeze(-1)).squeeze(-1) / self._scale  # [B, length]
        if common is None:
            # Rows behind the furthest row must not read stale slots beyond their position.
            ahead = torch.arange(length, device=x.device) > position.unsqueeze(-1)
            scores = scores.masked_fill(ahead, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        read = torch.bmm(probs.unsqueeze(1), seen_v).squeeze(1)  # [B, V]
        position += 1
        return read, (keys, values, position)


def set_fused_attention(module: nn.Module, fused: bool) -> None:
    """Sets :attr:`AttentionBlock.fused` on every attention block inside ``module``."""
    for m in module.modules():
        if isinstance(m, AttentionBlock):
            m.fused = fused


@dataclasses.dataclass(frozen=True)
class TCSpec:
    """A :class:`TCBlock` in a :class:`SNAILStack` (its length is the stack's)."""

    filters: int
    """Channels added by each dense block."""


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """An :class:`AttentionBlock` in a :class:`SNAILStack`."""

    key_size: int
    """Size of queries and keys."""
    value_size: int
    """Size of values, i.e. channels the block adds."""


BlockSpec = TCSpec | AttentionSpec

PAPER_OMNIGLOT_BLOCKS: tuple[BlockSpec, ...] = (
    AttentionSpec(64, 32),
    TCSpec(128),
    AttentionSpec(256, 128),
    TCSpec(128),
    AttentionSpec(512, 256),
)
"""The paper's few-shot (Omniglot) stack over ``N*K + 1`` steps of (embedding, one-hot
label) inputs; the paper follows it with a 1x1 convolution (a linear map) to ``N`` logits."""


class SNAILStack(nn.Module):
    """A sequence of TC and attention blocks with incremental inference.

    Args:
        in_channels: Channels of the input sequence.
        sequence_length: Longest sequence ``T``; sets the attention caches' initial
            capacity and, unless ``tc_span`` is given, the TC depth.
        blocks: The stack, e.g. ``(TCSpec(32), TCSpec(32), AttentionSpec(32, 32))``.
        tc_span: Steps the TC blocks' receptive field must cover (``ceil(log2 tc_span)``
            dense blocks each); ``None`` means ``sequence_length``. A span shorter than the
            sequence keeps the convolutions local and leaves the far past to attention,
            which is what lets a stack trained on short trials be reused on longer ones.
    """

    def __init__(
        self,
        in_channels: int,
        sequence_length: int,
        blocks: Sequence[BlockSpec],
        tc_span: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.sequence_length = sequence_length
        self.tc_span = sequence_length if tc_span is None else tc_span
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in blocks:
            if isinstance(spec, TCSpec):
                layer: TCBlock | AttentionBlock = TCBlock(channels, self.tc_span, spec.filters)
            elif isinstance(spec, AttentionSpec):
                layer = AttentionBlock(channels, spec.key_size, spec.value_size)
            else:
                raise TypeError(f"unknown block spec {spec!r}")
            layers.append(layer)
            channels = layer.out_channels
        self.layers = nn.ModuleList(layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, in_channels] -> [T, B, out_channels]``."""
        for layer in self.layers:
            x = layer(x)
        return x

    def branches(self, prefix: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """The last-step features of ``R`` sequences that share all but their last input.

        Row ``r`` equals ``forward(cat([prefix, ends[r:r+1]]))[-1]`` (differentiably): the
        few-shot classifier reads every query after the same support sequence, and this
        runs the support once instead of once per query.

        Args:
            prefix: ``[S, B, in_channels]``, the shared inputs (S may be 0).
            ends: ``[R, B, in_channels]``, the last input of each sequence.

        Returns:
            ``[R, B, out_channels]``.
        """
        for layer in self.layers:
            prefix, ends = layer.branches(prefix, ends)
        return ends

    def initial_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Cache:
        """One cache per block, attention buffers preallocated to ``sequence_length``."""
        caches = []
        for layer in self.layers:
            if isinstance(layer, AttentionBlock):
                caches.append(layer.initial_cache(batch_size, device, dtype, self.sequence_length))
            else:
                caches.append(layer.initial_cache(batch_size, device, dtype))
        return tuple(caches)

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
        """One step, ``[B, in_channels] -> [B, out_channels]``.

        Every block appends channels to its input, so the step's features are written
        into one preallocated ``[B, out_channels]`` buffer and each block reads the prefix
        of it: no block re-copies the growing concatenation.
        """
        buf = x.new_empty(x.shape[0], self.out_channels)
        c = self.in_channels
        buf[:, :c] = x
        new = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            if isinstance(layer, TCBlock):
                for block, block_cache in zip(layer.blocks, layer_cache, strict=True):
                    buf[:, c : c + block.filters] = block.step_new(buf[:, :c], block_cache)
                    c += block.filters
            else:
                read, layer_cache = layer.step_new(buf[:, :c], layer_cache)
                buf[:, c : c + read.shape[-1]] = read
                c += read.shape[-1]
            new.append(layer_cache)
        return buf, tuple(new)


@dataclasses.dataclass(frozen=True)
class SNAILConfig:
    """Hyperparameters of :class:`SNAILSequenceModel`.

    The defaults are the paper's policy network for multi-armed bandits and tabular MDPs:
    a 32-unit input layer, ``TCBlock(T, 32), TCBlock(T, 32), AttentionBlock(32, 32)``.
    The paper's value function is a separate, narrower network of the same shape, see
    :meth:`paper_value_function`.
    """

    embed_size: int | None = 32
    """Width of the input linear layer; ``None`` feeds the raw inputs to the first block."""
    embed_activation: Literal["identity", "relu", "tanh"] = "identity"
    """Nonlinearity after the input layer (the paper states none; "identity")."""
    filters: int = 32
    """Channels each dense block of each TC block adds."""
    num_tc_blocks: int = 2
    """Number of TC blocks before the attention block."""
    key_size: int = 32
    """Query/key size of the attention block."""
    value_size: int = 32
    """Value size of the attention block (channels it adds)."""
    blocks: tuple[BlockSpec, ...] | None = None
    """Explicit stack overriding ``filters``/``num_tc_blocks``/``key_size``/``value_size``,
    e.g. the paper's visual-navigation policy
    ``(TCSpec(32), AttentionSpec(16, 16), TCSpec(32), AttentionSpec(16, 16))``."""

    def __post_init__(self) -> None:
        if self.embed_size is not None and self.embed_size < 1:
            raise ValueError(f"embed_size must be >= 1 or None, got {self.embed_size}")
        if self.embed_activation not in ("identity", "relu", "tanh"):
            raise ValueError(f"unknown embed_activation {self.embed_activation!r}")
        for name in ("filters", "key_size", "value_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_tc_blocks < 0:
            raise ValueError(f"num_tc_blocks must be >= 0, got {self.num_tc_blocks}")

    def block_specs(self) -> tuple[BlockSpec, ...]:
        """The stack after the input layer."""
        if self.blocks is not None:
            return tuple(self.blocks)
        return (
            *([TCSpec(self.filters)] * self.num_tc_blocks),
            AttentionSpec(self.key_size, self.value_size),
        )

    @classmethod
    def paper_value_function(cls) -> SNAILConfig:
        """The paper's bandit/MDP value network.

        ``Linear(32)``, ``TCBlock(T, 16)``, ``TCBlock(T, 16)``, ``AttentionBlock(16, 16)``.
        """
        return cls(filters=16, key_size=16, value_size=16)


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}


class SNAILSequenceModel(nn.Module):
    """The paper's bandit/MDP SNAIL network as a causal sequence model.

    ``x[t]`` is the per-step input of a trial (e.g. observation, previous action,
    previous reward, done flag); ``features[t]`` depends on ``x[0..t]`` only. Heads
    (policy logits, value) are linear maps of the features, written by the caller.

    Attributes:
        output_size: Channels of the features: the embedded input plus everything the
            TC and attention blocks add (all blocks concatenate to their input).
        sequence_length: Maximum trial length ``T``.

    Args:
        input_size: Size of ``x[t]``.
        sequence_length: Maximum trial length ``T``. Longer sequences still work (the
            attention caches grow), but the convolutions see at most ``T`` (``tc_span``,
            if given) steps back, rounded up to a power of two.
        config: Hyperparameters; defaults to the paper's bandit/MDP policy network.
        tc_span: Receptive field of the TC blocks (see :class:`SNAILStack`); ``None``
            means ``sequence_length``.

    Example:
        >>> import torch
        >>> model = SNAILSequenceModel(input_size=7, sequence_length=20)
        >>> x = torch.randn(20, 4, 7)            # a trial: T=20 steps, B=4 rows
        >>> features = model(x)                  # training path, differentiable
        >>> features.shape == (20, 4, model.output_size)
        True
        >>> state = model.initial_state(4, torch.device("cpu"))
        >>> f0, state = model.step(x[0], state)  # acting path, one step at a time
        >>> f1, state = model.step(x[1], state)
        >>> torch.allclose(f1, features[1].detach(), atol=1e-5)
        True
    """

    def __init__(
        self,
        input_size: int,
        sequence_length: int,
        config: SNAILConfig | None = None,
        tc_span: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config or SNAILConfig()
        self.input_size = input_size
        self.sequence_length = sequence_length
        if self.config.embed_size is None:
            self.embed: nn.Module = nn.Identity()
            channels = input_size
        else:
            self.embed = nn.Sequential(
                nn.Linear(input_size, self.config.embed_size),
                _ACTIVATIONS[self.config.embed_activation](),
            )
            channels = self.config.embed_size
        self.stack = SNAILStack(channels, sequence_length, self.config.block_specs(), tc_span)
        self.output_size: int = self.stack.out_channels

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Cache:
        """State at a trial start: empty caches, every leaf a batch-first zero tensor."""
        return self.stack.initial_cache(batch_size, device)

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: Cache) -> tuple[torch.Tensor, Cache]:
        """Features of the next step, ``x [B, input_size] -> [B, output_size]``.

        Without autograd; updates ``state``'s tensors in place and returns the state to
        use next (the same object unless an attention cache grew).
        """
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must be [B, {self.input_size}], got {tuple(x.shape)}")
        return self.stack.step(self.embed(x), state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a whole trial, ``[T, B, input_size] -> [T, B, output_size]``."""
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"x must be [T, B, {self.input_size}], got {tuple(x.shape)}")
        return self.stack(self.embed(x))

    @staticmethod
    @torch.no_grad()
    def reset_rows(state: Cache, rows: torch.Tensor) -> Cache:
        """Restarts the trial of the selected rows (``[B]`` bool) in place; returns ``state``.

        Valid because an initial state is all zeros: zeroing a row's positions and
        buffers makes it indistinguishable from a fresh row.
        """
        for leaf in _leaves(state):
            leaf[rows] = 0
        return state


def _leaves(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    else:
        for item in tree:
            yield from _leaves(item)


# ---------------------------------------------------------------------------- the learner
from agents.context_learner import ContextConfig, ContextLearner  # noqa: E402 - after the blocks


@dataclasses.dataclass
class SNAILAgentConfig(ContextConfig):
    """SNAIL meta-RL settings: the outer loop's (see ``ContextConfig``) plus the network's.

    Defaults follow the paper's bandit/MDP appendix: a 32-unit input layer, then
    ``TCBlock(T, 32), TCBlock(T, 32), AttentionBlock(32, 32)`` for the policy; with TRPO
    the separate value network is the 16-wide twin.
    """

    embed_size: int = 32
    """Width of the input linear layer."""
    filters: int = 32
    """Channels each dense block adds (policy network)."""
    num_tc_blocks: int = 2
    """TC blocks before the attention block."""
    key_size: int = 32
    """Attention key size (policy network)."""
    value_size: int = 32
    """Attention value size (policy network)."""
    critic_width: int = 16
    """filters = key = value size of the separate value network (TRPO only)."""
    interleave_attention: bool = False
    """Put an attention block after every TC block (``TC, Att, TC, Att`` for two TC
    blocks; the layout of the paper's visual-navigation policy) instead of one attention
    block after the last. Later TC blocks can then aggregate what an earlier attention
    looked up, e.g. a second lookup keyed by what the first one retrieved."""
    tc_span: int | None = None
    """Steps the TC blocks' receptive field covers (``ceil(log2 tc_span)`` dense blocks
    each); ``None`` means the whole trial. Attention still sees the whole trial either way.
    Set it to the shorter trial's length to warm-start from a run on shorter trials (e.g.
    500 for large mazes from a small-maze run): the TC depth, and so the weights' shapes,
    then match."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("embed_size", "filters", "key_size", "value_size", "critic_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"algo.{name} must be >= 1, got {getattr(self, name)}")
        if self.tc_span is not None and self.tc_span < 1:
            raise ValueError(f"algo.tc_span must be >= 1 or null, got {self.tc_span}")
        if self.interleave_attention and self.num_tc_blocks < 1:
            raise ValueError("algo.interleave_attention needs algo.num_tc_blocks >= 1")


class SNAIL(ContextLearner):
    """SNAIL meta-RL learner: TC + causal attention over the trial, PPO or TRPO outer loop."""

    config_cls = SNAILAgentConfig
    description = "SNAIL: temporal convolutions + causal attention over the trial; PPO or TRPO"

    def mismatch_hint(self, problem: str) -> str:
        # A different number of dense blocks shows up as missing or unexpected
        # ``...blocks.N...`` keys; it is almost always a different trial length.
        if ".blocks." in problem and ("Missing key" in problem or "Unexpected key" in problem):
            return (
                "SNAIL's TC depth follows the trial length; to start from a run on shorter "
                "trials, set algo.tc_span to that run's trial length"
            )
        return ""

    def build_trunk(self, input_size: int, sequence_length: int, value: bool = False) -> nn.Module:
        c = self.config
        filters, key, val = (
            (c.critic_width,) * 3 if value else (c.filters, c.key_size, c.value_size)
        )
        blocks = None
        if c.interleave_attention:
            blocks = (TCSpec(filters), AttentionSpec(key, val)) * c.num_tc_blocks
        net = SNAILConfig(
            embed_size=c.embed_size,
            filters=filters,
            num_tc_blocks=c.num_tc_blocks,
            key_size=key,
            value_size=val,
            blocks=blocks,
        )
        model = SNAILSequenceModel(input_size, sequence_length, net, tc_span=c.tc_span)
        # TRPO differentiates the policy's gradient again (Fisher-vector products).
        set_fused_attention(model, self.config.optimizer != "trpo")
        return model
