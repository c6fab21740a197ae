"""Second-order MAML meta-batch: metarl's batched path against the usual per-task loop.

One meta-batch = 32 tasks, 5-way 1-shot, 15 queries per class, 1 inner step, Conv-4,
second order: the time to put the meta-gradient into ``.grad`` (the Adam step is the
same for both and excluded). Both sides start from the same weights and see the same
batch; the script prints the relative difference of their meta-gradients (float32; the
float64 equality check is in tests/test_fewshot.py).

* **usual** — the per-task clone-and-adapt loop as commonly written (learn2learn's
  ``clone_module`` / ``update_module`` pattern): copy the ``nn.Sequential`` Conv-4 per
  task with its parameters replaced by graph-connected clones, ``autograd.grad(...,
  create_graph=True)`` on the support loss, write the fast weights into the copy, then
  back-propagate the query loss.
* **metarl** — ``agents.fewshot.maml.MAML.meta_gradients``: ``agents.functional``'s loop
  (``functional_call``, no module copies, per-task backward) on ``backbones.Conv4``
  (exact rewrites: fused first conv+BN, channels-last, pool before ReLU).

``--all`` adds the alternatives behind the choice of the loop (slow: minutes):
the functional loop on the plain layer stack (technique without backbone rewrites),
``method="vmap"`` (vmap over the forward = grouped convolutions with groups = tasks),
and ``method="func"`` (vmap over torch.func.grad, with hand-written batch norm).

Where the speed-up comes from (measured, 1 thread): the functional loop on the plain
stack ties with the usual loop (1.00x): per task the query forward/backward of 75 images
dominates and is compute-bound either way. Batching the 32 tasks is *slower* on the CPU
(vmap 0.61x, func 0.25x; grouped convolutions lose the cache locality of one task's
activations). The gain is the exact Conv-4 rewrites: channels-last kernels (max-pool and
batch norm are several times faster in that layout) and the first conv+BN folded into
one matmul. Measured 1.43-1.53x on a quiet machine and 1.6-1.9x when other processes load
the cores (memory-bound NCHW kernels suffer more from contention); 2.0x wall with 2
threads. The support-set second-order part is ~0.4 s of the ~1.5 s, mostly small-op
overhead of double backward on 5 images per task.

The batch is real Omniglot (the usual loop runs ~15% faster on its sparse images than on
noise, so noise would flatter the ratio); ``--data random`` if the data is absent.
Times are the thread's CPU time (robust on a shared machine) and wall time, best of
``--repeats`` interleaved runs, single-threaded by default. Target: ratio >= 1.5.

Usage:
    python benchmarks/fewshot_maml.py [--repeats 5] [--threads 1] [--all] [--data random]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from agents import functional as fn
from agents.fewshot.backbones import load_reference_into, reference_conv4
from agents.fewshot.data import load_omniglot, omniglot_splits
from agents.fewshot.maml import MAML, MAMLConfig
from agents.fewshot.sampler import ClassificationSampler, FewShotBatch


# ------------------------------------------------------------ the usual way
def clone_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are graph-connected clones (learn2learn style)."""
    clone = copy.deepcopy(module)
    for src, dst in zip(module.modules(), clone.modules()):
        for name, param in src._parameters.items():
            if param is not None:
                dst._parameters[name] = param.clone()
    return clone


def update_module(module: nn.Module, grads: list[torch.Tensor], lr: float) -> None:
    """Writes ``p - lr·g`` into the module in place of each parameter."""
    slots = [(m, k) for m in module.modules() for k, p in m._parameters.items() if p is not None]
    for (m, k), g in zip(slots, grads):
        m._parameters[k] = m._parameters[k] - lr * g


def usual_meta_gradients(model: nn.Module, batch: FewShotBatch, lr: float) -> None:
    tasks = batch.support_x.shape[0]
    for t in range(tasks):
        learner = clone_module(model)
        support_loss = F.cross_entropy(learner(batch.support_x[t]), batch.support_y[t])
        params = [p for m in learner.modules() for p in m._parameters.values() if p is not None]
        grads = torch.autograd.grad(support_loss, params, create_graph=True)
        update_module(learner, list(grads), lr)
        query_loss = F.cross_entropy(learner(batch.query_x[t]), batch.query_y[t])
        (query_loss / tasks).backward()


