"""MAML-TRPO and Meta-SGD: exact inner step, meta-gradient and KL curvature, TRPO safety,
the linear feature baseline, per-task batched acting, and CLI smoke runs."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from helpers import assert_trained

from agents import maml_baselines
from agents.linear_baseline import fit_ridge, linear_baseline_values, linear_features
from agents.maml import (
    MAMLTRPO,
    CategoricalMLP,
    FastWeightPolicy,
    GaussianMLP,
    MAMLTRPOConfig,
    MetaObjective,
    TaskData,
    gaussian_log_prob,
    inner_update,
    make_inner_loss,
    meta_trpo_step,
)
from agents.meta_sgd import MetaSGD, MetaSGDConfig
from envs.nav2d import Nav2DDistribution
from metarl import registry
from metarl.batch import TrajectoryBatch
from metarl.cli import main
from metarl.policy import StepInput
from metarl.problem import RLProblem

F64 = torch.float64


def random_data(n, m, obs=3, act=2, seed=0, dtype=F64, pad=True):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, m, dtype=dtype)
    if pad:  # some padding steps, as after early terminations
        mask[:, -2:] = 0
        mask[0, 3] = 0
    weight = mask / mask.sum(-1, keepdim=True)
    return TaskData(
        torch.randn(n, m, obs, generator=g, dtype=dtype),
        torch.randn(n, m, act, generator=g, dtype=dtype),
        torch.randn(n, m, generator=g, dtype=dtype) * mask,
        weight,
    )


def tiny_net(obs=3, act=2, hidden=(5,), activation="tanh", seed=0):
    torch.manual_seed(seed)
    net = GaussianMLP(obs, act, hidden, activation, init_log_std=-0.3).double()
    with torch.no_grad():  # non-trivial biases and log-std
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def flat(params):
    return torch.cat([p.reshape(-1) for p in params])


# ------------------------------------------------------------------ inner step
def test_inner_step_equals_hand_computation_on_linear_policy():
    # Linear Gaussian policy μ = W s + b, log-std l; inner loss L = −Σ_t w_t A_t log π(u_t|s_t).
    net = tiny_net(hidden=())
    data = random_data(n=2, m=6, seed=1)
    alpha = 0.1
    theta = dict(net.named_parameters())
    fast = inner_update(
        make_inner_loss(net), theta, data, lr=alpha, first_order=False, method="loop"
    )
    w, b, log_std = (theta[k].detach() for k in ("layers.0.weight", "layers.0.bias", "log_std"))
    var = torch.exp(2 * log_std)
    for i in range(2):
        s, u, adv, wt = data.obs[i], data.action[i], data.advantage[i], data.weight[i]
        resid = u - (s @ w.T + b)  # [m, d]
        coef = (wt * adv).unsqueeze(-1)  # [m, 1]
        # ∂ log π / ∂μ = (u − μ)/σ², ∂ log π / ∂l = (u − μ)²/σ² − 1.
        grad_w = -(coef * resid / var).T @ s
        grad_b = -(coef * resid / var).sum(0)
        grad_l = -(coef * (resid**2 / var - 1)).sum(0)
        torch.testing.assert_close(fast["layers.0.weight"][i], w - alpha * grad_w)
        torch.testing.assert_close(fast["layers.0.bias"][i], b - alpha * grad_b)
        torch.testing.assert_close(fast["log_std"][i], log_std - alpha * grad_l)


def tiny_categorical_net(obs=3, actions=4, hidden=(5,), activation="tanh", seed=0):
    torch.manual_seed(seed)
    net = CategoricalMLP(obs, actions, hidden, activation).double()
    with torch.no_grad():  # non-trivial biases
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def random_categorical_data(n, m, obs=3, actions=4, seed=0):
    data = random_data(n, m, obs=obs, seed=seed)
    g = torch.Generator().manual_seed(seed + 1000)
    return data._replace(action=torch.randint(0, actions, (n, m), generator=g))


def test_categorical_inner_step_equals_hand_computation_on_linear_policy():
    # Linear softmax policy π(·|s) = softmax(W s + b); ∂ log π(a|s) / ∂ logits = e_a − π(·|s).
    net = tiny_categorical_net(hidden=())
    data = random_categorical_data(n=2, m=6, seed=1)
    alpha = 0.1
    theta = dict(net.named_parameters())
    assert set(theta) == {"layers.0.weight", "layers.0.bias"}
    fast = inner_update(
        make_inner_loss(net), theta, data, lr=alpha, first_order=False, method="loop"
    )
    w, b = (theta[k].detach() for k in ("layers.0.weight", "layers.0.bias"))
    for i in range(2):
        s, a, adv, wt = data.obs[i], data.action[i], data.advantage[i], data.weight[i]
        probs = torch.softmax(s @ w.T + b, dim=-1)
        score = torch.nn.functional.one_hot(a, 4).to(F64) - probs  # [m, 4]
        coef = (wt * adv).unsqueeze(-1)
        torch.testing.assert_close(fast["layers.0.weight"][i], w + alpha * (coef * score).T @ s)
        torch.testing.assert_close(fast["layers.0.bias"][i], b + alpha * (coef * score).sum(0))


def test_categorical_policy_kl_and_sampling():
    net = tiny_categorical_net(hidden=(6,))
    params = dict(net.named_parameters())
    obs = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    out = net.output(params, obs)
    old = net.snapshot(params, out)
    assert torch.allclose(net.kl(old, params, out), torch.zeros(5, dtype=F64))
    other = out + torch.randn_like(out)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=out), torch.distributions.Categorical(logits=other)
    )
    torch.testing.assert_close(net.kl(old, params, other), expected)
    # Sampling with the caller's generator: reproducible, frequencies match the softmax,
    # and the returned log-probabilities are those of the drawn actions.
    rows = out[:1].expand(40_000, -1)
    a1, logp = net.sample(rows, None, torch.Generator().manual_seed(7))
    a2, _ = net.sample(rows, None, torch.Generator().manual_seed(7))
    assert torch.equal(a1, a2) and a1.dtype == torch.int64
    freq = torch.bincount(a1, minlength=4).to(F64) / a1.numel()
    torch.testing.assert_close(freq, torch.softmax(out[0], -1), atol=0.01, rtol=0)
    torch.testing.assert_close(logp, torch.log_softmax(rows, -1).gather(1, a1[:, None])[:, 0])


@pytest.mark.parametrize("method", ["vmap", "func"])
def test_inner_update_methods_agree(method):
    net = tiny_net(hidden=(4, 4), activation="relu")
    data = random_data(n=3, m=7)
    ref = inner_update(
        make_inner_loss(net),
        dict(net.named_parameters()),
        data,
        lr=0.1,
        first_order=False,
        method="loop",
    )
    out = inner_update(
        make_inner_loss(net),
        dict(net.named_parameters()),
        data,
        lr=0.1,
        first_order=False,
        method=method,
    )
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])


# ------------------------------------------------------------------ meta-gradient
def _objective(net, steps, post, first_order=False):
    return MetaObjective(net, steps, post, first_order=first_order)


def _meta_loss(objective, theta, lr, old):
    return objective.surrogate(objective.adapt(theta, lr)[-1], old)


@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_second_order_meta_gradient_matches_finite_differences(inner_steps, meta_sgd):
    net = tiny_net()
    names = [k for k, _ in net.named_parameters()]
    steps = [random_data(3, 8, seed=10 + j) for j in range(inner_steps)]
    objective = _objective(net, steps, random_data(3, 8, seed=20))
    theta = dict(net.named_parameters())
    g = torch.Generator().manual_seed(3)
    alpha = (
        {
            k: (0.05 + 0.1 * torch.rand(v.shape, generator=g, dtype=F64)).requires_grad_()
            for k, v in theta.items()
        }
        if meta_sgd
        else None
    )
    lr = alpha if meta_sgd else 0.1
    with torch.no_grad():
        _, _, old = _meta_loss(objective, theta, lr, None)
    loss, _, _ = _meta_loss(objective, theta, lr, old)
    params = [theta[k] for k in names] + ([alpha[k] for k in names] if meta_sgd else [])
    grad = flat(torch.autograd.grad(loss, params))

    base = [p.detach().clone() for p in params]

    def f(vec):
        parts = vec.split([p.numel() for p in params])
        with torch.no_grad():
            for p, part in zip(params, parts):
                p.copy_(part.view_as(p))
            out = float(_meta_loss(objective, theta, lr, old)[0])
            for p, b in zip(params, base):
                p.copy_(b)
        return out

    x0, eps = flat(base), 1e-6
    for d in range(3):
        v = torch.randn(x0.shape, generator=g, dtype=F64)
        fd = (f(x0 + eps * v) - f(x0 - eps * v)) / (2 * eps)
        assert abs(fd - float(grad @ v)) <= 1e-7 * max(1.0, abs(fd)), (d, fd, float(grad @ v))
    # The second-order term matters: first-order MAML's gradient differs.
    fo = _objective(net, steps, objective.post, first_order=True)
    loss_fo, _, _ = _meta_loss(fo, theta, lr, old)
    grad_fo = flat(torch.autograd.grad(loss_fo, params))
    assert (grad_fo - grad).norm() > 1e-4 * grad.norm()


# ------------------------------------------------------------------ KL curvature
def _kl_hessian_autograd(objective, theta, alpha, lr):
    """Reference: the KL's Hessian by double backprop through the inner updates."""
    names = list(theta)
    params = [theta[k] for k in names] + ([alpha[k] for k in names] if alpha else [])
    _, kl, _ = objective.surrogate(objective.adapt(theta, lr)[-1])
    grad = torch.autograd.grad(kl, params, create_graph=True)
    grad = flat(grad)
    rows = [
        flat(torch.autograd.grad(grad[i], params, retain_graph=True, allow_unused=False))
        for i in range(grad.numel())
    ]
    return torch.stack(rows), params


