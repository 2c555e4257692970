"""Matryoshka BatchTopK SAE as a SAELens architecture: registry, save/load, levels, loss parity."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from sae_lens import SAE, TrainingSAE
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput

import sae_rad_ext
from sae_rad_ext import (
    MATRYOSHKA_ARCHITECTURE,
    RadMatryoshkaBatchTopKTrainingSAE,
    RadMatryoshkaBatchTopKTrainingSAEConfig,
    RadMatryoshkaSAE,
)
from sae_rad_ext.saes.matryoshka import resolve_group_sizes

D_IN, D_SAE, K = 24, 64, 4
SIZES = [8, 24, 32]
ENDS = [8, 32, 64]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one thread (OpenMP barriers cost more than the work, badly so on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw) -> RadMatryoshkaBatchTopKTrainingSAEConfig:
    base = dict(d_in=D_IN, d_sae=D_SAE, k=K, group_sizes=SIZES)
    base.update(kw)
    return RadMatryoshkaBatchTopKTrainingSAEConfig(**base)


def _step(x, dead=None, step=5):
    return TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=step, is_logging_step=False
    )


def test_registered_for_training_and_inference():
    assert sae_rad_ext.MATRYOSHKA_ARCHITECTURE == MATRYOSHKA_ARCHITECTURE == "rad_matryoshka_batchtopk"
    assert get_sae_class(MATRYOSHKA_ARCHITECTURE)[0] is RadMatryoshkaSAE
    assert get_sae_training_class(MATRYOSHKA_ARCHITECTURE)[0] is RadMatryoshkaBatchTopKTrainingSAE
    cfg = _cfg(group_weights=[0.5, 0.25, 0.25])
    again = RadMatryoshkaBatchTopKTrainingSAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.group_sizes == SIZES
    sae = TrainingSAE.from_dict(cfg.to_dict())
    assert isinstance(sae, RadMatryoshkaBatchTopKTrainingSAE)


def test_group_sizes_from_fractions_and_errors():
    assert resolve_group_sizes(100, group_fractions=[0.3, 0.3, 0.4]) == [30, 30, 40]
    assert resolve_group_sizes(10, group_fractions=[1 / 3, 1 / 3, 1 / 3]) == [3, 3, 4]  # remainder last
    assert _cfg(group_sizes=None, group_fractions=[0.125, 0.375, 0.5]).group_sizes == SIZES
    with pytest.raises(ValueError, match="sum to 1"):
        resolve_group_sizes(64, group_fractions=[0.5, 0.4])
    with pytest.raises(ValueError, match="expected d_sae=64"):
        _cfg(group_sizes=[8, 8])
    with pytest.raises(ValueError, match="give group_fractions"):
        _cfg(group_sizes=None)
    with pytest.raises(ValueError, match="3 groups"):
        _cfg(group_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="weight 1"):
        _cfg(loss_mode="saelens", group_weights=[0.5, 0.5, 1.0])


def _stock_and_ours(rescale: bool):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                d_in=D_IN,
                d_sae=D_SAE,
                k=K,
                matryoshka_widths=list(ENDS),
                rescale_acts_by_decoder_norm=rescale,
            )
        )
    ours = RadMatryoshkaBatchTopKTrainingSAE(_cfg(loss_mode="saelens", rescale_acts_by_decoder_norm=rescale))
    with torch.no_grad():
        stock.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)
        stock.b_dec.normal_()
        stock.b_enc.normal_(0, 0.1)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("with_dead", [False, True])
def test_saelens_mode_matches_stock_matryoshka_batchtopk(rescale, with_dead):
    stock, ours = _stock_and_ours(rescale)
    x = torch.randn(40, D_IN) * 2
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    if with_dead:
        dead[::3] = True
    a = stock.training_forward_pass(_step(x, dead))
    b = ours.training_forward_pass(_step(x, dead))
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5 * abs(a.loss.item())
    assert set(a.losses) == set(b.losses)
    for name in a.losses:
        torch.testing.assert_close(b.losses[name], a.losses[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.sae_out, a.sae_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.feature_acts.to_dense(), a.feature_acts, rtol=1e-5, atol=1e-5)
    a.loss.backward()
    b.loss.backward()
    ours_params = dict(ours.named_parameters())
    for name, p in stock.named_parameters():
        torch.testing.assert_close(ours_params[name].grad, p.grad, rtol=1e-4, atol=1e-5)
    assert ours.topk_threshold.item() == pytest.approx(stock.topk_threshold.item(), rel=1e-6)


def _dense_dl_reference(sae, x, dead, weights):
    """dictionary_learning's MatryoshkaBatchTopKTrainer.loss, written densely."""
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    post = torch.relu((x - b_dec) @ W_enc + b_enc)
    top = post.flatten().topk(K * x.shape[0])
    f = torch.zeros_like(post.flatten()).scatter(-1, top.indices, top.values).view_as(post)
    recon, total, start = b_dec.expand_as(x), 0.0, 0
    for end, w in zip(ENDS, weights, strict=True):
        recon = recon + f[:, start:end] @ W_dec[start:end]
        total = total + w * (x - recon).pow(2).sum(-1).mean()
        start = end
    residual = (x - recon).detach()
    k_aux = min(D_IN // 2, int(dead.sum()))
    auxk = torch.where(dead[None], post, -torch.inf).topk(k_aux, sorted=False)
    acts = torch.zeros_like(post).scatter(-1, auxk.indices, auxk.values)
    l2 = (residual - acts @ W_dec).pow(2).sum(-1).mean()
    denom = (residual - residual.mean(0)).pow(2).sum(-1).mean()
    return total + (1 / 32) * l2 / denom


@pytest.mark.parametrize("weights", [None, [0.5, 0.3, 0.2]])
def test_dictionary_learning_loss_equals_dense_reference(weights):
    torch.manual_seed(1)
    sae = RadMatryoshkaBatchTopKTrainingSAE(_cfg(group_weights=weights))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    x = torch.randn(32, D_IN)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[1::4] = True
    out = sae.training_forward_pass(_step(x, dead))
    w = weights or [1 / 3] * 3
    ref = _dense_dl_reference(sae, x, dead, w)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    # gradients of the kernel step equal the dense reference's (decoder rows: parallel part removed)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    ref_grads = torch.autograd.grad(_dense_dl_reference(sae, x, dead, w), params)
    out.loss.backward()
    Wn = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    g_dec = ref_grads[2] - (ref_grads[2] * Wn).sum(-1, keepdim=True) * Wn
    for p, g in zip(params, [ref_grads[0], ref_grads[1], g_dec, ref_grads[3]], strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_dictionary_learning_threshold_ema_and_b_dec_init():
    torch.manual_seed(2)
    sae = RadMatryoshkaBatchTopKTrainingSAE(_cfg(threshold_start_step=3, threshold_beta=0.5))
    x = torch.randn(16, D_IN) + 3.0
    sae.training_forward_pass(_step(x, step=0))
    assert torch.allclose(sae.b_dec, x.median(0).values, atol=1.0)  # geometric median, near the centre
    assert sae.topk_threshold.item() == -1.0  # not before threshold_start_step
    out = sae.training_forward_pass(_step(x, step=4))
    m1 = out.feature_acts.values().min().item()
    assert sae.topk_threshold.item() == pytest.approx(m1, rel=1e-6)
    out = sae.training_forward_pass(_step(x, step=5))
    m2 = out.feature_acts.values().min().item()
    assert sae.topk_threshold.item() == pytest.approx(0.5 * m1 + 0.5 * m2, rel=1e-6)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)


def _trained_sae(tmp_path, **kw):
    torch.manual_seed(3)
    sae = RadMatryoshkaBatchTopKTrainingSAE(_cfg(threshold_start_step=0, **kw))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(64, D_IN)
    for step in range(1, 6):
        out = sae.training_forward_pass(_step(x, step=step))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    sae.save_inference_model(tmp_path)
    return sae, x


@pytest.mark.parametrize("mode", ["dictionary_learning", "saelens"])
def test_save_load_from_disk_identical_outputs(tmp_path, mode):
    kw = (
        {"loss_mode": mode}
        if mode == "dictionary_learning"
        else {"loss_mode": mode, "rescale_acts_by_decoder_norm": True}
    )
    sae, x = _trained_sae(tmp_path, **kw)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == MATRYOSHKA_ARCHITECTURE
    assert cfg["group_sizes"] == SIZES and cfg["level_ends"] == ENDS
    loaded = SAE.load_from_disk(tmp_path)
    assert isinstance(loaded, RadMatryoshkaSAE)
    assert loaded.group_sizes == SIZES and loaded.level_ends == ENDS
    assert torch.all(loaded.threshold == loaded.threshold[0])
    assert loaded.threshold[0].item() == pytest.approx(sae.topk_threshold.item(), rel=1e-6)
    # inference = training weights with acts kept above the EMA threshold (dictionary_learning encode)
    with torch.no_grad():
        W_enc, b_enc, W_dec = sae.W_enc, sae.b_enc, sae.W_dec
        if mode == "saelens":
            n = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
        post = torch.relu((x - sae.b_dec) @ W_enc + b_enc)
        ref_z = post * (post > sae.topk_threshold.float())
        ref = ref_z @ W_dec + sae.b_dec
    torch.testing.assert_close(loaded.encode(x), ref_z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded(x), ref, rtol=1e-5, atol=1e-5)
    # a second save/load is bit-identical
    loaded.save_model(tmp_path / "again")
    again = SAE.load_from_disk(tmp_path / "again")
    assert torch.equal(again(x), loaded(x))


@pytest.mark.parametrize("mode", ["dictionary_learning", "saelens"])
def test_folded_activation_scale_survives_saving(tmp_path, mode):
    """What SAETrainer.fit does at the end with normalize_activations='expected_average_only_in': fold the
    scale into the weights, then save. The saved SAE on raw activations must equal the trained SAE on
    scaled ones, rescaled (a dictionary_learning renormalisation at save time once undid the fold)."""
    torch.manual_seed(5)
    sae = RadMatryoshkaBatchTopKTrainingSAE(
        _cfg(threshold_start_step=0, loss_mode=mode, normalize_activations="expected_average_only_in")
    )
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    scale = 0.3  # raw activations ~3.3x larger than the normalised ones the SAE trains on
    x_raw = torch.randn(64, D_IN) / scale
    for step in range(1, 6):
        out = sae.training_forward_pass(_step(x_raw * scale, step=step))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        if mode == "dictionary_learning":
            sae.renormalize_decoder_()  # the pending step-5 renormalisation, as the next forward would
        post = torch.relu((x_raw * scale - sae.b_dec) @ sae.W_enc + sae.b_enc)
        ref_z = post * (post > sae.topk_threshold.float())
        ref = (ref_z @ sae.W_dec + sae.b_dec) / scale
    sae.fold_activation_norm_scaling_factor(scale)
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert loaded.cfg.normalize_activations == "none"
    torch.testing.assert_close(loaded.encode(x_raw), ref_z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded(x_raw), ref, rtol=1e-4, atol=1e-4)
    if mode == "dictionary_learning":  # rows keep norm 1/scale: the fold is not undone
        torch.testing.assert_close(
            loaded.W_dec.norm(dim=-1), torch.full((D_SAE,), 1 / scale), rtol=1e-5, atol=0
        )


def test_level_wise_encode_decode_and_metrics(tmp_path):
    _, x = _trained_sae(tmp_path)
    sae = SAE.load_from_disk(tmp_path)
    z = sae.encode(x)
    for level, end in enumerate(ENDS):
        zl = sae.encode(x, level=level)
        torch.testing.assert_close(zl[:, :end], z[:, :end])
        assert not zl[:, end:].any()
        ref = z[:, :end] @ sae.W_dec[:end] + sae.b_dec
        torch.testing.assert_close(sae.decode(z, level=level), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x, level=level), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(z.to_sparse()), sae.decode(z))
    x3 = x.view(4, 16, D_IN)  # extra leading dims
    torch.testing.assert_close(sae.decode(sae.encode(x3), level=1), sae.decode(z, level=1).view(4, 16, D_IN))
    m = sae.level_metrics(x)
    assert m.level_ends == ENDS
    total = (x - x.mean(0)).pow(2).sum(-1).mean()
    for level, end in enumerate(ENDS):
        err = (x - sae.decode(z, level=level)).pow(2).sum(-1).mean()
        assert m.mse[level].item() == pytest.approx(err.item(), rel=1e-5)
        assert m.explained_variance[level].item() == pytest.approx(
            1 - (err / total).item(), rel=1e-5, abs=1e-6
        )
        assert m.l0[level].item() == pytest.approx((z[:, :end] != 0).sum(-1).float().mean().item())
    assert torch.all(m.l0[1:] >= m.l0[:-1])
    with pytest.raises(ValueError, match=r"level must be in \[0, 3\)"):
        sae.encode(x, level=3)


