"""Loader for the microsoft/maira-2-sae release format into :class:`~sae_rad_ext.saes.matryoshka.RadMatryoshkaSAE`.

A release folder holds, per SAE, ``ae.pt`` (a plain tensor dict read with ``torch.load(weights_only=True)``:
``k``, ``threshold``, ``group_sizes``, ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]``) and ``config.json`` (``{"trainer": {dict_class, activation_dim, dict_size, k,
group_fractions, group_weights, group_sizes, layer, lm_name, submodule_name, …}, "buffer": {…}}``) —
dictionary_learning's Matryoshka BatchTopK layout.

* :func:`load_maira2_sae` — one folder → our inference SAE (hook ``blocks.{layer}.hook_resid_post``,
  ``model_name`` ``MAIRA-2``, group sizes kept).
* :func:`save_maira2_sae_format` — the writer (tests, round trips).
* :func:`register_maira2_sae_release` — adds a release to SAELens's pretrained directory with the
  ``maira2_sae`` converter, so ``SAE.from_pretrained(release, sae_id)`` works (from a local folder
  without any download; a Hugging Face repo id is only contacted when you register one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sae_rad_ext.saes.matryoshka import MATRYOSHKA_ARCHITECTURE, RadMatryoshkaSAE, resolve_group_sizes

MAIRA2_SAE_CONVERTER = "maira2_sae"
MAIRA2_MODEL_NAME = "MAIRA-2"
AE_FILENAME = "ae.pt"
CONFIG_FILENAME = "config.json"
_REQUIRED = ("W_enc", "b_enc", "W_dec", "b_dec")


class Maira2SaeFormatError(ValueError):
    """A maira-2-sae folder whose files do not match the release layout."""


def _read_folder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    ae, cfg = path / AE_FILENAME, path / CONFIG_FILENAME
    missing = [p.name for p in (ae, cfg) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a maira-2-sae folder: missing {missing} (expected {AE_FILENAME} + {CONFIG_FILENAME})"
        )
    state = torch.load(ae, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise Maira2SaeFormatError(f"{ae} must hold a dict of tensors, got {type(state).__name__}")
    with open(cfg) as f:
        config = json.load(f)
    if not isinstance(config, Mapping) or not isinstance(config.get("trainer"), Mapping):
        raise Maira2SaeFormatError(f"{cfg} must be a JSON object with a 'trainer' object")
    return dict(state), dict(config)


def convert_maira2_sae(
    state: Mapping[str, Any], config: Mapping[str, Any], *, device: str = "cpu", dtype: str = "float32"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Validate a release's tensors + config and return SAELens ``(cfg_dict, state_dict)`` for
    :class:`RadMatryoshkaSAE`."""
    trainer = config["trainer"]
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise Maira2SaeFormatError(
            f"ae.pt is missing {missing}; expected keys {list(_REQUIRED)} (+ k, threshold, group_sizes), got {sorted(state)}"
        )
    W_enc, b_enc, W_dec, b_dec = (state[k] for k in _REQUIRED)
    for name, t in zip(_REQUIRED, (W_enc, b_enc, W_dec, b_dec), strict=True):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise Maira2SaeFormatError(f"ae.pt[{name!r}] must be a floating tensor, got {type(t).__name__}")
    if W_enc.dim() != 2:
        raise Maira2SaeFormatError(f"W_enc must be [d_in, d_sae], got shape {tuple(W_enc.shape)}")
    d_in, d_sae = W_enc.shape
    for key, want in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in trainer and int(trainer[key]) != want:
            raise Maira2SaeFormatError(
                f"config.json trainer.{key}={trainer[key]} but W_enc is [{d_in}, {d_sae}] ([activation_dim, dict_size])"
            )
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            hint = " (is it transposed?)" if tuple(state[name].shape) == shape[::-1] else ""
            raise Maira2SaeFormatError(
                f"{name} must have shape {list(shape)}, got {list(state[name].shape)}{hint}"
            )

    sizes = state.get("group_sizes", trainer.get("group_sizes"))
    if isinstance(sizes, torch.Tensor):
        sizes = [int(v) for v in sizes.reshape(-1).tolist()]
    try:
        group_sizes = resolve_group_sizes(
            d_sae, group_sizes=sizes, group_fractions=None if sizes else trainer.get("group_fractions")
        )
    except ValueError as e:
        raise Maira2SaeFormatError(f"bad Matryoshka groups in maira-2-sae folder: {e}") from e

    k = state.get("k", trainer.get("k"))
    if k is None:
        raise Maira2SaeFormatError("no 'k' in ae.pt nor in config.json trainer")
    k = float(k.item()) if isinstance(k, torch.Tensor) else float(k)
    k = int(k) if k == int(k) else k
    thr = state.get("threshold", torch.tensor(-1.0))
    thr = torch.as_tensor(thr, dtype=torch.float32)
    if thr.dim() == 0:
        thr = thr.expand(d_sae).clone()
    elif tuple(thr.shape) != (d_sae,):
        raise Maira2SaeFormatError(f"threshold must be a scalar or [{d_sae}], got {list(thr.shape)}")

    layer = trainer.get("layer")
    if layer is None:
        raise Maira2SaeFormatError(
            "config.json trainer.layer is required (it names the hook blocks.{layer}.hook_resid_post)"
        )
    buffer = config.get("buffer") or {}
    tdtype = getattr(torch, dtype)
    state_dict = {
        "W_enc": W_enc.to(device=device, dtype=tdtype).contiguous(),
        "b_enc": b_enc.to(device=device, dtype=tdtype),
        "W_dec": W_dec.to(device=device, dtype=tdtype).contiguous(),
        "b_dec": b_dec.to(device=device, dtype=tdtype),
        "threshold": thr.to(device=device, dtype=tdtype),
    }
    cfg_dict: dict[str, Any] = {
        "architecture": MATRYOSHKA_ARCHITECTURE,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "k": k,
        "group_sizes": group_sizes,
        "dtype": dtype,
        "device": device,
        "apply_b_dec_to_input": True,  # dictionary_learning encodes (x - b_dec) @ W_enc + b_enc
        "normalize_activations": "none",
        "metadata": {
            "model_name": MAIRA2_MODEL_NAME,
            "hook_name": f"blocks.{int(layer)}.hook_resid_post",
            "hook_head_index": None,
            "context_size": buffer.get("ctx_len"),
            "prepend_bos": True,
            "lm_name": trainer.get("lm_name"),
            "submodule_name": trainer.get("submodule_name"),
            "training_architecture": trainer.get("dict_class", "MatryoshkaBatchTopKSAE"),
            "training_architecture_details": {
                k_: trainer[k_]
                for k_ in (
                    "trainer_class",
                    "group_fractions",
                    "group_weights",
                    "auxk_alpha",
                    "threshold_beta",
                    "threshold_start_step",
                    "lr",
                    "steps",
                    "seed",
                )
                if k_ in trainer
            },
            "sae_lens_training_version": None,
            "sae_lens_version": _sae_lens_version(),  # marks the dict as 6.x format (no pre-6.0 rewriting)
        },
    }
    return cfg_dict, state_dict


