"""agents.fewshot: Omniglot data and splits, the task samplers, and every learner."""

from __future__ import annotations

import dataclasses
import io
import math
import time

import pytest
import torch
import torch.nn.functional as F

from agents import functional as fn
from agents.fewshot.backbones import load_reference_into, reference_conv4
from agents.fewshot.base import query_metric
from agents.fewshot.data import (
    DEFAULT_OMNIGLOT_DIR,
    ClassImages,
    gaussian_cluster_images,
    load_omniglot,
    omniglot_splits,
)
from agents.fewshot.maml import MAML, MAMLConfig, MetaSGD, MetaSGDConfig
from agents.fewshot.matching import MatchingNet, MatchingNetConfig
from agents.fewshot.metanet import MetaNet, MetaNetConfig, augmented_linear
from agents.fewshot.protonet import ProtoNet, ProtoNetConfig
from agents.fewshot.reptile import Reptile, ReptileConfig
from agents.fewshot.sampler import ClassificationSampler, FewShotBatch, SinusoidSampler
from agents.fewshot.snail import SNAILClassifier, SNAILClassifierConfig


@pytest.fixture(autouse=True)
def _one_thread():
    # Small kernels: extra OpenMP threads only add barrier waits on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------- sampler
def coded_classes(
    chars: int = 6, drawers: int = 20, size: int = 4, rotations: bool = True
) -> ClassImages:
    """Pixel value = char·10000 + drawer·100 + pixel index: every image says where it
    came from, and how it was rotated."""
    c = torch.arange(chars).view(-1, 1, 1, 1) * 10000
    d = torch.arange(drawers).view(1, -1, 1, 1) * 100
    p = torch.arange(size * size).view(1, 1, size, size)
    return ClassImages((c + d + p).float(), torch.arange(chars), rotations)


