"""On-disk study-level feature scores and study facts, written while streaming.

``scores/<kind>/shard-00000.safetensors`` hold ``scores [n, d_sae]`` — one row per study, the feature's
pooled activation at the positions named by ``kind`` (see :data:`sae_rad_ext.interpret.scan.KINDS`) —
flushed every ``flush_every`` studies, so the pass holds at most one shard in memory.
``studies.jsonl`` has one :class:`StudyInfo` per line, in the same order.

:class:`ScoreStore` reads them back whole (:meth:`ScoreStore.scores`) or a block of features at a time
(:meth:`ScoreStore.block`), so concept alignment over a large SAE never needs all columns at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ScoreStore", "ScoreWriter", "StudyInfo"]


@dataclass
class StudyInfo:
    """Facts about one study kept for alignment, explanation and scoring (one line of ``studies.jsonl``)."""

    study_id: str
    split: str
    """``fit`` (thresholds, feature choice, explanations) or ``holdout`` (every reported metric)."""
    labels: dict[str, int | None] = field(default_factory=dict)
    """Concept → 1 / 0 / -1 (uncertain) / None, from the study's labels or the labeler."""
    findings: str = ""
    """Reference report (FINDINGS) text."""
    generated: str | None = None
    """The model's own generated report, when generation ran."""
    indication: str = ""
    views: list[str] = field(default_factory=list)
    """Images in the prompt: ``frontal``, ``lateral``, ``prior``."""
    view_position: str | None = None
    """Frontal view position (``PA`` / ``AP``) when the source says."""
    mask_concepts: list[str] = field(default_factory=list)
    """Concepts with a non-empty 2-D mask on the frontal image (phantoms)."""

    def attributes(self) -> dict[str, bool]:
        """Binary study attributes used by explainers and the RecSAE concept dictionary."""
        out = {f"finding:{k}": v == 1 for k, v in self.labels.items()}
        for v in ("lateral", "prior"):
            out[f"view:{v}"] = v in self.views
        if self.view_position:
            out[f"view:{self.view_position.upper()}"] = True
        return out


class ScoreWriter:
    """Appends study-level score rows per kind and flushes shards to ``folder/scores/<kind>/``."""

    def __init__(
        self,
        folder: str | Path,
        kinds: list[str],
        d_sae: int,
        *,
        flush_every: int = 256,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.folder = Path(folder)
        self.kinds, self.d_sae, self.flush_every, self.dtype = list(kinds), d_sae, flush_every, dtype
        self._rows: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
        self._infos: list[StudyInfo] = []
        self._shard = 0
        self.n_written = 0
        for k in kinds:
            (self.folder / "scores" / _safe(k)).mkdir(parents=True, exist_ok=True)
        self._info_tmp = self.folder / "studies.jsonl.tmp"
        self._info_f = open(self._info_tmp, "w")  # noqa: SIM115 - closed in close()

    def add(self, info: StudyInfo, scores: dict[str, torch.Tensor]) -> None:
        """One study: its facts and ``{kind: [d_sae]}`` (kinds missing for this study are written as 0)."""
        for k in self.kinds:
            v = scores.get(k)
            self._rows[k].append(
                torch.zeros(self.d_sae, dtype=self.dtype)
                if v is None
                else v.detach().to("cpu", self.dtype).reshape(self.d_sae)
            )
        self._infos.append(info)
        if len(self._infos) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self._infos:
            return
        for k in self.kinds:
            path = self.folder / "scores" / _safe(k) / f"shard-{self._shard:05d}.safetensors"
            save_file({"scores": torch.stack(self._rows[k]).contiguous()}, str(path))
            self._rows[k] = []
        for info in self._infos:
            self._info_f.write(json.dumps(asdict(info)) + "\n")
        self._info_f.flush()
        self.n_written += len(self._infos)
        self._infos = []
        self._shard += 1

    def close(self) -> None:
        self.flush()
        self._info_f.close()
        self._info_tmp.replace(self.folder / "studies.jsonl")
        (self.folder / "scores" / "kinds.json").write_text(
            json.dumps({"kinds": self.kinds, "d_sae": self.d_sae, "n_studies": self.n_written})
        )


class ScoreStore:
    """Reads what :class:`ScoreWriter` wrote."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta = self.folder / "scores" / "kinds.json"
        if not meta.is_file() or not (self.folder / "studies.jsonl").is_file():
            raise FileNotFoundError(
                f"{self.folder} has no scores/kinds.json + studies.jsonl (written by the scan stage)"
            )
        m = json.loads(meta.read_text())
        self.kinds: list[str] = m["kinds"]
        self.d_sae: int = int(m["d_sae"])
        with open(self.folder / "studies.jsonl") as f:
            self.studies = [StudyInfo(**json.loads(line)) for line in f if line.strip()]

    def __len__(self) -> int:
        return len(self.studies)

    def _shards(self, kind: str) -> list[Path]:
        if kind not in self.kinds:
            raise KeyError(f"no scores of kind {kind!r}; this run has {self.kinds}")
        return sorted((self.folder / "scores" / _safe(kind)).glob("shard-*.safetensors"))

    def block(self, kind: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """``[n_studies, stop - start]`` scores of features ``start:stop`` (reads only those columns)."""
        from safetensors import safe_open

        stop = self.d_sae if stop is None else stop
        parts = []
        for p in self._shards(kind):
            with safe_open(str(p), framework="pt") as f:
                parts.append(f.get_slice("scores")[:, start:stop].float())
        return torch.cat(parts) if parts else torch.zeros(0, stop - start)

    def scores(self, kind: str) -> torch.Tensor:
        """``[n_studies, d_sae]`` all scores of one kind."""
        return self.block(kind)

    def split_mask(self, split: str) -> torch.Tensor:
        return torch.tensor([s.split == split for s in self.studies], dtype=torch.bool)

    def labels(self, concepts: list[str]) -> torch.Tensor:
        """``[n_studies, n_concepts]`` float: 1 positive, 0 negative or not mentioned, NaN uncertain."""

        def val(v: Any) -> float:
            return float("nan") if v == -1 else 1.0 if v == 1 else 0.0

        return torch.tensor(
            [[val(s.labels.get(c)) for c in concepts] for s in self.studies], dtype=torch.float32
        )


def _safe(kind: str) -> str:
    return kind.replace(":", "__").replace("/", "_")
