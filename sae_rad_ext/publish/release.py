"""SAELens releases: write a release folder in SAELens's disk format and register releases at run time.

A release folder (ready to push to a hub repo as is)::

    <out>/
      pretrained_saes.yaml      # the entry SAELens's own yaml would carry for this release
      README.md                 # model card: training config, metrics, per-level EV / L0
      <sae_id>/cfg.json         # SAELens config with complete metadata
      <sae_id>/sae_weights.safetensors
      <sae_id>/sparsity.safetensors   # "sparsity" = log10 firing rate per latent (when known)

:func:`register_release` adds a :class:`PretrainedSAELookup` to SAELens's cached directory (no edit
of SAELens's yaml) with a loader that reads local folders without network, so
``SAE.from_pretrained("<release>", "<sae_id>")`` works for local and published releases alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from sae_rad_ext.saes.matryoshka import RadMatryoshkaSAE

if TYPE_CHECKING:
    from sae_lens import SAE

LOCAL_LOADER = "sae_rad_ext_local"
"""Name of the loader registered in SAELens's ``NAMED_PRETRAINED_SAE_LOADERS`` for local folders."""

ENTRY_FILE = "pretrained_saes.yaml"


@dataclass
class ReleaseSAE:
    """What :func:`write_release` wrote for one SAE."""

    release: str
    sae_id: str
    folder: Path
    """``<release folder>/<sae_id>``."""
    entry: dict[str, Any]
    """The ``saes:`` entry for this SAE in ``pretrained_saes.yaml``."""


def _default_sae_id(sae: SAE[Any]) -> str:
    hook = sae.cfg.metadata.hook_name  # SAELens metadata: a missing key reads as None
    return f"{hook or 'sae'}__{sae.cfg.d_sae}"