@pytest.mark.parametrize(
    "inner_steps,meta_sgd,first_order",
    [
        (1, False, False),
        (2, False, False),
        (1, True, False),
        (2, True, False),
        (1, False, True),
        (1, True, True),
        (0, False, False),
    ],
)
@pytest.mark.parametrize("policy", ["gaussian", "categorical"])
def test_gauss_newton_hvp_equals_exact_kl_hessian(inner_steps, meta_sgd, first_order, policy):
    categorical = policy == "categorical"
    net = tiny_categorical_net(hidden=(4,)) if categorical else tiny_net(hidden=(4,))
    data = random_categorical_data if categorical else random_data
    names = [k for k, _ in net.named_parameters()]
    n = 3 if inner_steps else 2
    steps = [data(n, 6, seed=30 + j) for j in range(inner_steps)]
    objective = _objective(net, steps, data(n, 6, seed=40), first_order=first_order)
    theta = dict(net.named_parameters())
    g = torch.Generator().manual_seed(5)
    alpha = (
        {
            k: (0.05 + 0.1 * torch.rand(v.shape, generator=g, dtype=F64)).requires_grad_()
            for k, v in theta.items()
        }
        if meta_sgd
        else None
    )
    lr = alpha if meta_sgd else 0.1
    hess, params = _kl_hessian_autograd(objective, theta, alpha, lr)
    torch.testing.assert_close(hess, hess.T, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        fasts = objective.adapt(theta, lr)
    hvp = objective.gauss_newton_hvp(
        [{k: v.detach() for k, v in f.items()} for f in fasts], lr, meta_sgd
    )
    sizes = [p.numel() for p in params]
    for _ in range(3):
        v = torch.randn(sum(sizes), generator=g, dtype=F64)
        parts = v.split(sizes)
        v_theta = {k: parts[i].view_as(theta[k]) for i, k in enumerate(names)}
        v_alpha = (
            {k: parts[len(names) + i].view_as(theta[k]) for i, k in enumerate(names)}
            if meta_sgd
            else None
        )
        h_theta, h_alpha = hvp(v_theta, v_alpha)
        out = flat([h_theta[k] for k in names] + ([h_alpha[k] for k in names] if meta_sgd else []))
        torch.testing.assert_close(out, hess @ v, rtol=1e-9, atol=1e-12)
    # And the Hessian is the curvature of the KL itself: finite differences of its gradient.
    if not first_order:
        base = [p.detach().clone() for p in params]

        def kl_grad_at(vec):
            with torch.no_grad():
                for p, part in zip(params, vec.split(sizes)):
                    p.copy_(part.view_as(p))
            _, kl, _ = objective.surrogate(objective.adapt(theta, lr)[-1], old)
            out = flat(torch.autograd.grad(kl, params))
            with torch.no_grad():
                for p, b in zip(params, base):
                    p.copy_(b)
            return out

        with torch.no_grad():
            _, _, old = objective.surrogate(objective.adapt(theta, lr)[-1])
        x0, eps = flat(base), 1e-5
        fd = (kl_grad_at(x0 + eps * v) - kl_grad_at(x0 - eps * v)) / (2 * eps)
        torch.testing.assert_close(fd, hess @ v, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("meta_sgd", [False, True])
def test_trpo_step_same_with_gauss_newton_and_autograd_hvp(meta_sgd):
    results = []
    for hvp in ("gauss-newton", "autograd"):
        net = tiny_net()
        objective = _objective(net, [random_data(3, 8, seed=70)], random_data(3, 8, seed=71))
        theta = dict(net.named_parameters())
        alpha = (
            {k: torch.full_like(v, 0.1).requires_grad_() for k, v in theta.items()}
            if meta_sgd
            else None
        )
        cfg = MAMLTRPOConfig(hidden_sizes=(5,), hvp=hvp, max_kl=0.05)
        result, info = meta_trpo_step(objective, theta, alpha, alpha if meta_sgd else 0.1, cfg)
        assert result.accepted and info.hvp_calls == cfg.cg_iters + 1
        after = [p.detach() for p in theta.values()]
        results.append(flat(after + ([a.detach() for a in alpha.values()] if meta_sgd else [])))
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-8)


def test_hvp_subsample_is_the_product_on_strided_rows():
    net = tiny_net(hidden=(4,))
    steps = [random_data(2, 12, seed=50, pad=False)]
    objective = _objective(net, steps, random_data(2, 12, seed=51, pad=False))
    theta = dict(net.named_parameters())
    with torch.no_grad():
        fasts = [{k: v.detach() for k, v in f.items()} for f in objective.adapt(theta, 0.1)]
    v = {k: torch.randn_like(p) for k, p in theta.items()}
    full = flat(objective.gauss_newton_hvp(fasts, 0.1, False, stride=1)(v, None)[0].values())
    sub = flat(objective.gauss_newton_hvp(fasts, 0.1, False, stride=3)(v, None)[0].values())
    vf = flat(v.values())
    assert float(vf @ sub) > 0 and float(vf @ full) > 0
    assert not torch.allclose(full, sub)
    # The stride-3 product is exactly the full product of the same curvature on every
    # third row (weights renormalised), taken at the weights adapted on all rows.
    strided = _objective(net, [steps[0].subsample(3)], objective.post.subsample(3))
    expected = flat(strided.gauss_newton_hvp(fasts, 0.1, False, stride=1)(v, None)[0].values())
    torch.testing.assert_close(sub, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ TRPO safety
def test_rejected_line_search_keeps_parameters_and_never_raises():
    net = tiny_net()
    objective = _objective(net, [random_data(2, 8, seed=60)], random_data(2, 8, seed=61))
    surrogate = objective.surrogate

    def nan_candidates(fast, old=None):
        loss, kl, old_out = surrogate(fast, old)
        if not torch.is_grad_enabled():  # line search: every candidate has NaN policy outputs
            return loss * math.nan, kl * math.nan, old_out
        return loss, kl, old_out

    objective.surrogate = nan_candidates
    before = copy.deepcopy(net.state_dict())
    result, _ = meta_trpo_step(
        objective, dict(net.named_parameters()), None, 0.1, MAMLTRPOConfig(hidden_sizes=(5,))
    )
    assert not result.accepted and result.reason == "line search found no improving step"
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_nonfinite_gradient_is_rejected_without_update():
    net = tiny_net()
    data = random_data(2, 8, seed=62)
    bad = data._replace(advantage=data.advantage.clone())
    bad.advantage[0, 0] = math.inf
    objective = _objective(net, [data], bad)
    before = copy.deepcopy(net.state_dict())
    result, _ = meta_trpo_step(
        objective, dict(net.named_parameters()), None, 0.1, MAMLTRPOConfig(hidden_sizes=(5,))
    )
    assert not result.accepted
    assert result.reason in ("non-finite surrogate loss", "non-finite policy gradient")
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_learner_reports_rejected_step(monkeypatch, capsys):
    problem = RLProblem(Nav2DDistribution(horizon=8), episodes=1)
    learner = MAMLTRPO(
        problem, MAMLTRPOConfig(meta_batch_size=2, trajectories_per_task=2, hidden_sizes=(8,))
    )
    surrogate = MetaObjective.surrogate

    def nan_candidates(self, fast, old=None):
        loss, kl, old_out = surrogate(self, fast, old)
        if not torch.is_grad_enabled():  # line search candidates
            loss = loss * math.nan
        return loss, kl, old_out

    monkeypatch.setattr(MetaObjective, "surrogate", nan_candidates)
    before = learner.parameters_vector().clone()
    tasks = problem.sample_train_tasks(2, 0, 0)
    metrics = learner.train_iteration(tasks, torch.Generator().manual_seed(0))
    assert metrics["trpo_accepted"] == 0.0 and metrics["trpo_reject_code"] == 4.0
    assert torch.equal(learner.parameters_vector(), before)
    assert "TRPO step rejected" in capsys.readouterr().err


# ------------------------------------------------------------------ Meta-SGD vs MAML
def test_meta_sgd_with_constant_alpha_equals_maml():
    problem = RLProblem(Nav2DDistribution(horizon=12), episodes=1)
    kwargs = dict(meta_batch_size=3, trajectories_per_task=4, hidden_sizes=(16, 16), fast_lr=0.1)
    torch.manual_seed(0)
    maml = MAMLTRPO(problem, MAMLTRPOConfig(**kwargs))
    torch.manual_seed(0)
    msgd = MetaSGD(problem, MetaSGDConfig(**kwargs, learn_alpha=False))
    for it in range(2):
        tasks = problem.sample_train_tasks(3, 0, it)
        m1 = maml.train_iteration(tasks, torch.Generator().manual_seed(it))
        m2 = msgd.train_iteration(tasks, torch.Generator().manual_seed(it))
        assert m1["trpo_accepted"] == 1.0
        # Bit for bit: the same float32 operations, α a tensor of 0.1s instead of 0.1.
        for k in ("return", "return_pre", "loss_surrogate_after", "kl"):
            assert m1[k] == m2[k], k
    for (k, a), (_, b) in zip(maml.net.state_dict().items(), msgd.net.state_dict().items()):
        assert torch.equal(a, b), k
    tasks = problem.sample_test_tasks(3, 0)
    curves_1 = maml.evaluate(tasks, torch.Generator().manual_seed(9), baselines=False)
    curves_2 = msgd.evaluate(tasks, torch.Generator().manual_seed(9), baselines=False)
    assert torch.equal(curves_1["maml-trpo"].values, curves_2["meta-sgd"].values)
    assert curves_1["maml-trpo"].x == [0, 1, 2, 3]
    assert curves_1["maml-trpo"].x_label == "gradient step"


def test_meta_sgd_learns_alpha():
    problem = RLProblem(Nav2DDistribution(horizon=10), episodes=1)
    learner = MetaSGD(
        problem, MetaSGDConfig(meta_batch_size=3, trajectories_per_task=4, hidden_sizes=(8,))
    )
    before = torch.cat([a.detach().reshape(-1) for a in learner.alpha.values()]).clone()
    tasks = problem.sample_train_tasks(3, 0, 0)
    m = learner.train_iteration(tasks, torch.Generator().manual_seed(0))
    after = torch.cat([a.detach().reshape(-1) for a in learner.alpha.values()])
    assert m["trpo_accepted"] == 1.0 and not torch.equal(before, after)
    state = learner.state_dict()
    assert "alpha" in state["model"]
    clone = MetaSGD(problem, learner.config)
    clone.load_state_dict(state)
    assert torch.equal(clone.parameters_vector(), learner.parameters_vector())


# ------------------------------------------------------------------ linear baseline
def test_linear_baseline_fit_equals_closed_form_ridge():
    rng = np.random.default_rng(0)
    t, groups, per, d = 7, 2, 3, 2
    obs = torch.tensor(rng.normal(size=(t, groups * per, d)) * 4, dtype=torch.float32)
    reward = torch.tensor(rng.normal(size=(t, groups * per)), dtype=torch.float32)
    valid = torch.ones(t, groups * per, dtype=torch.bool)
    valid[5:, 1] = False  # row 1 terminated after 5 steps
    done = torch.zeros_like(valid)
    done[4, 1] = True
    done[-1] = True
    done[-1, 1] = False
    start = torch.zeros_like(valid)
    start[0] = True
    batch = TrajectoryBatch(
        obs=obs,
        action=torch.zeros(t, groups * per, 1),
        reward=reward * valid,
        terminated=done & False,
        truncated=done,
        episode_start=start,
        trial_start=start,
        valid=valid,
        log_prob=torch.zeros(t, groups * per),
        value=torch.zeros(t, groups * per),
        final_obs=torch.zeros_like(obs),
    )
    gamma, reg = 0.9, 1e-5
    values, returns = linear_baseline_values(batch, groups, gamma, reg)
    for g in range(groups):
        xs, ys, where = [], [], []
        for j in range(per):
            row = g * per + j
            n = int(valid[:, row].sum())
            o = np.clip(obs[:n, row].double().numpy(), -10, 10)
            s = np.arange(n)[:, None] / 100.0
            xs.append(np.concatenate([o, o**2, s, s**2, s**3, np.ones((n, 1))], axis=1))
            r = reward[:n, row].double().numpy()
            ret = np.array([sum(gamma**k * r[i + k] for k in range(n - i)) for i in range(n)])
            ys.append(ret)
            where.append((row, n))
        x, y = np.concatenate(xs), np.concatenate(ys)
        coef = np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T @ y)
        pred = np.split(x @ coef, np.cumsum([n for _, n in where])[:-1])
        for (row, n), p, ret in zip(where, pred, ys):
            np.testing.assert_allclose(returns[:n, row].numpy(), ret, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(values[:n, row].numpy(), p, rtol=1e-3, atol=1e-3)
            assert (values[n:, row] == 0).all()


def test_fit_ridge_matches_numpy_and_handles_singular_groups():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 20, 4))
    x[2] = 0.0  # a degenerate group: XᵀX = 0, solved through the ridge
    y = rng.normal(size=(3, 20))
    mask = np.ones((3, 20))
    mask[0, 15:] = 0
    out = fit_ridge(torch.tensor(x), torch.tensor(y), torch.tensor(mask), reg_coeff=1e-3)
    for g in range(3):
        xm, ym = x[g] * mask[g][:, None], y[g] * mask[g]
        ref = np.linalg.solve(xm.T @ xm + 1e-3 * np.eye(4), xm.T @ ym)
        np.testing.assert_allclose(out[g].numpy(), ref, rtol=1e-8, atol=1e-10)
    feats = linear_features(torch.full((1, 1, 2), 20.0), torch.tensor([[50]]))
    assert feats.tolist() == [[[10.0, 10.0, 100.0, 100.0, 0.5, 0.25, 0.125, 1.0]]]


