# python examples/quickstart.py  - offline, CPU, well under a minute; writes runs/quickstart/.
# The tiny model has random weights, so its numbers mean nothing: `sae-rad demo` trains one first.
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor

from sae_rad_ext import RadMatryoshkaBatchTopKTrainingSAEConfig
from sae_rad_ext.activations.cache import cache_activations
from sae_rad_ext.activations.cache_format import load_cache_positions
from sae_rad_ext.data.phantom.generator import generate_studies
from sae_rad_ext.interpret import InterpretConfig, interpret
from sae_rad_ext.publish import build_site, write_release
from sae_rad_ext.steering import Intervention, steered_generate
from sae_rad_ext.training.runner import make_runner

torch.manual_seed(0)
OUT, HOOK = "runs/quickstart", "blocks.2.hook_resid_post"

# 1. hook a model: the tiny MAIRA-2 (random weights, offline); real weights: HookedMaira2.from_pretrained(path)
model = HookedMaira2.tiny(seed=0)
proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
studies = list(generate_studies(16, seed=0, image_size=112, lateral_prob=0, prior_prob=0))  # phantoms

# 2. cache the hook's activations at image + study-text + report positions (SAELens's cache format)
cache = cache_activations(model, studies, f"{OUT}/cache", HOOK, context_size=64,
                          positions="maira2_sae_paper_with_images")

# 3. train a Matryoshka BatchTopK SAE with SAELens's own runner, reading the cache
cfg = LanguageModelSAERunnerConfig(
    sae=RadMatryoshkaBatchTopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=128, k=16,
                                                group_sizes=[16, 48, 64], threshold_start_step=20),
    hook_name=HOOK, context_size=64, use_cached_activations=True, cached_activations_path=f"{OUT}/cache",
    training_tokens=128 * 100, train_batch_size_tokens=128, store_batch_size_prompts=4,
    n_batches_in_buffer=4, n_eval_batches=1, eval_batch_size_prompts=2, checkpoint_path=None,
    output_path=f"{OUT}/sae", logger=LoggingConfig(log_to_wandb=False), device="cpu", verbose=False)
make_runner(cfg, model, studies, positions="maira2_sae_paper_with_images").run()
sae = SAE.load_from_disk(f"{OUT}/sae")                       # -> RadMatryoshkaSAE, levels kept
x = load_cache_positions(cache.path)["acts"]                 # [n_positions, d_model]
levels = sae.level_metrics(x)                                # explained variance / L0 per level

# 4. interpret: feature statistics, concept alignment against the planted findings, explanations
res = interpret(model, sae, studies, f"{OUT}/interpret",
                InterpretConfig(generate=False, max_features=8, n_examples=4, n_detect=4), processor=proc)

# 5. steer: add the decoder direction of the feature that best detects pleural effusion
feature = res.best["pleural_effusion"].feature
steered = steered_generate(model, proc, studies[:2], sae,
                           [Intervention(feature, "add", 4.0, positions="report")], max_new_tokens=12)

# 6. export: a SAELens release folder and a static HTML dashboard (`sae-rad export` does both)
release = write_release(sae, f"{OUT}/release", release="quickstart")
site = build_site(res.run, f"{OUT}/dashboard")

print("explained variance per level:", [round(v, 3) for v in levels.explained_variance.tolist()])
print("best pleural effusion feature:", feature, "| steered report:", steered.reports[0][:60])
print("release:", release.folder, "| dashboard:", site)
