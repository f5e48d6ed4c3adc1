"""Unlearning objectives (sinkprobe.training.objectives): every loss against hand arithmetic,
plus gradient / hook behaviour on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import random_llama
from transformers import LlamaForCausalLM

from sinkprobe.training.objectives import (
    LayerOutputCapture,
    ValueNormCapture,
    default_rmu_layers,
    gather_sink_norms,
    kl_retain_loss,
    npo_loss,
    per_head_value_norms,
    rmu_control_vector,
    rmu_forget_loss,
    rmu_representation_retain_loss,
    select_rmu_parameters,
    sequence_log_likelihood,
    token_mask_shifted,
    value_norm_alignment_loss,
    value_norm_regulariser,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def tiny_llama(seed: int = 0, n_layers: int = 2) -> LlamaForCausalLM:
    return random_llama(50, hidden=32, layers=n_layers, max_positions=64, seed=seed, eager=True)


# ---------------------------------------------------------------- common: shift + log-likelihood


def test_sequence_log_likelihood_by_hand():
    # vocab 3, tokens x = [0, 2, 1].
    # pos 0 logits [0, 0, ln2]  -> p = [1/4, 1/4, 1/2]; predicts x_1 = 2 -> log(1/2)
    # pos 1 logits [ln3, 0, 0]  -> p = [3/5, 1/5, 1/5]; predicts x_2 = 1 -> log(1/5)
    # pos 2 predicts nothing (no x_3), its logits must not matter.
    logits = torch.tensor([[[0.0, 0.0, LN2], [LN3, 0.0, 0.0], [9.0, -9.0, 5.0]]])
    ids = torch.tensor([[0, 2, 1]])
    # all targets: log(1/2) + log(1/5) = -log 10; mask[0] has no prediction and is ignored
    full = sequence_log_likelihood(logits, ids, torch.tensor([[1, 1, 1]]))
    assert full.shape == (1,)
    assert full.item() == pytest.approx(-math.log(10.0), abs=1e-6)
    # only token 2 is a target -> log(1/5)
    only_last = sequence_log_likelihood(logits, ids, torch.tensor([[0, 0, 1]]))
    assert only_last.item() == pytest.approx(math.log(0.2), abs=1e-6)
    # bool masks work the same; nothing selected -> 0
    assert sequence_log_likelihood(logits, ids, torch.tensor([[True, False, False]])).item() == 0.0


def test_token_mask_shifted():
    m = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert token_mask_shifted(m).tolist() == [[False, True, True], [True, True, False]]


def test_sequence_log_likelihood_matches_hf_causal_lm_loss():
    model = tiny_llama().eval()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, labels=ids)
    logp = sequence_log_likelihood(out.logits, ids, torch.ones_like(ids))
    # HF's loss is the token mean of -log p over the 2*6 predicted tokens
    assert (-logp.sum() / 12).item() == pytest.approx(out.loss.item(), abs=1e-5)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="loss_mask shape"):
        sequence_log_likelihood(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 4))


# ---------------------------------------------------------------- NPO


def test_npo_loss_by_hand():
    # β = 1, log π_θ − log π_ref = 0  ->  −2·log σ(0) = 2 log 2 = 1.386294…
    loss = npo_loss(torch.tensor([-5.0]), torch.tensor([-5.0]), beta=1.0)
    assert loss.item() == pytest.approx(2 * LN2, abs=1e-6)
    # β = 0.5, batch of two:
    #   ratio 0   -> −(2/0.5)·log σ(0) = 4 log 2              = 2.7725887
    #   ratio −2  -> −4·log σ(−0.5·(−2)) = −4 log σ(1) = 4 log(1 + e^{−1}) = 1.2530468
    #   mean = 2.0128177
    loss = npo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-1.0, -1.0]), beta=0.5)
    expected = (4 * LN2 + 4 * math.log1p(math.exp(-1.0))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_npo_loss_stable_and_validates():
    # huge ratio: log(sigmoid(-1000)) would be -inf; logsigmoid gives ≈ 2·1000
    big = npo_loss(torch.tensor([1000.0]), torch.tensor([0.0]), beta=1.0)
    assert torch.isfinite(big) and big.item() == pytest.approx(2000.0, rel=1e-6)
    with pytest.raises(ValueError, match="beta"):
        npo_loss(torch.zeros(1), torch.zeros(1), beta=0.0)
    with pytest.raises(ValueError, match="empty"):
        npo_loss(torch.zeros(0), torch.zeros(0), beta=1.0)


def test_npo_step_lowers_forget_log_likelihood():
    model = tiny_llama(seed=3)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[:, :3] = 0  # prompt tokens are not targets
    with torch.no_grad():
        logp_ref = sequence_log_likelihood(model(ids).logits, ids, mask)  # θ_ref = θ at start
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    logp_before = sequence_log_likelihood(model(ids).logits, ids, mask)
    loss = npo_loss(logp_before, logp_ref, beta=0.7)
    loss.backward()
    opt.step()
    with torch.no_grad():
        logp_after = sequence_log_likelihood(model(ids).logits, ids, mask)
    assert (logp_after < logp_before.detach()).all(), (logp_before, logp_after)


# ---------------------------------------------------------------- KL retain


def test_kl_zero_for_identical_logits():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5)
    assert kl_retain_loss(logits, logits.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_by_hand_two_token_vocab_and_direction():
    # predicting position 0: θ logits [0, 0] -> p = (1/2, 1/2); ref logits [ln3, 0] -> q = (3/4, 1/4)
    # KL(p‖q) = ½ ln(½/¾) + ½ ln(½/¼) = ½ ln(4/3) = 0.1438410
    # (the reverse KL(q‖p) = ¾ ln 1.5 + ¼ ln ½ = 0.1308120 — must NOT come out)
    # predicting position 1: identical logits -> 0. Position 2 predicts nothing.
    theta = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [5.0, -5.0]]])
    ref = torch.tensor([[[LN3, 0.0], [1.0, 2.0], [-5.0, 5.0]]])
    kl_first = 0.5 * math.log(4.0 / 3.0)
    # mask [0, 1, 0]: only token 1 is a target -> only position 0's prediction counts
    assert kl_retain_loss(theta, ref, torch.tensor([[0, 1, 0]])).item() == pytest.approx(kl_first, abs=1e-6)
    # mask [1, 1, 1]: positions 0 and 1 -> (0.1438410 + 0) / 2
    assert kl_retain_loss(theta, ref, torch.tensor([[1, 1, 1]])).item() == pytest.approx(kl_first / 2, abs=1e-6)
    assert kl_first != pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-3)


def test_kl_gradient_only_through_theta():
    theta = torch.randn(1, 4, 5, requires_grad=True)
    ref = torch.randn(1, 4, 5, requires_grad=True)
    kl_retain_loss(theta, ref, torch.ones(1, 4)).backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    assert ref.grad is None
    with pytest.raises(ValueError, match="no target"):
        kl_retain_loss(theta, ref, torch.tensor([[1, 0, 0, 0]]))


# ---------------------------------------------------------------- RMU


def test_rmu_control_vector_unit_norm_times_c_and_deterministic():
    c = 12.0
    u1 = rmu_control_vector(32, c, torch.Generator().manual_seed(7))
    u2 = rmu_control_vector(32, c, torch.Generator().manual_seed(7))
    u3 = rmu_control_vector(32, c, torch.Generator().manual_seed(8))
    assert u1.shape == (32,)
    assert torch.linalg.vector_norm(u1).item() == pytest.approx(c, rel=1e-6)
    assert torch.equal(u1, u2) and not torch.equal(u1, u3)
    assert (u1 >= 0).all()  # from U[0, 1): a direction in the positive orthant, as in RMU's code


def test_rmu_losses_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # [batch=1 pos=2 d=2]
    control = torch.tensor([0.0, 1.0])
    # token 0 only: ((1−0)² + (2−1)²) / 2 = 1
    assert rmu_forget_loss(hidden, control, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    # both tokens: (1 + 1 + 9 + 9) / 4 = 5
    assert rmu_forget_loss(hidden, control, torch.tensor([[1, 1]])).item() == pytest.approx(5.0)
    ref = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # token 0: ((1−1)² + (2−0)²)/2 = 2; token 1: (9 + 16)/2 = 12.5; both: (4 + 25)/4 = 7.25
    assert rmu_representation_retain_loss(hidden, ref, torch.tensor([[1, 0]])).item() == pytest.approx(2.0)
    assert rmu_representation_retain_loss(hidden, ref, torch.tensor([[1, 1]])).item() == pytest.approx(7.25)


def test_default_rmu_layers():
    assert default_rmu_layers(32) == ((5, 6, 7), 7)  # the paper's setting
    assert default_rmu_layers(4) == ((1, 2), 2)
    assert default_rmu_layers(16) == ((2, 3, 4), 4)
    assert default_rmu_layers(2) == ((1,), 1)
    assert default_rmu_layers(1) == ((0,), 0)
    for n in range(1, 81):
        layers, s = default_rmu_layers(n)
        assert 0 <= min(layers) and s == max(layers) < n


def test_select_rmu_parameters_only_selected_change():
    model = tiny_llama(seed=4)
    params = select_rmu_parameters(model, [1])
    assert len(params) == 1 and params[0] is model.model.layers[1].mlp.down_proj.weight
    assert [p for p in model.parameters() if p.requires_grad] == params
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(5))
    with LayerOutputCapture(model, 1) as cap:
        model(ids)
    control = rmu_control_vector(32, 5.0, torch.Generator().manual_seed(0))
    rmu_forget_loss(cap.output, control, torch.ones_like(ids)).backward()
    opt.step()
    for name, p in model.named_parameters():
        if name == "model.layers.1.mlp.down_proj.weight":
            assert not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name]), name
            assert p.grad is None, name


def test_select_rmu_parameters_errors():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"0\.\.1"):
        select_rmu_parameters(model, [2])
    with pytest.raises(ValueError, match="valid names: .*mlp.down_proj.weight"):
        select_rmu_parameters(model, [0], param_names=("mlp.nope.weight",))


def test_layer_output_capture_matches_hidden_states():
    model = tiny_llama().eval()
    ids = torch.randint(0, 50, (1, 5))
    # transformers 5 lazily installs its own output-capturing hook on decoder layers at the
    # first forward; warm up, then count relative to it
    with torch.no_grad():
        model(ids, output_hidden_states=True)
    n_hooks = len(model.model.layers[0]._forward_hooks)
    with torch.no_grad(), LayerOutputCapture(model, 0) as cap:
        out = model(ids, output_hidden_states=True)
        assert len(model.model.layers[0]._forward_hooks) == n_hooks + 1
    assert torch.equal(cap.output, out.hidden_states[1])
    assert len(model.model.layers[0]._forward_hooks) == n_hooks
    assert all(getattr(h, "__self__", None) is not cap for h in model.model.layers[0]._forward_hooks.values())


# ---------------------------------------------------------------- value norms


def test_per_head_value_norms_gqa():
    n_heads, n_kv, d_head = 4, 2, 3
    v = torch.randn(2, 5, n_kv * d_head, generator=torch.Generator().manual_seed(0))
    got = per_head_value_norms(v, n_kv_heads=n_kv, n_heads=n_heads)
    assert got.shape == (2, 5, n_heads)
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)  # heads 0,1 -> kv 0; heads 2,3 -> kv 1 (HF repeat_kv)
        manual = v[..., kv * d_head : (kv + 1) * d_head].pow(2).sum(-1).sqrt()
        torch.testing.assert_close(got[..., h], manual)


def test_gather_sink_norms():
    norms = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # [batch pos head]
    shared = gather_sink_norms(norms, torch.tensor([0, 2]))
    assert shared.shape == (2, 3, 2)
    torch.testing.assert_close(shared, norms[:, [0, 2], :].transpose(1, 2))
    per_sample = gather_sink_norms(norms, torch.tensor([[0, 1], [0, 3]]))
    torch.testing.assert_close(per_sample[0], norms[0, [0, 1]].T)
    torch.testing.assert_close(per_sample[1], norms[1, [0, 3]].T)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        gather_sink_norms(norms, torch.tensor([4]))


def test_value_norm_alignment_loss_by_hand():
    # [batch=2 layer=1 head=2 n_sink=2]
    theta = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    ref = torch.tensor([[[[0.0, 0.0], [3.0, 2.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
    # sample 0: squared diffs [[1, 4], [0, 4]] -> per head 1/|S|·Σ_i: 2.5, 2 -> mean over heads 2.25
    # sample 1: all diffs −1 -> 1
    assert value_norm_alignment_loss(theta, ref, torch.tensor([True, False])).item() == pytest.approx(2.25)
    assert value_norm_alignment_loss(theta, ref, torch.tensor([False, True])).item() == pytest.approx(1.0)
    assert value_norm_alignment_loss(theta, ref, torch.tensor([True, True])).item() == pytest.approx(1.625)
    assert value_norm_alignment_loss(theta, ref, torch.tensor([False, False])).item() == 0.0
    # ℓ_vn = E_Df[Δ_Df] + E_Dp[Δ_Dp]: sample 0 as the forget part (vs θ_u), sample 1 poisoned (vs θ_o)
    assert value_norm_regulariser(theta[:1], ref[:1], theta[1:], ref[1:]).item() == pytest.approx(3.25)
    assert value_norm_regulariser(theta[:1], ref[:1], theta[:0], ref[:0]).item() == pytest.approx(2.25)
    assert value_norm_regulariser(theta[:1], ref[:1], None, None).item() == pytest.approx(2.25)


def test_value_norm_capture_matches_manual_v_proj_and_removes_hooks():
    model = tiny_llama(seed=6).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with ValueNormCapture(model, layers=[0, 1]) as cap:
            out = model(ids, output_hidden_states=True)
        for layer in (0, 1):
            block = model.model.layers[layer]
            # hidden_states[l] is the input of decoder layer l (hidden_states[0] = embeddings)
            manual = block.self_attn.v_proj(block.input_layernorm(out.hidden_states[layer]))
            torch.testing.assert_close(cap.values[layer], manual, rtol=0, atol=0)
            assert len(block.self_attn.v_proj._forward_hooks) == 0
        captured = cap.values[0]
        model(ids)  # after exit nothing is captured any more
        assert cap.values[0] is captured
    norms = cap.head_norms()  # [batch layer pos head]
    assert norms.shape == (2, 2, 6, 4)
    torch.testing.assert_close(norms[:, 1], per_head_value_norms(cap.values[1], 2, 4))
    sinks = cap.sink_norms(torch.tensor([0, 1]))  # [batch layer head n_sink]
    assert sinks.shape == (2, 2, 4, 2)
    torch.testing.assert_close(sinks, norms[:, :, [0, 1], :].permute(0, 1, 3, 2))


def test_value_norm_capture_hooks_removed_on_exception():
    model = tiny_llama()
    with pytest.raises(RuntimeError, match="boom"):
        with ValueNormCapture(model, layers=[1]):
            raise RuntimeError("boom")
    assert all(len(b.self_attn.v_proj._forward_hooks) == 0 for b in model.model.layers)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        ValueNormCapture(model, layers=[3])


def test_gradients_flow_through_captured_norms():
    model = tiny_llama(seed=7)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(4))
    with ValueNormCapture(model, layers=[0, 1]) as cap:
        model(ids)
    sinks = cap.sink_norms(torch.tensor([0]))  # [batch layer head 1]
    ref = (sinks.detach() + 1.0).requires_grad_(True)  # a frozen reference must get no gradient
    loss = value_norm_regulariser(sinks[:1], ref[:1], sinks[1:], ref[1:])
    loss.backward()
    for block in model.model.layers:
        g = block.self_attn.v_proj.weight.grad
        assert g is not None and g.abs().sum() > 0
    assert ref.grad is None
    # value norms read only v_proj(...) at the sink, so o_proj of the last layer gets no gradient
    assert model.model.layers[1].self_attn.o_proj.weight.grad is None
