"""Policy losses against independent scalar float64 computations, gradients included."""

from __future__ import annotations

import math

import pytest
import torch

from cispo.algorithms import AGGREGATIONS, POLICY_LOSSES, compute_policy_loss

EPS_LOW, EPS_HIGH = 0.2, 0.28


def make_batch(seed: int = 0, batch: int = 6, tokens: int = 7, spread: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, tokens, generator=g, dtype=torch.float64) * 4.0
    new = old + (torch.rand(batch, tokens, generator=g, dtype=torch.float64) - 0.5) * 2 * spread
    adv = torch.randn(batch, generator=g, dtype=torch.float64)
    mask = (torch.rand(batch, tokens, generator=g) > 0.25).double()
    mask[:, 0] = 1.0
    groups = torch.arange(batch) // 2
    return new, old, adv, mask, groups


# ---- scalar references (plain Python floats, one token at a time) ---------------------------------

def ref_token_loss(name, lp, old, a, el, eh, opts):
    r = math.exp(lp - old)
    if name == "cispo":
        w = min(max(r, 1 - el), 1 + eh)
        loss = -w * a * lp
        if opts.get("unified_mask") and ((a > 0 and r > 1 + opts["mask_eps_high"]) or (a < 0 and r < 1 - opts["mask_eps_low"])):
            loss = 0.0
        return loss
    clipped = min(max(r, 1 - el), 1 + eh)
    loss = max(-r * a, -clipped * a)
    c = opts.get("dual_clip")
    if c is not None and a < 0:
        loss = min(loss, -c * a)
    return loss


def ref_aggregate(rows, mask_rows, mode, groups, budget):
    """rows: per-token losses (list of lists); mask_rows: 0/1."""
    if mode == "token-mean":
        num = sum(l for row, m in zip(rows, mask_rows) for l, k in zip(row, m) if k)
        return num / sum(sum(m) for m in mask_rows)
    if mode == "seq-mean-token-mean":
        seqs = [sum(l for l, k in zip(row, m) if k) / sum(m) for row, m in zip(rows, mask_rows) if sum(m)]
        return sum(seqs) / len(seqs)
    if mode == "seq-mean-token-sum-norm":
        seqs = [sum(l for l, k in zip(row, m) if k) / budget for row, m in zip(rows, mask_rows) if sum(m)]
        return sum(seqs) / len(seqs)
    per_group = {}
    for row, m, g in zip(rows, mask_rows, groups):
        s, n = per_group.get(g, (0.0, 0))
        per_group[g] = (s + sum(l for l, k in zip(row, m) if k), n + sum(m))
    vals = [s / n for s, n in per_group.values() if n]
    return sum(vals) / len(vals)


def reference_loss(name, new, old, adv, mask, groups, agg, opts):
    rows, mask_rows = [], []
    for i in range(new.shape[0]):
        rows.append([ref_token_loss(name, new[i, t].item(), old[i, t].item(), adv[i].item(), EPS_LOW, EPS_HIGH, opts)
                     for t in range(new.shape[1])])
        mask_rows.append([int(v) for v in mask[i].tolist()])
    return ref_aggregate(rows, mask_rows, agg, groups.tolist(), new.shape[1])