# ------------------------------------------------------------------ acting
def test_fast_weight_policy_maps_chunked_rows_to_their_tasks():
    net = GaussianMLP(2, 2, (6,), "relu")
    n, r = 3, 4
    fast = {
        k: v.detach().unsqueeze(0).repeat(n, *([1] * v.dim())) for k, v in net.named_parameters()
    }
    for i in range(n):  # make the tasks' weights differ
        for v in fast.values():
            v[i] += 0.3 * i
    center, half = torch.zeros(2), torch.full((2,), 0.1)
    obs = torch.randn(n * r, 2)

    def inp(rows):
        b = rows.stop - rows.start
        return StepInput(
            obs[rows],
            torch.zeros(b, 2),
            torch.zeros(b),
            torch.zeros(b),
            torch.ones(b, dtype=torch.bool),
            torch.zeros(b, dtype=torch.long),
        )

    policy = FastWeightPolicy(net, fast, r, center, half)
    gen = torch.Generator().manual_seed(0)
    out = []
    for rows in (slice(0, 5), slice(5, 7), slice(7, 12)):  # chunks cutting through tasks
        state = policy.initial_state(rows.stop - rows.start, torch.device("cpu"))
        out.append(policy.step(inp(rows), state, gen))
    action = torch.cat([o.action for o in out])
    log_prob = torch.cat([o.log_prob for o in out])
    u = action / half
    for row in range(n * r):
        task = row // r
        w = {k: v[task] for k, v in fast.items()}
        expected = gaussian_log_prob(net.mean(w, obs[row]), w["log_std"], u[row])
        torch.testing.assert_close(log_prob[row], expected, rtol=1e-4, atol=1e-4)
    assert policy.rows_seen == n * r


