"""MAIRA-2 on transformers 5: config and model classes in the 5.x Llava layout (no remote code).

MAIRA-2 (microsoft/maira-2) = RAD-DINO (a Dinov2 ViT-B/14 loaded as an ``AutoBackbone``) + a 4-layer GELU
MLP projector + Vicuna-7B (Llama). Its published remote code targets transformers 4.46–4.51, where the
submodules sit on the top-level model; here they sit under ``model`` as transformers 5's Llava does:

```
Maira2ForConditionalGeneration
├── model: Maira2Model
│   ├── vision_tower            Dinov2Backbone (AutoBackbone.from_config)
│   ├── multi_modal_projector   layers.0 Linear, GELU, layers.2 Linear, GELU, layers.4 Linear, GELU, layers.6
│   └── language_model          LlamaModel
└── lm_head                     Linear(d_model, vocab)
```

Image features are the backbone's ``feature_maps[vision_feature_layer]`` (final LayerNorm applied) with
the CLS token dropped (``vision_feature_select_strategy="default"``); ``image_feature_source="hidden_states"``
selects the un-normalised ``hidden_states`` instead (one public copy of MAIRA-2's code does that). The
projected features replace the embeddings at positions where ``input_ids == image_token_index``; each
image needs exactly :func:`image_geometry` ``(config).tokens_per_image`` such positions.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaPreTrainedModel,
    PretrainedConfig,
)
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPooling


@strict
class Maira2Config(LlavaConfig):
    """Config of a MAIRA-2-architecture model: a :class:`~transformers.LlavaConfig` with a Dinov2
    ``vision_config``, a Llama ``text_config``, ``projector_n_layers`` and ``image_feature_source``.

    Defaults are MAIRA-2's (image token 32204, 1369 tokens per 518 px image, last feature map, CLS dropped).
    """

    model_type = "maira2"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="dinov2",
            init_kwargs={
                "image_size": 518,
                "patch_size": 14,
                "out_features": ["stage12"],
                "reshape_hidden_states": False,
                "apply_layernorm": True,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    image_token_index: int = 32204
    image_seq_length: int = 1369
    vision_feature_layer: int | list[int] = -1
    projector_n_layers: int = 4
    """Number of Linear layers in the projector (GELU between them); MAIRA-2 uses 4."""
    image_feature_source: Literal["feature_maps", "hidden_states"] = "feature_maps"
    """``feature_maps``: backbone output after the final LayerNorm (MAIRA-2); ``hidden_states``: before it."""


class ImageGeometry(NamedTuple):
    """How one image maps onto language-model positions."""

    tokens_per_image: int
    """Image-token positions each image fills (``patch_grid`` rows × cols, + 1 if the CLS token is kept)."""
    patch_grid: tuple[int, int]
    """(rows, cols) of the patch grid; positions run row-major after the optional leading CLS."""
    image_size: tuple[int, int]
    """(height, width) in pixels the vision tower expects."""
    num_channels: int
    """Channels the vision tower expects."""
    has_cls: bool
    """True when the CLS token is kept (``vision_feature_select_strategy="full"``)."""


def _pair(x: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (list, tuple)) else (int(x), int(x))


def image_geometry(config: PretrainedConfig) -> ImageGeometry:
    """Image geometry of a MAIRA-2 or Llava config (CLIP / SigLIP / Dinov2 vision configs)."""
    vc = config.vision_config
    h, w = _pair(vc.image_size)
    ph, pw = _pair(vc.patch_size)
    rows, cols = h // ph, w // pw
    has_cls = getattr(config, "vision_feature_select_strategy", "default") == "full"
    if vc.model_type in ("siglip_vision_model",):
        has_cls = False  # SigLIP has no CLS token; Llava-style "default" would drop a patch - not supported
    return ImageGeometry(rows * cols + int(has_cls), (rows, cols), (h, w), int(vc.num_channels), has_cls)


def check_pixel_values(pixel_values: torch.Tensor, config: PretrainedConfig) -> None:
    """Raise a clear ``ValueError`` unless ``pixel_values`` is ``[n_images, C, H, W]`` as the tower expects."""
    geo = image_geometry(config)
    want = f"[n_images, {geo.num_channels}, {geo.image_size[0]}, {geo.image_size[1]}]"
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(
            f"pixel_values must be a 4-D tensor {want} (all images of the batch stacked in prompt order); "
            f"got {shape}. Use the prompt builder's image preprocessing to make them."
        )
    n, c, h, w = pixel_values.shape
    if c != geo.num_channels:
        raise ValueError(
            f"pixel_values have {c} channels but the vision tower expects {geo.num_channels} ({want}); "
            "MAIRA-2 feeds the greyscale radiograph repeated over 3 channels - preprocess with the prompt builder."
        )
    if (h, w) != geo.image_size:
        raise ValueError(
            f"pixel_values are {h}x{w} px but the vision tower expects {geo.image_size[0]}x{geo.image_size[1]} "
            f"({want}; {geo.tokens_per_image} tokens per image); resize/centre-crop with the prompt builder."
        )


def check_image_tokens(input_ids: torch.Tensor, n_images: int, image_token_index: int, tokens_per_image: int) -> None:
    """Raise a clear ``ValueError`` unless ``input_ids`` hold exactly ``n_images × tokens_per_image`` image
    tokens, in whole blocks per row."""
    per_row = (input_ids == image_token_index).sum(-1).tolist()
    total = sum(per_row)
    if total == n_images * tokens_per_image and all(r % tokens_per_image == 0 for r in per_row):
        return
    blocks = [r / tokens_per_image for r in per_row]
    raise ValueError(
        f"image count does not match the <image> tokens: {n_images} image(s) given (pixel_values) but input_ids "
        f"hold {total} image tokens (id {image_token_index}) = {total / tokens_per_image:g} blocks of "
        f"{tokens_per_image} (per row: {blocks}). Each image needs exactly {tokens_per_image} consecutive "
        f"<image> tokens and one pixel_values entry, in prompt order; build prompts with the prompt builder."
    )


class Maira2MultiModalProjector(nn.Module):
    """MAIRA-2's projector: ``projector_n_layers`` Linear layers with GELU between (``layers.0/2/4/6``)."""

    def __init__(self, config: Maira2Config):
        super().__init__()
        n = config.projector_n_layers
        if n < 1:
            raise ValueError(f"projector_n_layers must be >= 1, got {n}")
        d_vis, d_txt = config.vision_config.hidden_size, config.text_config.hidden_size
        layers: list[nn.Module] = [nn.Linear(d_vis, d_txt, bias=True)]
        for _ in range(n - 1):
            layers += [ACT2FN[config.projector_hidden_act], nn.Linear(d_txt, d_txt, bias=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:  # [n_img, n_patch, d_vis] -> d_txt
        return self.layers(image_features)


class Maira2Model(LlavaModel):
    """Vision backbone + projector + Llama decoder (no LM head); transformers-5 Llava layout."""

    config_class = Maira2Config

    def __init__(self, config: Maira2Config):
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoBackbone.from_config(config.vision_config)
        self.multi_modal_projector = Maira2MultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Backbone → select ``feature_maps`` (or ``hidden_states``) → drop CLS → project.

        Returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` is a list of projected features,
        one ``[tokens_per_image, d_model]`` tensor per image (what ``LlavaModel.forward`` splices in).
        """
        cfg = self.config
        layer = cfg.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or cfg.vision_feature_select_strategy
        if not isinstance(layer, int):
            raise ValueError(f"MAIRA-2 selects one vision feature layer; got vision_feature_layer={layer!r}")
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
        check_pixel_values(pixel_values, cfg)
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        if cfg.image_feature_source == "feature_maps":
            selected = out.feature_maps[layer]
            if selected.dim() != 3:
                raise ValueError(
                    "MAIRA-2 needs token-shaped feature maps [n, 1 + patches, d]; set "
                    "vision_config.reshape_hidden_states=False"
                )
        else:
            selected = out.hidden_states[layer]
        if strategy == "default":
            selected = selected[:, 1:]  # drop CLS
        feats = self.multi_modal_projector(selected)  # [n_img, tokens_per_image, d_model]
        return BaseModelOutputWithPooling(
            last_hidden_state=selected, pooler_output=list(feats), hidden_states=out.hidden_states
        )

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features):
        if input_ids is None:
            return super().get_placeholder_mask(input_ids, inputs_embeds, image_features)
        tpi = image_geometry(self.config).tokens_per_image
        n_images = image_features.shape[0] // tpi if image_features.dim() == 2 else image_features.shape[0]
        check_image_tokens(input_ids, n_images, self.config.image_token_index, tpi)
        return (input_ids == self.config.image_token_index).unsqueeze(-1).to(inputs_embeds.device)


class Maira2ForConditionalGeneration(LlavaForConditionalGeneration):
    """MAIRA-2 for generation: :class:`Maira2Model` + ``lm_head`` (supports ``generate`` with KV cache)."""

    config_class = Maira2Config

    def __init__(self, config: Maira2Config):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = Maira2Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


def register_maira2_auto_classes() -> None:
    """Register ``maira2`` with ``AutoConfig`` / ``AutoModelForImageTextToText`` (explicit, opt-in)."""
    from transformers import AutoModelForImageTextToText

    try:
        AutoConfig.register("maira2", Maira2Config)
    except ValueError:
        pass  # already registered
    try:
        AutoModelForImageTextToText.register(Maira2Config, Maira2ForConditionalGeneration)
    except ValueError:
        pass