LOSS_OPTIONS = {
    "cispo": [{}, {"unified_mask": True, "mask_eps_low": 0.2, "mask_eps_high": 0.2}],
    "grpo": [{}, {"dual_clip": 3.0}],
    "dapo": [{}],
}


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("name,opts", [(n, o) for n, opts in LOSS_OPTIONS.items() for o in opts])
def test_loss_value_matches_scalar_reference(name, opts, agg):
    new, old, adv, mask, groups = make_batch(seed=len(agg) + len(opts))
    if opts.get("dual_clip"):
        adv = -adv.abs() * 2  # make the dual clip bind on some tokens
        new = old + torch.linspace(-0.5, 1.6, new.numel(), dtype=torch.float64).reshape(new.shape)
    loss, metrics = compute_policy_loss(name, new, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH,
                                        agg=agg, group_ids=groups, **opts)
    expected = reference_loss(name, new, old, adv, mask, groups, agg, opts)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_gspo_matches_sequence_level_reference():
    new, old, adv, mask, _ = make_batch(seed=3, spread=0.05)
    el, eh = 3e-3, 4e-3
    loss, _ = compute_policy_loss("gspo", new, old, adv, mask, eps_low=el, eps_high=eh)
    seq_losses = []
    for i in range(new.shape[0]):
        toks = [t for t in range(new.shape[1]) if mask[i, t]]
        s = math.exp(sum(new[i, t].item() - old[i, t].item() for t in toks) / len(toks))
        a = adv[i].item()
        seq_losses.append(max(-s * a, -min(max(s, 1 - el), 1 + eh) * a))
    assert loss.item() == pytest.approx(sum(seq_losses) / len(seq_losses), rel=1e-12)