def decode(image: torch.Tensor) -> tuple[int, int, int]:
    """(char, drawer, rotation) of a coded image ``[1, s, s]``."""
    v = image[0].long()
    char, drawer = int(v[0, 0]) // 10000, (int(v[0, 0]) % 10000) // 100
    pattern = v % 100
    grid = torch.arange(v.numel()).view_as(v)
    rotation = [k for k in range(4) if torch.equal(torch.rot90(grid, k, (0, 1)), pattern)]
    assert len(rotation) == 1
    assert (v // 100 == char * 100 + drawer).all()
    return char, drawer, rotation[0]


def test_sampler_shapes_and_label_remapping():
    sampler = ClassificationSampler(coded_classes(), ways=5, shots=2, queries=3)
    batch = sampler.sample(7, torch.Generator().manual_seed(0))
    assert isinstance(batch, FewShotBatch)
    assert batch.support_x.shape == (7, 10, 1, 4, 4)
    assert batch.query_x.shape == (7, 15, 1, 4, 4)
    assert batch.support_y.dtype == torch.long
    expected_s = torch.arange(5).repeat_interleave(2)
    expected_q = torch.arange(5).repeat_interleave(3)
    assert (batch.support_y == expected_s).all() and (batch.query_y == expected_q).all()
    for t in range(7):
        label_class = {}
        drawers = {}
        for x, y in [
            *zip(batch.support_x[t], batch.support_y[t]),
            *zip(batch.query_x[t], batch.query_y[t]),
        ]:
            char, drawer, rot = decode(x)
            # every example of a label comes from one class (character + rotation)
            assert label_class.setdefault(int(y), (char, rot)) == (char, rot)
            drawers.setdefault(int(y), []).append(drawer)
        assert len(set(label_class.values())) == 5  # N distinct classes per task
        for ds in drawers.values():  # support and query never share a drawing
            assert len(set(ds)) == len(ds) == 5


def test_sampler_covers_rotations_and_is_reproducible():
    sampler = ClassificationSampler(coded_classes(chars=3), ways=3, shots=1, queries=1)
    a = sampler.sample(50, torch.Generator().manual_seed(1))
    b = sampler.sample(50, torch.Generator().manual_seed(1))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    rotations = {decode(x)[2] for x in a.support_x.flatten(0, 1)}
    assert rotations == {0, 1, 2, 3}
    plain = ClassificationSampler(coded_classes(chars=5, rotations=False), 5, 1, 1)
    assert {decode(x)[2] for x in plain.sample(10, torch.Generator()).support_x.flatten(0, 1)} == {
        0
    }


def test_sampler_rejects_impossible_tasks():
    with pytest.raises(ValueError, match="exceeds"):
        ClassificationSampler(coded_classes(drawers=5), ways=2, shots=3, queries=3)
    with pytest.raises(ValueError, match="classes"):
        ClassificationSampler(coded_classes(chars=1, rotations=False), ways=2, shots=1, queries=1)


def test_sinusoid_sampler():
    sampler = SinusoidSampler(shots=5, queries=7)
    batch = sampler.sample(200, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (200, 5, 1) and batch.query_y.shape == (200, 7, 1)
    assert batch.amplitude.min() >= 0.1 and batch.amplitude.max() <= 5.0
    assert batch.phase.min() >= 0 and batch.phase.max() <= math.pi
    assert batch.support_x.abs().max() <= 5.0
    amp, phase = batch.amplitude[:, None, None], batch.phase[:, None, None]
    expected = amp * torch.sin(batch.query_x - phase)
    torch.testing.assert_close(batch.query_y, expected)
    assert len(batch[3:5]) == 2  # TaskBatch indexing keeps the subclass' fields


# ------------------------------------------------------------------ Omniglot
@pytest.fixture(scope="module")
def omniglot(tmp_path_factory):
    if not DEFAULT_OMNIGLOT_DIR.is_dir():
        pytest.fail(
            f"Omniglot not found at {DEFAULT_OMNIGLOT_DIR}: the suite expects ../shared "
            "(with data/omniglot) beside the clone"
        )
    cache = tmp_path_factory.mktemp("metarl_cache")
    start = time.perf_counter()
    images = load_omniglot(cache_dir=cache)
    return images, cache, time.perf_counter() - start


def test_omniglot_loads_resized_inverted_and_cached(omniglot):
    images, cache, build_seconds = omniglot
    assert images.shape == (1623, 20, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    # ink = 1 on a background of 0: thin strokes cover a small fraction of each image
    assert 0.02 < images.mean() < 0.2
    assert (images[:, :, 0, 0] < 0.05).float().mean() > 0.95  # corners are background
    assert build_seconds < 30
    files = list(cache.glob("omniglot_28px_*.pt"))
    assert len(files) == 1
    start = time.perf_counter()
    again = load_omniglot(cache_dir=cache)
    assert time.perf_counter() - start < 5
    assert torch.equal(again, images)


def test_omniglot_split_has_no_class_overlap(omniglot):
    images = omniglot[0]
    splits = omniglot_splits(images, seed=0)
    train, test = splits["train"], splits["test"]
    assert train.images.shape[0] == 1200 and test.images.shape[0] == 423
    assert train.num_classes == 4800 and test.num_classes == 1692
    assert set(train.char_ids.tolist()).isdisjoint(test.char_ids.tolist())
    assert set(train.char_ids.tolist()) | set(test.char_ids.tolist()) == set(range(1623))
    assert set(train.class_ids().tolist()).isdisjoint(test.class_ids().tolist())
    assert len(set(train.class_ids().tolist())) == 4800
    # the split is a function of the seed only
    assert torch.equal(omniglot_splits(images, seed=0)["test"].char_ids, test.char_ids)
    assert not torch.equal(omniglot_splits(images, seed=1)["test"].char_ids, test.char_ids)
    # the images travel with their characters
    assert torch.equal(test.images[5], images[test.char_ids[5]])
    batch = ClassificationSampler(test, 5, 1, 15).sample(4, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (4, 5, 1, 28, 28)
    assert batch.query_x.shape == (4, 75, 1, 28, 28)


def test_omniglot_missing_folder_raises_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_omniglot(tmp_path / "nowhere", cache_dir=tmp_path)


# ----------------------------------------------------------------- learners
SIZE = 16  # the smallest images Conv-4's four poolings accept


def synthetic_samplers(shots: int = 1):
    g = torch.Generator().manual_seed(0)
    train = gaussian_cluster_images(40, 20, SIZE, noise=1.5, generator=g)
    test = gaussian_cluster_images(20, 20, SIZE, noise=1.5, generator=g)
    return ClassificationSampler(train, 5, shots, 5), ClassificationSampler(test, 5, shots, 5)


# name -> (factory, meta-training steps); small widths so each runs in ~2 s.
LEARNERS = {
    "maml": (
        lambda: MAML(MAMLConfig(hidden=8, meta_lr=3e-3, eval_inner_steps=2), 5, (1, SIZE, SIZE)),
        25,
    ),
    "fomaml": (
        lambda: MAML(
            MAMLConfig(hidden=8, meta_lr=1e-2, first_order=True, eval_inner_steps=2),
            5,
            (1, SIZE, SIZE),
        ),
        30,
    ),
    "metasgd": (
        lambda: MetaSGD(
            MetaSGDConfig(hidden=8, meta_lr=3e-3, eval_inner_steps=2), 5, (1, SIZE, SIZE)
        ),
        25,
    ),
    "reptile": (
        lambda: Reptile(
            ReptileConfig(hidden=8, inner_steps=2, eval_inner_steps=2, inner_lr=0.1),
            5,
            (1, SIZE, SIZE),
        ),
        25,
    ),
    "reptile_minibatch": (
        lambda: Reptile(
            ReptileConfig(hidden=8, inner_steps=4, inner_batch=8, eval_inner_steps=2, inner_lr=0.1),
            5,
            (1, SIZE, SIZE),
        ),
        25,
    ),
    "protonet": (lambda: ProtoNet(ProtoNetConfig(hidden=8, lr=3e-3), 5, (1, SIZE, SIZE)), 25),
    "matching": (lambda: MatchingNet(MatchingNetConfig(hidden=8, lr=3e-3), 5, (1, SIZE, SIZE)), 25),
    "matching_fce": (
        lambda: MatchingNet(MatchingNetConfig(hidden=8, lr=3e-3, fce=True), 5, (1, SIZE, SIZE)),
        25,
    ),
    "metanet": (
        lambda: MetaNet(
            MetaNetConfig(hidden=8, head_hidden=16, rep_dim=16, lr=5e-3, tasks_per_pass=0),
            5,
            (1, SIZE, SIZE),
        ),
        60,
    ),
    "snail": (
        lambda: SNAILClassifier(
            SNAILClassifierConfig(hidden=8, blocks="small", lr=3e-3), 5, (1, SIZE, SIZE)
        ),
        200,
    ),
}


def adapted_accuracy(results: dict[int, torch.Tensor]) -> float:
    """Mean query accuracy after adaptation (steps ≥ 1; the single key of metric learners)."""
    steps = [k for k in results if k > 0] or [0]
    return float(torch.stack([results[k].mean() for k in steps]).mean())


@pytest.mark.parametrize("name", list(LEARNERS))
def test_learner_learns_synthetic_task(name):
    factory, steps = LEARNERS[name]
    torch.manual_seed(0)
    learner = factory()
    train, test = synthetic_samplers()
    eval_batch = test.sample(20, torch.Generator().manual_seed(1))  # held-out classes
    before = learner.evaluate(eval_batch)
    assert all(v.shape == (20,) for v in before.values())
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        stats = learner.meta_train_step(train.sample(4, generator), generator)
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    after = adapted_accuracy(learner.evaluate(eval_batch))
    # chance is 0.2 for 5-way
    assert after >= 0.4 and after >= adapted_accuracy(before) + 0.12, (before, after)


@pytest.mark.parametrize("name", ["maml", "metasgd", "reptile"])
def test_regression_learners_reduce_sinusoid_mse(name):
    torch.manual_seed(0)
    if name == "maml":
        learner = MAML(
            MAMLConfig(inner_lr=0.01, meta_lr=1e-2, eval_inner_steps=1), 1, (1,), regression=True
        )
    elif name == "metasgd":
        learner = MetaSGD(
            MetaSGDConfig(inner_lr=0.01, meta_lr=1e-2, eval_inner_steps=1), 1, (1,), regression=True
        )
    else:
        learner = Reptile(
            ReptileConfig(inner_lr=0.02, inner_steps=5, eval_inner_steps=5, outer_lr=0.5),
            1,
            (1,),
            regression=True,
        )
    sampler = SinusoidSampler(10, 10)
    eval_batch = sampler.sample(50, torch.Generator().manual_seed(1))
    last = max(learner.evaluate(eval_batch))
    before = float(learner.evaluate(eval_batch)[last].mean())
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        stats = learner.meta_train_step(sampler.sample(8, generator), generator)
    after = float(learner.evaluate(eval_batch)[last].mean())
    assert after < 0.75 * before, (before, after)
    assert math.isfinite(stats["loss"])


def test_meta_sgd_with_constant_alpha_is_exactly_maml():
    train, _ = synthetic_samplers()
    generator = torch.Generator().manual_seed(0)
    batches = [train.sample(3, generator) for _ in range(3)]
    results = []
    for make in (
        lambda: MAML(MAMLConfig(hidden=8, inner_lr=0.4, inner_steps=2), 5, (1, SIZE, SIZE)),
        lambda: MetaSGD(
            MetaSGDConfig(hidden=8, inner_lr=0.4, inner_steps=2, learn_alpha=False),
            5,
            (1, SIZE, SIZE),
        ),
    ):
        torch.manual_seed(0)
        learner = make()
        stats = [learner.meta_train_step(b, generator) for b in batches]
        results.append(
            (
                stats,
                {k: v.detach().clone() for k, v in learner.model.state_dict().items()},
                learner.evaluate(batches[0]),
            )
        )
    (s_maml, p_maml, e_maml), (s_sgd, p_sgd, e_sgd) = results
    assert s_maml == s_sgd
    assert all(torch.equal(p_maml[k], p_sgd[k]) for k in p_maml)  # bit for bit
    assert all(torch.equal(e_maml[k], e_sgd[k]) for k in e_maml)


def test_meta_sgd_learns_alpha():
    torch.manual_seed(0)
    learner = MetaSGD(MetaSGDConfig(hidden=8), 5, (1, SIZE, SIZE))
    alpha_before = {k: v.detach().clone() for k, v in learner.nets["alpha"].items()}
    train, _ = synthetic_samplers()
    generator = torch.Generator().manual_seed(0)
    learner.meta_train_step(train.sample(2, generator), generator)
    for name, alpha in learner.nets["alpha"].items():
        # A conv bias right before batch norm cancels out: zero gradient, α stays.
        redundant = name.endswith("conv__bias")
        assert torch.equal(alpha_before[name], alpha) == redundant, name


def test_maml_meta_gradient_equals_usual_clone_loop_float64():
    """The benchmark's claim: its two paths compute the same meta-gradient."""
    from benchmarks.fewshot_maml import flat_grad, usual_meta_gradients

    torch.manual_seed(0)
    learner = MAML(MAMLConfig(inner_lr=0.4, hidden=16), 5, (1, 28, 28))
    learner.nets.double()
    reference = reference_conv4(1, 16, 5, 28).double()
    load_reference_into(learner.model, reference)
    g = torch.Generator().manual_seed(0)
    batch = FewShotBatch(
        torch.rand(3, 5, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(5).expand(3, 5).contiguous(),
        torch.rand(3, 10, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(5).repeat_interleave(2).expand(3, 10).contiguous(),
    )
    usual_meta_gradients(reference, batch, 0.4)
    learner.meta_gradients(batch)
    g_usual, g_ours = flat_grad(reference.parameters()), flat_grad(learner.model.parameters())
    assert float((g_ours - g_usual).norm() / g_usual.norm()) < 1e-6


@pytest.mark.parametrize("name", list(LEARNERS))
def test_state_dict_round_trip(name):
    factory = LEARNERS[name][0]
    train, test = synthetic_samplers()
    generator = torch.Generator().manual_seed(0)
    batches = [train.sample(2, generator) for _ in range(3)]
    torch.manual_seed(0)
    first = factory()
    first.meta_train_step(batches[0], torch.Generator().manual_seed(5))
    state = first.state_dict()
    assert "state" in state["optimizer"]
    if isinstance(first.optimizer, torch.optim.Adam):
        assert state["optimizer"]["state"]  # Adam's moments are included
    buffer = io.BytesIO()
    torch.save(state, buffer)  # checkpoints must be plain torch-serialisable data
    buffer.seek(0)
    torch.manual_seed(1)
    second = factory()
    second.load_state_dict(torch.load(buffer, weights_only=False))
    assert second.steps_done == 1
    for learner in (first, second):
        learner.meta_train_step(batches[1], torch.Generator().manual_seed(7))
    eval_batch = test.sample(3, torch.Generator().manual_seed(2))
    e1, e2 = first.evaluate(eval_batch), second.evaluate(eval_batch)
    assert e1.keys() == e2.keys() and all(torch.equal(e1[k], e2[k]) for k in e1)
    s1, s2 = first.nets.state_dict(), second.nets.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_snail_lr_anneal_is_linear_and_resumes_from_the_checkpoint():
    """lr 1e-2 -> 1e-3 over 3 meta-batches; a learner restored after 2 steps continues it."""
    train, _ = synthetic_samplers()
    batch = train.sample(2, torch.Generator().manual_seed(0))

    def make() -> SNAILClassifier:
        config = SNAILClassifierConfig(
            hidden=8, blocks="small", lr=1e-2, lr_decay_steps=3, lr_final=1e-3
        )
        return SNAILClassifier(config, 5, (1, SIZE, SIZE))

    first = make()
    lrs = [first.meta_train_step(batch, torch.Generator().manual_seed(i))["lr"] for i in range(2)]
    restored = make()
    restored.load_state_dict(first.state_dict())
    for learner in (first, restored):
        tail = [learner.meta_train_step(batch, torch.Generator())["lr"] for _ in range(3)]
        assert lrs + tail == pytest.approx([1e-2, 7e-3, 4e-3, 1e-3, 1e-3])
    with pytest.raises(ValueError, match=r"algo\.lr_final"):
        SNAILClassifierConfig(lr=1e-3, lr_final=1e-2)


@pytest.mark.parametrize("regression", [False, True])
def test_snail_evaluate_embeds_once_and_matches_logits_per_shot_count(regression):
    """Eval reuses one embedding per input for every shot count: the same per-task metric
    as calling ``logits`` on the inputs of the first k shots (same shuffles). Images: after
    a training step has moved BatchNorm's running statistics; the sinusoid's MSE is
    continuous, so any bookkeeping slip shows."""
    config = SNAILClassifierConfig(hidden=8, blocks="small")
    if regression:
        learner = SNAILClassifier(config, 1, (1,), regression=True)
        train = test = SinusoidSampler(3, 4)
        ways, shots = 1, 3
    else:
        learner = SNAILClassifier(config, 5, (1, SIZE, SIZE))
        train, test = synthetic_samplers(shots=3)
        ways, shots = 5, 3
    learner.meta_train_step(train.sample(2, torch.Generator().manual_seed(0)), torch.Generator())
    batch = test.sample(3, torch.Generator().manual_seed(1))
    got = learner.evaluate(batch)
    learner.nets.eval()
    generator = torch.Generator().manual_seed(0)  # evaluate's fixed shuffle seed
    with torch.no_grad():
        for k in range(1, shots + 1):
            keep = torch.arange(ways * shots).view(ways, shots)[:, :k].reshape(-1)
            sub = dataclasses.replace(
                batch, support_x=batch.support_x[:, keep], support_y=batch.support_y[:, keep]
            )
            sx, sy = learner._shuffle(sub, generator)
            out = learner.logits(sx, sy, batch.query_x)
            want = torch.stack([query_metric(o, y, regression) for o, y in zip(out, batch.query_y)])
            assert torch.allclose(got[k], want, rtol=1e-5, atol=1e-6), k


def test_evaluate_keys():
    _, test = synthetic_samplers()
    batch = test.sample(2, torch.Generator().manual_seed(0))
    maml = MAML(MAMLConfig(hidden=8, eval_inner_steps=4), 5, (1, SIZE, SIZE))
    assert sorted(maml.evaluate(batch)) == [0, 1, 2, 3, 4]
    proto = ProtoNet(ProtoNetConfig(hidden=8), 5, (1, SIZE, SIZE))
    assert list(proto.evaluate(batch)) == [0]


def test_configs_validate():
    with pytest.raises(ValueError, match=r"algo\.method"):
        MAMLConfig(method="threads")
    with pytest.raises(ValueError, match=r"algo\.inner_lr"):
        ReptileConfig(inner_lr=0)
    with pytest.raises(ValueError, match=r"algo\.distance"):
        ProtoNetConfig(distance="manhattan")
    for config in (
        MAMLConfig(),
        MetaSGDConfig(),
        ReptileConfig(),
        ProtoNetConfig(),
        MatchingNetConfig(),
        MetaNetConfig(),
    ):
        assert dataclasses.is_dataclass(config)


# ------------------------------------------------------------------- MetaNet
def test_metanet_fast_weight_shapes():
    torch.manual_seed(0)
    learner = MetaNet(
        MetaNetConfig(hidden=8, head_hidden=16, rep_dim=12, emb_pairs=3), 5, (1, SIZE, SIZE)
    )
    _, test = synthetic_samplers()
    batch = test.sample(4, torch.Generator().manual_seed(0))  # 5 support, 25 queries
    logits, fast = learner.forward(batch, torch.Generator().manual_seed(0))
    features = learner.module.base_encoder.feature_dim
    assert logits.shape == (4, 25, 5)
    assert fast.example["w1"].shape == (4, 5, 16, features)
    assert fast.example["b1"].shape == (4, 5, 16)
    assert fast.example["w2"].shape == (4, 5, 5, 16)
    assert fast.example["b2"].shape == (4, 5, 5)
    assert fast.task["q"].shape == (4, 12, features) and fast.task["c"].shape == (4, 12)
    assert fast.keys.shape == (4, 5, 12)
    assert fast.attention.shape == (4, 25, 5)
    torch.testing.assert_close(fast.attention.sum(-1), torch.ones(4, 25))
    assert fast.query["w1"].shape == (4, 25, 16, features)
    # a query's fast weights are the attention-weighted memory read
    expected = torch.einsum("s,soi->oi", fast.attention[1, 3], fast.example["w1"][1])
    torch.testing.assert_close(fast.query["w1"][1, 3], expected)


def test_metanet_layer_augmentation_rule():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6)
    w, b = torch.randn(4, 6), torch.randn(4)
    fw, fb = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4)
    slow = x @ w.T + b
    fast = torch.einsum("tqoi,tqi->tqo", fw, x) + fb
    out = augmented_linear(x, w, b, fw, fb)
    # slow and fast outputs each go through the ReLU, then are summed ...
    torch.testing.assert_close(out, F.relu(slow) + F.relu(fast))
    # ... which is not the ReLU of summed weights
    assert not torch.allclose(out, F.relu(slow + fast))
    torch.testing.assert_close(augmented_linear(x, w, b, fw, fb, relu=False), slow + fast)


def test_metanet_logits_use_memory_fast_weights():
    torch.manual_seed(0)
    learner = MetaNet(MetaNetConfig(hidden=8, head_hidden=16, rep_dim=12), 5, (1, SIZE, SIZE))
    learner.nets.eval()
    _, test = synthetic_samplers()
    batch = test.sample(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, fast = learner.forward(batch, torch.Generator().manual_seed(0))
        module = learner.module
        h = module.base_encoder(batch.query_x.flatten(0, 1)).view(2, 25, -1)
        hidden = F.relu(module.head1(h)) + F.relu(
            torch.einsum("tqoi,tqi->tqo", fast.query["w1"], h) + fast.query["b1"]
        )
        expected = (
            module.head2(hidden)
            + torch.einsum("tqoi,tqi->tqo", fast.query["w2"], hidden)
            + fast.query["b2"]
        )
    torch.testing.assert_close(logits, expected)


def test_functional_api_used_by_maml_is_domain_agnostic():
    """The same fn.meta_losses drives a non-image regression (as meta-RL will)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    data = torch.randn(3, 4, 2)
    targets = torch.randn(3, 4, 1)

    def loss(p, d):
        return F.mse_loss(fn.forward(model, p, d[0]), d[1])

    losses, _ = fn.meta_losses(
        loss,
        loss,
        fn.params_of(model),
        (data, targets),
        (data, targets),
        lr=0.1,
        backward_scale=1 / 3,
    )
    assert losses.shape == (3,) and model.weight.grad is not None


def test_reptile_inner_minibatches_cover_the_task_once_per_round():
    """With ``inner_batch``, the inner steps walk a permutation of the task's examples."""
    learner = Reptile(ReptileConfig(hidden=8, inner_steps=3, inner_batch=2), 5, (1, SIZE, SIZE))
    seen = []
    original = learner.inner_loss

    def spy(params, data):
        seen.append(data[0].clone())
        return original(params, data)

    learner.inner_loss = spy
    # Image i is filled with the value i, so the spy can tell the six examples apart (the
    # labels, 0-4, cannot: two examples share label 0).
    x = torch.arange(6.0)[:, None, None, None].expand(6, 1, SIZE, SIZE).contiguous()
    y = torch.arange(6) % 5
    learner._adapt_minibatched(fn.params_of(learner.model), x, y, torch.Generator().manual_seed(0))
    assert [len(b) for b in seen] == [2, 2, 2]
    # The three batches together are the six examples, each once (one permutation).
    ids = torch.cat(seen)[:, 0, 0, 0].long().tolist()
    assert sorted(ids) == list(range(6))


def test_snail_construction_leaves_batchnorm_statistics_alone():
    """The embedding-width probe at construction is not a training batch."""
    learner = SNAILClassifier(SNAILClassifierConfig(hidden=8, blocks="small"), 5, (1, SIZE, SIZE))
    norms = [m for m in learner.nets["encoder"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and learner.nets["encoder"].training
    for norm in norms:
        assert int(norm.num_batches_tracked) == 0
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
