"""Tests of the SNAIL blocks: causality, step() == forward(), shapes, gradients, caches."""

from __future__ import annotations

import math

import pytest
import torch

import agents.snail as snail
from agents.snail import (
    PAPER_OMNIGLOT_BLOCKS,
    AttentionBlock,
    AttentionSpec,
    DenseBlock,
    SNAILConfig,
    SNAILSequenceModel,
    SNAILStack,
    TCBlock,
    TCSpec,
    num_dense_blocks,
)

SMALL = SNAILConfig(embed_size=8, filters=4, key_size=5, value_size=3)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _step_all(module, x: torch.Tensor, cache) -> torch.Tensor:
    """Runs ``module.step`` over the time axis of ``x [T, B, C]``."""
    outs = []
    for t in range(x.shape[0]):
        y, cache = module.step(x[t], cache)
        outs.append(y)
    return torch.stack(outs)


def _perturbed_outputs(module, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.clone()
    x2[t] += 1.0
    with torch.no_grad():
        return module(x), module(x2)


def _assert_causal(module, x: torch.Tensor, t: int) -> None:
    """Outputs before t bit-identical; every output at >= t differs."""
    y, y2 = _perturbed_outputs(module, x, t)
    assert torch.equal(y[:t], y2[:t])
    changed = (y[t:] - y2[t:]).abs().flatten(1).amax(dim=1)
    assert bool((changed > 0).all()), changed


# ---------------------------------------------------------------------- causality
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_dense_block_depends_on_t_and_t_minus_dilation_only(dilation):
    torch.manual_seed(0)
    block = DenseBlock(3, dilation, 4)
    x = _rand(11, 2, 3)
    t = 4
    y, y2 = _perturbed_outputs(block, x, t)
    for s in range(x.shape[0]):
        if s in (t, t + dilation):
            assert not torch.equal(y[s], y2[s]), s
        else:
            assert torch.equal(y[s], y2[s]), s


@pytest.mark.parametrize("t", [0, 3, 8])
def test_tc_block_causal_and_covers_the_sequence(t):
    torch.manual_seed(1)
    block = TCBlock(3, 9, 4)
    # "every output at >= t changes" checks the receptive field reaches back T-1 steps.
    _assert_causal(block, _rand(9, 2, 3), t)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("t", [0, 2, 6])
def test_attention_block_causal(t, fused):
    torch.manual_seed(2)
    block = AttentionBlock(3, 5, 4)
    block.fused = fused
    _assert_causal(block, _rand(7, 2, 3), t)


def test_fused_and_plain_attention_agree_in_value_and_gradient():
    torch.manual_seed(10)
    model = SNAILSequenceModel(6, 40, SMALL)
    x = _rand(40, 3, 6, seed=10)
    results = []
    for fused in (True, False):
        snail.set_fused_attention(model, fused)
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    (y_fused, g_fused), (y_plain, g_plain) = results
    torch.testing.assert_close(y_fused, y_plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_plain_attention_is_twice_differentiable_for_trpo():
    torch.manual_seed(11)
    block = AttentionBlock(2, 3, 2).double()
    block.fused = False
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda inp: block(inp), (x,))


@pytest.mark.parametrize("t", [0, 5, 12])
def test_model_causal(t):
    torch.manual_seed(3)
    model = SNAILSequenceModel(6, 13, SMALL)
    _assert_causal(model, _rand(13, 3, 6), t)


# ------------------------------------------------------------ step() == forward()
@pytest.mark.parametrize("T", [1, 2, 5, 8, 13])
def test_model_step_equals_forward(T):
    torch.manual_seed(4)
    model = SNAILSequenceModel(6, T, SMALL)
    x = _rand(T, 3, 6, seed=T)
    with torch.no_grad():
        full = model(x)
    stepped = _step_all(model, x, model.initial_state(3, torch.device("cpu")))
    assert stepped.shape == full.shape == (T, 3, model.output_size)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)


