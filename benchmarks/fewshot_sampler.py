"""Cost of drawing an Omniglot meta-batch against the model step it feeds.

Times ``ClassificationSampler.sample`` (32 tasks, 5-way 1-shot, 15 queries per class, with
rotations; the index draws, one gather and the reshapes) against one ``meta_train_step``
of second-order MAML (the slowest learner) and of ProtoNet (the fastest) on the same
batch size, Conv-4, and prints the ratios. Loading the data (cached after the first run)
is not timed.

Usage:
    python benchmarks/fewshot_sampler.py [--tasks 32] [--threads 1] [--data-dir PATH]
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.fewshot.data import load_omniglot, omniglot_splits
from agents.fewshot.maml import MAML, MAMLConfig
from agents.fewshot.protonet import ProtoNet, ProtoNetConfig
from agents.fewshot.sampler import ClassificationSampler


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = load_omniglot(args.data_dir)
    sampler = ClassificationSampler(
        omniglot_splits(images)["train"], args.ways, args.shots, args.queries
    )
    generator = torch.Generator().manual_seed(0)
    sampler.sample(args.tasks, generator)  # warm-up
    sample_s = best_time(lambda: sampler.sample(args.tasks, generator), 50)

    batch = sampler.sample(args.tasks, generator)
    shape = (1, 28, 28)
    maml = MAML(MAMLConfig(), args.ways, shape)
    proto = ProtoNet(ProtoNetConfig(), args.ways, shape)
    maml.meta_train_step(batch, generator)
    proto.meta_train_step(batch, generator)
    maml_s = best_time(lambda: maml.meta_train_step(batch, generator), 3)
    proto_s = best_time(lambda: proto.meta_train_step(batch, generator), 10)

    print(
        f"{args.tasks} tasks, {args.ways}-way {args.shots}-shot, {args.queries} queries/class, "
        f"Omniglot with rotations, {args.threads} thread(s), best of repeated runs"
    )
    print(f"sampler.sample:                 {sample_s * 1e3:8.2f} ms")
    print(
        f"MAML meta_train_step (2nd ord): {maml_s * 1e3:8.2f} ms   "
        f"sampler/step = {sample_s / maml_s:.2%}"
    )
    print(
        f"ProtoNet meta_train_step:       {proto_s * 1e3:8.2f} ms   "
        f"sampler/step = {sample_s / proto_s:.2%}"
    )
    print(
        f"RATIO sampler/model step: {sample_s / maml_s:.4f} (MAML), "
        f"{sample_s / proto_s:.4f} (ProtoNet)"
    )


if __name__ == "__main__":
    main()