def test_cispo_gradient_is_clipped_weight_times_advantage_token_by_token():
    new, old, adv, mask, _ = make_batch(seed=1, spread=1.0)
    lp = new.clone().requires_grad_(True)
    loss, _ = compute_policy_loss("cispo", lp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    loss.backward()
    n = mask.sum().item()
    for i in range(new.shape[0]):
        for t in range(new.shape[1]):
            r = math.exp(new[i, t].item() - old[i, t].item())
            w = min(max(r, 1 - EPS_LOW), 1 + EPS_HIGH)
            expected = -w * adv[i].item() / n if mask[i, t] else 0.0
            assert lp.grad[i, t].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert (lp.grad[mask.bool()] != 0).all(), "every response token keeps a gradient under CISPO"


def test_cispo_no_gradient_flows_through_the_weight():
    """The bug other frameworks shipped: reusing the PPO surrogate, so d/dlp includes d(ratio)/dlp."""
    new, old, adv, mask, _ = make_batch(seed=2, spread=0.1)  # ratios inside the clip range
    lp = new.clone().requires_grad_(True)
    compute_policy_loss("cispo", lp, old, adv, mask, eps_low=10.0, eps_high=10.0)[0].backward()
    r = torch.exp(new - old)
    n = mask.sum()
    no_weight_grad = -r * adv[:, None] * mask / n
    with_weight_grad = -(r + r * new) * adv[:, None] * mask / n  # d/dlp [r * lp] = r + r * lp
    torch.testing.assert_close(lp.grad, no_weight_grad, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(lp.grad, with_weight_grad)


def test_cispo_with_unbounded_clip_is_off_policy_reinforce():
    new, old, adv, mask, _ = make_batch(seed=4, spread=2.0)
    lp = new.clone().requires_grad_(True)
    loss, metrics = compute_policy_loss("cispo", lp, old, adv, mask, eps_low=1e9, eps_high=1e9)
    loss.backward()
    r = torch.exp(new - old)
    expected_loss = -(r * adv[:, None] * new * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    torch.testing.assert_close(lp.grad, -r * adv[:, None] * mask / mask.sum(), rtol=1e-12, atol=1e-15)
    assert metrics["is_clip_frac_high"] == 0.0 and metrics["is_clip_frac_low"] == 0.0


def test_cispo_unified_mask_without_is_clip_has_the_ppo_clip_gradient():
    new, old, adv, mask, _ = make_batch(seed=5, spread=0.8)
    ppo_eps = 0.2
    a = new.clone().requires_grad_(True)
    compute_policy_loss("cispo", a, old, adv, mask, eps_low=1e9, eps_high=1e9, unified_mask=True,
                        mask_eps_low=ppo_eps, mask_eps_high=ppo_eps)[0].backward()
    b = new.clone().requires_grad_(True)
    compute_policy_loss("dapo", b, old, adv, mask, eps_low=ppo_eps, eps_high=ppo_eps, agg="token-mean")[0].backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    assert (a.grad[mask.bool()] == 0).any(), "the mask must actually drop some tokens in this test"


def test_on_policy_cispo_and_dapo_gradients_are_identical():
    new, _, adv, mask, _ = make_batch(seed=6)
    a = new.clone().requires_grad_(True)
    b = new.clone().requires_grad_(True)
    la, ma = compute_policy_loss("cispo", a, new, adv, mask, eps_low=1.0, eps_high=4.0)
    lb, mb = compute_policy_loss("dapo", b, new, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    la.backward(), lb.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    assert ma["dropped_token_frac"] == mb["dropped_token_frac"] == 0.0


def test_off_policy_cispo_and_dapo_differ_exactly_where_dapo_drops_tokens():
    new, old, adv, mask, _ = make_batch(seed=7, spread=0.6)
    a = new.clone().requires_grad_(True)
    b = new.clone().requires_grad_(True)
    # Same clip range for the IS weight and the PPO clip, so only dropping differs.
    _, ma = compute_policy_loss("cispo", a, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    compute_policy_loss("cispo", a, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)[0].backward()
    _, mb = compute_policy_loss("dapo", b, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    compute_policy_loss("dapo", b, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)[0].backward()
    r = torch.exp(new - old)
    a_pos = adv[:, None].expand_as(r) > 0
    dropped = mask.bool() & ((a_pos & (r > 1 + EPS_HIGH)) | (~a_pos & (r < 1 - EPS_LOW)))
    assert dropped.any()
    assert (b.grad[dropped] == 0).all() and (a.grad[dropped] != 0).all()
    kept = mask.bool() & ~dropped
    # Inside the range both are -r*A/N; outside but unclipped (e.g. A>0, r<1-eps) DAPO keeps r, CISPO uses clip(r).
    inside = kept & (r >= 1 - EPS_LOW) & (r <= 1 + EPS_HIGH)
    torch.testing.assert_close(a.grad[inside], b.grad[inside], rtol=1e-12, atol=1e-15)
    assert ma["dropped_token_frac"] == 0.0
    assert mb["dropped_token_frac"] == pytest.approx(dropped.sum().item() / mask.sum().item())


def test_grpo_kl_k3_is_nonnegative_and_zero_when_policies_agree():
    new, old, adv, mask, _ = make_batch(seed=8)
    ref = new + torch.randn_like(new) * 0.5
    loss_same, m_same = compute_policy_loss("grpo", new, old, adv, mask, eps_low=0.2, eps_high=0.2,
                                            ref_log_probs=new.clone(), kl_coef=0.1)
    loss_nokl, _ = compute_policy_loss("grpo", new, old, adv, mask, eps_low=0.2, eps_high=0.2)
    assert m_same["kl_ref"] == 0.0
    assert loss_same.item() == pytest.approx(loss_nokl.item(), rel=1e-12)
    _, m_diff = compute_policy_loss("grpo", new, old, adv, mask, eps_low=0.2, eps_high=0.2, ref_log_probs=ref,
                                    kl_coef=0.1)
    k3 = torch.exp(ref - new) - (ref - new) - 1
    assert (k3 >= 0).all()
    assert m_diff["kl_ref"] == pytest.approx(((k3 * mask).sum() / mask.sum()).item(), rel=1e-12)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_grpo_kl_term_value_and_gradient(estimator):
    new, old, adv, mask, groups = make_batch(seed=9)
    ref = new + torch.randn_like(new) * 0.3
    beta = 0.04
    lp = new.clone().requires_grad_(True)
    loss, _ = compute_policy_loss("grpo", lp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, ref_log_probs=ref,
                                  kl_coef=beta, kl_estimator=estimator)
    base = reference_loss("grpo", new, old, adv, mask, groups, "seq-mean-token-mean", {})
    d = (new - ref)
    kl = {"k1": d, "k2": 0.5 * d ** 2, "k3": torch.exp(-d) + d - 1}[estimator]
    seq_kl = (kl * mask).sum(-1) / mask.sum(-1)
    assert loss.item() == pytest.approx(base + beta * seq_kl.mean().item(), rel=1e-10)
    loss.backward()
    dkl = {"k1": torch.ones_like(d), "k2": d, "k3": 1 - torch.exp(-d)}[estimator]
    r = torch.exp(new - old)
    a = adv[:, None]
    inside = ~(((a > 0) & (r > 1 + EPS_HIGH)) | ((a < 0) & (r < 1 - EPS_LOW)))
    dpg = torch.where(inside, -r * a, torch.zeros_like(r))
    expected = (dpg + beta * dkl) * mask / mask.sum(-1, keepdim=True) / new.shape[0]
    torch.testing.assert_close(lp.grad, expected, rtol=1e-10, atol=1e-14)


def test_k3_unclamped_by_default_and_clamped_like_verl_on_request():
    """DeepSeekMath's k3 has no clamp: a token 15 nats more likely under pi_ref keeps its full value and
    gradient. kl_clamp=10 reproduces verl: the value saturates at 10 and that token's KL gradient is 0."""
    from cispo.algorithms import kl_penalty

    d = torch.tensor([[-15.0, 0.3, -0.2]], dtype=torch.float64)  # log pi_theta - log pi_ref
    ref = torch.zeros_like(d)
    lp = d.clone().requires_grad_(True)
    k3 = kl_penalty(lp, ref, "k3")
    expected = torch.exp(-d) + d - 1
    torch.testing.assert_close(k3.detach(), expected, rtol=1e-12, atol=0)
    k3.sum().backward()
    torch.testing.assert_close(lp.grad, 1 - torch.exp(-d), rtol=1e-12, atol=0)
    assert abs(lp.grad[0, 0].item()) > 1e6

    lp.grad = None
    clamped = kl_penalty(lp, ref, "k3", clamp=10.0)
    assert clamped[0, 0].item() == 10.0
    torch.testing.assert_close(clamped[0, 1:].detach(), expected[0, 1:], rtol=1e-12, atol=0)
    clamped.sum().backward()
    assert lp.grad[0, 0].item() == 0.0
    torch.testing.assert_close(lp.grad[0, 1:], (1 - torch.exp(-d))[0, 1:], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="kl_clamp"):
        kl_penalty(lp, ref, "k3", clamp=0.0)


def test_grpo_and_dapo_share_one_ppo_clip_body():
    assert POLICY_LOSSES["grpo"] is POLICY_LOSSES["dapo"]


def test_truncated_importance_sampling_scales_each_token():
    new, old, adv, mask, _ = make_batch(seed=10)
    rollout = old + torch.randn_like(old) * 0.5
    cap = 2.0
    loss, m = compute_policy_loss("cispo", new, old, adv, mask, eps_low=1.0, eps_high=4.0,
                                  rollout_log_probs=rollout, tis_cap=cap)
    w = torch.exp(new - old).clamp(0.0, 5.0)
    tis = torch.exp(old - rollout).clamp(max=cap)
    expected = -(w * adv[:, None] * new * tis * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert m["tis_weight_mean"] == pytest.approx(((tis * mask).sum() / mask.sum()).item(), rel=1e-12)


def test_diagnostics_count_clipped_and_low_prob_dropped_tokens_by_hand():
    # 1 sequence, 4 tokens: ratios 1.5 (A>0 -> dropped by DAPO), 0.5, 1.0, 1.1; old probs 0.05, 0.5, 0.05, 0.5
    old = torch.log(torch.tensor([[0.05, 0.5, 0.05, 0.5]], dtype=torch.float64))
    new = old + torch.log(torch.tensor([[1.5, 0.5, 1.0, 1.1]], dtype=torch.float64))
    adv = torch.tensor([1.0], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.float64)
    _, m = compute_policy_loss("dapo", new, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert m["is_clip_frac_high"] == 0.25 and m["is_clip_frac_low"] == 0.25
    assert m["dropped_token_frac"] == 0.25  # only r=1.5 with A>0; r=0.5 with A>0 keeps its gradient
    assert m["dropped_token_frac_low_prob"] == 0.5  # 1 of the 2 low-probability tokens
    assert m["is_weight_max"] == pytest.approx(1.5)
    assert m["is_weight_mean"] == pytest.approx((1.5 + 0.5 + 1.0 + 1.1) / 4)
    expected_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.0, 1.1)) / 4
    assert m["approx_kl_old_new"] == pytest.approx(expected_kl, rel=1e-12)
    _, mc = compute_policy_loss("cispo", new, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert mc["dropped_token_frac"] == 0.0 and mc["dropped_token_frac_low_prob"] == 0.0


def test_entropy_diagnostic_matches_direct_computation():
    new, old, adv, mask, _ = make_batch(seed=11)
    logits = torch.randn(*new.shape, 50, dtype=torch.float64)
    _, m = compute_policy_loss("cispo", new, old, adv, mask, eps_low=1.0, eps_high=4.0, logits=logits)
    p = torch.softmax(logits, -1)
    ent = -(p * torch.log(p)).sum(-1)
    assert m["entropy"] == pytest.approx(((ent * mask).sum() / mask.sum()).item(), rel=1e-5)


def test_masked_padding_with_garbage_log_probs_does_not_leak():
    new, old, adv, mask, _ = make_batch(seed=12)
    old_garbage = old.clone()
    old_garbage[mask == 0] = -500.0  # exp(new - old) would overflow if not masked
    for name in POLICY_LOSSES:
        a, _ = compute_policy_loss(name, new, old, adv, mask, eps_low=0.2, eps_high=0.28)
        b, _ = compute_policy_loss(name, new, old_garbage, adv, mask, eps_low=0.2, eps_high=0.28)
        assert torch.isfinite(b) and b.item() == pytest.approx(a.item(), rel=1e-12), name


# ---- bad input -------------------------------------------------------------------------------------

def _call(**overrides):
    new, old, adv, mask, _ = make_batch()
    kwargs = dict(name="cispo", log_probs=new, old_log_probs=old, advantages=adv, mask=mask, eps_low=0.2, eps_high=0.28)
    kwargs.update(overrides)
    name = kwargs.pop("name")
    return compute_policy_loss(name, **kwargs)


@pytest.mark.parametrize("overrides,needle", [
    ({"name": "ppo2"}, "name='ppo2'"),
    ({"agg": "mean"}, "agg='mean'"),
    ({"kl_estimator": "k4"}, "kl_estimator='k4'"),
    ({"eps_low": -0.1}, "eps_low"),
    ({"eps_high": float("nan")}, "eps_high"),
    ({"old_log_probs": torch.zeros(6, 5, dtype=torch.float64)}, "old_log_probs has shape (6, 5)"),
    ({"advantages": torch.zeros(5, dtype=torch.float64)}, "advantages has shape (5,)"),
    ({"mask": torch.full((6, 7), 0.5, dtype=torch.float64)}, "mask must contain only 0 and 1"),
    ({"log_probs": torch.full((6, 7), float("nan"), dtype=torch.float64)}, "log_probs contains 42 NaN/inf"),
    ({"advantages": torch.tensor([1.0, float("inf"), 0, 0, 0, 0], dtype=torch.float64)}, "advantages contains 1"),
    ({"kl_coef": 0.1}, "needs ref_log_probs"),
    ({"unified_mask": True}, "mask_eps_low"),
    ({"dual_clip": 3.0}, "options of loss 'cispo': unknown option(s) ['dual_clip']"),
    ({"rollout_log_probs": torch.zeros(6, 7, dtype=torch.float64)}, "tis_cap is required"),
    ({"agg": "prompt-mean"}, "needs group_ids"),
])
def test_bad_input_raises_value_error_naming_the_argument(overrides, needle):
    with pytest.raises(ValueError) as err:
        _call(**overrides)
    assert needle in str(err.value)


def test_dual_clip_below_one_is_rejected():
    with pytest.raises(ValueError, match="dual_clip"):
        _call(name="grpo", dual_clip=0.5)