def test_tc_span_sets_depth_apart_from_sequence_length():
    """A TC span shorter than the trial: fewer dense blocks, same shapes for any length,
    still causal, and step() still equals forward() past the span."""
    torch.manual_seed(6)
    short = SNAILSequenceModel(6, 16, SMALL)
    long = SNAILSequenceModel(6, 40, SMALL, tc_span=16)
    tc_depths = [len(layer.blocks) for layer in long.stack.layers if isinstance(layer, TCBlock)]
    assert tc_depths == [num_dense_blocks(16)] * SMALL.num_tc_blocks == [4, 4]
    assert long.stack.sequence_length == 40 and long.stack.tc_span == 16
    # Same parameter shapes as the 16-step model, so its weights load as they are.
    long.load_state_dict(short.state_dict())
    x = _rand(40, 3, 6, seed=40)
    with torch.no_grad():
        full = long(x)
        torch.testing.assert_close(full[:16], short(x[:16]))
    stepped = _step_all(long, x, long.initial_state(3, torch.device("cpu")))
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)
    _assert_causal(long, x, 25)


def test_model_step_equals_forward_with_paper_defaults_and_prefixes():
    """Default config; also step() over a prefix equals forward() of that prefix."""
    torch.manual_seed(5)
    model = SNAILSequenceModel(4, 20)
    x = _rand(20, 2, 4)
    stepped = _step_all(model, x, model.initial_state(2, "cpu"))
    with torch.no_grad():
        for t in (1, 7, 20):
            torch.testing.assert_close(stepped[:t], model(x[:t]), atol=1e-5, rtol=0)


def test_step_beyond_sequence_length_grows_attention_cache():
    torch.manual_seed(6)
    model = SNAILSequenceModel(3, 4, SMALL)
    x = _rand(11, 2, 3)
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(
        _step_all(model, x, model.initial_state(2, "cpu")), full, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "block",
    [DenseBlock(3, 1, 2), DenseBlock(3, 4, 2), TCBlock(3, 6, 2), AttentionBlock(3, 4, 2)],
    ids=["dense1", "dense4", "tc", "attention"],
)
def test_block_step_equals_forward(block):
    x = _rand(6, 3, 3)
    with torch.no_grad():
        full = block(x)
    torch.testing.assert_close(_step_all(block, x, block.initial_cache(3)), full, atol=1e-5, rtol=0)