# ------------------------------------------------------------ alternatives
class ManualBN(nn.Module):
    """Batch norm with batch statistics via :func:`agents.functional.batch_norm`."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fn.batch_norm(x, self.weight, self.bias)


def functional_meta_gradients(
    model: nn.Module, batch: FewShotBatch, lr: float, method: str
) -> None:
    def loss(params, data):
        x, y = data
        return F.cross_entropy(fn.forward(model, params, x), y)

    fn.meta_losses(
        loss,
        loss,
        fn.params_of(model),
        (batch.support_x, batch.support_y),
        (batch.query_x, batch.query_y),
        steps=1,
        lr=lr,
        method=method,
        backward_scale=1.0 / batch.support_x.shape[0],
    )


# ------------------------------------------------------------------ driver
def flat_grad(params) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all", action="store_true", help="also time the alternatives")
    parser.add_argument(
        "--data",
        choices=("omniglot", "random"),
        default="omniglot",
        help="images of the batch (the usual loop's speed depends on them)",
    )
    parser.add_argument("--data-dir", default=None, help="Omniglot folder (default: shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    n, k, q, tasks = args.ways, args.shots, args.queries, args.tasks
    batch, source = None, "uniform noise images"
    if args.data == "omniglot":
        try:
            images = load_omniglot(args.data_dir)
        except FileNotFoundError as err:
            print(f"{err}\nfalling back to random images")
        else:
            train = omniglot_splits(images)["train"]
            batch = ClassificationSampler(train, n, k, q).sample(
                tasks, torch.Generator().manual_seed(0)
            )
            source = "Omniglot meta-train tasks"
    if batch is None:
        batch = FewShotBatch(
            support_x=torch.rand(tasks, n * k, 1, 28, 28),
            support_y=torch.arange(n).repeat_interleave(k).expand(tasks, -1).contiguous(),
            query_x=torch.rand(tasks, n * q, 1, 28, 28),
            query_y=torch.arange(n).repeat_interleave(q).expand(tasks, -1).contiguous(),
        )
    config = MAMLConfig(inner_lr=0.4, inner_steps=1)
    learner = MAML(config, n, (1, 28, 28), "cpu")
    reference = reference_conv4(out_features=n)
    load_reference_into(learner.model, reference)

    def run_metarl():
        learner.meta_gradients(batch)

    def run_usual():
        reference.zero_grad(set_to_none=True)
        usual_meta_gradients(reference, batch, config.inner_lr)

    cases = {"usual loop (clone module)": run_usual, "metarl (MAML.meta_gradients)": run_metarl}
    if args.all:
        plain = copy.deepcopy(reference)
        vmap_model = copy.deepcopy(learner.model)
        manual = copy.deepcopy(reference)
        for i, layer in enumerate(manual):
            if isinstance(layer, nn.BatchNorm2d):
                manual[i] = ManualBN(layer.num_features)

        def zeroed(model, method):
            def run():
                model.zero_grad(set_to_none=True)
                functional_meta_gradients(model, batch, config.inner_lr, method)

            return run

        cases["functional loop, plain Conv-4 (no rewrites)"] = zeroed(plain, "loop")
        cases["method=vmap (grouped convs), Conv-4"] = zeroed(vmap_model, "vmap")
        cases["method=func (vmap(grad)), hand-written BN"] = zeroed(manual, "func")

    # Agreement of the two main paths on this batch (float32 rounding only).
    run_usual()
    run_metarl()
    g_usual, g_ours = flat_grad(reference.parameters()), flat_grad(learner.model.parameters())
    rel = float((g_ours - g_usual).norm() / g_usual.norm())
    print(f"meta-gradient relative difference metarl vs usual (float32): {rel:.2e}")

    cpu = {name: [] for name in cases}
    wall = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, run in cases.items():
            c0, w0 = time.thread_time(), time.perf_counter()
            run()
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    usual = "usual loop (clone module)"
    base_cpu, base_wall = min(cpu[usual]), min(wall[usual])
    print(
        f"{tasks} tasks, {n}-way {k}-shot, {q} queries/class, 1 inner step, second order, "
        f"{args.threads} thread(s), best of {args.repeats}, {source}"
    )
    print(f"{'path':48s} {'cpu s':>7s} {'wall s':>7s} {'speed-up (cpu)':>15s}")
    for name in cases:
        c, w = min(cpu[name]), min(wall[name])
        print(f"{name:48s} {c:7.3f} {w:7.3f} {base_cpu / c:14.2f}x")
    ours = "metarl (MAML.meta_gradients)"
    print(
        f"RATIO usual/metarl: {base_cpu / min(cpu[ours]):.2f}x cpu time, "
        f"{base_wall / min(wall[ours]):.2f}x wall time (target >= 1.5x)"
    )


if __name__ == "__main__":
    main()