def write_release(
    sae: SAE[Any],
    out_dir: str | Path,
    *,
    release: str,
    sae_id: str | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    hook_name: str | None = None,
    context_size: int | None = None,
    positions: str | None = None,
    dataset_path: str | None = None,
    neuronpedia_id: str | None = None,
    log_sparsity: torch.Tensor | None = None,
    metrics: dict[str, Any] | None = None,
    level_metrics: list[dict[str, Any]] | None = None,
    training_config: dict[str, Any] | None = None,
    description: str = "",
    extra_metadata: dict[str, Any] | None = None,
    eval_activations: torch.Tensor | None = None,
) -> ReleaseSAE:
    """Write (or add to) a release folder for ``sae``; returns what was written.

    Metadata not given is taken from ``sae.cfg.metadata``. ``log_sparsity`` ``[d_sae]`` is the log10
    firing rate (SAELens's ``sparsity.safetensors``); ``metrics`` (e.g. ``explained_variance``,
    ``l0``, ``mse``) and ``level_metrics`` (one dict per Matryoshka level with ``width``,
    ``explained_variance``, ``l0``) go to the model card and the yaml entry; given
    ``eval_activations`` ``[N, d_in]`` they are measured (:func:`sae_metrics`) where not given.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    sae_id = sae_id or _default_sae_id(sae)
    if not sae_id or sae_id.startswith("/") or ".." in Path(sae_id).parts:
        raise ValueError(f"sae_id must be a relative folder name inside the release; got {sae_id!r}")
    folder = out / sae_id
    folder.mkdir(parents=True, exist_ok=True)
    # The SAE's own writer: inference SAEs have save_model; training SAEs save their inference form.
    if hasattr(sae, "save_inference_model"):
        sae.save_inference_model(folder)
    else:
        sae.save_model(folder)
    cfg_path = folder / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    md = dict(cfg.get("metadata") or {})
    given = {
        "model_name": model_name,
        "hook_name": hook_name,
        "context_size": context_size,
        "positions": positions,
        "dataset_path": dataset_path,
        "neuronpedia_id": neuronpedia_id,
    }
    for k, v in given.items():
        if v is not None:
            md[k] = v
        md.setdefault(k, None)
    md.setdefault("prepend_bos", True)
    md.update(extra_metadata or {})
    missing = [k for k in ("model_name", "hook_name") if not md.get(k)]
    if missing:
        raise ValueError(
            f"release metadata needs {missing}: pass them to write_release or set them in sae.cfg.metadata"
        )
    cfg["metadata"] = md
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if log_sparsity is not None:
        ls = torch.as_tensor(log_sparsity, dtype=torch.float32).detach().cpu().reshape(-1)
        if ls.numel() != int(cfg["d_sae"]):
            raise ValueError(f"log_sparsity has {ls.numel()} values, the SAE has d_sae={cfg['d_sae']}")
        save_file({"sparsity": ls.contiguous()}, str(folder / "sparsity.safetensors"))

    metrics = dict(metrics or {})
    if eval_activations is not None:
        measured, measured_levels = sae_metrics(sae, eval_activations)
        metrics = {**measured, **metrics}
        level_metrics = level_metrics or measured_levels
    entry: dict[str, Any] = {"id": sae_id, "path": sae_id}
    if metrics.get("l0") is not None:
        entry["l0"] = float(metrics["l0"])
    if metrics.get("explained_variance") is not None:
        entry["variance_explained"] = float(metrics["explained_variance"])
    if neuronpedia_id or md.get("neuronpedia_id"):
        entry["neuronpedia"] = neuronpedia_id or md["neuronpedia_id"]
    _update_entry_file(out, release, repo_id or release, md["model_name"], entry)
    info = {
        "sae_id": sae_id,
        "cfg": cfg,
        "metrics": metrics,
        "level_metrics": level_metrics or [],
        "training_config": training_config or {},
        "has_sparsity": log_sparsity is not None,
    }
    (folder / "release_info.json").write_text(json.dumps(info, indent=2, default=str))
    write_model_card(out, release=release, repo_id=repo_id, description=description)
    return ReleaseSAE(release, sae_id, folder, entry)


@torch.no_grad()
def sae_metrics(sae: SAE[Any], x: torch.Tensor) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Explained variance, L0 and MSE of ``sae`` on activations ``x [..., d_in]``; per level too when the
    SAE has Matryoshka ``level_metrics``. Returns ``(metrics, level_metrics)``."""
    x = torch.as_tensor(x).to(device=sae.W_dec.device, dtype=sae.W_dec.dtype).reshape(-1, sae.cfg.d_in)
    if x.shape[0] < 2:
        raise ValueError(f"eval_activations needs at least 2 rows of d_in={sae.cfg.d_in}; got {tuple(x.shape)}")
    z = sae.encode(x)
    rec = sae.decode(z)
    err = (x - rec).pow(2).sum(-1)
    var = (x - x.mean(0)).pow(2).sum(-1)
    metrics = {
        "explained_variance": float(1 - err.sum() / var.sum().clamp(min=1e-12)),
        "l0": float((z != 0).float().sum(-1).mean()),
        "mse": float(err.mean()),
        "n_eval_tokens": int(x.shape[0]),
    }
    levels: list[dict[str, float]] = []
    if isinstance(sae, RadMatryoshkaSAE):  # per-level metrics: the Matryoshka SAE only
        lm = sae.level_metrics(x)
        for i, end in enumerate(lm.level_ends):
            levels.append(
                {
                    "width": int(end),
                    "explained_variance": float(lm.explained_variance[i]),
                    "l0": float(lm.l0[i]),
                    "mse": float(lm.mse[i]),
                }
            )
    return metrics, levels


