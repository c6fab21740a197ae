"""Few-shot backbones: the Conv-4 of Vinyals et al. / MAML / ProtoNets, and a small MLP.

Conv-4 is 4 × [3×3 conv with 64 filters, BatchNorm, ReLU, 2×2 max-pool]. Exact
rewrites make second-order MAML with it ~1.5× faster on the CPU than the plain layer
stack (1.6-1.9× on a loaded machine), with the same outputs and gradients up to rounding
(the tests compare with the plain stack in float64; about float32 rounding see
``channels_last`` in :class:`Conv4`):

* ReLU is applied *after* the max-pool: the two commute (both are monotone per element,
  and ReLU's zero ties only route gradients to units that ReLU zeroes anyway), and the
  pooled tensor is 4× smaller.
* The first block's convolution and batch norm are one matmul over 3×3 patches. A
  convolution is linear in its patches ``c``, so its per-channel batch statistics follow
  from the patches' mean ``μ`` and covariance ``Σ`` (a 9×9 matrix for one input
  channel): ``mean = Wμ + b`` and ``var = diag(W Σ Wᵀ)``. Normalising is then folded into
  the weights, and batch norm never runs on the block's 64×28×28 output, the largest
  tensor in the network. Autograd differentiates this form to any order. The output is
  laid out channels-last, which makes the remaining convolutions, batch norms and
  max-pools take oneDNN's channels-last kernels (max-pool alone is ~15× faster there).

Batch norm defaults to MAML's transductive form: statistics of the current batch, no
running averages (``track_running_stats=False``), so a task's support set and query set
are each normalised with their own statistics and functional calls have no buffers to
mutate. Metric learners instead use running statistics (``track_running_stats=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_fused(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    bn_weight: Tensor | None,
    bn_bias: Tensor | None,
    *,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``batch_norm(conv2d(x, weight, bias, padding=k//2))`` as one patch matmul.

    Exact for any odd square kernel with "same" padding and stride 1; efficient when
    ``in_channels · k²`` is small (the first layer of an image network).

    Args:
        x: ``[N, C, H, W]``.
        weight: ``[O, C, k, k]`` convolution weight.
        bias: ``[O]`` convolution bias or None (it cancels in batch statistics; it only
            matters with running statistics).
        bn_weight: ``[O]`` batch-norm scale γ or None.
        bn_bias: ``[O]`` batch-norm shift β or None.
        running_mean: Running mean buffer (updated in place when ``training``) or None.
        running_var: Running variance buffer (unbiased, like ``nn.BatchNorm2d``) or None.
        training: Use batch statistics (always, if there are no running statistics).
        momentum: Running-average factor, as in ``nn.BatchNorm2d``.
        eps: Added to the variance.

    Returns:
        ``[N, O, H, W]`` in channels-last memory layout.
    """
    n, c, h, w = x.shape
    out_channels, _, k, _ = weight.shape
    cols = F.unfold(x, k, padding=k // 2).transpose(1, 2).reshape(n * h * w, c * k * k)
    mat = weight.reshape(out_channels, c * k * k)
    if training or running_mean is None:
        count = cols.shape[0]
        # Batch statistics in float64: a float32 GEMM sums the N·H·W (~60k) squared
        # patch deviations one after another, and that rounding (~1e-3 relative on
        # Omniglot's low-variance first layer) would reach the normalised output. The
        # float64 part is a 9×9 covariance — negligible work.
        wide = x.device.type in ("cpu", "cuda")  # e.g. MPS has no float64
        stat_dtype = (
            torch.float64
            if wide and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            else x.dtype
        )
        cols64 = cols.to(stat_dtype)
        mu64 = cols64.mean(0)
        centred64 = cols64 - mu64
        cov = centred64.t() @ centred64 / count
        mat64 = mat.to(stat_dtype)
        var = ((mat64 @ cov) * mat64).sum(1).to(x.dtype)  # diag(W Σ Wᵀ): biased variance
        mu = mu64.to(x.dtype)
        centred = cols - mu
        if training and running_mean is not None:
            with torch.no_grad():
                mean_out = mat @ mu + (bias if bias is not None else 0.0)
                running_mean.mul_(1 - momentum).add_(momentum * mean_out)
                unbiased = var * (count / max(count - 1, 1))
                running_var.mul_(1 - momentum).add_(momentum * unbiased)
        scale = torch.rsqrt(var + eps)
        if bn_weight is not None:
            scale = scale * bn_weight
        shift = bn_bias if bn_bias is not None else torch.zeros_like(scale)
        # The bias and μ cancel: (W c + b) - (W μ + b) = W (c - μ). A contiguous [k², O]
        # right operand makes the backward's weight-gradient GEMM ~1.5x faster than a
        # transposed view does (measured: 9 vs 13.5 ms per 75-image task).
        out = torch.addmm(shift, centred, (mat * scale.unsqueeze(1)).t().contiguous())
    else:
        scale = torch.rsqrt(running_var + eps)
        if bn_weight is not None:
            scale = scale * bn_weight
        shift = -running_mean * scale
        if bias is not None:
            shift = shift + bias * scale
        if bn_bias is not None:
            shift = shift + bn_bias
        out = torch.addmm(shift, cols, (mat * scale.unsqueeze(1)).t().contiguous())
    # [N·H·W, O] is NHWC memory; the permuted view is NCHW logically, channels-last in
    # memory, which every later layer keeps.
    return out.view(n, h, w, out_channels).permute(0, 3, 1, 2)


class ConvBlock(nn.Module):
    """3×3 conv → BatchNorm → 2×2 max-pool → ReLU (≡ conv → BN → ReLU → pool).

    Args:
        in_channels: Input channels.
        out_channels: Filters.
        fused: Compute conv + BN with :func:`conv_bn_fused` (first block).
        track_running_stats: Keep BN running averages (used in eval mode).
        channels_last: Output channels-last (the layout of everything downstream). An
            unfused block converts its conv output, which ``torch.func.vmap`` does not
            allow (memory formats are not batched); a fused block produces channels-last
            natively and converts to NCHW (after pooling) when this is False.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        fused: bool = False,
        track_running_stats: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats)
        self.fused = fused
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            norm = self.norm
            momentum = norm.momentum
            if self.training and norm.track_running_stats:
                norm.num_batches_tracked.add_(1)
                if momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                    momentum = 1.0 / float(norm.num_batches_tracked)
            h = conv_bn_fused(
                x,
                self.conv.weight,
                self.conv.bias,
                norm.weight,
                norm.bias,
                running_mean=norm.running_mean,
                running_var=norm.running_var,
                training=self.training or not norm.track_running_stats,
                momentum=momentum if momentum is not None else 0.0,
                eps=norm.eps,
            )
            h = F.relu(F.max_pool2d(h, 2))  # channels-last: the fast max-pool kernel
            # Back to NCHW on request (after pooling: a 4x smaller copy).
            return h if self.channels_last else h.contiguous()
        h = self.conv(x)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        h = self.norm(h)
        return F.relu(F.max_pool2d(h, 2))


class Conv4(nn.Module):
    """The standard few-shot Conv-4, optionally with a linear classification head.

    Args:
        in_channels: Image channels (1 for Omniglot).
        hidden: Filters per block (64 in the literature).
        out_features: Size of a linear head on the flattened features (``num_ways`` for
            MAML-style classifiers); None for a pure embedding (metric learners).
        image_size: Input height = width; the feature size is ``hidden · s²`` with ``s``
            the size after ``num_blocks`` floor-halvings (28 → 1, 84 → 5).
        num_blocks: Number of conv blocks.
        track_running_stats: BN with running averages (metric learners) instead of
            MAML's transductive batch statistics.
        fuse_first: Fold the first conv and its BN into one patch matmul (exact; faster).
        channels_last: Run blocks 2+ in channels-last layout: ~1.3x faster on the CPU, but
            oneDNN's channels-last convolution and batch-norm kernels accumulate their
            reductions in a longer float32 sequence, so float32 second-order
            meta-gradients differ from float64 by ~3e-4 (relative) instead of ~1e-6.
            Irrelevant in float64, and small against task-sampling noise.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = None,
        image_size: int = 28,
        *,
        num_blocks: int = 4,
        track_running_stats: bool = False,
        fuse_first: bool = True,
        channels_last: bool = True,
    ):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            # Only the first block ever converts: later blocks inherit its layout.
            blocks.append(
                ConvBlock(
                    in_channels if i == 0 else hidden,
                    hidden,
                    fused=fuse_first and i == 0,
                    track_running_stats=track_running_stats,
                    channels_last=channels_last if i == 0 else False,
                )
            )
        self.blocks = nn.Sequential(*blocks)
        size = image_size
        for _ in range(num_blocks):
            size //= 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {num_blocks} blocks")
        self.feature_dim = hidden * size * size
        self.head = nn.Linear(self.feature_dim, out_features) if out_features else None

    def features(self, x: Tensor) -> Tensor:
        """Flattened features ``[N, feature_dim]`` of images ``[N, C, H, W]``."""
        return self.blocks(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits if there is a head, else features."""
        f = self.features(x)
        return self.head(f) if self.head is not None else f


class MLP(nn.Module):
    """Fully connected ReLU network (MAML's sinusoid regressor is ``MLP(1, (40, 40), 1)``).

    Args:
        in_features: Input size.
        hidden: Hidden layer sizes.
        out_features: Output size.
    """

    def __init__(
        self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1
    ):
        super().__init__()
        layers: list[nn.Module] = []
        size = in_features
        for width in hidden:
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, out_features))
        self.net = nn.Sequential(*layers)
        self.feature_dim = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def reference_conv4(
    in_channels: int = 1,
    hidden: int = 64,
    out_features: int = 5,
    image_size: int = 28,
    num_blocks: int = 4,
) -> nn.Sequential:
    """Conv-4 written the usual way (plain layers, NCHW, ReLU before pool).

    The yardstick for :class:`Conv4`'s exact rewrites (tests) and the baseline of
    ``benchmarks/fewshot_maml.py``. Its parameters map onto :class:`Conv4`'s with
    :func:`load_reference_into`.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(num_blocks):
        layers += [
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels = hidden
    size = image_size >> num_blocks
    layers += [nn.Flatten(), nn.Linear(hidden * size * size, out_features)]
    return nn.Sequential(*layers)


def load_reference_into(conv4: Conv4, reference: nn.Sequential) -> None:
    """Copies :func:`reference_conv4`'s weights into ``conv4`` (same architecture)."""
    ref = [m for m in reference if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)]
    ours = []
    for block in conv4.blocks:
        ours += [block.conv, block.norm]
    ours.append(conv4.head)
    if len(ref) != len(ours):
        raise ValueError("architectures differ")
    with torch.no_grad():
        for dst, src in zip(ours, ref):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
