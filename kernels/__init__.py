"""Sparse SAE tensor ops with a Triton path (CUDA tensors) and a torch path (CPU tensors).

``backend=None`` picks by the tensors' device: CUDA → ``"triton"``, anything else → ``"torch"``.
``backend="triton"`` on CPU tensors is only allowed under ``TRITON_INTERPRET=1`` (the interpreter).
"""

if __name__ != "sae_rad_ext.kernels":
    # Imported as the top-level name ``kernels`` because a checkout's root is on ``sys.path``
    # (``python -m ...`` run from the repository). transformers probes for Hugging Face's hub
    # ``kernels`` package under that name; stay an empty module so the probe finds no version and
    # our ops are not imported twice under two names. Import ``sae_rad_ext.kernels`` instead.
    __all__: list[str] = []
else:
    from .decode import sparse_decode, sparse_decode_flat
    from .encode import BatchTopK, TopK, batch_topk_encode, topk_encode
    from .matryoshka import matryoshka_decode, matryoshka_losses
    from .steer import clamp, steer

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