def _update_entry_file(out: Path, release: str, repo_id: str, model: str, entry: dict[str, Any]) -> None:
    path = out / ENTRY_FILE
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    data = data or {}
    rel = data.setdefault(release, {"repo_id": repo_id, "model": model, "conversion_func": None, "saes": []})
    rel["repo_id"], rel["model"] = repo_id, model
    rel["saes"] = [s for s in rel.get("saes", []) if s["id"] != entry["id"]] + [entry]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def write_model_card(out: str | Path, *, release: str, repo_id: str | None = None, description: str = "") -> Path:
    """(Re)write ``README.md`` for every SAE in the release folder (from each ``release_info.json``)."""
    out = Path(out)
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("**/release_info.json"))]
    repo = repo_id or release
    lines = [
        "---",
        "library_name: saelens",
        "tags: [sparse-autoencoder, saelens, interpretability, radiology, sae-rad-ext]",
        "---",
        f"# {release}",
        "",
        description or "Sparse autoencoders trained with sae-rad-ext (SAELens extension for radiology MLLMs).",
        "",
        "## Load",
        "",
        "```python",
        "from sae_lens import SAE",
        "import sae_rad_ext  # registers the architectures",
        "from sae_rad_ext.publish import register_release",
        f'register_release("{release}", "{repo}")  # a local folder or a hub repo id',
        f'sae = SAE.from_pretrained("{release}", "{infos[0]["sae_id"] if infos else "<sae_id>"}")',
        "```",
        "",
        "## SAEs",
        "",
        "| sae_id | architecture | d_in | d_sae | model | hook | positions | L0 | explained variance |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for info in infos:
        c, md, m = info["cfg"], info["cfg"].get("metadata", {}), info["metrics"]
        lines.append(
            f"| `{info['sae_id']}` | {c.get('architecture')} | {c.get('d_in')} | {c.get('d_sae')} | "
            f"{md.get('model_name')} | `{md.get('hook_name')}` | {md.get('positions') or 'all'} | "
            f"{_fmt(m.get('l0'))} | {_fmt(m.get('explained_variance'))} |"
        )
    for info in infos:
        md, m = info["cfg"].get("metadata", {}), info["metrics"]
        lines += ["", f"### `{info['sae_id']}`", ""]
        lines.append(
            f"- dataset: {md.get('dataset_path') or 'n/a'}; context size: {_fmt(md.get('context_size'))}; "
            f"Neuronpedia id: {md.get('neuronpedia_id') or 'n/a'}; sparsity file: "
            f"{'yes' if info['has_sparsity'] else 'no'}"
        )
        if m:
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in m.items()]
        if info["level_metrics"]:
            keys = list(dict.fromkeys(k for lm in info["level_metrics"] for k in lm))
            lines += ["", "Per Matryoshka level (latents of groups ≤ level):", ""]
            lines += ["| level | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            for i, lm in enumerate(info["level_metrics"]):
                lines.append(f"| {i} | " + " | ".join(_fmt(lm.get(k)) for k in keys) + " |")
        if info["training_config"]:
            lines += ["", "<details><summary>training config</summary>", "", "```json"]
            lines += [json.dumps(info["training_config"], indent=2, default=str), "```", "", "</details>"]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- registration with SAELens ------------------------------------------------------------------
def _local_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """SAELens loader: ``repo_id`` is a local release folder (no network) or a hub repo id."""
    from sae_lens.loading.pretrained_sae_loaders import (
        get_sae_lens_config_from_disk,
        read_sae_components_from_disk,
        sae_lens_huggingface_loader,
    )
    from safetensors import safe_open

    root = Path(repo_id)
    if not root.is_dir():
        return sae_lens_huggingface_loader(repo_id, folder_name, device, force_download, cfg_overrides)
    folder = root / folder_name
    if not (folder / "cfg.json").is_file():
        converter = _foreign_converter(folder)
        if converter is not None:
            return converter(str(root), folder_name, device, force_download, cfg_overrides)
        raise FileNotFoundError(f"{folder} has no cfg.json: not an SAE folder of release {root}")
    cfg_dict = get_sae_lens_config_from_disk(folder, device, cfg_overrides)
    cfg_dict, state_dict = read_sae_components_from_disk(
        cfg_dict=cfg_dict, weight_path=folder / "sae_weights.safetensors", device=device
    )
    log_sparsity = None
    if (folder / "sparsity.safetensors").is_file():
        with safe_open(str(folder / "sparsity.safetensors"), framework="pt", device=device) as f:
            log_sparsity = f.get_tensor("sparsity")
    return cfg_dict, state_dict, log_sparsity


def _local_config_getter(
    repo_id: str,
    folder_name: str,
    device: str | None = None,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from sae_lens.loading.pretrained_sae_loaders import (
        get_sae_lens_config_from_disk,
        get_sae_lens_config_from_hf,
    )

    if Path(repo_id).is_dir():
        return get_sae_lens_config_from_disk(Path(repo_id) / folder_name, device, cfg_overrides)
    return get_sae_lens_config_from_hf(repo_id, folder_name, device, force_download, cfg_overrides)


def _foreign_converter(folder: Path):
    """The maira-2-sae format (``ae.pt`` + ``config.json``) loader from :mod:`sae_rad_ext.saes.maira2_format`."""
    if not (folder / "ae.pt").is_file():
        return None
    try:
        from sae_rad_ext.saes.maira2_format import MAIRA2_SAE_CONVERTER, register_maira2_sae_converter
    except ImportError:
        return None
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS

    register_maira2_sae_converter()
    return NAMED_PRETRAINED_SAE_LOADERS.get(MAIRA2_SAE_CONVERTER)


def _install_loader() -> None:
    from sae_lens.loading import pretrained_sae_loaders as psl

    psl.NAMED_PRETRAINED_SAE_LOADERS.setdefault(LOCAL_LOADER, _local_loader)
    psl.NAMED_PRETRAINED_SAE_CONFIG_GETTERS.setdefault(LOCAL_LOADER, _local_config_getter)


def register_release(
    release: str,
    folder_or_repo: str | Path,
    sae_ids: list[str] | None = None,
    *,
    model: str | None = None,
    conversion_func: str | None = None,
) -> Any:
    """Make ``SAE.from_pretrained(release, sae_id)`` load from a local release folder or a hub repo.

    For a local folder the SAE ids come from its ``pretrained_saes.yaml`` (or, without one, every
    sub-folder holding ``cfg.json`` / ``ae.pt``); for a hub repo id pass ``sae_ids`` (nothing is
    downloaded here). Returns the :class:`PretrainedSAELookup` added to SAELens's directory.
    """
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    _install_loader()
    root = Path(folder_or_repo)
    entries: list[dict[str, Any]] = []
    if root.is_dir():
        root = root.resolve()
        repo_id = str(root)
        entry_file = root / ENTRY_FILE
        if entry_file.is_file():
            data = yaml.safe_load(entry_file.read_text()) or {}
            rel = data.get(release) or (next(iter(data.values())) if len(data) == 1 else None)
            if rel is None:
                raise ValueError(f"{entry_file} has no release {release!r}; it lists {sorted(data)}")
            entries = list(rel.get("saes", []))
            model = model or rel.get("model")
        else:
            for p in sorted(root.rglob("*")):
                if p.is_dir() and ((p / "cfg.json").is_file() or (p / "ae.pt").is_file()):
                    entries.append({"id": str(p.relative_to(root)), "path": str(p.relative_to(root))})
            if (root / "cfg.json").is_file() or (root / "ae.pt").is_file():
                entries.append({"id": sae_ids[0] if sae_ids else root.name, "path": "."})
        conversion = conversion_func or LOCAL_LOADER
    else:
        repo_id = str(folder_or_repo)
        if isinstance(folder_or_repo, Path) or repo_id.startswith(("/", ".", "~")) or repo_id.count("/") != 1:
            raise ValueError(
                f"{folder_or_repo!r} is neither an existing folder nor a hub repo id ('owner/name')"
            )
        if not sae_ids:
            raise ValueError("registering a hub repo needs sae_ids (the folders inside the repo)")
        entries = [{"id": s, "path": s} for s in sae_ids]
        conversion = conversion_func or LOCAL_LOADER  # falls through to SAELens's hub loader
    if sae_ids:
        wanted = set(sae_ids)
        known = {e["id"] for e in entries}
        for s in wanted - known:
            entries.append({"id": s, "path": s})
        entries = [e for e in entries if e["id"] in wanted]
    if not entries:
        raise ValueError(f"no SAEs found in {folder_or_repo}: expected sub-folders with cfg.json (or ae.pt)")
    if model is None:
        model = _model_from_entries(root, entries) or "unknown"
    lookup = PretrainedSAELookup(
        release=release,
        repo_id=repo_id,
        model=model,
        conversion_func=conversion,
        saes_map={e["id"]: str(e["path"]) for e in entries},
        expected_var_explained={e["id"]: e.get("variance_explained", 1.0) for e in entries},
        expected_l0={e["id"]: e.get("l0", 0.0) for e in entries},
        neuronpedia_id={e["id"]: e["neuronpedia"] for e in entries if e.get("neuronpedia")},
        norm_scaling_factor={e["id"]: e["norm_scaling_factor"] for e in entries if "norm_scaling_factor" in e},
        config_overrides=None,
    )
    get_pretrained_saes_directory()[release] = lookup
    return lookup


def _model_from_entries(root: Path, entries: list[dict[str, Any]]) -> str | None:
    for e in entries:
        cfg = root / e["path"] / "cfg.json"
        if cfg.is_file():
            return (json.loads(cfg.read_text()).get("metadata") or {}).get("model_name")
    return None
