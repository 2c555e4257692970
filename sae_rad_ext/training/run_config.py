"""The ``sae-rad cache`` / ``sae-rad train`` config file: YAML or JSON with five sections.

``runner`` mirrors SAELens's ``LanguageModelSAERunnerConfig`` field for field (passed through; ``sae`` is the
SAE architecture's training config with its ``architecture`` name; ``logger`` is SAELens's
``LoggingConfig``); ``model``, ``data``, ``positions`` and ``cache`` are ours. :data:`SECTIONS` documents
every field of our sections; :func:`runner_field_docs` lists every runner field with SAELens's own text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import LanguageModelSAERunnerConfig

    from sae_rad_ext.adapters.hooked import HookedMaira2

SECTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "model": {
        "name": (
            "tiny",
            "'tiny' (the offline tiny MAIRA-2-architecture model) or a MAIRA-2 checkpoint folder "
            "(original 4.x layout, loaded strictly with load_maira2; no remote code)",
        ),
        "seed": (0, "seed of the tiny model's random weights (name: tiny only)"),
        "device": (
            "cpu",
            "device for the model, e.g. cpu, cuda, cuda:1 (under torchrun 'cuda' means cuda:LOCAL_RANK)",
        ),
        "dtype": ("float32", "model weights dtype: float32, bfloat16 or float16"),
        "model_name": (
            None,
            "name recorded in the SAE's metadata (default: 'tiny-maira2' or the folder path)",
        ),
    },
    "data": {
        "phantom": (
            None,
            "synthetic phantom studies: {n: 64, seed: 0, image_size: 224, lateral_prob: 0.5, prior_prob: 0.3}",
        ),
        "source": (
            None,
            "a study source for sae_rad_ext.data.readers.open_studies: MIMIC-CXR-JPG root, DICOM folder, "
            "HF datasets folder, CSV/JSONL manifest (exactly one of phantom / source)",
        ),
        "reader": (
            {},
            "keyword arguments for open_studies, e.g. {split: train, on_error: skip, columns: {...}}",
        ),
        "limit": (None, "use only the first N studies of the source"),
        "eval_phantom": (
            None,
            "phantom studies for SAELens's evals (same keys as phantom; default: the training studies)",
        ),
        "eval_source": (None, "a study source for evals (default: the training studies)"),
    },
    "positions": {
        "select": (
            "maira2_sae_paper",
            "token positions that enter the SAE: all, text, prompt, report, image, "
            "image:frontal|lateral|prior, section:<name>, presets (maira2_sae_paper, "
            "maira2_sae_paper_with_images), '+'-joined; padding and BOS/special never enter",
        ),
        "with_report": (
            True,
            "teacher-force each study's report after the prompt (its tokens get role 'report')",
        ),
        "task": ("findings", "prompt task: findings or grounded_reporting"),
    },
    "cache": {
        "path": (
            None,
            "activation cache folder (sae-rad cache writes it; train reads it when runner.use_cached_activations)",
        ),
        "context_size": (None, "positions per cache row (default: runner.context_size)"),
        "studies_per_shard": (64, "studies per resumable shard (a kill loses at most one shard's work)"),
        "batch_size": (None, "studies per model forward (default: runner.store_batch_size_prompts)"),
        "dtype": ("float32", "stored activation dtype: float32 or float16"),
        "keep_shards": (False, "keep the .shards/ folder after the merge"),
    },
}

TEMPLATE_RUNNER: dict[str, Any] = {
    "hook_name": "blocks.15.hook_resid_post",
    "sae": {
        "architecture": "rad_matryoshka_batchtopk",
        "d_sae": 16384,
        "k": 64,
        "group_fractions": [0.0625, 0.125, 0.25, 0.5625],
        "normalize_activations": "expected_average_only_in",
    },
    "context_size": 512,
    "store_batch_size_prompts": 8,
    "n_batches_in_buffer": 16,
    "train_batch_size_tokens": 4096,
    "training_tokens": 50_000_000,
    "lr": 3e-4,
    "device": "cuda",
    "logger": {"log_to_wandb": True, "wandb_project": "sae-rad"},
    "n_checkpoints": 10,
    "checkpoint_path": "checkpoints",
    "output_path": "output",
}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file; unknown top-level sections or fields raise."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        cfg = json.loads(text)
    else:
        import yaml

        cfg = yaml.safe_load(text) or {}
    if not isinstance(cfg, dict):
        raise ValueError(
            f"{p}: expected a mapping with sections {['runner', *SECTIONS]}, got {type(cfg).__name__}"
        )
    if isinstance(cfg.get("positions"), str):
        cfg["positions"] = {"select": cfg["positions"]}
    unknown = set(cfg) - {"runner", *SECTIONS}
    if unknown:
        raise ValueError(f"{p}: unknown section(s) {sorted(unknown)}; expected runner, {', '.join(SECTIONS)}")
    for name, fields in SECTIONS.items():
        sec = cfg.get(name) or {}
        bad = set(sec) - set(fields)
        if bad:
            raise ValueError(
                f"{p}: unknown field(s) {sorted(bad)} in section {name!r}; known: {sorted(fields)}"
            )
        cfg[name] = {k: sec.get(k, default) for k, (default, _) in fields.items()}
    cfg["runner"] = dict(cfg.get("runner") or {})
    return cfg


# ---- builders ------------------------------------------------------------------------------------
def build_model(sec: dict[str, Any]) -> Any:
    import torch

    from sae_rad_ext.adapters.hooked import HookedMaira2

    dtype = getattr(torch, sec["dtype"])
    if sec["name"] == "tiny":
        model = HookedMaira2.tiny(seed=int(sec["seed"])).to(sec["device"]).to(dtype)
    else:
        model = HookedMaira2.from_pretrained(sec["name"], device=sec["device"], dtype=dtype)
    if sec.get("model_name"):
        model.cfg.model_name = sec["model_name"]
    return model


def _studies_from(
    phantom: dict[str, Any] | None, source: str | None, reader: dict[str, Any], limit: int | None
) -> tuple[Callable[[], Iterable[Any]], str, int | None]:
    import itertools

    if (phantom is None) == (source is None):
        raise ValueError("the data section needs exactly one of `phantom: {n, seed}` or `source: <path>`")
    if phantom is not None:
        from sae_rad_ext.data.phantom.generator import generate_studies

        kw = dict(phantom)
        n, seed = int(kw.pop("n")), int(kw.pop("seed", 0))
        n = min(n, limit) if limit else n
        return (lambda: generate_studies(n, seed, **kw)), f"phantom:n={n},seed={seed}", n
    from sae_rad_ext.data.readers import open_studies

    def factory() -> Iterable[Any]:
        it = open_studies(source, **reader)
        return itertools.islice(it, limit) if limit else it

    return factory, str(source), limit


def build_studies(sec: dict[str, Any]) -> tuple[Callable[[], Iterable[Any]], str, int | None]:
    """``(factory, description, n_studies or None)`` for the training studies."""
    return _studies_from(sec["phantom"], sec["source"], sec["reader"] or {}, sec["limit"])


def build_eval_studies(sec: dict[str, Any]) -> Callable[[], Iterable[Any]] | None:
    if sec["eval_phantom"] is None and sec["eval_source"] is None:
        return None
    return _studies_from(sec["eval_phantom"], sec["eval_source"], sec["reader"] or {}, None)[0]


def build_runner_config(cfg: dict[str, Any], model: HookedMaira2) -> LanguageModelSAERunnerConfig[Any]:
    """``LanguageModelSAERunnerConfig`` from the runner section (``sae.d_in`` defaults to the model width,
    ``hook_name`` to ``blocks.{min(15, n_layers-1)}.hook_resid_post``)."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.registry import get_sae_training_class

    import sae_rad_ext  # noqa: F401  (registers our architectures)

    r = dict(cfg["runner"])
    fields = {f.name for f in dataclasses.fields(LanguageModelSAERunnerConfig)}
    bad = set(r) - fields
    if bad:
        raise ValueError(
            f"unknown runner field(s) {sorted(bad)}; see `sae-rad train --print-config-template`"
        )
    sae = dict(r.pop("sae", None) or {})
    arch = sae.pop("architecture", "standard")
    sae.setdefault("d_in", int(model.cfg.d_model))
    sae_cfg_cls = get_sae_training_class(arch)[1]
    r.setdefault("hook_name", f"blocks.{min(15, model.cfg.n_layers - 1)}.hook_resid_post")
    if cfg["cache"]["path"] and r.get("use_cached_activations") and not r.get("cached_activations_path"):
        r["cached_activations_path"] = str(cfg["cache"]["path"])
    for k in ("seqpos_slice",):
        if k in r and isinstance(r[k], list):
            r[k] = tuple(r[k])
    r.setdefault("model_name", model.cfg.model_name)
    r.setdefault("dataset_path", "")
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg_cls(**sae), logger=LoggingConfig(**(r.pop("logger", None) or {})), **r
    )