def test_prepare_lays_out_each_tasks_trajectories_with_standardised_advantages():
    problem = RLProblem(Nav2DDistribution(horizon=5), episodes=1)
    learner = MAMLTRPO(
        problem, MAMLTRPOConfig(meta_batch_size=2, trajectories_per_task=3, hidden_sizes=(8,))
    )
    tasks = problem.sample_train_tasks(2, 0, 0)
    batch = learner.sampler.collect(
        learner.net, learner.theta(), tasks, 3, torch.Generator().manual_seed(0)
    )
    data = learner.sampler.prepare(batch, groups=2)
    t = batch.num_steps
    assert data.obs.shape == (2, 3 * t, 2)
    for i in range(2):
        for j in range(3):  # task i, trajectory j: rows j*T .. (j+1)*T - 1
            torch.testing.assert_close(data.obs[i, j * t : (j + 1) * t], batch.obs[:, i * 3 + j])
        w = data.weight[i]
        assert float(w.sum()) == pytest.approx(1.0)
        mean = float((data.advantage[i] * w).sum())
        var = float((data.advantage[i] ** 2 * w).sum()) - mean**2
        assert mean == pytest.approx(0.0, abs=1e-5) and var == pytest.approx(1.0, abs=1e-3)
    u = data.action * learner.sampler.half.reshape(-1) + learner.sampler.center.reshape(-1)
    torch.testing.assert_close(u[0, :t], batch.action[:, 0])


