"""Tiny same-architecture models built offline from config (no downloads), and the full-size config.

``tiny_maira2()`` is MAIRA-2's architecture at toy sizes (Dinov2 backbone → 4-layer GELU projector → Llama
with linear RoPE scaling) with the locally built tokenizer; ``tiny_llava()`` is a stock
``LlavaForConditionalGeneration`` with a CLIP tower, for the generic-LLaVA path. Both build in well under a
second. ``full_size_maira2_config()`` is the real MAIRA-2 geometry for meta-device / geometry tests.
"""

from __future__ import annotations

import torch
from sae_rad_ext.adapters.maira2 import Maira2Config, Maira2ForConditionalGeneration
from sae_rad_ext.adapters.tokenizer import IMAGE_TOKEN, build_tiny_tokenizer
from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)


def _rope(theta: float, factor: float | None) -> dict:
    if factor is None or factor == 1.0:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}


def _llama_config(tok: PreTrainedTokenizerFast, vocab_size: int, hidden: int, layers: int, heads: int,
                  kv_heads: int | None, intermediate: int | None, max_positions: int,
                  rope_theta: float, rope_scaling_factor: float | None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        rope_parameters=_rope(rope_theta, rope_scaling_factor),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )


def tiny_maira2_config(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    image_size: int = 112,
    patch_size: int = 14,
    num_channels: int = 3,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    vision_heads: int = 4,
    text_hidden: int = 128,
    text_layers: int = 4,
    text_heads: int = 4,
    text_kv_heads: int | None = None,
    text_intermediate: int | None = None,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    rope_scaling_factor: float | None = 1.5,
    projector_n_layers: int = 4,
    image_feature_source: str = "feature_maps",
    layerscale_value: float = 1.0,
) -> Maira2Config:
    """Config of the tiny MAIRA-2-architecture model (sizes as keyword arguments)."""
    tok = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    vision = Dinov2Config(
        hidden_size=vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        mlp_ratio=4,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        layerscale_value=layerscale_value,
        out_features=[f"stage{vision_layers}"],
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    text = _llama_config(tok, len(tok), text_hidden, text_layers, text_heads, text_kv_heads, text_intermediate,
                         max_position_embeddings, rope_theta, rope_scaling_factor)
    n_tok = (image_size // patch_size) ** 2
    return Maira2Config(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_tok,
        projector_n_layers=projector_n_layers,
        image_feature_source=image_feature_source,
        pad_token_id=tok.pad_token_id,
    )


def tiny_maira2(seed: int = 0, *, dtype: torch.dtype = torch.float32, **sizes) -> tuple[
        Maira2ForConditionalGeneration, PreTrainedTokenizerFast]:
    """A randomly initialised tiny MAIRA-2-architecture model and its tokenizer, in eval mode.

    ``sizes`` are :func:`tiny_maira2_config` keyword arguments. Deterministic for a given ``seed``.
    """
    tok = build_tiny_tokenizer()
    cfg = tiny_maira2_config(tok, **sizes)
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Maira2ForConditionalGeneration(cfg)
    return model.to(dtype).eval(), tok


def tiny_llava(seed: int = 0, *, image_size: int = 56, patch_size: int = 14, vision_hidden: int = 64,
               vision_layers: int = 2, vision_heads: int = 4, text_hidden: int = 128, text_layers: int = 3,
               text_heads: int = 4, vision_feature_layer: int = -2, dtype: torch.dtype = torch.float32,
               ) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerFast]:
    """A tiny stock ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama) with the tiny tokenizer."""
    tok = build_tiny_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = _llama_config(tok, len(tok), text_hidden, text_layers, text_heads, None, None, 2048, 10000.0, None)
    n_tok = (image_size // patch_size) ** 2
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_tok,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg)
    return model.to(dtype).eval(), tok


def full_size_maira2_config() -> Maira2Config:
    """The real MAIRA-2 configuration (RAD-DINO ViT-B/14 at 518 px + Vicuna-7B, vocab 32207).

    Build it on the meta device for geometry tests: ``with torch.device("meta"): Maira2ForConditionalGeneration(cfg)``.
    """
    vision = Dinov2Config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        num_channels=3,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        out_features=["stage12"],
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    text = LlamaConfig(
        vocab_size=32207,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "linear", "factor": 1.5, "rope_theta": 10000.0},
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return Maira2Config(
        vision_config=vision,
        text_config=text,
        image_token_index=32204,
        image_seq_length=1369,
        projector_n_layers=4,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=0,
    )
