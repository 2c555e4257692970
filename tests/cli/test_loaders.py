"""The commands' shared loaders: every accepted SAE kind, study sources, models, and their error types."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from sae_rad_ext import BadInputError, CheckpointError, ConfigMismatchError, RadMatryoshkaSAE, SaeRadError
from sae_rad_ext.cli.loaders import (
    check_sae_fits_model,
    load_model_for_command,
    load_sae_for_command,
    studies_for_command,
)
from sae_rad_ext.data.read_stats import SourceError, StudyReadError
from sae_rad_ext.saes.maira2_format import save_maira2_sae_format


def test_error_hierarchy_keeps_value_error_callers_working():
    assert issubclass(BadInputError, SaeRadError) and issubclass(BadInputError, ValueError)
    assert issubclass(CheckpointError, SaeRadError) and issubclass(ConfigMismatchError, SaeRadError)
    assert issubclass(SourceError, BadInputError) and issubclass(StudyReadError, BadInputError)
    e = StudyReadError("missing_image", "gone", path="/x/a.jpg", study_id="s1")
    assert e.kind == "missing_image" and "/x/a.jpg" in str(e)
    with pytest.raises(ValueError, match="gone"):
        raise e
    c = CheckpointError("truncated", path="/m/ae.pt")
    assert str(c) == "/m/ae.pt: truncated" and str(c.path) == "/m/ae.pt"


def test_loads_a_saelens_folder(tmp_path):
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    sae.save_model(str(tmp_path / "sae"))
    loaded = load_sae_for_command(tmp_path / "sae")
    assert isinstance(loaded, StandardSAE) and torch.equal(loaded.W_enc, sae.W_enc)


def test_loads_a_maira2_sae_folder(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = {
        "W_enc": torch.randn(8, 12, generator=g),
        "b_enc": torch.zeros(12),
        "W_dec": torch.randn(12, 8, generator=g),
        "b_dec": torch.zeros(8),
    }
    save_maira2_sae_format(tmp_path / "layer_3", k=4, group_sizes=[4, 8], layer=3, **w)
    loaded = load_sae_for_command(tmp_path / "layer_3")
    assert isinstance(loaded, RadMatryoshkaSAE) and torch.equal(loaded.W_enc, w["W_enc"])
    assert loaded.cfg.metadata.hook_name == "blocks.3.hook_resid_post"


def test_bad_sae_folders_name_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such SAE folder") as e:
        load_sae_for_command(tmp_path / "missing")
    assert e.value.path == tmp_path / "missing"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither cfg.json"):
        load_sae_for_command(tmp_path / "empty")
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    sae.save_model(str(tmp_path / "cut"))
    weights = tmp_path / "cut" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointError, match="could not load the SAE") as e:
        load_sae_for_command(tmp_path / "cut")
    assert str(e.value).startswith(f"{tmp_path / 'cut'}: ")


def test_models():
    tiny = load_model_for_command("tiny", "cpu", seed=1)
    again = load_model_for_command("tiny", "cpu", seed=1)
    p1, p2 = next(tiny.model.parameters()), next(again.model.parameters())
    assert torch.equal(p1, p2)  # seeded
    with pytest.raises(CheckpointError, match="'tiny' or a MAIRA-2 checkpoint folder"):
        load_model_for_command("/no/such/model", "cpu")
    check_sae_fits_model(StandardSAE(StandardSAEConfig(d_in=tiny.cfg.d_model, d_sae=4)), tiny)
    with pytest.raises(ConfigMismatchError, match=f"d_in=3 but the model's d_model is {tiny.cfg.d_model}"):
        check_sae_fits_model(StandardSAE(StandardSAEConfig(d_in=3, d_sae=4)), tiny)


def test_phantom_sources():
    ids = lambda f: [s.study_id for s in f()]  # noqa: E731
    assert ids(studies_for_command("phantom:n=5,seed=2,image_size=32")) == [f"phantom-2-{i}" for i in range(5)]
    # the limit caps n and is the default n; a fresh pass each call
    src = studies_for_command("phantom:seed=2,image_size=32", limit=3)
    assert ids(src) == ids(src) == [f"phantom-2-{i}" for i in range(3)]
    assert len(ids(studies_for_command("phantom:n=9,image_size=32", limit=4))) == 4
    (s,) = studies_for_command("phantom:1", phantom_defaults={"image_size": 48})()
    assert s.frontal.shape[:2] == (48, 48)
    (s,) = studies_for_command("phantom:1,image_size=40", phantom_defaults={"image_size": 48})()
    assert s.frontal.shape[:2] == (40, 40)  # the source wins over the command's default
    with pytest.raises(BadInputError, match="--studies: bad phantom option 'colour=red'"):
        studies_for_command("phantom:4,colour=red")


def test_folder_sources_with_splits_and_limit(tmp_path):
    from sae_rad_ext.data.phantom.io import write_phantom_dataset

    write_phantom_dataset(tmp_path / "ph", n=12, seed=4, image_size=32)
    every = [s.study_id for s in studies_for_command(str(tmp_path / "ph"))()]
    assert len(every) == 12
    by_split = {
        sp: [s.study_id for s in studies_for_command(str(tmp_path / "ph"), split=sp)()]
        for sp in ("train", "validate", "test")
    }
    both = studies_for_command(str(tmp_path / "ph"), split="validate, test")
    assert [s.study_id for s in both()] == by_split["validate"] + by_split["test"]
    capped = studies_for_command(str(tmp_path / "ph"), split="validate,test", limit=3)
    assert [s.study_id for s in capped()] == (by_split["validate"] + by_split["test"])[:3]
    with pytest.raises(BadInputError, match="does not exist"):
        studies_for_command(str(tmp_path / "nothing_here"))
