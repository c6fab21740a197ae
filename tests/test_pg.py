"""Analytic checks of the policy-gradient core."""

import math

import torch

from metarl.pg import conjugate_gradient, discounted_returns, gae, next_values, trpo_step


def test_gae_toy_chain_known_answer():
    # One row: rewards 1, 2, 3 then termination; V = 0.5 everywhere.
    # δ = [1 + γ·0.5 − 0.5, 2 + γ·0.5 − 0.5, 3 − 0.5] (last step terminal: no bootstrap).
    gamma, lam = 0.9, 0.8
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.full((3, 1), 0.5)
    done = torch.tensor([[False], [False], [True]])
    nv = next_values(v, torch.zeros_like(v), done)
    adv, ret = gae(r, v, nv, done, done, gamma, lam)
    d = [1 + gamma * 0.5 - 0.5, 2 + gamma * 0.5 - 0.5, 3 - 0.5]
    a2 = d[2]
    a1 = d[1] + gamma * lam * a2
    a0 = d[0] + gamma * lam * a1
    assert torch.allclose(adv.squeeze(1), torch.tensor([a0, a1, a2]))
    assert torch.allclose(ret, adv + v)


def test_gae_bootstraps_on_truncation_not_termination():
    r = torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[0.0, 0.0]])
    boot = torch.tensor([[10.0, 10.0]])  # value of the final observation
    cut = torch.tensor([[True, True]])
    terminal = torch.tensor([[False, True]])  # row 0 truncated, row 1 terminated
    adv, _ = gae(r, v, next_values(v, boot, cut), terminal, cut, gamma=0.5, lam=0.9)
    assert adv.tolist() == [[1.0 + 0.5 * 10.0, 1.0]]


def test_gae_lambda_one_equals_discounted_return_minus_value():
    torch.manual_seed(0)
    r = torch.randn(6, 3)
    cut = torch.zeros(6, 3, dtype=torch.bool)
    cut[2, 0] = cut[-1] = True
    v = torch.randn(6, 3)
    nv = next_values(v, torch.zeros_like(v), cut)
    adv, _ = gae(r, v, nv, cut, cut, gamma=0.95, lam=1.0)
    # Reward-to-go by a plain loop, independent of gae() (which discounted_returns uses).
    expected = torch.zeros_like(r)
    for b in range(r.shape[1]):
        running = 0.0
        for t in reversed(range(r.shape[0])):
            running = float(r[t, b]) + (0.0 if cut[t, b] else 0.95 * running)
            expected[t, b] = running
    assert torch.allclose(adv, expected - v, atol=1e-5)
    assert torch.allclose(discounted_returns(r, cut, 0.95), expected, atol=1e-5)


def test_gae_does_not_leak_across_cuts():
    r = torch.tensor([[0.0], [100.0]])
    cut = torch.tensor([[True], [True]])
    adv, _ = gae(r, torch.zeros(2, 1), torch.zeros(2, 1), cut, cut, 1.0, 1.0)
    assert adv[0, 0] == 0.0 and adv[1, 0] == 100.0


def test_conjugate_gradient_solves_spd_system():
    torch.manual_seed(1)
    m = torch.randn(8, 8, dtype=torch.float64)
    a = m @ m.T + 8 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=50)
    assert torch.allclose(a @ x, b, atol=1e-8)


def _bandit_policy_problem():
    # A softmax policy over 4 actions with fixed advantages: the surrogate improves by
    # moving probability towards action 3.
    torch.manual_seed(0)
    logits = torch.zeros(4, requires_grad=True)
    actions = torch.randint(0, 4, (512,))
    adv = (actions == 3).float() - 0.25
    old_logp = torch.log_softmax(logits.detach(), -1)[actions]
    old_probs = torch.softmax(logits.detach(), -1)

    def loss_fn():
        logp = torch.log_softmax(logits, -1)[actions]
        return -(torch.exp(logp - old_logp) * adv).mean()

    def kl_fn():
        logp = torch.log_softmax(logits, -1)
        return (old_probs * (old_probs.log() - logp)).sum()

    return logits, loss_fn, kl_fn


def test_trpo_step_respects_kl_bound_and_improves():
    logits, loss_fn, kl_fn = _bandit_policy_problem()
    before = float(loss_fn().detach())
    result = trpo_step([logits], loss_fn, kl_fn, max_kl=0.01)
    assert result.accepted
    assert result.kl <= 0.01 + 1e-9
    assert float(loss_fn().detach()) < before
    kl = float(kl_fn().detach())
    assert kl == result.kl or math.isclose(kl, result.kl, rel_tol=1e-5)
    # The natural step goes to the trust-region boundary (up to the quadratic approximation).
    assert result.kl > 0.005
    assert int(torch.softmax(logits.detach(), -1).argmax()) == 3


def test_trpo_rejected_step_keeps_parameters():
    logits, _, kl_fn = _bandit_policy_problem()
    before = logits.detach().clone()

    def nan_loss():
        return (logits * float("nan")).sum()

    result = trpo_step([logits], nan_loss, kl_fn)
    assert not result.accepted and "non-finite" in result.reason
    assert torch.equal(logits.detach(), before)

    def flat_loss():  # no improving direction exists: line search must give up
        return (logits * 0).sum() + 1.0

    result = trpo_step([logits], flat_loss, kl_fn)
    assert not result.accepted
    assert torch.equal(logits.detach(), before)
