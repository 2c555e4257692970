"""TransformerLens hooks on a MAIRA-2-architecture model, offline in seconds.

    python examples/hooks_quickstart.py

Builds the tiny MAIRA-2 (Dinov2 → 4-layer projector → Llama), caches the residual stream with two images
in context, checks it against the Hugging Face hidden states, ablates the image features, and steers
generation with a hook that stays active at every decoding step. For the real model use
``HookedMaira2.from_pretrained("/path/to/maira-2", device="cuda", dtype=torch.bfloat16)``.
"""

import torch
from sae_rad_ext.adapters import HookedMaira2, tiny_maira2


def main() -> None:
    model = HookedMaira2.tiny(seed=0)
    tok, cfg = model.tokenizer, model.cfg
    print(f"{cfg.model_name}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{cfg.tokens_per_image} tokens per image ({cfg.patch_grid[0]}x{cfg.patch_grid[1]} patches)")

    # A prompt with two images: each <image> is tokens_per_image copies of the image token id.
    # (Maira2Processor builds real MAIRA-2 prompts and roles; here the ids are written by hand.)
    img = [cfg.image_token_index] * cfg.tokens_per_image
    text = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = torch.tensor([[tok.bos_token_id, *text("Given the current frontal image"), *img,
                         *text(" and the current lateral image"), *img,
                         *text(" Provide a description of the findings.")]])
    pixels = torch.randn(2, 3, *cfg.image_size, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, pixel_values=pixels)
        reference, _ = tiny_maira2(seed=0)  # same weights, plain HF model without hook points
        hf = reference(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    for layer in range(cfg.n_layers - 1):
        delta = (cache[f"blocks.{layer}.hook_resid_post"] - hf.hidden_states[layer + 1]).abs().max().item()
        print(f"blocks.{layer}.hook_resid_post vs HF hidden_states[{layer + 1}]: max |delta| = {delta:.1e}")
    print(f"logits max |delta| = {(logits - hf.logits).abs().max().item():.1e}")
    print("projector in/out:", tuple(cache["vision_projector.hook_in"].shape),
          tuple(cache["vision_projector.hook_out"].shape))

    # Only the first two blocks, as SAELens' activation store asks for them.
    resid = model(ids, pixel_values=pixels, stop_at_layer=2)  # == blocks.1.hook_resid_post
    print("stop_at_layer=2 ->", tuple(resid.shape))

    # Editing: zero the image features where they enter the language model.
    ablated = model.run_with_hooks(ids, pixel_values=pixels,
                                   fwd_hooks=[("vision_projector.hook_out", lambda x, hook: torch.zeros_like(x))])
    print(f"image ablation moves the last-token logits by {(ablated - logits)[0, -1].abs().max().item():.3g}")

    # Steering: push the last residual stream towards one token at every generation step.
    target = tok.convert_tokens_to_ids("<obj>")
    direction = model.W_U[:, target] / model.W_U[:, target].norm()

    def steer(resid: torch.Tensor, hook) -> torch.Tensor:
        # model.position_offset = positions before this chunk (0 for the prompt, then prompt_len + step)
        return resid + 50.0 * direction

    plain = model.generate(ids, pixel_values=pixels, max_new_tokens=5, only_new_tokens=True)
    steered = model.generate(ids, pixel_values=pixels, max_new_tokens=5, only_new_tokens=True,
                             fwd_hooks=[(f"blocks.{cfg.n_layers - 1}.hook_resid_post", steer)])
    print("generated:", model.to_string(plain[0]), "| steered:", model.to_string(steered[0]))


if __name__ == "__main__":
    main()