def latest_checkpoint(base: str | Path) -> Path | None:
    """Newest SAELens checkpoint folder (holding ``trainer_state.pt``) under ``base/<run id>/<n_samples>/``."""
    found = [p.parent for p in Path(base).glob("*/*/trainer_state.pt")]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


# ---- documentation -------------------------------------------------------------------------------
def runner_field_docs() -> list[tuple[str, Any, str]]:
    """``(name, default, description)`` of every ``LanguageModelSAERunnerConfig`` field (SAELens's text)."""
    from sae_lens import LanguageModelSAERunnerConfig

    doc = LanguageModelSAERunnerConfig.__doc__ or ""
    descr = dict(re.findall(r"^\s{8}(\w+) \([^)]*\): (.*)$", doc, flags=re.M))
    out = []
    for f in dataclasses.fields(LanguageModelSAERunnerConfig):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = (
                "(see SAELens)"
                if f.name in ("logger", "sae_lens_version", "sae_lens_training_version")
                else f.default_factory()
            )  # type: ignore[misc]
        else:
            default = "(required)"
        text = descr.get(f.name, "")
        if f.name == "sae":
            text = (
                "the SAE's training config: {architecture: <name>, d_sae: .., k: .., normalize_activations: "
                "none|expected_average_only_in|constant_norm_rescale|layer_norm, ...} — fields of the "
                "architecture's TrainingSAEConfig; d_in defaults to the model's width"
            )
        if f.name == "model_name":
            text = "recorded in the SAE's metadata (default: the model section's model name)"
        if f.name == "model_class_name":
            text = "set to the hooked model's class (HookedMaira2)"
        if f.name == "dataset_path":
            text = "not read (studies come from the data section); recorded in metadata as the data source"
        out.append((f.name, default, text))
    return out


