"""Train the Matryoshka BatchTopK SAE with SAELens's stock runner on cached activations (offline, < 1 min).

1. writes synthetic sparse activations as a SAELens cached-activations folder (``datasets.save_to_disk``,
   one ``Array2D(context_size, d_in)`` column named after the hook),
2. trains ``rad_matryoshka_batchtopk`` through ``LanguageModelSAETrainingRunner``,
3. reloads it with ``SAE.load_from_disk`` (→ ``RadMatryoshkaSAE``, groups kept) and prints per-level
   explained variance / L0,
4. writes it in the microsoft/maira-2-sae release layout and loads it back through
   ``SAE.from_pretrained`` with a locally registered release.

    python examples/train_matryoshka_cached.py [--out runs/matryoshka_example] [--steps 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
from transformer_lens.hook_points import HookedRootModule

from sae_rad_ext import (
    RadMatryoshkaBatchTopKTrainingSAEConfig,
    register_maira2_sae_release,
    save_maira2_sae_format,
)

HOOK = "blocks.15.hook_resid_post"
D_IN, D_SAE, CTX = 64, 256, 32


def synthetic_acts(n: int, seed: int) -> torch.Tensor:
    """Sums of 4 of 128 unit directions (Zipf-like frequencies) + noise: ``[n, D_IN]``."""
    D = torch.randn(128, D_IN, generator=torch.Generator().manual_seed(0))
    D = D / D.norm(dim=-1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    freq = 1.0 / torch.arange(1, 129).float() ** 0.6
    idx = torch.multinomial(freq.expand(n, -1), 4, generator=g)
    codes = torch.zeros(n, 128).scatter_(1, idx, torch.rand(n, 4, generator=g) * 2 + 0.5)
    return codes @ D + 0.01 * torch.randn(n, D_IN, generator=g)


class NoModel(HookedRootModule):
    """Cached activations need no language model (the runner only hands it to evals)."""

    def __init__(self):
        super().__init__()
        self.setup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/matryoshka_example")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)  # toy shapes: thread barriers would cost more than the work

    cache = out / "cached_activations"
    acts = synthetic_acts(256 * CTX, seed=1).view(256, CTX, D_IN)
    features = datasets.Features({HOOK: datasets.Array2D(shape=(CTX, D_IN), dtype="float32")})
    datasets.Dataset.from_dict({HOOK: acts.numpy()}, features=features).save_to_disk(str(cache))

    batch = 256
    cfg = LanguageModelSAERunnerConfig(
        sae=RadMatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            k=4,
            group_fractions=[0.125, 0.125, 0.25, 0.5],  # dictionary_learning semantics, weights 1/4 each
            threshold_start_step=args.steps // 2,
        ),
        model_name="MAIRA-2",
        hook_name=HOOK,
        use_cached_activations=True,
        cached_activations_path=str(cache),
        context_size=CTX,
        training_tokens=args.steps * batch,
        train_batch_size_tokens=batch,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        lr=3e-3,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(out / "sae"),
        checkpoint_path=None,
        dead_feature_window=100,
        feature_sampling_window=200,
        verbose=False,
        model_from_pretrained_kwargs={},  # no HookedTransformer options (the default would warn on load)
    )
    tokens = datasets.Dataset.from_dict({"tokens": [[0] * CTX] * 4})  # evals only; training reads the cache
    LanguageModelSAETrainingRunner(cfg, override_dataset=tokens, override_model=NoModel()).run()

    sae = SAE.load_from_disk(out / "sae")
    x = synthetic_acts(2048, seed=2)
    m = sae.level_metrics(x)
    print(f"{type(sae).__name__}: group_sizes={sae.group_sizes}, threshold={sae.threshold[0].item():.3f}")
    for end, ev, l0 in zip(m.level_ends, m.explained_variance.tolist(), m.l0.tolist(), strict=True):
        print(f"  level latents <{end:4d}: explained variance {ev:.3f}, L0 {l0:.2f}")
    z = sae.encode(x[:8], level=1)  # only groups 0..1 computed
    print(
        f"  encode(level=1) uses latents < {sae.level_ends[1]}: max active id {int(z.nonzero()[:, 1].max())}"
    )

    folder = out / "maira2_sae_format" / "layer_15"
    save_maira2_sae_format(
        folder,
        W_enc=sae.W_enc,
        b_enc=sae.b_enc,
        W_dec=sae.W_dec,
        b_dec=sae.b_dec,
        k=4,
        group_sizes=sae.group_sizes,
        threshold=sae.threshold[0],
        layer=15,
    )
    register_maira2_sae_release("maira-2-sae-example", out / "maira2_sae_format")
    again = SAE.from_pretrained("maira-2-sae-example", "layer_15")
    same = torch.allclose(again(x), sae(x), atol=1e-5)
    print(
        f"maira-2-sae layout → SAE.from_pretrained: {type(again).__name__}, {again.cfg.metadata.hook_name}, "
        f"same outputs: {same}"
    )


if __name__ == "__main__":
    main()
