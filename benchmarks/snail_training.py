"""SNAIL whole-sequence forward + backward (the PPO update's cost), against a plain baseline.

The baseline is the same network written the usual way: each dense block applies its two
kernel taps as two linear maps (the past tap on the time-shifted input slice), and the
attention block builds the ``[T, T]`` score matrix (matrix product, masked softmax,
matrix product). metarl's version takes both taps in one product over the whole input
and shifts the narrow result, and uses torch's fused causal attention kernel (see
``agents/snail.py``). Both variants share the same parameters and run interleaved in one
process, so the ratio is measured under the same load; the minimum of ``--repeats`` runs
each is reported.

Usage:
    python benchmarks/snail_training.py [--lengths 500 1000] [--batch 32] [--repeats 3]
        [--threads 1]

The default shapes are the maze configs' PPO minibatch (128 trials / 4 minibatches = 32
trials) over the small (T = 500) and large (T = 1000) mazes' two-episode trials, with the
configs' network (64-unit input layer, two TC blocks of 32 filters, attention 32/32).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import agents.snail as snail
from agents.snail import SNAILConfig, SNAILSequenceModel


def _plain_dense_forward(self: snail.DenseBlock, x: torch.Tensor) -> torch.Tensor:
    t, d = x.shape[0], self.dilation
    z = self.tap_now(x)
    if t > d:
        z = torch.cat([z[:d], z[d:] + self.tap_past(x[: t - d])], dim=0)
    return torch.cat([x, self._gate(z)], dim=-1)


def _seconds(model: SNAILSequenceModel, x: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(x).square().mean().backward()
    return time.perf_counter() - t0


def compare(length: int, batch: int, repeats: int) -> float:
    """Prints and returns the baseline / metarl time ratio at one sequence length."""
    torch.manual_seed(0)
    model = SNAILSequenceModel(80, length, SNAILConfig(embed_size=64))
    x = torch.randn(length, batch, 80)
    ours_forward = snail.DenseBlock.forward
    times: dict[str, list[float]] = {"baseline": [], "metarl": []}
    try:
        for _ in range(repeats + 1):  # the first round warms up
            for name in times:
                plain = name == "baseline"
                snail.DenseBlock.forward = _plain_dense_forward if plain else ours_forward
                snail.set_fused_attention(model, not plain)
                times[name].append(_seconds(model, x))
    finally:
        snail.DenseBlock.forward = ours_forward
    base, ours = min(times["baseline"][1:]), min(times["metarl"][1:])
    print(
        f"T={length:5d} B={batch}: baseline {base:.2f} s | metarl {ours:.2f} s | "
        f"speed-up {base / ours:.2f}x"
    )
    return base / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, load {os.getloadavg()}")
    for length in args.lengths:
        compare(length, args.batch, args.repeats)


if __name__ == "__main__":
    main()