def _sae_lens_version() -> str:
    from sae_lens import __version__

    return __version__


def maira2_sae_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens disk converter (``SAE.load_from_disk(path, converter=maira2_sae_disk_loader)``)."""
    overrides = dict(cfg_overrides or {})
    state, config = _read_folder(path)
    cfg_dict, state_dict = convert_maira2_sae(
        state, config, device=device, dtype=overrides.pop("dtype", None) or "float32"
    )
    _apply_overrides(cfg_dict, overrides)
    return cfg_dict, state_dict


def _apply_overrides(cfg_dict: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    md_keys = {"model_name", "hook_name", "neuronpedia_id", "context_size", "prepend_bos", "dataset_path"}
    for key, value in overrides.items():
        if key in md_keys:
            cfg_dict["metadata"][key] = value
        else:
            cfg_dict[key] = value


def maira2_sae_huggingface_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """The ``maira2_sae`` entry of ``NAMED_PRETRAINED_SAE_LOADERS``. ``repo_id`` may be a local folder
    (read directly) or a Hugging Face repo id you registered (downloads ``ae.pt`` + ``config.json``)."""
    local = Path(repo_id)
    if local.is_dir():
        folder = local / folder_name if folder_name not in ("", ".") else local
    else:
        from huggingface_hub import hf_hub_download

        prefix = f"{folder_name}/" if folder_name not in ("", ".") else ""
        files = [
            hf_hub_download(repo_id, f"{prefix}{n}", force_download=force_download)
            for n in (AE_FILENAME, CONFIG_FILENAME)
        ]
        folder = Path(files[0]).parent
    overrides = dict(cfg_overrides or {})
    overrides.pop("device", None)
    cfg_dict, state_dict = maira2_sae_disk_loader(folder, device=device, cfg_overrides=overrides)
    return cfg_dict, state_dict, None


def get_maira2_sae_config(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Config getter for ``NAMED_PRETRAINED_SAE_CONFIG_GETTERS`` (reads the weights for shapes)."""
    return maira2_sae_huggingface_loader(repo_id, folder_name, device, force_download, cfg_overrides)[0]


def load_maira2_sae(path: str | Path, device: str = "cpu", dtype: str = "float32") -> RadMatryoshkaSAE:
    """Load one maira-2-sae folder (``ae.pt`` + ``config.json``) as a :class:`RadMatryoshkaSAE`."""
    return RadMatryoshkaSAE.load_from_disk(path, device=device, dtype=dtype, converter=maira2_sae_disk_loader)


