"""Hooks → labelled batches: extraction with a role per position, the SAELens store, the on-disk cache."""

from sae_rad_ext.activations.extract import (
    ActivationBatch,
    RoleNormStats,
    activations_from_batch,
    default_processor,
    describe_positions,
    iter_activations,
    role_group_names,
)

__all__ = [
    "ActivationBatch",
    "RoleNormStats",
    "activations_from_batch",
    "default_processor",
    "describe_positions",
    "iter_activations",
    "role_group_names",
]
