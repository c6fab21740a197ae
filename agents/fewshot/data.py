"""Few-shot data: Omniglot (cached at 28×28), seeded class splits, sinusoid regression tasks.

Omniglot is read from ``../shared/data/omniglot`` relative to the repository root (two
compressed bool arrays, ``True`` = background) and never downloaded. The first load
resizes all 32,460 drawings to 28×28 once (area averaging, i.e. antialiased) with ink = 1,
and caches the result as a float16 tensor file keyed by the SHA-256 of the source files,
so a changed or different copy of the data never reuses a stale cache. Later loads read
the ~50 MB cache in well under a second.

The standard split (Vinyals et al.; MAML; SNAIL): all 1,623 characters, shuffled with a
seed, 1,200 for meta-training and 423 for meta-testing; rotations by 90°, 180° and 270°
make each character four classes (4,800 / 1,692 classes). Rotation is a class property,
applied by the task sampler when it gathers images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OMNIGLOT_DIR = REPO_ROOT.parent / "shared" / "data" / "omniglot"
OMNIGLOT_FILES = ("images_background.npz", "images_evaluation.npz")
NUM_OMNIGLOT_CHARACTERS = 1623
CACHE_VERSION = 1
ROTATIONS = 4


def default_cache_dir() -> Path:
    """``$METARL_CACHE_DIR`` if set, else ``~/.cache/metarl``."""
    env = os.environ.get("METARL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "metarl"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resize(ink: np.ndarray, image_size: int, chunk: int = 64) -> Tensor:
    """``[chars, drawers, H, W]`` bool ink → ``[chars, drawers, s, s]`` float32 in [0, 1].

    Chunked so that the float copy of the 105×105 images never exceeds a few tens of MB.
    """
    chars, drawers, h, w = ink.shape
    out = torch.empty(chars, drawers, image_size, image_size)
    for start in range(0, chars, chunk):
        block = torch.from_numpy(ink[start : start + chunk]).float()
        block = block.reshape(-1, 1, h, w)
        # "area" averages every source pixel into its output cell: antialiased for the
        # 3.75× non-integer shrink, unlike plain bilinear sampling.
        small = F.interpolate(block, size=(image_size, image_size), mode="area")
        out[start : start + chunk] = small.reshape(-1, drawers, image_size, image_size)
    return out


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Tensor:
    """All 1,623 Omniglot characters × 20 drawers, resized, ink = 1.

    Args:
        data_dir: Folder with ``images_background.npz`` and ``images_evaluation.npz``
            (default: ``../shared/data/omniglot`` from the repository root).
        image_size: Output height = width.
        cache_dir: Where the resized tensor is cached (default :func:`default_cache_dir`).
        use_cache: Read / write the cache (False always rebuilds, writes nothing).

    Returns:
        ``[1623, 20, image_size, image_size]`` float32, characters in official order
        (background set first, then evaluation set).

    Raises:
        FileNotFoundError: If the source files are missing (nothing is downloaded).
    """
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_OMNIGLOT_DIR
    sources = [data_dir / name for name in OMNIGLOT_FILES]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Omniglot files not found: {', '.join(missing)}. Point data.dir at a folder "
            "holding images_background.npz and images_evaluation.npz (see its README); "
            "nothing is downloaded."
        )
    hashes = [_sha256(p) for p in sources]
    key = hashlib.sha256(
        f"v{CACHE_VERSION}|{image_size}|area|{'|'.join(hashes)}".encode()
    ).hexdigest()[:16]
    cache_path = Path(cache_dir or default_cache_dir()) / f"omniglot_{image_size}px_{key}.pt"
    if use_cache and cache_path.is_file():
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        if cached.get("sources") == hashes and cached.get("version") == CACHE_VERSION:
            return cached["images"].float()

    parts = []
    for path in sources:
        with np.load(path) as archive:
            parts.append(_resize(~archive["images"], image_size))  # True = background
    images = torch.cat(parts)
    if images.shape[0] != NUM_OMNIGLOT_CHARACTERS:
        raise ValueError(f"expected {NUM_OMNIGLOT_CHARACTERS} characters, got {images.shape[0]}")
    if use_cache:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
        # float16 halves the file; the area-averaged values lose < 1e-3 (tested).
        torch.save({"images": images.half(), "sources": hashes, "version": CACHE_VERSION}, tmp)
        os.replace(tmp, cache_path)  # atomic: concurrent loaders never see a partial file
        images = images.half().float()  # the same numbers as every later (cached) load
    return images


@dataclasses.dataclass
class ClassImages:
    """Images of a set of characters; each character is 1 or 4 (rotated) classes.

    Attributes:
        images: ``[characters, drawers, H, W]`` float, ink = 1.
        char_ids: ``[characters]`` long, global character ids (for split bookkeeping).
        rotations: Whether each character also yields its 90°, 180°, 270° rotations as
            further classes. Class ``c`` is character ``c // 4`` rotated by ``(c % 4) · 90°``.
    """

    images: Tensor
    char_ids: Tensor
    rotations: bool = True

    @property
    def num_classes(self) -> int:
        """Characters × rotations."""
        return self.images.shape[0] * (ROTATIONS if self.rotations else 1)

    @property
    def num_drawers(self) -> int:
        """Examples per class."""
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(1, H, W)``, one sampled image's shape."""
        return (1, *self.images.shape[2:])

    def class_ids(self) -> Tensor:
        """Global class ids ``char_id · 4 + rotation`` of every class (for overlap checks)."""
        if not self.rotations:
            return self.char_ids * ROTATIONS
        return (
            self.char_ids[:, None] * ROTATIONS
            + torch.arange(ROTATIONS, device=self.char_ids.device)
        ).reshape(-1)

    def to(self, device: torch.device | str) -> ClassImages:
        """The same classes on ``device``."""
        return ClassImages(self.images.to(device), self.char_ids.to(device), self.rotations)


