"""Sparse SAE tensor ops with a Triton path (CUDA tensors) and a torch path (CPU tensors).

``backend=None`` picks by the tensors' device: CUDA → ``"triton"``, anything else → ``"torch"``.
``backend="triton"`` on CPU tensors is only allowed under ``TRITON_INTERPRET=1`` (the interpreter).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .decode import sparse_decode, sparse_decode_flat  # noqa: E402
from .encode import BatchTopK, TopK, batch_topk_encode, topk_encode  # noqa: E402
from .matryoshka import matryoshka_decode, matryoshka_losses  # noqa: E402
from .steer import clamp, steer  # noqa: E402

__all__ = [
    "BatchTopK",
    "TopK",
    "batch_topk_encode",
    "clamp",
    "matryoshka_decode",
    "matryoshka_losses",
    "sparse_decode",
    "sparse_decode_flat",
    "steer",
    "topk_encode",
]
