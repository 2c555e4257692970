"""Sparse SAE tensor ops with a Triton path (CUDA tensors) and a torch path (CPU tensors)."""
