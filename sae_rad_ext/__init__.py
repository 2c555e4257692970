"""sae-rad-ext: SAELens for radiology multimodal LLMs (MAIRA-2 and the LLaVA family).

Importing this package registers its SAE architectures with SAELens (the only import-time side effect):
``MATRYOSHKA_ARCHITECTURE`` as both a training and an inference architecture, and the ``maira2_sae``
pretrained-SAE converter (:mod:`sae_rad_ext.saes.maira2_format`).
"""

from __future__ import annotations

__version__ = "0.1.0"

from sae_rad_ext.errors import BadInputError, CheckpointError, ConfigMismatchError, SaeRadError  # noqa: E402
from sae_rad_ext.saes.maira2_format import (  # noqa: E402
    load_maira2_sae,
    register_maira2_sae_converter,
    register_maira2_sae_release,
    save_maira2_sae_format,
)
from sae_rad_ext.saes.matryoshka import (  # noqa: E402
    MATRYOSHKA_ARCHITECTURE,
    LevelMetrics,
    RadMatryoshkaSAE,
    RadMatryoshkaSAEConfig,
)
from sae_rad_ext.saes.matryoshka_training import (  # noqa: E402
    RadMatryoshkaBatchTopKTrainingSAE,
    RadMatryoshkaBatchTopKTrainingSAEConfig,
)


def _register() -> None:
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    if MATRYOSHKA_ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(MATRYOSHKA_ARCHITECTURE, RadMatryoshkaSAE, RadMatryoshkaSAEConfig)
    if MATRYOSHKA_ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(
            MATRYOSHKA_ARCHITECTURE, RadMatryoshkaBatchTopKTrainingSAE, RadMatryoshkaBatchTopKTrainingSAEConfig
        )
    register_maira2_sae_converter()


_register()

__all__ = [
    "MATRYOSHKA_ARCHITECTURE",
    "BadInputError",
    "CheckpointError",
    "ConfigMismatchError",
    "LevelMetrics",
    "RadMatryoshkaBatchTopKTrainingSAE",
    "RadMatryoshkaBatchTopKTrainingSAEConfig",
    "RadMatryoshkaSAE",
    "RadMatryoshkaSAEConfig",
    "SaeRadError",
    "__version__",
    "load_maira2_sae",
    "register_maira2_sae_release",
    "save_maira2_sae_format",
]
