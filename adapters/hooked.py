"""TransformerLens hook points over a Hugging Face MAIRA-2 / LLaVA model — bit-identical to HF.

:class:`HookedMaira2` is a ``transformer_lens.HookedRootModule`` that owns the HF model (``.model``). It
does not re-implement the network: each decoder layer's ``forward`` is replaced (on that instance) by
the same Llama decoder-layer computation op for op, with ``HookPoint`` calls in between, and the
projector / embedding / final norm get module hooks that route through ``HookPoint`` s. With no hook
attached every ``HookPoint`` is the identity, so ``forward``, ``run_with_cache`` and HF ``generate``
(KV cache, left padding, ``output_hidden_states``) compute exactly what the HF model computes.

Hook names (TransformerLens grammar)::

    hook_embed                          token embeddings, before the image splice   [batch, pos, d_model]
    vision_projector.hook_in            projector input, one row per image patch     [n_images, tokens_per_image, d_vision]
    vision_projector.hook_out           projector output (what is spliced in)        [n_images, tokens_per_image, d_model]
    blocks.{L}.hook_resid_pre           residual stream into layer L (L=0: after the splice)
    blocks.{L}.hook_attn_out            attention output
    blocks.{L}.hook_resid_mid           resid_pre + attn_out
    blocks.{L}.hook_mlp_out             MLP output
    blocks.{L}.hook_resid_post          resid_mid + mlp_out  (== HF hidden_states[L+1] for L < n_layers-1)
    ln_final.hook_out                   final RMSNorm output (== HF hidden_states[-1])

Every hook may return an edited tensor (steering, ablation). During :meth:`HookedMaira2.generate`,
``position_offset`` is the number of positions before the chunk being processed (0 for the prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_rad_ext.adapters.maira2 import (
    Maira2ForConditionalGeneration,
    check_image_tokens,
    check_pixel_values,
    image_geometry,
)
from torch import nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
SUPPORTED_DECODER_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")


@dataclass
class HookedMaira2Config:
    """What a hooked model is (TransformerLens-style ``cfg``)."""

    model_name: str
    architecture: str  # "maira2" or "llava"
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    d_vision: int
    n_ctx: int
    image_token_index: int
    tokens_per_image: int
    patch_grid: tuple[int, int]
    image_size: tuple[int, int]
    device: torch.device
    dtype: torch.dtype
    default_prepend_bos: bool = True
    normalization_type: str = "RMS"


class _BlockHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name in BLOCK_HOOKS:
            setattr(self, name, HookPoint())


class _ProjectorHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()


class _FinalHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_out = HookPoint()


class _StopForward(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, resid: torch.Tensor):
        self.resid = resid


def _make_layer_forward(layer: nn.Module, hooks: _BlockHooks, idx: int, owner: HookedMaira2) -> Callable:
    """The HF Llama decoder layer's forward, op for op, with hook points in between."""

    def forward(hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                position_embeddings=None, **kwargs):
        hidden_states = hooks.hook_resid_pre(hidden_states)
        if owner._stop_at == 0 and idx == 0:
            raise _StopForward(hidden_states)
        residual = hidden_states
        hidden_states = layer.input_layernorm(hidden_states)
        if past_key_values is not None:  # transformers >= 5.24 passes the cache as ``cache`` in kwargs
            kwargs["past_key_values"] = past_key_values
        hidden_states, _ = layer.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = hooks.hook_attn_out(hidden_states)
        hidden_states = hooks.hook_resid_mid(residual + hidden_states)
        residual = hidden_states
        hidden_states = layer.post_attention_layernorm(hidden_states)
        hidden_states = layer.mlp(hidden_states)
        hidden_states = hooks.hook_mlp_out(hidden_states)
        hidden_states = hooks.hook_resid_post(residual + hidden_states)
        if owner._stop_at == idx + 1:
            raise _StopForward(hidden_states)
        return hidden_states

    return forward