def save_maira2_sae_format(
    path: str | Path,
    *,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    group_sizes: Sequence[int],
    threshold: float | torch.Tensor = -1.0,
    layer: int = 15,
    lm_name: str = "microsoft/maira-2",
    group_fractions: Sequence[float] | None = None,
    group_weights: Sequence[float] | None = None,
    ctx_len: int = 128,
    extra_trainer: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``ae.pt`` + ``config.json`` in the maira-2-sae (dictionary_learning) layout."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = W_enc.shape
    sizes = [int(s) for s in group_sizes]
    torch.save(
        {
            "k": torch.tensor(int(k), dtype=torch.int),
            "threshold": torch.as_tensor(threshold, dtype=torch.float32),
            "group_sizes": torch.tensor(sizes),
            "W_enc": W_enc.detach().cpu(),
            "b_enc": b_enc.detach().cpu(),
            "W_dec": W_dec.detach().cpu(),
            "b_dec": b_dec.detach().cpu(),
        },
        path / AE_FILENAME,
    )
    fractions = list(group_fractions) if group_fractions is not None else [s / d_sae for s in sizes]
    trainer = {
        "trainer_class": "MatryoshkaBatchTopKTrainer",
        "dict_class": "MatryoshkaBatchTopKSAE",
        "activation_dim": int(d_in),
        "dict_size": int(d_sae),
        "k": int(k),
        "group_fractions": fractions,
        "group_weights": list(group_weights) if group_weights is not None else [1 / len(sizes)] * len(sizes),
        "group_sizes": sizes,
        "layer": int(layer),
        "lm_name": lm_name,
        "submodule_name": f"resid_post_layer_{int(layer)}",
        **dict(extra_trainer or {}),
    }
    with open(path / CONFIG_FILENAME, "w") as f:
        json.dump({"trainer": trainer, "buffer": {"d_submodule": int(d_in), "ctx_len": ctx_len}}, f, indent=2)
    return path


def register_maira2_sae_converter() -> None:
    """Add the ``maira2_sae`` converter to SAELens's named loaders (idempotent)."""
    from sae_lens.loading.pretrained_sae_loaders import (
        NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        NAMED_PRETRAINED_SAE_LOADERS,
    )

    NAMED_PRETRAINED_SAE_LOADERS.setdefault(MAIRA2_SAE_CONVERTER, maira2_sae_huggingface_loader)
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS.setdefault(MAIRA2_SAE_CONVERTER, get_maira2_sae_config)


def register_maira2_sae_release(
    release_name: str,
    local_path_or_repo: str | os.PathLike[str],
    sae_ids: Sequence[str] | Mapping[str, str] | None = None,
    *,
    model: str = MAIRA2_MODEL_NAME,
    neuronpedia_ids: Mapping[str, str] | None = None,
) -> list[str]:
    """Register a maira-2-sae release so ``SAE.from_pretrained(release_name, sae_id)`` loads it.

    ``sae_ids``: folder names (id = folder) or ``{sae_id: folder}``. For a local folder, ``None`` finds
    every sub-folder holding ``ae.pt`` (or the folder itself, as id ``"."``). A Hugging Face repo id needs
    explicit ``sae_ids``. Returns the registered ids.
    """
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    register_maira2_sae_converter()
    root = Path(local_path_or_repo)
    is_local = root.is_dir()
    if sae_ids is None:
        if not is_local:
            raise ValueError(
                f"{local_path_or_repo!s} is not a local folder; give sae_ids explicitly for a hub repo"
            )
        found = sorted(p.parent.relative_to(root).as_posix() for p in root.rglob(AE_FILENAME))
        if not found:
            raise FileNotFoundError(f"no {AE_FILENAME} under {root}")
        mapping = {f: f for f in found}
    elif isinstance(sae_ids, Mapping):
        mapping = {str(k): str(v) for k, v in sae_ids.items()}
    else:
        mapping = {str(s): str(s) for s in sae_ids}
    if is_local:
        for sid, folder in mapping.items():
            target = root / folder if folder not in ("", ".") else root
            if not (target / AE_FILENAME).is_file():
                raise FileNotFoundError(f"sae_id {sid!r}: no {AE_FILENAME} in {target}")
    repo_id = str(root.resolve()) if is_local else str(local_path_or_repo)
    get_pretrained_saes_directory()[release_name] = PretrainedSAELookup(
        release=release_name,
        repo_id=repo_id,
        model=model,
        conversion_func=MAIRA2_SAE_CONVERTER,
        saes_map=mapping,
        expected_var_explained={s: 1.0 for s in mapping},
        expected_l0={s: 0.0 for s in mapping},
        neuronpedia_id={s: (neuronpedia_ids or {}).get(s) for s in mapping},
        norm_scaling_factor={},
        config_overrides=None,
    )
    return list(mapping)