def test_collect_through_narrow_problem_matches_wide():
    dist = Nav2DDistribution(horizon=6)
    wide = RLProblem(dist, episodes=1)
    narrow = RLProblem(dist, episodes=1, max_width=5)  # chunks of 5 rows, tasks of 3 rows
    cfg = MAMLTRPOConfig(meta_batch_size=4, trajectories_per_task=3, hidden_sizes=(8,))
    torch.manual_seed(0)
    learner = MAMLTRPO(wide, cfg)
    tasks = wide.sample_train_tasks(4, 0, 0)
    params = {
        k: v.detach().unsqueeze(0).repeat(4, *([1] * v.dim()))
        for k, v in learner.net.named_parameters()
    }
    for i in range(4):  # each task its own weights: a row sent to the wrong task shows
        for name, v in params.items():
            if name != "log_std":
                v[i] += 0.5 * i
    # Near-deterministic (std e^-20): chunks draw their noise in another order, so only
    # then are the two collections comparable row by row, and tightly.
    params["log_std"] = params["log_std"] - 20.0
    a = learner.sampler.collect(learner.net, params, tasks, 3, torch.Generator().manual_seed(1))
    learner.problem = narrow
    learner.sampler.problem = narrow
    b = learner.sampler.collect(learner.net, params, tasks, 3, torch.Generator().manual_seed(1))
    assert a.obs.shape == b.obs.shape == (6, 12, 2)
    torch.testing.assert_close(a.obs, b.obs, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.action, b.action, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.reward, b.reward, atol=1e-5, rtol=0)
    # The premise: the four tasks' policies act differently (so a mix-up would be caught).
    first_actions = a.action[0].reshape(4, 3, 2)[:, 0]
    assert torch.cdist(first_actions, first_actions).add(torch.eye(4)).min() > 1e-2


