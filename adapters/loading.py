"""Load MAIRA-2 checkpoints saved in the original (transformers 4.x remote-code) layout — strictly.

MAIRA-2's published checkpoint keeps its submodules on the top-level model (``language_model.model.*``,
``language_model.lm_head.*``, ``vision_tower.*``, ``multi_modal_projector.*``). transformers 5's Llava layout
keeps them under ``model``; loading old keys into the new layout silently leaves the LM randomly
initialised. :func:`load_maira2` maps the keys and **raises** on any missing, unexpected or mis-shaped
tensor, and on a config that is not MAIRA-2-shaped. It never runs remote code.
:func:`save_maira2_original` writes that original layout (used by the tests to make a tiny checkpoint).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import torch
from sae_rad_ext.adapters.maira2 import Maira2Config, Maira2ForConditionalGeneration
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Dinov2Config, LlamaConfig, PreTrainedTokenizerBase

# transformers 4.x (original MAIRA-2) key prefix -> transformers 5.x key prefix
KEY_MAPPING_4X_TO_5X: dict[str, str] = {
    r"^language_model\.model\.": "model.language_model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^vision_tower\.": "model.vision_tower.",
    r"^multi_modal_projector\.": "model.multi_modal_projector.",
}
KEY_MAPPING_5X_TO_4X: dict[str, str] = {
    r"^model\.language_model\.": "language_model.model.",
    r"^lm_head\.": "language_model.lm_head.",
    r"^model\.vision_tower\.": "vision_tower.",
    r"^model\.multi_modal_projector\.": "multi_modal_projector.",
}


def map_key(key: str, mapping: dict[str, str] = KEY_MAPPING_4X_TO_5X) -> str:
    for pattern, repl in mapping.items():
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


class LoadedMaira2(NamedTuple):
    """What :func:`load_maira2` returns."""

    model: Maira2ForConditionalGeneration
    """The model in eval mode, every weight loaded from the checkpoint."""
    tokenizer: PreTrainedTokenizerBase | None
    """The folder's tokenizer (``tokenizer.json``), the tiny tokenizer if asked for, else None."""


