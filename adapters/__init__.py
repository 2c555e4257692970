"""Model adapters: MAIRA-2 on transformers 5, generic LLaVA, the tiny model, hooks, prompts, roles."""

from sae_rad_ext.adapters.roles import PRESETS, ImageSlot, Role, Selection, TokenRoles
from sae_rad_ext.adapters.tokenizer import build_tiny_tokenizer

__all__ = ["PRESETS", "ImageSlot", "Role", "Selection", "TokenRoles", "build_tiny_tokenizer"]
