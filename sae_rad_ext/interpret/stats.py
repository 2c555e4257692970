"""Streaming per-feature statistics: frequencies (overall, per role / view), mean / max, histograms,
top studies and a uniform reservoir of firing studies — memory independent of the number of studies.

Everything is a fixed-size tensor updated batch by batch:

- firing counts ``[n_groups, d_sae]`` and position counts ``[n_groups]`` per role group
  (:func:`sae_rad_ext.activations.extract.role_group_names`: ``report``, ``indication``, ``image:frontal`` …);
- sum and max of the activation over firing positions ``[d_sae]``;
- a histogram of non-zero activations with fixed log-spaced bins ``[d_sae, n_bins + 2]`` (under/overflow);
- the top ``top_n`` studies per feature by their maximum activation, with the position of that
  maximum (a running ``torch.topk`` merge of ``[d_sae, top_n + batch]``);
- a reservoir of ``reservoir`` firing studies per feature, uniform over the firing studies (each gets
  a random key; the largest keys are kept — the same topk merge). Quantile groups are drawn from it.

``FeatureStats`` (the result) saves to ``stats.safetensors`` + ``stats.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sae_rad_ext.activations.extract import role_group_names
from sae_rad_ext.util.files import atomic_write_bytes, write_json

__all__ = ["FeatureStats", "FeatureStatsAccumulator", "log_bin_edges"]


def log_bin_edges(lo: float = 1e-4, hi: float = 1e4, n_bins: int = 64) -> torch.Tensor:
    """``n_bins + 1`` log-spaced edges (float64). Values below ``lo`` / above ``hi`` go to the two overflow bins."""
    if not (0 < lo < hi) or n_bins < 1:
        raise ValueError(f"need 0 < lo < hi and n_bins >= 1; got lo={lo}, hi={hi}, n_bins={n_bins}")
    return torch.logspace(math.log10(lo), math.log10(hi), n_bins + 1, dtype=torch.float64)


@dataclass
class FeatureStats:
    """Per-feature statistics of one pass (all tensors on CPU)."""

    group_names: list[str]
    """Role groups (rows of ``group_fire``): text roles, then ``image:frontal|lateral|prior``."""
    n_positions: torch.Tensor
    """``[n_groups]`` int64: positions seen per group."""
    group_fire: torch.Tensor
    """``[n_groups, d_sae]`` int64: positions where the feature fired (> 0), per group."""
    act_sum: torch.Tensor
    """``[d_sae]`` float64: sum of the activation over firing positions."""
    act_max: torch.Tensor
    """``[d_sae]`` float32: largest activation (0 for a dead feature)."""
    hist_edges: torch.Tensor
    """``[n_bins + 1]`` float64 log-spaced edges of the histogram (non-zero activations)."""
    hist: torch.Tensor
    """``[d_sae, n_bins + 2]`` int64 counts: underflow, the bins, overflow."""
    top_values: torch.Tensor
    """``[d_sae, top_n]`` float32: the top studies' maximum activation, best first (-inf when empty)."""
    top_study: torch.Tensor
    """``[d_sae, top_n]`` int64: index into ``study_ids`` (-1 when empty)."""
    top_position: torch.Tensor
    """``[d_sae, top_n]`` int64: position (in the study's own sequence) of that maximum."""
    sample_values: torch.Tensor
    """``[d_sae, reservoir]`` float32: maximum activation of uniformly sampled firing studies (-inf: empty)."""
    sample_study: torch.Tensor
    """``[d_sae, reservoir]`` int64 study index (-1 when empty)."""
    sample_position: torch.Tensor
    """``[d_sae, reservoir]`` int64 position of the sampled study's maximum."""
    study_ids: list[str] = field(default_factory=list)
    """Study ids in pass order (``top_study`` / ``sample_study`` index into it)."""
    n_firing_studies: torch.Tensor | None = None
    """``[d_sae]`` int64: studies in which the feature fired at least once."""

    @property
    def d_sae(self) -> int:
        return int(self.act_max.shape[0])

    @property
    def n_total_positions(self) -> int:
        return int(self.n_positions.sum())

    @property
    def fire_count(self) -> torch.Tensor:
        """``[d_sae]`` firing positions over all groups."""
        return self.group_fire.sum(0)

    @property
    def frac_nonzero(self) -> torch.Tensor:
        """``[d_sae]`` firing frequency over all positions."""
        return self.fire_count.double() / max(self.n_total_positions, 1)

    @property
    def mean_activation(self) -> torch.Tensor:
        """``[d_sae]`` mean activation where the feature fires (0 for dead features)."""
        return self.act_sum / self.fire_count.clamp(min=1).double()

    def role_frequency(self, feature: int) -> dict[str, float]:
        """Firing frequency per role group (and ``image`` / ``text`` aggregates) for one feature."""
        out: dict[str, float] = {}
        fire, npos = self.group_fire[:, feature], self.n_positions
        img = [i for i, n in enumerate(self.group_names) if n.startswith("image:")]
        txt = [
            i
            for i, n in enumerate(self.group_names)
            if not n.startswith("image:") and n not in ("pad", "special")
        ]
        for name, rows in (("image", img), ("text", txt)):
            n = int(npos[rows].sum())
            if n:
                out[name] = float(fire[rows].sum()) / n
        for i, name in enumerate(self.group_names):
            if int(npos[i]):
                out[name] = float(fire[i]) / int(npos[i])
        return out

    def dead_features(self) -> list[int]:
        """Features that never fired."""
        return torch.nonzero(self.fire_count == 0).flatten().tolist()

    def dense_features(self, threshold: float = 0.1) -> list[int]:
        """Features firing on more than ``threshold`` of all positions."""
        return torch.nonzero(self.frac_nonzero > threshold).flatten().tolist()

    def histogram(self, feature: int) -> tuple[list[float], list[float]]:
        """``(edges, counts)`` of one feature's non-zero activations, trimmed to the occupied bins.
        The overflow bins are folded into the first / last occupied bin."""
        h = self.hist[feature].double()
        inner = h[1:-1].clone()
        if float(h.sum()) == 0:
            return [], []
        inner[0] += h[0]
        inner[-1] += h[-1]
        nz = torch.nonzero(inner).flatten()
        a, b = int(nz[0]), int(nz[-1]) + 1
        return self.hist_edges[a : b + 1].tolist(), inner[a:b].tolist()

    # ---- persistence ----------------------------------------------------------------------
    _TENSORS = (
        "n_positions",
        "group_fire",
        "act_sum",
        "act_max",
        "hist_edges",
        "hist",
        "top_values",
        "top_study",
        "top_position",
        "sample_values",
        "sample_study",
        "sample_position",
        "n_firing_studies",
    )

    def save(self, folder: str | Path) -> Path:
        """Write ``stats.safetensors`` and ``stats.json`` (group names, study ids) atomically."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous() for k in self._TENSORS if getattr(self, k) is not None}
        atomic_write_bytes(folder / "stats.safetensors", save(tensors))
        write_json(folder / "stats.json", {"group_names": self.group_names, "study_ids": self.study_ids}, indent=None)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FeatureStats:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "stats.safetensors").is_file():
            raise FileNotFoundError(f"{folder} has no stats.safetensors (written by FeatureStats.save)")
        t = load_file(str(folder / "stats.safetensors"))
        meta = json.loads((folder / "stats.json").read_text())
        return cls(
            group_names=meta["group_names"],
            study_ids=meta["study_ids"],
            **{k: t.get(k) for k in cls._TENSORS},
        )


class FeatureStatsAccumulator:
    """Accumulates :class:`FeatureStats` from per-study codes; call :meth:`update` then :meth:`result`.

    Memory: ``O(d_sae × (n_groups + n_bins + top_n + reservoir))`` — independent of the number of studies
    (only the list of study ids grows).
    """

    def __init__(
        self,
        d_sae: int,
        *,
        top_n: int = 20,
        reservoir: int = 64,
        hist_edges: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        if d_sae < 1 or top_n < 1 or reservoir < 0:
            raise ValueError(
                f"need d_sae >= 1, top_n >= 1, reservoir >= 0; got {d_sae}, {top_n}, {reservoir}"
            )
        self.d_sae, self.top_n, self.reservoir = d_sae, top_n, reservoir
        self.group_names, _ = role_group_names(
            torch.zeros(1, dtype=torch.int8), torch.zeros(1, dtype=torch.int8)
        )
        g = len(self.group_names)
        self.n_positions = torch.zeros(g, dtype=torch.int64)
        self.group_fire = torch.zeros(g, d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_max = torch.zeros(d_sae, dtype=torch.float32)
        self.hist_edges = log_bin_edges() if hist_edges is None else hist_edges.double()
        self._log_edges = self.hist_edges.log()
        self.n_bins = len(self.hist_edges) - 1
        self.hist = torch.zeros(d_sae, self.n_bins + 2, dtype=torch.int64)
        self.top_values = torch.full((d_sae, top_n), -math.inf)
        self.top_study = torch.full((d_sae, top_n), -1, dtype=torch.int64)
        self.top_position = torch.full((d_sae, top_n), -1, dtype=torch.int64)
        self.sample_keys = torch.full((d_sae, reservoir), -math.inf)
        self.sample_values = torch.full((d_sae, reservoir), -math.inf)
        self.sample_study = torch.full((d_sae, reservoir), -1, dtype=torch.int64)
        self.sample_position = torch.full((d_sae, reservoir), -1, dtype=torch.int64)
        self.n_firing_studies = torch.zeros(d_sae, dtype=torch.int64)
        self.study_ids: list[str] = []
        self._gen = torch.Generator().manual_seed(seed)

    def add_study(self, study_id: str) -> int:
        """Register a study; returns its index (used by :meth:`update`)."""
        self.study_ids.append(str(study_id))
        return len(self.study_ids) - 1

    @torch.no_grad()
    def update(
        self,
        codes: list[torch.Tensor],
        groups: list[torch.Tensor],
        positions: list[torch.Tensor],
        study_index: list[int],
    ) -> None:
        """Add a batch of studies: per study ``codes [rows, d_sae]`` (selected positions only),
        ``groups [rows]`` (role-group codes), ``positions [rows]`` and its index from :meth:`add_study`."""
        if not (len(codes) == len(groups) == len(positions) == len(study_index)):
            raise ValueError("codes, groups, positions and study_index need one entry per study")
        maxes, argpos = [], []
        for z, grp, pos in zip(codes, groups, positions, strict=True):
            if (
                z.dim() != 2
                or z.shape[1] != self.d_sae
                or z.shape[0] != grp.shape[0]
                or grp.shape != pos.shape
            ):
                raise ValueError(
                    f"a study's codes must be [rows, {self.d_sae}] with groups/positions [rows]; got "
                    f"{tuple(z.shape)}, {tuple(grp.shape)}, {tuple(pos.shape)}"
                )
            z = z.detach().float().cpu()
            grp, pos = grp.long().cpu(), pos.long().cpu()
            if z.shape[0] == 0:
                maxes.append(torch.zeros(self.d_sae))
                argpos.append(torch.full((self.d_sae,), -1, dtype=torch.int64))
                continue
            fires = z > 0
            self.n_positions += torch.bincount(grp, minlength=len(self.group_names))
            self.group_fire.index_add_(0, grp, fires.long())
            self.act_sum += torch.where(fires, z, 0).sum(0).double()
            m, am = z.max(0)
            self.act_max = torch.maximum(self.act_max, m)
            rows, feats = torch.nonzero(fires, as_tuple=True)
            if rows.numel():
                b = torch.bucketize(z[rows, feats].double().log(), self._log_edges, right=True)  # 0..n_bins+1
                self.hist.view(-1).index_add_(
                    0, feats * (self.n_bins + 2) + b, torch.ones_like(b, dtype=torch.int64)
                )
            maxes.append(m.clamp(min=0))
            argpos.append(pos[am])
        M = torch.stack(maxes, 1)  # [d_sae, b]
        P = torch.stack(argpos, 1)
        S = torch.tensor(study_index, dtype=torch.int64).expand_as(P)
        fired = M > 0
        self.n_firing_studies += fired.sum(1)
        vals = torch.where(fired, M, -math.inf)
        self.top_values, self.top_study, self.top_position = _merge(
            vals, vals, S, P, self.top_values, self.top_values, self.top_study, self.top_position, self.top_n
        )[1:]
        if self.reservoir:
            keys = torch.where(fired, torch.rand(M.shape, generator=self._gen), -math.inf)
            self.sample_keys, self.sample_values, self.sample_study, self.sample_position = _merge(
                keys,
                vals,
                S,
                P,
                self.sample_keys,
                self.sample_values,
                self.sample_study,
                self.sample_position,
                self.reservoir,
            )

    def result(self) -> FeatureStats:
        empty = torch.isinf(self.top_values)
        s_empty = torch.isinf(self.sample_keys)
        return FeatureStats(
            group_names=list(self.group_names),
            n_positions=self.n_positions.clone(),
            group_fire=self.group_fire.clone(),
            act_sum=self.act_sum.clone(),
            act_max=self.act_max.clone(),
            hist_edges=self.hist_edges.clone(),
            hist=self.hist.clone(),
            top_values=self.top_values.clone(),
            top_study=torch.where(empty, -1, self.top_study),
            top_position=torch.where(empty, -1, self.top_position),
            sample_values=self.sample_values.clone(),
            sample_study=torch.where(s_empty, -1, self.sample_study),
            sample_position=torch.where(s_empty, -1, self.sample_position),
            study_ids=list(self.study_ids),
            n_firing_studies=self.n_firing_studies.clone(),
        )


def _merge(keys, vals, study, pos, old_keys, old_vals, old_study, old_pos, k):
    """Keep the ``k`` largest keys of ``[d, old] ++ [d, new]`` with their values / study / position."""
    K = torch.cat([old_keys, keys], 1)
    order = K.topk(k, dim=1).indices
    pick = lambda a, b: torch.cat([a, b], 1).gather(1, order)  # noqa: E731
    return pick(old_keys, keys), pick(old_vals, vals), pick(old_study, study), pick(old_pos, pos)