@pytest.mark.parametrize("eval_trajectories,expected", [(0, 3), (5, 5)])
def test_adaptation_curve_samples_eval_trajectories_per_task(eval_trajectories, expected):
    problem = RLProblem(Nav2DDistribution(horizon=4), episodes=1)
    cfg = MAMLTRPOConfig(
        meta_batch_size=2,
        trajectories_per_task=3,
        hidden_sizes=(8,),
        eval_trajectories=eval_trajectories,
    )
    learner = MAMLTRPO(problem, cfg)
    tasks = problem.sample_train_tasks(2, 0, 0)
    widths = []
    collect = learner.sampler.collect

    def recording_collect(net, params, part, r, generator, **kw):
        widths.append(r)
        return collect(net, params, part, r, generator, **kw)

    learner.sampler.collect = recording_collect
    gen = torch.Generator().manual_seed(0)
    curve = learner.adaptation_curve(learner.net, learner.theta(), 0.1, tasks, gen, steps=2)
    assert curve.shape == (3, 2) and torch.isfinite(curve).all()
    assert widths == [expected] * 3  # one collection per step 0, 1, 2


def test_random_baseline_fine_tunes_one_initialisation_per_share_of_tasks(monkeypatch):
    problem = RLProblem(Nav2DDistribution(horizon=4), episodes=1)
    cfg = MAMLTRPOConfig(
        meta_batch_size=2, trajectories_per_task=2, hidden_sizes=(8,), eval_steps=1, random_inits=3
    )
    learner = MAMLTRPO(problem, cfg)
    tasks = problem.sample_train_tasks(7, 0, 0)
    seen = []  # (first weight, tasks fine-tuned from it)
    curve = learner.adaptation_curve

    def recording_curve(net, params, lr, part, generator, steps=None):
        seen.append((params["layers.0.weight"].detach().clone(), len(part)))
        return curve(net, params, lr, part, generator, steps)

    monkeypatch.setattr(learner, "adaptation_curve", recording_curve)
    values = maml_baselines.random_init_curve(learner, tasks, 5, torch.Generator().manual_seed(0))
    assert values.shape == (2, 7) and torch.isfinite(values).all()
    assert [n for _, n in seen] == [2, 2, 3]  # every task once, in order
    first = [w for w, _ in seen]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    # More inits than tasks: one initialisation per task.
    seen.clear()
    maml_baselines.random_init_curve(learner, tasks[:2], 5, torch.Generator().manual_seed(0))
    assert [n for _, n in seen] == [1, 1]