def omniglot_splits(
    images: Tensor, *, seed: int = 0, num_train: int = 1200, rotations: bool = True
) -> dict[str, ClassImages]:
    """The Vinyals et al. split: seeded shuffle of all characters, ``num_train`` for training.

    Args:
        images: :func:`load_omniglot` output ``[1623, 20, H, W]``.
        seed: Seed of the character shuffle (fixed per run configuration).
        num_train: Characters for meta-training; the rest are meta-test.
        rotations: Add 90°/180°/270° rotations as new classes.

    Returns:
        ``{"train": ClassImages, "test": ClassImages}``.
    """
    if not 0 < num_train < images.shape[0]:
        raise ValueError(f"num_train must be in (0, {images.shape[0]}), got {num_train}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=generator)
    train, test = order[:num_train].sort().values, order[num_train:].sort().values
    return {
        "train": ClassImages(images[train], train, rotations),
        "test": ClassImages(images[test], test, rotations),
    }


def gaussian_cluster_images(
    num_classes: int,
    per_class: int = 20,
    image_size: int = 16,
    *,
    noise: float = 0.5,
    generator: torch.Generator | None = None,
) -> ClassImages:
    """Synthetic classes: a random blurred prototype image per class plus Gaussian noise.

    Small, instant stand-in for Omniglot in tests and smoke runs (no rotations).

    Args:
        num_classes: Number of classes.
        per_class: Examples per class.
        image_size: Height = width.
        noise: Standard deviation of the per-example noise (prototypes have unit scale).
        generator: Random source.
    """
    protos = torch.randn(num_classes, 1, image_size, image_size, generator=generator)
    protos = F.avg_pool2d(protos, 3, stride=1, padding=1) * 3.0  # smooth, ~unit scale
    protos = protos.squeeze(1)
    noise_t = torch.randn(num_classes, per_class, image_size, image_size, generator=generator)
    images = protos[:, None] + noise * noise_t
    return ClassImages(images, torch.arange(num_classes), rotations=False)


@dataclasses.dataclass(frozen=True)
class SinusoidDistribution:
    """MAML's sinusoid regression tasks ``y = A · sin(x − φ)``.

    Attributes:
        amplitude: Range of ``A`` (uniform).
        phase: Range of ``φ`` (uniform).
        x_range: Range of the inputs ``x`` (uniform, drawn per point).
    """

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(amplitude [tasks], phase [tasks])`` on the generator's device."""
        device = generator.device
        u = torch.rand(2, num_tasks, generator=generator, device=device)
        amp = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0]
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1]
        return amp, phase

    def sample_inputs(self, num_tasks: int, num_points: int, generator: torch.Generator) -> Tensor:
        """``x`` of shape ``[tasks, points, 1]``."""
        u = torch.rand(num_tasks, num_points, 1, generator=generator, device=generator.device)
        return self.x_range[0] + (self.x_range[1] - self.x_range[0]) * u

    @staticmethod
    def target(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
        """``A · sin(x − φ)`` for ``x`` ``[tasks, points, 1]``."""
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])