def help_text(include_runner: bool = True) -> str:
    lines = ["Config file (YAML or JSON) sections and fields:", ""]
    for name, fields in SECTIONS.items():
        lines.append(f"{name}:")
        for k, (default, text) in fields.items():
            lines.append(f"  {k} (default {default!r}): {text}")
        lines.append("")
    if include_runner:
        lines.append("runner: SAELens LanguageModelSAERunnerConfig fields, passed through:")
        for k, default, text in runner_field_docs():
            lines.append(f"  {k} (default {default!r}): {text}")
    return "\n".join(lines)


def config_template() -> str:
    """A commented YAML template with every field of every section."""
    import yaml

    out = [
        "# sae-rad cache / train config. Sections: model, data, positions, cache (ours) and runner",
        "# (SAELens LanguageModelSAERunnerConfig, passed through). Values shown are defaults or examples.",
        "",
    ]
    for name, fields in SECTIONS.items():
        out.append(f"{name}:")
        for k, (default, text) in fields.items():
            value = {"n": 64, "seed": 0} if (name, k) == ("data", "phantom") else default
            rendered = yaml.safe_dump({k: value}, default_flow_style=True, width=1000).strip()[1:-1]
            out.append(f"  {rendered}  # {text}")
        out.append("")
    out.append("runner:")
    for k, default, text in runner_field_docs():
        value = TEMPLATE_RUNNER.get(k, default)
        if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
            value = str(value)
        rendered = yaml.safe_dump({k: value}, default_flow_style=True, width=1000).strip()[1:-1]
        prefix = "  " if k in TEMPLATE_RUNNER else "  # "
        out.append(f"{prefix}{rendered}  # {text}")
    return "\n".join(out) + "\n"