def test_negative_eval_trajectories_is_rejected():
    with pytest.raises(ValueError, match="eval_trajectories"):
        MAMLTRPOConfig(eval_trajectories=-1)
    with pytest.raises(ValueError, match="eval_lr_scale"):
        MAMLTRPOConfig(eval_lr_scale=0.0)


@pytest.mark.parametrize("meta_sgd", [False, True])
def test_eval_lr_scale_multiplies_the_meta_test_step(meta_sgd):
    # Halving the meta-test step (the MAML authors' 2D-navigation test protocol) is the
    # same curve as passing half the step size, for a number (MAML) and for Meta-SGD's
    # per-parameter alpha alike; and it differs from the unscaled curve.
    problem = RLProblem(Nav2DDistribution(horizon=4), episodes=1)
    tasks = problem.sample_train_tasks(3, 0, 0)

    def curve(scale, lr_factor):
        cls, cfg_cls = (MetaSGD, MetaSGDConfig) if meta_sgd else (MAMLTRPO, MAMLTRPOConfig)
        torch.manual_seed(0)
        cfg = cfg_cls(meta_batch_size=2, trajectories_per_task=3, hidden_sizes=(8,),
                      fast_lr=0.4, eval_lr_scale=scale)  # fmt: skip
        learner = cls(problem, cfg)
        lr = learner.inner_lr()
        lr = {k: v * lr_factor for k, v in lr.items()} if meta_sgd else lr * lr_factor
        gen = torch.Generator().manual_seed(1)
        return learner.adaptation_curve(learner.net, learner.theta(), lr, tasks, gen, steps=2)

    halved, full = curve(0.5, 1.0), curve(1.0, 1.0)
    torch.testing.assert_close(halved, curve(1.0, 0.5), rtol=0, atol=1e-5)
    torch.testing.assert_close(halved, curve([0.5], 1.0), rtol=0, atol=1e-5)
    assert not torch.allclose(halved[1:], full[1:], atol=1e-3)
    # Per step, the last repeated: [1, 0.5] takes the full first step (the same samples
    # and returns up to step 1) and a half second one.
    schedule = curve([1.0, 0.5], 1.0)
    torch.testing.assert_close(schedule[:2], full[:2], rtol=0, atol=1e-6)
    assert not torch.allclose(schedule[2], full[2], atol=1e-3)
    with pytest.raises(ValueError, match="eval_lr_scale"):
        MAMLTRPOConfig(eval_lr_scale=[])
    for bad in ([1.0, -0.5], [1.0, "a"], [1.0, [2.0]], [True]):
        with pytest.raises(ValueError, match="eval_lr_scale must be a positive number"):
            MAMLTRPOConfig(eval_lr_scale=bad)


# ------------------------------------------------------------------ CLI
ALGOS = {"maml-trpo": "agents.maml:MAMLTRPO", "meta-sgd": "agents.meta_sgd:MetaSGD"}
TINY = [
    "--set",
    "algo.meta_batch_size=2",
    "--set",
    "algo.trajectories_per_task=2",
    "--set",
    "algo.hidden_sizes=[8, 8]",
    "--set",
    "algo.eval_steps=1",
    "--set",
    "algo.baseline_iterations=1",
    "--set",
    "algo.baseline_trajectories=4",
    "--set",
    "algo.sb3_tasks=1",
    "--set",
    "algo.sb3_timesteps=32",
    "--set",
    "train.eval_tasks=2",
    "--set",
    "train.eval_every=2",
    "--no-progress",
]


def _algo_name(name):
    return name if name in registry.all_algos() else ALGOS[name]