class HookedMaira2(HookedRootModule):
    """TransformerLens hook points over a MAIRA-2 (or any ``LlavaForConditionalGeneration``) HF model."""

    def __init__(self, model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase | None = None,
                 model_name: str | None = None):
        if not isinstance(model, LlavaForConditionalGeneration):
            raise TypeError(
                f"HookedMaira2 wraps a transformers-5 LlavaForConditionalGeneration (MAIRA-2 included); got "
                f"{type(model).__name__}. Load MAIRA-2 with load_maira2 / HookedMaira2.from_pretrained."
            )
        super().__init__()
        lm = model.model.language_model
        layers = list(lm.layers)
        bad = {type(x).__name__ for x in layers} - set(SUPPORTED_DECODER_LAYERS)
        if bad:
            raise NotImplementedError(f"decoder layers {sorted(bad)} are not supported; "
                                      f"supported: {', '.join(SUPPORTED_DECODER_LAYERS)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.hook_embed = HookPoint()
        self.vision_projector = _ProjectorHooks()
        self.blocks = nn.ModuleList([_BlockHooks() for _ in layers])
        self.ln_final = _FinalHooks()
        self._stop_at: int | None = None
        self.position_offset: int = 0
        """Positions before the chunk being processed (0 for a forward / prefill; prompt_len + step in decoding)."""

        for handle in getattr(model, "_hooked_maira2_handles", ()):  # wrapped before: the newest wrapper wins
            handle.remove()
        for i, layer in enumerate(layers):
            layer.forward = _make_layer_forward(layer, self.blocks[i], i, self)
        proj = model.model.multi_modal_projector
        model._hooked_maira2_handles = [
            proj.register_forward_pre_hook(lambda _m, args: (self.vision_projector.hook_in(args[0]), *args[1:])),
            proj.register_forward_hook(lambda _m, _a, out: self.vision_projector.hook_out(out)),
            lm.embed_tokens.register_forward_hook(lambda _m, _a, out: self.hook_embed(out)),
            lm.norm.register_forward_hook(lambda _m, _a, out: self.ln_final.hook_out(out)),
            model.register_forward_pre_hook(self._set_offset, with_kwargs=True),
        ]

        tc, geo = model.config.text_config, image_geometry(model.config)
        n_heads = tc.num_attention_heads
        self.cfg = HookedMaira2Config(
            model_name=model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type,
            architecture="maira2" if isinstance(model, Maira2ForConditionalGeneration) else "llava",
            n_layers=len(layers), d_model=tc.hidden_size, n_heads=n_heads,
            d_head=getattr(tc, "head_dim", None) or tc.hidden_size // n_heads, d_mlp=tc.intermediate_size,
            d_vocab=tc.vocab_size, d_vision=model.config.vision_config.hidden_size,
            n_ctx=tc.max_position_embeddings, image_token_index=model.config.image_token_index,
            tokens_per_image=geo.tokens_per_image, patch_grid=geo.patch_grid, image_size=geo.image_size,
            device=model.device, dtype=model.dtype,
        )
        self.setup()
        # HF submodules are reachable through .model; only hook points are TransformerLens names.
        self.mod_dict = dict(self.hook_dict)

    # ---- constructors ----------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, **sizes: Any) -> HookedMaira2:
        """The tiny MAIRA-2-architecture model (``tiny_maira2(seed, **sizes)``), offline, in milliseconds."""
        from sae_rad_ext.adapters.tiny import tiny_maira2

        model, tok = tiny_maira2(seed, **sizes)
        return cls(model, tok, model_name="tiny-maira2")

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> HookedMaira2:
        """Load a MAIRA-2 checkpoint folder strictly with :func:`load_maira2` (no remote code)."""
        from sae_rad_ext.adapters.loading import load_maira2

        model, tok = load_maira2(path, device=device, dtype=dtype)
        return cls(model, tok, model_name=str(path))

    @classmethod
    def from_hf(cls, model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase | None = None,
                model_name: str | None = None) -> HookedMaira2:
        """Wrap an HF MAIRA-2 or generic LLaVA model in place (its decoder layers get hook points)."""
        return cls(model, tokenizer, model_name)

    # ---- hook-name validation --------------------------------------------------------------
    def _valid_names_message(self) -> str:
        n = self.cfg.n_layers
        block = "|".join(BLOCK_HOOKS)
        return (f"valid hook names: hook_embed, vision_projector.hook_in, vision_projector.hook_out, "
                f"blocks.{{L}}.{{{block}}} for L in 0..{n - 1}, ln_final.hook_out")

    def check_hook_name(self, name: str) -> None:
        if name not in self.hook_dict:
            raise ValueError(f"unknown hook name {name!r}; {self._valid_names_message()}")

    def _enable_hook(self, name, hook, dir):  # noqa: A002 - TransformerLens signature
        if isinstance(name, str):
            self.check_hook_name(name)
        return super()._enable_hook(name, hook, dir)

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):  # noqa: A002
        if isinstance(name, str):
            self.check_hook_name(name)
        return super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def run_with_cache(self, *model_args: Any, names_filter: Any = None, return_cache_object: bool = True,
                       **kwargs: Any):
        """TransformerLens ``run_with_cache`` (``stop_at_layer=L+1`` runs blocks 0..L and returns their output)."""
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        for name in names if isinstance(names, (list, tuple)) else []:
            if isinstance(name, str):
                self.check_hook_name(name)
        if isinstance(names_filter, tuple):
            names_filter = list(names_filter)
        out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache

    # ---- running ---------------------------------------------------------------------------
    def _set_offset(self, _module, _args, kwargs):
        # transformers >= 5.24 passes the KV cache as ``cache`` (``past_key_values`` then stays None)
        pkv = kwargs.get("cache")
        if pkv is None:
            pkv = kwargs.get("past_key_values")
        self.position_offset = int(pkv.get_seq_length()) if pkv is not None else 0

    def _prepare(self, input_ids, pixel_values, attention_mask):
        if isinstance(input_ids, str) or (isinstance(input_ids, (list, tuple)) and input_ids
                                          and isinstance(input_ids[0], str)):
            input_ids = self.to_tokens(list(input_ids) if not isinstance(input_ids, str) else input_ids)
        elif isinstance(input_ids, (list, tuple)):
            input_ids = torch.tensor(input_ids, dtype=torch.long)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() not in (1, 2):
            raise ValueError(f"input_ids must be a [batch, pos] token tensor (or text); got {type(input_ids)}")
        input_ids = (input_ids[None] if input_ids.dim() == 1 else input_ids).to(self.cfg.device)
        n_images = 0 if pixel_values is None else (pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor)
                                                    and pixel_values.dim() == 4 else -1)
        if pixel_values is not None:
            check_pixel_values(pixel_values, self.model.config)
            pixel_values = pixel_values.to(self.cfg.device, self.cfg.dtype)
        check_image_tokens(input_ids, n_images, self.cfg.image_token_index, self.cfg.tokens_per_image)
        if attention_mask is None and self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            not_pad = input_ids != self.tokenizer.pad_token_id
            if not bool(not_pad.all()):
                attention_mask = (not_pad.cumsum(-1) > 0).long()  # only leading (left) padding is padding
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.cfg.device)
        return input_ids, pixel_values, attention_mask

    def forward(self, input: Any, pixel_values: torch.Tensor | None = None,  # noqa: A002 - TL signature
                attention_mask: torch.Tensor | None = None, stop_at_layer: int | None = None,
                return_type: str | None = "logits", loss_per_token: bool = False,
                position_ids: torch.Tensor | None = None, prepend_bos: bool | None = None, **_: Any):
        """Run the model. ``input``: ``[batch, pos]`` ids (or text, tokenized without images).

        ``pixel_values``: ``[n_images, C, H, W]``, all images of the batch in prompt order. With
        ``attention_mask`` (0 = left padding; inferred from leading pad tokens when omitted) positions
        are counted over real tokens only, as HF ``generate`` does, so padding does not change the
        activations of real tokens. ``stop_at_layer=L+1`` returns ``blocks.L.hook_resid_post``.
        ``return_type``: "logits", "loss", "both" ((logits, loss)) or None.
        """
        input_ids, pixel_values, attention_mask = self._prepare(input, pixel_values, attention_mask)
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        n = self.cfg.n_layers
        if stop_at_layer is not None and stop_at_layer < 0:
            stop_at_layer += n
        if stop_at_layer is not None and not 0 <= stop_at_layer <= n:
            raise ValueError(f"stop_at_layer must be in [-{n}, {n}], got {stop_at_layer}")
        self._stop_at = stop_at_layer
        try:
            out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False)
        except _StopForward as stop:
            return stop.resid
        finally:
            self._stop_at = None
        if stop_at_layer is not None:
            return out.logits  # unreachable: the stop is raised inside the last block
        if return_type is None:
            return None
        if return_type == "logits":
            return out.logits
        loss = lm_cross_entropy_loss(out.logits, input_ids, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return out.logits, loss
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None; got {return_type!r}")

    @torch.no_grad()
    def generate(self, input_ids: Any, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20, do_sample: bool = False,
                 fwd_hooks: list[tuple[str | Callable, Callable]] = (), only_new_tokens: bool = False,
                 **kwargs: Any) -> torch.Tensor:
        """HF ``generate`` (KV cache) with every active hook applied at every step.

        Hooks added with ``add_hook`` / ``hooks(...)`` or passed as ``fwd_hooks`` stay active for the
        prompt and every decoding step; ``self.position_offset`` tells a hook where its chunk starts.
        Returns ``[batch, prompt + new]`` token ids (``only_new_tokens``: ``[batch, new]``).
        """
        input_ids, pixel_values, attention_mask = self._prepare(input_ids, pixel_values, attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tok = self.tokenizer
        if tok is not None:
            kwargs.setdefault("pad_token_id", tok.pad_token_id)
            kwargs.setdefault("eos_token_id", tok.eos_token_id)
        with self.hooks(fwd_hooks=list(fwd_hooks)):
            out = self.model.generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                                      max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs)
        self.position_offset = 0
        return out[:, input_ids.shape[1]:] if only_new_tokens else out

    # ---- conveniences ----------------------------------------------------------------------
    @property
    def W_U(self) -> torch.Tensor:  # noqa: N802 - TransformerLens name
        """Unembedding ``[d_model, d_vocab]`` (a view of ``lm_head.weight``)."""
        return self.model.lm_head.weight.T

    @property
    def W_E(self) -> torch.Tensor:  # noqa: N802 - TransformerLens name
        """Token embedding ``[d_vocab, d_model]``."""
        return self.model.model.language_model.embed_tokens.weight

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise ValueError("this HookedMaira2 has no tokenizer; pass one to from_hf(model, tokenizer)")
        return self.tokenizer

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None) -> torch.Tensor:
        """Tokenize text (no images) to ``[batch, pos]`` ids on the model's device, left-padded."""
        tok = self._require_tokenizer()
        bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        enc = tok([text] if isinstance(text, str) else list(text), return_tensors="pt", padding=True,
                  add_special_tokens=bos)
        return enc["input_ids"].to(self.cfg.device)

    def to_string(self, tokens: torch.Tensor | list[int]) -> str | list[str]:
        tok = self._require_tokenizer()
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
            return tok.batch_decode(tokens.tolist())
        return tok.decode(tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens)

    def to_str_tokens(self, tokens: torch.Tensor | list[int]) -> list[str]:
        tok = self._require_tokenizer()
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens
        return tok.convert_ids_to_tokens(ids[0] if ids and isinstance(ids[0], list) else ids)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        p = next(self.model.parameters(), None)
        if p is not None and hasattr(self, "cfg"):
            self.cfg.device, self.cfg.dtype = p.device, p.dtype
        return out
