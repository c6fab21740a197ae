"""Batched few-shot task samplers: N-way K-shot classification and sinusoid regression.

A sampler draws a whole meta-batch with a handful of tensor ops and no per-image Python
loop: random class subsets per task (top-k of uniform noise, which is a uniformly random
subset in uniformly random order), distinct drawers per class the same way, then a single
gather from the image tensor that also applies each class's rotation (a rotation is a
fixed permutation of the pixels). Random numbers come from the caller's
:class:`torch.Generator` (CPU or on the device); images live on the target device, so
only the small index tensors ever cross devices.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from agents.fewshot.data import ROTATIONS, ClassImages, SinusoidDistribution
from metarl.tasks import TaskBatch


@dataclasses.dataclass(frozen=True)
class FewShotBatch(TaskBatch):
    """A meta-batch of few-shot tasks (leading dimension = tasks).

    Attributes:
        support_x: ``[tasks, N·K, *input_shape]`` (class-major: K shots of label 0, ...).
        support_y: ``[tasks, N·K]`` long labels in ``0..N−1`` (classification) or
            ``[tasks, K, 1]`` float targets (regression).
        query_x: ``[tasks, N·Q, *input_shape]``.
        query_y: ``[tasks, N·Q]`` or ``[tasks, Q, 1]``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor


@dataclasses.dataclass(frozen=True)
class SinusoidBatch(FewShotBatch):
    """:class:`FewShotBatch` of sinusoid tasks plus their parameters (for plots/oracles).

    Attributes:
        amplitude: ``[tasks]``.
        phase: ``[tasks]``.
    """

    amplitude: Tensor
    phase: Tensor


def rotation_permutations(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """``[4, H·W]`` pixel permutations: ``flat[perm[k]]`` is ``rot90(image, k)`` flattened."""
    if height != width:
        raise ValueError("rotations need square images")
    grid = torch.arange(height * width, device=device).reshape(height, width)
    return torch.stack([torch.rot90(grid, k, (0, 1)).reshape(-1) for k in range(ROTATIONS)])


class ClassificationSampler:
    """N-way K-shot tasks with Q queries per class from a :class:`ClassImages` split.

    Args:
        classes: The split to draw classes from.
        ways: N, classes per task.
        shots: K, support examples per class.
        queries: Q, query examples per class (K + Q ≤ drawers per class).
        device: Where images and batches live.
    """

    def __init__(
        self,
        classes: ClassImages,
        ways: int,
        shots: int,
        queries: int,
        device: torch.device | str = "cpu",
    ):
        if ways > classes.num_classes:
            raise ValueError(
                f"{ways}-way tasks need >= {ways} classes, split has {classes.num_classes}"
            )
        if shots + queries > classes.num_drawers:
            raise ValueError(
                f"shots + queries = {shots + queries} exceeds the "
                f"{classes.num_drawers} examples per class"
            )
        if shots < 1 or queries < 0:
            raise ValueError("need shots >= 1 and queries >= 0")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.device = torch.device(device)
        self.rotations = classes.rotations
        _, drawers, height, width = classes.images.shape
        self.num_classes = classes.num_classes
        self.num_drawers = drawers
        self.image_hw = (height, width)
        self.input_shape = (1, height, width)
        self.num_ways = ways
        self.regression = False
        # Flat pixels so that one gather picks images and rotates them together.
        self._pixels = classes.images.to(self.device, torch.float32).reshape(-1).contiguous()
        self._perms = (
            rotation_permutations(height, width, self.device)
            if self.rotations
            else torch.arange(height * width, device=self.device)[None]
        )

    def sample(self, num_tasks: int, generator: torch.Generator) -> FewShotBatch:
        """Draws ``num_tasks`` tasks; labels are remapped to ``0..N−1`` per task.

        Args:
            num_tasks: Tasks in the meta-batch.
            generator: Random source (any device; indices are moved to ``self.device``).
        """
        n, k, q = self.ways, self.shots, self.queries
        gdev = generator.device
        # topk of iid uniforms = uniform random subset in uniform random order.
        classes = (
            torch.rand(num_tasks, self.num_classes, generator=generator, device=gdev)
            .topk(n, dim=1)
            .indices
        )  # [T, N]
        drawers = (
            torch.rand(num_tasks, n, self.num_drawers, generator=generator, device=gdev)
            .topk(k + q, dim=2)
            .indices
        )  # [T, N, K+Q]
        classes, drawers = classes.to(self.device), drawers.to(self.device)
        if self.rotations:
            chars, rots = classes // ROTATIONS, classes % ROTATIONS
        else:
            chars, rots = classes, torch.zeros_like(classes)
        pixels = self.image_hw[0] * self.image_hw[1]
        first = (chars[:, :, None] * self.num_drawers + drawers) * pixels  # [T, N, K+Q]
        index = first[..., None] + self._perms[rots][:, :, None, :]  # [T,N,K+Q,HW]
        images = self._pixels[index].reshape(num_tasks, n, k + q, 1, *self.image_hw)
        labels = torch.arange(n, device=self.device)
        return FewShotBatch(
            support_x=images[:, :, :k].reshape(num_tasks, n * k, 1, *self.image_hw),
            support_y=labels.repeat_interleave(k).expand(num_tasks, n * k).contiguous(),
            query_x=images[:, :, k:].reshape(num_tasks, n * q, 1, *self.image_hw),
            query_y=labels.repeat_interleave(q).expand(num_tasks, n * q).contiguous(),
        )


class SinusoidSampler:
    """K-shot sinusoid regression tasks (MAML: K = 5 or 10, inputs U[−5, 5]).

    Args:
        shots: K, support points per task.
        queries: Q, query points per task.
        distribution: Amplitude / phase / input ranges.
        device: Where batches live.
    """

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        distribution: SinusoidDistribution | None = None,
        device: torch.device | str = "cpu",
    ):
        self.shots, self.queries = shots, queries
        self.distribution = distribution or SinusoidDistribution()
        self.device = torch.device(device)
        self.input_shape = (1,)
        self.num_ways = 1
        self.regression = True

    def sample(self, num_tasks: int, generator: torch.Generator) -> SinusoidBatch:
        """Draws ``num_tasks`` sinusoids and their support / query points."""
        dist = self.distribution
        amp, phase = dist.sample_tasks(num_tasks, generator)
        x = dist.sample_inputs(num_tasks, self.shots + self.queries, generator)
        y = dist.target(x, amp, phase)
        x, y, amp, phase = (t.to(self.device) for t in (x, y, amp, phase))
        k = self.shots
        return SinusoidBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], amp, phase)
