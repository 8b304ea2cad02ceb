"""Retrieved tokens (response_mask 0) contribute nothing to the policy loss, the KL loss or the entropy.

Shown with verl's own loss code: ``get_policy_loss_fn`` for the policy loss, ``kl_penalty`` + ``agg_loss``
for the KL loss and ``agg_loss`` for the entropy, composed the way ``verl.workers.utils.losses.ppo_loss`` does.
"""

from __future__ import annotations

import pytest
import torch

B, T = 3, 24


def total_loss(actor_cfg, loss_mode, agg_mode, mask, old_lp, lp, ref_lp, adv, entropy):
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty

    pg_loss, _ = get_policy_loss_fn(loss_mode)(
        old_log_prob=old_lp, log_prob=lp, advantages=adv, response_mask=mask, loss_agg_mode=agg_mode, config=actor_cfg
    )
    ent = agg_loss(loss_mat=entropy, loss_mask=mask, loss_agg_mode=agg_mode)
    kl = agg_loss(loss_mat=kl_penalty(lp, ref_lp, "low_var_kl"), loss_mask=mask, loss_agg_mode=agg_mode)
    return pg_loss - 0.01 * ent + 0.001 * kl, (pg_loss, ent, kl)


@pytest.fixture(scope="module")
def actor_cfg(tiny_model_dir):
    from verl.utils.config import omega_conf_to_dataclass

    from research_plugin.verl.local_rollout import compose_verl_config

    cfg = compose_verl_config(
        [f"actor_rollout_ref.model.path={tiny_model_dir}", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1"]
    )
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 5:11] = False  # a result block in every row
    mask[1, 15:20] = False  # a second one in row 1
    mask[2, 20:] = False  # padding
    old_lp = -torch.rand(B, T, generator=g) * 3
    lp = (old_lp + 0.1 * torch.randn(B, T, generator=g)).clamp(max=-1e-3)
    ref_lp = old_lp + 0.05 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, T).clone()
    entropy = torch.rand(B, T, generator=g) * 2
    return mask, old_lp, lp, ref_lp, adv, entropy


def run(actor_cfg, loss_mode, agg_mode, mask, old_lp, lp, ref_lp, adv, entropy):
    lp = lp.clone().requires_grad_(True)
    entropy = entropy.clone().requires_grad_(True)
    loss, parts = total_loss(actor_cfg, loss_mode, agg_mode, mask, old_lp, lp, ref_lp, adv, entropy)
    loss.backward()
    return loss.detach(), [p.detach() for p in parts], lp.grad, entropy.grad


@pytest.mark.parametrize("loss_mode", ["vanilla", "gspo", "gpg", "cispo"])
@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_retrieved_tokens_do_not_move_the_loss(actor_cfg, loss_mode, agg_mode):
    mask, old_lp, lp, ref_lp, adv, entropy = inputs()
    base = run(actor_cfg, loss_mode, agg_mode, mask, old_lp, lp, ref_lp, adv, entropy)

    # rewrite everything the trainer could know about the retrieved/padded tokens
    g = torch.Generator().manual_seed(1)
    noise = lambda: torch.randn(B, T, generator=g) * 5  # noqa: E731
    out = ~mask
    perturbed = run(
        actor_cfg,
        loss_mode,
        agg_mode,
        mask,
        torch.where(out, -noise().abs(), old_lp),
        torch.where(out, -noise().abs(), lp),
        torch.where(out, -noise().abs(), ref_lp),
        adv,
        torch.where(out, noise().abs(), entropy),
    )
    assert torch.allclose(base[0], perturbed[0], atol=1e-6)
    for a, b in zip(base[1], perturbed[1]):  # policy loss, entropy, KL each unchanged
        assert torch.allclose(a, b, atol=1e-6)
    for grad_base, grad_pert in zip(base[2:], perturbed[2:]):
        assert torch.all(grad_base[out] == 0) and torch.all(grad_pert[out] == 0)
        assert torch.allclose(grad_base[mask], grad_pert[mask], atol=1e-6)

    # the same change on one policy token does move the loss and its gradient
    lp2 = lp.clone()
    lp2[0, 2] -= 0.7
    moved = run(actor_cfg, loss_mode, agg_mode, mask, old_lp, lp2, ref_lp, adv, entropy)
    assert not torch.allclose(base[0], moved[0])
    assert not torch.allclose(base[2], moved[2])
