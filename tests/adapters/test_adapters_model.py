"""MAIRA-2 on transformers 5: architecture, image features, splice, generation, geometry, clear errors."""

import time

import pytest
import torch
from maira2_inputs import batch, pixels, study_ids
from sae_rad_ext.adapters import (
    Maira2ForConditionalGeneration,
    full_size_maira2_config,
    image_geometry,
    tiny_llava,
    tiny_maira2,
)
from torch import nn
from transformers import Dinov2Backbone, LlamaModel


def test_tiny_maira2_is_fast_deterministic_and_maira2_shaped():
    tiny_maira2()  # warm the tokenizer cache
    t = time.perf_counter()
    model, tok = tiny_maira2(seed=0)
    assert time.perf_counter() - t < 1.0
    again, _ = tiny_maira2(seed=0)
    other, _ = tiny_maira2(seed=1)
    sd, sd2, sd3 = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not torch.equal(sd["lm_head.weight"], sd3["lm_head.weight"])

    m = model.model
    assert isinstance(m.vision_tower, Dinov2Backbone) and isinstance(m.language_model, LlamaModel)
    proj = m.multi_modal_projector.layers
    assert [type(x).__name__ for x in proj] == ["Linear", "GELUActivation"] * 3 + ["Linear"]
    assert all(proj[i].bias is not None for i in (0, 2, 4, 6))
    assert proj[0].in_features == model.config.vision_config.hidden_size
    assert isinstance(model.lm_head, nn.Linear) and model.config.text_config.vocab_size == len(tok)
    assert model.config.image_token_index == tok.convert_tokens_to_ids("<image>")
    rope = model.config.text_config.rope_parameters
    assert rope["rope_type"] == "linear" and rope["factor"] == 1.5
    assert m.language_model.rotary_emb.rope_type == "linear"
    assert image_geometry(model.config).tokens_per_image == 64 and image_geometry(model.config).patch_grid == (8, 8)
    sized, _ = tiny_maira2(image_size=56, text_layers=2, projector_n_layers=2, rope_scaling_factor=None)
    assert image_geometry(sized.config).tokens_per_image == 16 and len(sized.model.multi_modal_projector.layers) == 3
    assert sized.config.text_config.num_hidden_layers == 2


@pytest.mark.parametrize("source", ["feature_maps", "hidden_states"])
def test_image_features_and_splice(source):
    model, tok = tiny_maira2(image_feature_source=source)
    px = pixels(2, 112)
    with torch.no_grad():
        out = model.model.vision_tower(px, output_hidden_states=True)
        last = out.hidden_states[-1]
        chosen = model.model.vision_tower.layernorm(last) if source == "feature_maps" else last
        want = model.model.multi_modal_projector(chosen[:, 1:])  # CLS dropped
        got = torch.stack(model.model.get_image_features(px).pooler_output)
        assert torch.equal(got, want) and got.shape == (2, 64, model.config.text_config.hidden_size)
        ids = torch.tensor([study_ids(tok, 2, 64)])
        hs = model(input_ids=ids, pixel_values=px, output_hidden_states=True).hidden_states
    spliced = hs[0][0][ids[0] == model.config.image_token_index]
    assert torch.equal(spliced, want.reshape(-1, want.shape[-1]))


def test_feature_sources_differ():
    a, _ = tiny_maira2(image_feature_source="feature_maps")
    b, _ = tiny_maira2(image_feature_source="hidden_states")
    px = pixels(1, 112)
    with torch.no_grad():
        fa = a.model.get_image_features(px).pooler_output[0]
        fb = b.model.get_image_features(px).pooler_output[0]
    assert (fa - fb).abs().max() > 0.1 * fa.abs().max()


def test_generate_kv_cache_matches_uncached_greedy_and_left_padding():
    model, tok = tiny_maira2()
    ids = torch.tensor([study_ids(tok, 1, 64)])
    px = pixels(1, 112)
    with torch.no_grad():
        gen = model.generate(input_ids=ids, pixel_values=px, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        seq = ids
        for _ in range(5):
            nxt = model(input_ids=seq, pixel_values=px).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        assert torch.equal(gen, seq)
        # a left-padded batch generates for each row what that row generates alone
        rows = [study_ids(tok, 1, 64), study_ids(tok, 2, 64, tail=" Findings:")]
        bid, mask = batch(tok, rows)
        px2 = torch.cat([pixels(1, 112, seed=1), pixels(2, 112, seed=2)])
        gb = model.generate(input_ids=bid, pixel_values=px2, attention_mask=mask, max_new_tokens=4, do_sample=False,
                            pad_token_id=tok.pad_token_id)
        g1 = model.generate(input_ids=torch.tensor([rows[1]]), pixel_values=px2[1:], max_new_tokens=4,
                            do_sample=False, pad_token_id=tok.pad_token_id,
                            attention_mask=torch.ones(1, len(rows[1]), dtype=torch.long))
    assert torch.equal(gb[1, -4:], g1[0, -4:])


def test_clear_errors_for_images():
    model, tok = tiny_maira2()
    ids = torch.tensor([study_ids(tok, 2, 64)])
    with pytest.raises(ValueError, match=r"image count does not match.*1 image\(s\).*128 image tokens"):
        model(input_ids=ids, pixel_values=pixels(1, 112))
    with pytest.raises(ValueError, match=r"3 image\(s\)"):
        model(input_ids=ids, pixel_values=pixels(3, 112))
    with pytest.raises(ValueError, match="1 channels but the vision tower expects 3"):
        model(input_ids=ids, pixel_values=pixels(2, 112, channels=1))
    with pytest.raises(ValueError, match="224x224 px but the vision tower expects 112x112"):
        model(input_ids=ids, pixel_values=pixels(2, 224))
    with pytest.raises(ValueError, match="4-D tensor"):
        model(input_ids=ids, pixel_values=torch.zeros(3, 112, 112))
    bad = torch.tensor([study_ids(tok, 1, 64)[:-3] + [model.config.image_token_index] * 3])
    with pytest.raises(ValueError, match="blocks of 64"):
        model(input_ids=bad, pixel_values=pixels(1, 112))


def test_full_size_geometry_on_meta_device():
    cfg = full_size_maira2_config()
    geo = image_geometry(cfg)
    assert geo.tokens_per_image == 1369 and geo.patch_grid == (37, 37) and geo.image_size == (518, 518)
    assert cfg.image_token_index == 32204 and cfg.text_config.vocab_size == 32207
    assert cfg.text_config.rope_parameters["factor"] == 1.5
    with torch.device("meta"):
        model = Maira2ForConditionalGeneration(cfg)
    sd = model.state_dict()
    assert len(sd) == 522
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 6.88) < 0.01
    assert tuple(sd["model.multi_modal_projector.layers.0.weight"].shape) == (4096, 768)
    assert tuple(sd["model.multi_modal_projector.layers.6.weight"].shape) == (4096, 4096)


def test_tiny_llava_is_clip_llava():
    model, tok = tiny_llava()
    assert type(model.model.vision_tower).__name__ == "CLIPVisionModel"
    assert image_geometry(model.config).tokens_per_image == 16
    ids = torch.tensor([study_ids(tok, 1, 16)])
    assert model(input_ids=ids, pixel_values=pixels(1, 56)).logits.shape == (1, ids.shape[1], len(tok))


def test_auto_registration_is_opt_in():
    from sae_rad_ext.adapters.maira2 import register_maira2_auto_classes
    from transformers import AutoConfig

    register_maira2_auto_classes()
    register_maira2_auto_classes()  # idempotent
    assert type(AutoConfig.for_model("maira2")).__name__ == "Maira2Config"
