"""load_maira2: MAIRA-2's original (transformers 4.x) checkpoint layout, loaded strictly, no remote code."""

import json

import pytest
import torch
from maira2_inputs import pixels, study_ids
from sae_rad_ext.adapters import HookedMaira2, load_maira2, save_maira2_original, tiny_maira2
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ORIGINAL_PREFIXES = ("language_model.model.", "language_model.lm_head.", "vision_tower.", "multi_modal_projector.")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, tok = tiny_maira2(seed=7)
    path = save_maira2_original(model, tmp_path_factory.mktemp("maira2") / "ckpt", tokenizer=tok)
    return model, tok, path


def _inputs(tok, n=2):
    return torch.tensor([study_ids(tok, n, 64)]), pixels(n, 112, seed=11)


def test_original_layout_on_disk(saved):
    model, _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "maira2" and cfg["projector_n_layers"] == 4
    assert cfg["architectures"] == ["Maira2ForConditionalGeneration"]
    assert cfg["vision_config"]["model_type"] == "dinov2" and cfg["text_config"]["model_type"] == "llama"
    assert cfg["text_config"]["rope_scaling"] == {"type": "linear", "factor": 1.5}
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert len(keys) == len(model.state_dict()) and all(k.startswith(ORIGINAL_PREFIXES) for k in keys)
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.layers.6.bias" in keys


def test_load_exact(saved):
    model, tok, path = saved
    loaded, tok2 = load_maira2(path)
    src, dst = model.state_dict(), loaded.state_dict()
    assert set(src) == set(dst) and all(torch.equal(src[k], dst[k]) for k in src)  # 0 missing / unexpected
    ids, px = _inputs(tok)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=px).logits, loaded(input_ids=ids, pixel_values=px).logits)
    assert loaded.config.text_config.rope_parameters["factor"] == 1.5 and not loaded.training
    assert tok2 is not None and tok2("The heart is enlarged.")["input_ids"] == tok("The heart is enlarged.")["input_ids"]
    assert tok2.convert_tokens_to_ids("<image>") == loaded.config.image_token_index


def test_sharded_and_dtype(saved, tmp_path):
    model, tok, _ = saved
    path = save_maira2_original(model, tmp_path / "sharded", max_shard_tensors=16)
    assert (path / "model.safetensors.index.json").exists() and not (path / "model.safetensors").exists()
    loaded, no_tok = load_maira2(path)
    assert no_tok is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))
    bf, tiny_tok = load_maira2(path, dtype=torch.bfloat16, tiny_tokenizer_fallback=True)
    assert bf.dtype == torch.bfloat16 and tiny_tok is not None


def test_hooked_from_pretrained(saved):
    model, tok, path = saved
    hm = HookedMaira2.from_pretrained(str(path))
    ids, px = _inputs(tok, 3)
    with torch.no_grad():
        assert torch.equal(hm(ids, pixel_values=px), model(input_ids=ids, pixel_values=px).logits)
    assert hm.tokenizer is not None and hm.cfg.model_name == str(path)


def _copy(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_or_renamed_tensor_raises(saved, tmp_path):
    _, _, path = saved
    gone = _copy(path, tmp_path / "missing", lambda s: s.pop("multi_modal_projector.layers.4.bias"))
    with pytest.raises(ValueError, match=r"1 missing weight\(s\) \[model\.multi_modal_projector\.layers\.4\.bias\]"):
        load_maira2(gone)

    def rename(s):
        s["language_model.model.layers.0.mlp.gate.weight"] = s.pop("language_model.model.layers.0.mlp.gate_proj.weight")

    renamed = _copy(path, tmp_path / "renamed", rename)
    with pytest.raises(ValueError, match=r"1 missing.*gate_proj.*1 unexpected.*language_model\.model\.layers\.0\.mlp\.gate\.weight"):
        load_maira2(renamed)
    extra = _copy(path, tmp_path / "extra", lambda s: s.__setitem__("vision_tower.pooler.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected weight\(s\) \[vision_tower\.pooler\.weight\]"):
        load_maira2(extra)
    wrong = _copy(path, tmp_path / "shape", lambda s: s.__setitem__("language_model.lm_head.weight", torch.zeros(3, 3)))
    with pytest.raises(ValueError, match="wrong shape.*language_model.lm_head.weight"):
        load_maira2(wrong)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.__setitem__("model_type", "llava"), "model_type is 'llava', expected 'maira2'"),
        (lambda c: c.pop("projector_n_layers"), "projector_n_layers is None"),
        (lambda c: c["vision_config"].__setitem__("model_type", "clip_vision_model"), "expected 'dinov2'"),
        (lambda c: c["text_config"].__setitem__("model_type", "gpt2"), "expected 'llama'"),
        (lambda c: c.__setitem__("image_token_index", 10**6), "image_token_index 1000000 is not a token id"),
        (lambda c: c["vision_config"].__setitem__("reshape_hidden_states", True), "reshape_hidden_states"),
    ],
)
def test_non_maira2_config_raises(saved, tmp_path, edit, message):
    _, _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").symlink_to(path / "model.safetensors")
    with pytest.raises(ValueError, match=message):
        load_maira2(bad)


def test_never_runs_remote_code(saved, tmp_path):
    _, _, path = saved
    folder = tmp_path / "remote"
    folder.mkdir()
    for f in path.iterdir():
        (folder / f.name).symlink_to(f)
    sentinel = tmp_path / "ran"
    for mod in ("modeling_maira2.py", "configuration_maira2.py"):
        (folder / mod).write_text(f"open({str(sentinel)!r}, 'w').write('x')\n")
    load_maira2(folder)  # config.json's auto_map points at these files
    assert not sentinel.exists()


def test_missing_folder_contents_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_maira2(tmp_path)
    model, _ = tiny_maira2()
    path = save_maira2_original(model, tmp_path / "noweights")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_maira2(path)