def test_training_output_works_with_saelens_trainer_statistics():
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(4)
    sae = RadMatryoshkaBatchTopKTrainingSAE(_cfg())
    cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=32 * 3,
        device="cpu",
        autocast=False,
        lr=1e-3,
        lr_end=1e-3,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=32,
        dead_feature_window=1,
        feature_sampling_window=10,
        logger=LoggingConfig(log_to_wandb=False),
    )
    data = iter(lambda: torch.randn(32, D_IN), None)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=data)
    out = trainer.step(torch.randn(32, D_IN))
    log = trainer.build_train_step_log_dict(out, 32)
    assert 0 < log["metrics/l0"] <= K * 1.0 + 1e-6
    assert trainer.act_freq_scores.sum().item() == pytest.approx(out.feature_acts._nnz())
    trainer.fit()
    assert trainer.n_training_samples == 96 and trainer.n_training_steps == 2  # step() does not count steps


@pytest.mark.parametrize("mode", ["dictionary_learning", "saelens"])
def test_training_sae_dense_encode_decode_for_saelens_evals(mode):
    """SAELens evals/hooks call the training SAE's encode/forward: dense BatchTopK, sparse-kernel decode."""
    torch.manual_seed(5)
    kw = {"rescale_acts_by_decoder_norm": True} if mode == "saelens" else {}
    sae = RadMatryoshkaBatchTopKTrainingSAE(_cfg(loss_mode=mode, **kw))
    x = torch.randn(16, D_IN)
    z = sae.encode(x)
    assert z.shape == (16, D_SAE) and (z != 0).sum() <= K * 16
    scale = 1 / sae.W_dec.norm(dim=-1) if mode == "saelens" else torch.ones(D_SAE)
    ref = (z * scale) @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(sae(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        sae.decode(z, level=0), (z * scale)[:, :8] @ sae.W_dec[:8] + sae.b_dec, rtol=1e-5, atol=1e-5
    )
