"""The microsoft/maira-2-sae release format → our inference SAE, directly and via SAE.from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS

from sae_rad_ext import RadMatryoshkaSAE, load_maira2_sae, register_maira2_sae_release, save_maira2_sae_format
from sae_rad_ext.saes.maira2_format import MAIRA2_SAE_CONVERTER, Maira2SaeFormatError

D_IN, D_SAE = 16, 40
SIZES = [10, 10, 20]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one thread (OpenMP barriers cost more than the work, badly so on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        W_enc=torch.randn(D_IN, D_SAE, generator=g),
        b_enc=torch.randn(D_SAE, generator=g) * 0.1,
        W_dec=torch.randn(D_SAE, D_IN, generator=g),
        b_dec=torch.randn(D_IN, generator=g),
    )


def _dl_encode(w, x, thr, end=D_SAE):
    """dictionary_learning MatryoshkaBatchTopKSAE.encode(use_threshold=True) (+ active_groups cut)."""
    post = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    f = post * (post > thr)
    f[:, end:] = 0
    return f


def test_loader_reads_release_layout(tmp_path):
    w = _weights()
    save_maira2_sae_format(tmp_path / "sae", k=8, group_sizes=SIZES, threshold=0.7, layer=15, **w)
    sae = load_maira2_sae(tmp_path / "sae")
    assert isinstance(sae, RadMatryoshkaSAE)
    assert sae.cfg.metadata.hook_name == "blocks.15.hook_resid_post"
    assert sae.cfg.metadata.model_name == "MAIRA-2"
    assert sae.group_sizes == SIZES and sae.level_ends == [10, 20, 40] and sae.cfg.k == 8
    x = torch.randn(12, D_IN)
    torch.testing.assert_close(sae.encode(x), _dl_encode(w, x, 0.7))
    torch.testing.assert_close(sae(x), _dl_encode(w, x, 0.7) @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x, level=0), _dl_encode(w, x, 0.7, end=10))
    # the release keeps ae.pt loadable with weights_only=True (no pickled objects)
    assert set(torch.load(tmp_path / "sae" / "ae.pt", weights_only=True)) >= {"k", "threshold", "group_sizes"}


def test_from_pretrained_via_registered_local_release(tmp_path):
    for i, layer in enumerate((15, 20)):
        save_maira2_sae_format(
            tmp_path / f"layer_{layer}", k=4, group_sizes=SIZES, threshold=0.1 * i, layer=layer, **_weights(i)
        )
    ids = register_maira2_sae_release("maira-2-sae-test", tmp_path)
    assert ids == ["layer_15", "layer_20"]
    assert MAIRA2_SAE_CONVERTER in NAMED_PRETRAINED_SAE_LOADERS
    sae = SAE.from_pretrained("maira-2-sae-test", "layer_20")
    assert isinstance(sae, RadMatryoshkaSAE)
    assert sae.cfg.metadata.hook_name == "blocks.20.hook_resid_post"
    assert torch.equal(sae.W_enc, _weights(1)["W_enc"])
    register_maira2_sae_release(
        "maira-2-sae-test-2", tmp_path, {"x4": "layer_15"}, neuronpedia_ids={"x4": "maira-2/15-x4"}
    )
    sae = SAE.from_pretrained("maira-2-sae-test-2", "x4")
    assert sae.cfg.metadata.neuronpedia_id == "maira-2/15-x4"
    # and it saves as a normal SAELens folder of our architecture
    sae.save_model(tmp_path / "saelens")
    assert json.loads((tmp_path / "saelens" / "cfg.json").read_text())["group_sizes"] == SIZES
    assert torch.equal(SAE.load_from_disk(tmp_path / "saelens").W_dec, sae.W_dec)


def test_loader_errors_are_clear(tmp_path):
    w = _weights()
    with pytest.raises(FileNotFoundError, match="ae.pt"):
        load_maira2_sae(tmp_path)
    bad = dict(w, W_dec=w["W_dec"].T.contiguous())
    save_maira2_sae_format(tmp_path / "t", k=4, group_sizes=SIZES, **bad)
    with pytest.raises(Maira2SaeFormatError, match="transposed"):
        load_maira2_sae(tmp_path / "t")
    save_maira2_sae_format(tmp_path / "g", k=4, group_sizes=[10, 10, 10], **w)
    with pytest.raises(Maira2SaeFormatError, match="groups"):
        load_maira2_sae(tmp_path / "g")
    save_maira2_sae_format(tmp_path / "m", k=4, group_sizes=SIZES, **w)
    state = torch.load(tmp_path / "m" / "ae.pt", weights_only=True)
    del state["b_enc"]
    torch.save(state, tmp_path / "m" / "ae.pt")
    with pytest.raises(Maira2SaeFormatError, match="missing"):
        load_maira2_sae(tmp_path / "m")
    save_maira2_sae_format(tmp_path / "c", k=4, group_sizes=SIZES, **w)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["trainer"]["dict_size"] = 99
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Maira2SaeFormatError, match="dict_size"):
        load_maira2_sae(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no ae.pt"):
        register_maira2_sae_release("bad", tmp_path, ["nope"])
