"""Atomic, integrity-checked checkpoints loaded with ``weights_only=True``.

File layout: a magic line, the SHA-256 of the payload, then the payload written by
``torch.save``. Writing goes to a temporary file in the same directory, which is flushed,
fsynced and renamed over the old checkpoint, so a crash at any moment leaves either the
previous checkpoint or the new one, never a torn file. Loading checks the magic and the
digest before unpickling, and unpickles with ``weights_only=True``: a foreign, truncated or
tampered file is refused with a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

MAGIC = b"METARL-CHECKPOINT v1\n"
FORMAT = "metarl"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, foreign, truncated or tampered with."""


def save_checkpoint(path: str | Path, payload: dict[str, Any], *copies: str | Path) -> None:
    """Atomically writes ``payload`` (tensors, numbers, strings, containers) to ``path``.

    Args:
        path: The checkpoint file.
        payload: What to store.
        *copies: Further files that get the same bytes (serialised once), e.g. a kept
            snapshot of the iteration that also became ``last.pt``.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    data = buffer.getvalue()
    blob = MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data
    for target in (path, *copies):
        _write_atomically(Path(target), blob)


def _write_atomically(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    # A process killed mid-write leaves its temporary file behind; it never becomes the
    # checkpoint, so it is only clutter. (One trainer per run directory: see Runner's lock.)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads and verifies a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: If the file is missing, not a metarl checkpoint, truncated, or its
            contents do not match the recorded digest.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a metarl checkpoint")
    header_end = len(MAGIC) + 65
    digest, data = raw[len(MAGIC) : header_end - 1], raw[header_end:]
    if len(raw) < header_end or hashlib.sha256(data).hexdigest().encode() != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupt (truncated or modified: digest mismatch)"
        )
    try:
        with warnings.catch_warnings():
            # torch warns (on stderr) about unusual pickle protocols before refusing them;
            # the refusal below is the one line the user gets.
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e).strip()
        if "Weights only load failed" in text:
            # torch's message goes on to suggest weights_only=False: wrong advice for a file
            # of unknown origin, so it is not passed on.
            reason = "it holds objects other than tensors and plain data"
        else:
            reason = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a metarl checkpoint")
    return payload


def load_error_line(error: Exception, limit: int = 200) -> str:
    """The informative line of a ``load_state_dict`` error, shortened to one line.

    torch's message starts with a generic header ("Error(s) in loading state_dict for
    ...:") and lists the missing, unexpected or mis-shaped parameters below it.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    header = len(lines) > 1 and lines[0].startswith("Error(s) in loading")
    problem = lines[1] if header else lines[0]
    return problem if len(problem) <= limit else problem[: limit - 1] + "…"