# ---- saving -----------------------------------------------------------------------------------
def _original_text_config(tc: LlamaConfig) -> dict:
    d = tc.to_dict()
    rope = d.pop("rope_parameters", None) or {}
    d["rope_theta"] = rope.get("rope_theta", 10000.0)
    rtype = rope.get("rope_type", "default")
    d["rope_scaling"] = None if rtype == "default" else {"type": rtype, **{
        k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta", "type")}}
    d["architectures"] = ["LlamaForCausalLM"]
    return d


def save_maira2_original(model: Maira2ForConditionalGeneration, path: str | Path,
                         tokenizer: PreTrainedTokenizerBase | None = None,
                         max_shard_tensors: int | None = None) -> Path:
    """Write ``model`` as MAIRA-2's original (transformers 4.x remote-code) checkpoint folder.

    ``config.json`` (``model_type: maira2``, 4.x-style ``text_config.rope_scaling``) and
    ``model.safetensors`` with original keys; with ``max_shard_tensors`` the weights are split into
    ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    d = cfg.to_dict()
    d["text_config"] = _original_text_config(cfg.text_config)
    d["vision_config"] = {**cfg.vision_config.to_dict(), "architectures": ["Dinov2Model"]}
    d.update(
        model_type="maira2",
        architectures=["Maira2ForConditionalGeneration"],
        auto_map={"AutoConfig": "configuration_maira2.Maira2Config",
                  "AutoModelForCausalLM": "modeling_maira2.Maira2ForConditionalGeneration"},
        transformers_version="4.46.0.dev0",
    )
    if d.get("image_feature_source") == "feature_maps":
        d.pop("image_feature_source")  # not a field of the original config; feature_maps is its behaviour
    (path / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True, default=str))

    state = {map_key(k, KEY_MAPPING_5X_TO_4X): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    keys = sorted(state)
    if max_shard_tensors is None or len(keys) <= max_shard_tensors:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        chunks = [keys[i:i + max_shard_tensors] for i in range(0, len(keys), max_shard_tensors)]
        weight_map = {}
        for i, chunk in enumerate(chunks):
            name = f"model-{i + 1:05d}-of-{len(chunks):05d}.safetensors"
            save_file({k: state[k] for k in chunk}, str(path / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(chunk, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


# ---- config ----------------------------------------------------------------------------------
def maira2_config_from_dict(raw: dict, source: str = "config") -> Maira2Config:
    """Validate a MAIRA-2 ``config.json`` dict (4.x or 5.x style) and build a :class:`Maira2Config`."""
    problems = []
    if raw.get("model_type") != "maira2":
        problems.append(f"model_type is {raw.get('model_type')!r}, expected 'maira2' (for another LLaVA-family "
                        "model load it with transformers and use HookedMaira2.from_hf)")
    vc, tc = raw.get("vision_config"), raw.get("text_config")
    if not isinstance(vc, dict) or vc.get("model_type") != "dinov2":
        problems.append("vision_config.model_type is "
                        f"{vc.get('model_type') if isinstance(vc, dict) else vc!r}, expected 'dinov2' (RAD-DINO)")
    if not isinstance(tc, dict) or tc.get("model_type") != "llama":
        problems.append("text_config.model_type is "
                        f"{tc.get('model_type') if isinstance(tc, dict) else tc!r}, expected 'llama' (Vicuna)")
    n_layers = raw.get("projector_n_layers")
    if not isinstance(n_layers, int) or n_layers < 1:
        problems.append(f"projector_n_layers is {n_layers!r}, expected an int >= 1 (MAIRA-2: 4)")
    vfl = raw.get("vision_feature_layer", -1)
    if not isinstance(vfl, int):
        problems.append(f"vision_feature_layer is {vfl!r}, expected one int (MAIRA-2: -1)")
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        problems.append(f"vision_feature_select_strategy is {strategy!r}, expected 'default' or 'full'")
    if isinstance(vc, dict) and vc.get("reshape_hidden_states", True) and \
            raw.get("image_feature_source", "feature_maps") == "feature_maps":
        problems.append("vision_config.reshape_hidden_states must be false (MAIRA-2 reads token-shaped feature maps)")
    if isinstance(tc, dict):
        vocab, iti = tc.get("vocab_size"), raw.get("image_token_index")
        if not isinstance(iti, int) or not isinstance(vocab, int) or not 0 <= iti < vocab:
            problems.append(f"image_token_index {iti!r} is not a token id inside text_config.vocab_size {vocab!r}")
    if problems:
        raise ValueError(f"{source} is not a MAIRA-2 config:\n  - " + "\n  - ".join(problems))

    drop = {"architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype", "dtype"}
    vis = Dinov2Config(**{k: v for k, v in vc.items() if k not in drop | {"model_type"}})
    text = LlamaConfig(**{k: v for k, v in tc.items() if k not in drop | {"model_type"}})
    top = {k: v for k, v in raw.items() if k not in drop | {"model_type", "vision_config", "text_config"}}
    known = set(Maira2Config.__dataclass_fields__)
    kwargs = {k: v for k, v in top.items() if k in known}
    return Maira2Config(vision_config=vis, text_config=text, **kwargs)


# ---- weights ---------------------------------------------------------------------------------
def _weight_files(path: Path) -> dict[str, Path]:
    """Map original key -> safetensors file, from ``model.safetensors`` or the sharded index."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: path / f for k, f in weight_map.items()}
    if single.exists():
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    raise FileNotFoundError(
        f"no weights in {path}: expected model.safetensors or model.safetensors.index.json (+ shards). "
        "Download the MAIRA-2 snapshot yourself (e.g. huggingface-cli download microsoft/maira-2) and pass its folder."
    )


def _list(keys: list[str], n: int = 20) -> str:
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_maira2(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                *, tiny_tokenizer_fallback: bool = False) -> LoadedMaira2:
    """Load a MAIRA-2 checkpoint folder (original 4.x layout, or already-mapped 5.x keys) strictly.

    Raises ``ValueError`` if the config is not MAIRA-2-shaped or if any weight is missing, unexpected or of
    the wrong shape (the message lists the keys). ``dtype`` defaults to the stored floating dtype,
    ``device`` to CPU. Returns ``(model, tokenizer)``; the tokenizer is the folder's own if it has a
    ``tokenizer.json``, else the tiny tokenizer when ``tiny_tokenizer_fallback``, else None.
    """
    from transformers.initialization import no_init_weights

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found; expected a MAIRA-2 checkpoint folder")
    cfg = maira2_config_from_dict(json.loads(cfg_file.read_text()), source=str(cfg_file))

    files = _weight_files(path)
    mapped: dict[str, tuple[str, Path]] = {}
    collisions = []
    for key, f in files.items():
        new = map_key(key)
        if new in mapped:
            collisions.append(f"{mapped[new][0]} & {key} -> {new}")
        mapped[new] = (key, f)
    if collisions:
        raise ValueError(f"checkpoint {path} has keys that map to the same tensor: {_list(collisions)}")

    if dtype is None:
        key0, f0 = next(iter(mapped.values()))
        with safe_open(str(f0), framework="pt") as f:
            dtype = f.get_slice(key0).get_dtype()
        dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(dtype, torch.float32)
    device = torch.device(device or "cpu")
    with no_init_weights(), device:
        model = Maira2ForConditionalGeneration._from_config(cfg, dtype=dtype)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(mapped[k][0] for k in set(mapped) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the MAIRA-2 architecture of its config: "
            f"{len(missing)} missing weight(s) [{_list(missing)}]; {len(unexpected)} unexpected weight(s) "
            f"[{_list(unexpected)}]. Keys are mapped 4.x -> 5.x with {KEY_MAPPING_4X_TO_5X}."
        )
    by_file: dict[Path, list[str]] = {}
    for new, (_, f) in mapped.items():
        by_file.setdefault(f, []).append(new)
    bad_shapes = []
    with torch.no_grad():
        for f, news in by_file.items():
            with safe_open(str(f), framework="pt") as h:
                for new in news:
                    t = h.get_tensor(mapped[new][0])
                    if tuple(t.shape) != tuple(expected[new].shape):
                        bad_shapes.append(f"{mapped[new][0]} {tuple(t.shape)} != {tuple(expected[new].shape)}")
                        continue
                    expected[new].copy_(t)
    if bad_shapes:
        raise ValueError(f"checkpoint {path} has tensors of the wrong shape for its config: {_list(bad_shapes)}")
    model.eval()
    return LoadedMaira2(model, _load_tokenizer(path, tiny_tokenizer_fallback))


def _load_tokenizer(path: Path, tiny_fallback: bool) -> PreTrainedTokenizerBase | None:
    if (path / "tokenizer.json").exists():
        # Not AutoTokenizer: the original config.json carries an ``auto_map`` (remote code) that it would
        # offer to run. The fast-tokenizer class reads tokenizer.json / tokenizer_config.json only.
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(path))
    if tiny_fallback:
        from sae_rad_ext.adapters.tokenizer import build_tiny_tokenizer

        return build_tiny_tokenizer()
    return None
