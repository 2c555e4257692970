"""SAEs: the Matryoshka BatchTopK SAE (inference and training) and the maira-2-sae file format."""

from sae_rad_ext.saes.maira2_format import (
    load_maira2_sae,
    register_maira2_sae_converter,
    register_maira2_sae_release,
    save_maira2_sae_format,
)
from sae_rad_ext.saes.matryoshka import (
    MATRYOSHKA_ARCHITECTURE,
    LevelMetrics,
    RadMatryoshkaSAE,
    RadMatryoshkaSAEConfig,
)
from sae_rad_ext.saes.matryoshka_training import (
    RadMatryoshkaBatchTopKTrainingSAE,
    RadMatryoshkaBatchTopKTrainingSAEConfig,
)

__all__ = [
    "MATRYOSHKA_ARCHITECTURE",
    "LevelMetrics",
    "RadMatryoshkaBatchTopKTrainingSAE",
    "RadMatryoshkaBatchTopKTrainingSAEConfig",
    "RadMatryoshkaSAE",
    "RadMatryoshkaSAEConfig",
    "load_maira2_sae",
    "register_maira2_sae_converter",
    "register_maira2_sae_release",
    "save_maira2_sae_format",
]