@pytest.mark.parametrize(
    "env,horizon", [("nav2d", 8), ("halfcheetah-dir", 6), ("bandit", None), ("tabular-mdp", 4)]
)
@pytest.mark.parametrize("algo", ["maml-trpo", "meta-sgd"])
def test_cli_train_and_eval_smoke(algo, env, horizon, tmp_path, capsys, monkeypatch):
    """Gaussian policies on the Box envs, categorical ones on the Discrete envs."""
    run_dir = tmp_path / f"{algo}-{env}"
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its compiler warnings to ./MUJOCO_LOG.TXT
    extra = ["--set", f"env.horizon={horizon}"] if horizon else ["--set", "trial.episodes=3"]
    args = ["train", _algo_name(algo), env, "--iterations", "2", "--logdir", str(run_dir)]
    code = main([*args, *extra, *TINY])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert_trained(run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == ["0", "1"]
    assert rows[1]["meta_test/return"] != ""
    assert float(rows[0]["meta_train/trpo_accepted"]) in (0.0, 1.0)
    code = main(["eval", str(run_dir), "--tasks", "2"])
    _, err = capsys.readouterr()
    assert code == 0, err
    with open(run_dir / "eval" / "adaptation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    learners = {r["learner"] for r in table}
    assert {_algo_name(algo), "random", "pretrained", "oracle"} <= learners
    # SB3 PPO's learning curve is against env steps: its own file and plot panel.
    with open(run_dir / "eval" / "other_curves.csv", newline="") as f:
        other = list(csv.DictReader(f))
    assert {r["learner"] for r in other} == {"sb3-ppo"}
    assert {r["x_label"] for r in other} == {"env steps"}
    xs = [r["x"] for r in table if r["learner"] == _algo_name(algo)]
    assert xs == ["0", "1"]
    # Per-task values behind each mean, with the task's parameters on gymnasium tasks.
    with open(run_dir / "eval" / "per_task.csv", newline="") as f:
        per_task = list(csv.DictReader(f))
    assert "sb3-ppo" not in {r["learner"] for r in per_task}
    mine = [r for r in per_task if r["learner"] == _algo_name(algo)]
    assert [(r["x"], r["task"]) for r in mine] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    for x in ("0", "1"):
        mean = sum(float(r["value"]) for r in mine if r["x"] == x) / 2
        row = next(r for r in table if r["learner"] == _algo_name(algo) and r["x"] == x)
        assert mean == pytest.approx(float(row["mean_return"]), rel=1e-4, abs=1e-4)
    if env == "halfcheetah-dir":
        assert {r["direction"] for r in mine} <= {"1.0", "-1.0"}
    with open(run_dir / "eval" / "summary.csv", newline="") as f:
        summary = {r["learner"]: r for r in csv.DictReader(f)}
    if env in ("bandit", "tabular-mdp"):
        # Positive optima: the headline (a mean return per episode after the last step)
        # over the per-episode optimum; SB3's curve covers other tasks, so no figure.
        assert 0 < float(summary[_algo_name(algo)]["normalised"]) < 1.1
        assert summary["sb3-ppo"]["normalised"] == ""


def test_cli_eval_no_baselines_skips_maml_baselines(tmp_path, capsys):
    """``metarl eval --no-baselines`` writes MAML's own curve, unchanged, and trains none of
    the fine-tuned baselines."""
    run_dir = tmp_path / "run"
    args = ["train", "maml-trpo", "nav2d", "--iterations", "1", "--logdir", str(run_dir)]
    assert main([*args, "--set", "env.horizon=5", *TINY]) == 0
    assert main(["eval", str(run_dir), "--tasks", "3"]) == 0
    assert (
        main(["eval", str(run_dir), "--tasks", "3", "--no-baselines", "--out", str(tmp_path / "o")])
        == 0
    )
    capsys.readouterr()

    def rows(path):
        with open(path / "adaptation.csv", newline="") as f:
            return list(csv.DictReader(f))

    full, alone = rows(run_dir / "eval"), rows(tmp_path / "o")
    assert {r["learner"] for r in alone} == {"maml-trpo"}
    assert {"random", "pretrained", "oracle"} <= {r["learner"] for r in full}
    assert alone == [r for r in full if r["learner"] == "maml-trpo"]
    assert not (tmp_path / "o" / "other_curves.csv").exists()


def test_cli_eval_set_changes_the_meta_test_protocol_only(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "maml-trpo", "nav2d", "--iterations", "1", "--logdir", str(run_dir)]
    assert main([*args, "--set", "env.horizon=5", *TINY]) == 0
    base = ["eval", str(run_dir), "--tasks", "3", "--no-baselines"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    sets = ["--set", "algo.eval_steps=2", "--set", "algo.eval_lr_scale=[1.0, 0.5]"]
    assert main([*base, *sets, "--out", str(tmp_path / "set")]) == 0
    capsys.readouterr()
    with open(tmp_path / "set" / "adaptation.csv", newline="") as f:
        xs = [r["x"] for r in csv.DictReader(f)]
    assert xs == ["0", "1", "2"]  # eval_steps=2 took effect (the run's config says 1)
    record = json.loads((tmp_path / "set" / "evaluation.json").read_text())
    assert record["overrides"] == ["algo.eval_steps=2", "algo.eval_lr_scale=[1.0, 0.5]"]
    assert record["iteration"] == 1 and record["tasks"] == 3 and record["baselines"] is False
    assert json.loads((tmp_path / "plain" / "evaluation.json").read_text())["overrides"] == []
    # Anything that is not the meta-test protocol would evaluate another learner.
    for bad, message in [
        ("algo.fast_lr=1.0", "eval --set only takes algo.eval_* options"),
        ("train.seed=3", "eval --set only takes algo.eval_* options"),
        ("algo.eval_bogus=1", "eval_bogus"),
        ("algo.eval_lr_scale=-1", "eval_lr_scale must be a positive number"),
    ]:
        code = main([*base, "--set", bad, "--out", str(tmp_path / "bad")])
        _, err = capsys.readouterr()
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
