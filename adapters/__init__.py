"""Model adapters: MAIRA-2 on transformers 5, generic LLaVA, the tiny model, hooks, prompts, roles."""

if __name__ != "sae_rad_ext.adapters":
    # Imported as the top-level name ``adapters`` because a checkout's root is on ``sys.path``
    # (``python -m ...`` run from the repository). That name belongs to AdapterHub's ``adapters``
    # package; stay an empty module so nothing mistakes this folder for it and our classes are not
    # imported under two names. Import ``sae_rad_ext.adapters`` instead.
    __all__: list[str] = []
else:
    from sae_rad_ext.adapters.grounding import GroundedPhrase, format_grounded, parse_grounded
    from sae_rad_ext.adapters.hooked import BLOCK_HOOKS, HookedMaira2, HookedMaira2Config
    from sae_rad_ext.adapters.loading import LoadedMaira2, load_maira2, save_maira2_original
    from sae_rad_ext.adapters.maira2 import (
        ImageGeometry,
        Maira2Config,
        Maira2ForConditionalGeneration,
        Maira2Model,
        image_geometry,
    )
    from sae_rad_ext.adapters.preprocessing import preprocess_image
    from sae_rad_ext.adapters.prompts import Maira2Batch, Maira2Processor
    from sae_rad_ext.adapters.roles import PRESETS, ImageSlot, Role, Selection, TokenRoles
    from sae_rad_ext.adapters.tiny import full_size_maira2_config, tiny_llava, tiny_maira2, tiny_maira2_config
    from sae_rad_ext.adapters.tokenizer import build_tiny_tokenizer

    __all__ = [
        "PRESETS", "ImageSlot", "Role", "Selection", "TokenRoles", "build_tiny_tokenizer",
        "ImageGeometry",
        "Maira2Config",
        "Maira2ForConditionalGeneration",
        "Maira2Model",
        "image_geometry",
        "full_size_maira2_config",
        "tiny_llava",
        "tiny_maira2",
        "tiny_maira2_config",
        "Maira2Batch",
        "Maira2Processor",
        "preprocess_image",
        "GroundedPhrase",
        "format_grounded",
        "parse_grounded",
        "BLOCK_HOOKS",
        "HookedMaira2",
        "HookedMaira2Config",
        "LoadedMaira2",
        "load_maira2",
        "save_maira2_original",
    ]