def test_omniglot_stack_step_equals_forward():
    """The few-shot stack (attention first) through the same machinery, shrunk."""
    torch.manual_seed(7)
    blocks = tuple(
        AttentionSpec(s.key_size // 16, s.value_size // 16)
        if isinstance(s, AttentionSpec)
        else TCSpec(s.filters // 16)
        for s in PAPER_OMNIGLOT_BLOCKS
    )
    n, k = 3, 2
    stack = SNAILStack(5 + n, n * k + 1, blocks)
    x = _rand(n * k + 1, 2, 5 + n)
    with torch.no_grad():
        full = stack(x)
    levels = num_dense_blocks(n * k + 1)
    assert stack.out_channels == 5 + n + 2 + levels * 8 + 8 + levels * 8 + 16 == full.shape[-1]
    torch.testing.assert_close(_step_all(stack, x, stack.initial_cache(2)), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prefix_length", [0, 1, 3, 7])
def test_stack_branches_equal_one_sequence_per_continuation(prefix_length):
    """branches(prefix, ends)[r] is the last output of forward(prefix + [ends[r]]), and so
    is its gradient: the few-shot classifier trains and evaluates through it."""
    torch.manual_seed(3)
    blocks = (AttentionSpec(6, 4), TCSpec(5), AttentionSpec(7, 3), TCSpec(2))
    stack = SNAILStack(6, 8, blocks).double()
    prefix = _rand(prefix_length, 2, 6).double().requires_grad_()
    ends = _rand(4, 2, 6, seed=1).double().requires_grad_()
    out = stack.branches(prefix, ends)
    ref = torch.stack([stack(torch.cat([prefix, ends[r : r + 1]]))[-1] for r in range(4)])
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    weights = _rand(*out.shape, seed=2).double()
    inputs = [ends, prefix, *stack.parameters()]
    # A tap whose dilation reaches past the sequence start gets no gradient (None): zero.
    ours = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)
    theirs = torch.autograd.grad((ref * weights).sum(), inputs, allow_unused=True)
    for x, a, b in zip(inputs, ours, theirs, strict=True):
        zero = torch.zeros_like(x)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b)


def test_reset_rows_restarts_a_trial():
    torch.manual_seed(8)
    model = SNAILSequenceModel(3, 8, SMALL)
    x = _rand(8, 2, 3)
    state = model.initial_state(2, "cpu")
    for t in range(5):  # row 0 and row 1 run 5 steps
        _, state = model.step(x[t], state)
    state = model.reset_rows(state, torch.tensor([False, True]))
    y1 = []
    for t in range(3):  # row 1 restarts on x[:3, 1] while row 0 continues on x[5:8, 0]
        y, state = model.step(torch.stack([x[5 + t, 0], x[t, 1]]), state)
        y1.append(y)
    y1 = torch.stack(y1)
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(y1[:, 0], full[5:8, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(y1[:, 1], full[:3, 1], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- shapes, counts
@pytest.mark.parametrize("T", [*range(1, 18), 64, 65, 100, 500])
def test_number_of_dense_blocks_is_ceil_log2_T(T):
    block = TCBlock(2, T, 3)
    expected = math.ceil(math.log2(T))
    assert num_dense_blocks(T) == len(block.blocks) == expected
    assert block.dilations == [2**i for i in range(expected)]
    # receptive field 1 + sum(dilations) = 2**n covers the sequence
    assert sum(block.dilations) + 1 >= T  # receptive field covers the whole sequence


def test_channel_counts():
    x = _rand(5, 2, 3)
    assert DenseBlock(3, 2, 4)(x).shape == (5, 2, 7)
    tc = TCBlock(3, 10, 4)
    assert tc.out_channels == 3 + 4 * 4 == tc(x).shape[-1]
    assert AttentionBlock(3, 6, 2)(x).shape == (5, 2, 5)
    model = SNAILSequenceModel(3, 100)  # paper defaults: 32 + 2 * 7 * 32 + 32
    assert model.output_size == 32 + 2 * 7 * 32 + 32 == 512
    assert model(_rand(100, 2, 3)).shape == (100, 2, 512)
    value = SNAILSequenceModel(3, 100, SNAILConfig.paper_value_function())
    assert value.output_size == 32 + 2 * 7 * 16 + 16
    raw = SNAILSequenceModel(
        3, 4, SNAILConfig(embed_size=None, filters=2, num_tc_blocks=1, key_size=2, value_size=5)
    )
    assert raw.output_size == 3 + 2 * 2 + 5 == raw(_rand(4, 1, 3)).shape[-1]


def test_paper_default_stack():
    model = SNAILSequenceModel(5, 50)
    kinds = [type(m) for m in model.stack.layers]
    assert kinds == [TCBlock, TCBlock, AttentionBlock]
    assert model.embed[0].out_features == 32
    assert all(len(m.blocks) == 6 and m.filters == 32 for m in model.stack.layers[:2])
    att = model.stack.layers[2]
    assert (att.key_size, att.value_size) == (32, 32)


def test_bad_inputs_raise():
    model = SNAILSequenceModel(3, 4, SMALL)
    with pytest.raises(ValueError):
        model(torch.zeros(4, 2, 5))
    with pytest.raises(ValueError):
        model.step(torch.zeros(2, 5), model.initial_state(2, "cpu"))
    with pytest.raises(ValueError):
        SNAILConfig(filters=0)
    with pytest.raises(ValueError):
        TCBlock(3, 0, 2)


# ------------------------------------------------------------------- gradients
def test_forward_is_differentiable_gradcheck():
    torch.manual_seed(9)
    cfg = SNAILConfig(embed_size=3, embed_activation="tanh", filters=2, key_size=2, value_size=2)
    model = SNAILSequenceModel(2, 5, cfg).double()
    x = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: model(inp), (x,))
    model.zero_grad()
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------- cache behaviour
def test_conv_cache_size_is_independent_of_t():
    """The conv part's cache is a fixed ring buffer updated in place: O(1) per step."""
    torch.manual_seed(10)
    T, B = 40, 2
    model = SNAILSequenceModel(3, T, SMALL)
    state = model.initial_state(B, "cpu")
    tc_caches = [
        c for layer, c in zip(model.stack.layers, state, strict=True) if isinstance(layer, TCBlock)
    ]
    dense = [dc for tc in tc_caches for dc in tc]
    sizes0 = [ring.numel() for ring, _ in dense]
    ptrs0 = [ring.data_ptr() for ring, _ in dense]
    att_ptr = state[-1][0].data_ptr()
    x = _rand(T, B, 3)
    for t in range(T):
        _, state = model.step(x[t], state)
        dense_now = [
            dc
            for layer, c in zip(model.stack.layers, state, strict=True)
            if isinstance(layer, TCBlock)
            for dc in c
        ]
        assert [ring.numel() for ring, _ in dense_now] == sizes0
        assert [ring.data_ptr() for ring, _ in dense_now] == ptrs0
    blocks = [b for layer in model.stack.layers if isinstance(layer, TCBlock) for b in layer.blocks]
    assert sizes0 == [B * b.dilation * 2 * b.filters for b in blocks]
    # attention buffers were preallocated to T: never reallocated within the trial
    assert state[-1][0].data_ptr() == att_ptr and state[-1][0].shape[1] == T


def test_state_leaves_are_batch_first_tensors():
    model = SNAILSequenceModel(3, 9, SMALL)
    leaves = list(snail._leaves(model.initial_state(4, "cpu")))
    assert leaves and all(isinstance(v, torch.Tensor) and v.shape[0] == 4 for v in leaves)
    assert all(not v.any() for v in leaves)


def test_step_builds_no_graph():
    model = SNAILSequenceModel(3, 4, SMALL)
    y, _ = model.step(torch.randn(2, 3), model.initial_state(2, "cpu"))
    assert not y.requires_grad


def test_agent_interleave_attention_builds_tc_att_tc_att_and_acts_as_it_trains():
    """``algo.interleave_attention``: an attention block after each TC block, in the
    policy and in TRPO's separate critic; acting step by step reproduces the training
    pass's log-probabilities and values."""
    from agents.snail import SNAIL, SNAILAgentConfig
    from metarl.problem import RLProblem
    from metarl.registry import resolve_env

    problem = RLProblem(resolve_env("tabular-mdp")(), episodes=3, max_episode_steps=4)
    config = SNAILAgentConfig(
        optimizer="trpo", trials_per_iteration=3, minibatches=3, filters=4, key_size=5,
        value_size=3,
        critic_width=2, interleave_attention=True,
    )  # fmt: skip
    learner = SNAIL(problem, config)
    for net, (f, k, v) in ((learner.net.trunk, (4, 5, 3)), (learner.net.value_trunk, (2,) * 3)):
        layers = net.stack.layers
        kinds = [type(layer).__name__ for layer in layers]
        assert kinds == ["TCBlock", "AttentionBlock"] * 2
        assert [layer.filters for layer in layers[0::2]] == [f, f]
        assert [(layer.key_size, layer.value_size) for layer in layers[1::2]] == [(k, v)] * 2
    tasks = problem.sample_train_tasks(3, seed=0, iteration=0)
    batch = problem.collect(learner.policy, tasks, torch.Generator().manual_seed(0))
    with torch.no_grad():
        params, value = learner.net.evaluate(batch)
    logp = learner.net.head.log_prob(params, batch.action)
    assert torch.allclose(logp[batch.valid], batch.log_prob[batch.valid], atol=1e-5)
    assert torch.allclose(value[batch.valid], batch.value[batch.valid], atol=1e-5)
    with pytest.raises(ValueError, match="interleave_attention"):
        SNAILAgentConfig(num_tc_blocks=0, interleave_attention=True)
