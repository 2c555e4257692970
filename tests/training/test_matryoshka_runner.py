"""Training the Matryoshka SAE with SAELens's stock LanguageModelSAETrainingRunner on cached activations."""

from __future__ import annotations

import datasets
import pytest
import torch
from _synthetic_acts import synthetic_batch, write_cached_activations
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
from transformer_lens.hook_points import HookedRootModule

from sae_rad_ext import RadMatryoshkaBatchTopKTrainingSAEConfig, RadMatryoshkaSAE

HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE, CTX = 32, 128, 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one thread (OpenMP barriers cost more than the work, badly so on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _NoModel(HookedRootModule):
    """Cached activations need no LLM; the runner still wants a model object (used only by evals)."""

    def __init__(self):
        super().__init__()
        self.setup()


def _train(tmp_path, steps: int, batch: int = 128):
    cache = write_cached_activations(tmp_path / "cache", HOOK, n_seqs=64, context_size=CTX, d_in=D_IN)
    sae_cfg = RadMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=4, group_fractions=[0.125, 0.25, 0.625], threshold_start_step=steps // 2
    )
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name="synthetic",
        hook_name=HOOK,
        use_cached_activations=True,
        cached_activations_path=str(cache),
        context_size=CTX,
        training_tokens=steps * batch,
        train_batch_size_tokens=batch,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        lr=3e-3,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(tmp_path / "out"),
        checkpoint_path=None,
        n_checkpoints=0,
        dead_feature_window=50,
        feature_sampling_window=100,
        model_from_pretrained_kwargs={},
        verbose=False,
    )
    tokens = datasets.Dataset.from_dict({"tokens": [[0] * CTX] * 4})  # cached path: tokens only for evals
    torch.manual_seed(0)
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=tokens, override_model=_NoModel())
    init = SAE.from_dict(runner.sae.cfg.get_inference_sae_cfg_dict())
    sd = runner.sae.state_dict()
    runner.sae.process_state_dict_for_saving_inference(sd)
    init.load_state_dict(sd)
    trained = runner.run()
    return init, trained, tmp_path / "out"


def _check(init, trained, out, min_ev):
    loaded = SAE.load_from_disk(out)
    assert isinstance(loaded, RadMatryoshkaSAE) and loaded.group_sizes == [16, 32, 80]
    assert loaded.cfg.metadata.hook_name == HOOK and (out / "sparsity.safetensors").exists()
    x = synthetic_batch(512, D_IN, seed=99)
    before, after = init.level_metrics(x), loaded.level_metrics(x)
    assert after.explained_variance[-1] > before.explained_variance[-1] + 0.3
    assert after.explained_variance[-1] > min_ev
    assert torch.all(after.explained_variance[1:] >= after.explained_variance[:-1] - 1e-3)  # nested levels
    # the in-memory training SAE and the reloaded inference SAE agree
    with torch.no_grad():
        thr = trained.topk_threshold.float()
        post = torch.relu((x - trained.b_dec) @ trained.W_enc + trained.b_enc)
        z = post * (post > thr)
    torch.testing.assert_close(loaded.encode(x), z, rtol=1e-5, atol=1e-5)
    return after


def test_runner_trains_on_cached_activations_fast(tmp_path):
    init, trained, out = _train(tmp_path, steps=60)
    _check(init, trained, out, min_ev=0.3)


def test_runner_trains_few_hundred_steps(tmp_path):
    init, trained, out = _train(tmp_path, steps=400)
    after = _check(init, trained, out, min_ev=0.6)
    assert after.l0[-1] > 0
    assert trained.topk_threshold.item() > 0  # EMA threshold started at step 200
