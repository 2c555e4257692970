"""Prompt builder, image preprocessing and per-position roles (all offline, tiny tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sae_rad_ext.adapters import Maira2Processor, build_tiny_tokenizer, preprocess_image
from sae_rad_ext.adapters.grounding import format_grounded, parse_grounded
from sae_rad_ext.adapters.preprocessing import MAIRA2_IMAGE_MEAN, MAIRA2_IMAGE_STD, to_greyscale_uint8
from sae_rad_ext.adapters.prompts import GROUNDING_REQUEST, PHRASE_REQUEST, REQUEST, SYSTEM_PROMPT
from sae_rad_ext.adapters.roles import ImageSlot, Role

from sae_rad_ext.data.study import Study

HEAD = SYSTEM_PROMPT + " USER: "


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def proc(tok):
    return Maira2Processor(tok, image_size=28, patch_size=14)  # 2×2 patch grid, 4 tokens per image


def _img(seed=0, h=40, w=52):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _study(n_images=1, **kw):
    kw.setdefault("findings", "The heart is enlarged.")
    return Study(
        kw.pop("study_id", f"s{n_images}"),
        _img(1),
        lateral=_img(2) if n_images >= 2 else None,
        prior_frontal=_img(3) if n_images >= 3 else None,
        **kw,
    )


# ---- prompt wording ------------------------------------------------------------------------------
def test_prompt_one_image_missing_sections_are_na(proc):
    text = proc.prompt_text(_study(1))
    assert text == (
        HEAD + "Given the current frontal image only<image>" + REQUEST
        + " INDICATION: N/A TECHNIQUE: N/A COMPARISON: N/A ASSISTANT:"
    )


def test_prompt_lateral_without_prior(proc):
    text = proc.prompt_text(_study(2, indication="Cough.", technique="PA and lateral.", comparison=""))
    assert text.startswith(HEAD + "Given the current frontal image<image> and the current lateral image<image>"
                           + REQUEST)
    assert "PRIOR_REPORT" not in text
    assert text.endswith(" INDICATION: Cough. TECHNIQUE: PA and lateral. COMPARISON: N/A ASSISTANT:")


def test_prompt_three_images_and_prior_report(proc):
    text = proc.prompt_text(_study(3, prior_report="No effusion.", comparison="Prior from 2019."))
    assert text == (
        HEAD + "Given the current frontal image<image> the current lateral image<image> and the prior frontal"
        " image<image> PRIOR_REPORT: No effusion." + REQUEST
        + " INDICATION: N/A TECHNIQUE: N/A COMPARISON: Prior from 2019. ASSISTANT:"
    )


def test_prompt_prior_without_lateral_and_missing_prior_report(proc):
    st = Study("p", _img(1), prior_frontal=_img(3), findings="x")
    text = proc.prompt_text(st)
    assert "Given the current frontal image<image> and the prior frontal image<image> PRIOR_REPORT: N/A" in text
    b = proc.build([st])
    assert b.images_per_study == [2]
    slots = b.roles.image_slot[b.roles.role == Role.IMAGE]
    assert slots.tolist() == [ImageSlot.FRONTAL] * 4 + [ImageSlot.PRIOR] * 4


def test_grounded_and_phrase_prompts(proc):
    text = proc.prompt_text(_study(1), "grounded_reporting")
    assert REQUEST + GROUNDING_REQUEST + " INDICATION: N/A" in text
    st = _study(3)
    text = proc.prompt_text(st, "phrase_grounding", phrase="Left pleural effusion.")
    assert text == HEAD + "Given the current frontal image<image>" + PHRASE_REQUEST + " Left pleural effusion. ASSISTANT:"
    target = format_grounded([("Left pleural effusion.", [(0.105, 0.505, 0.405, 0.905)])])
    b = proc.build([st], "phrase_grounding", phrase="Left pleural effusion.", reports=[target])
    assert b.images_per_study == [1] and b.pixel_values.shape[0] == 1  # phrase grounding uses the frontal only
    assert _decode_role(proc, b, 0, Role.PHRASE) == " Left pleural effusion."
    assert _decode_role(proc, b, 0, Role.REPORT) == " " + target
    with pytest.raises(ValueError, match="phrase"):
        proc.build([st], "phrase_grounding")
    with pytest.raises(ValueError, match="reports="):
        proc.build([st], "phrase_grounding", phrase="x")


# ---- role table ----------------------------------------------------------------------------------
def _decode_role(proc, batch, row, role):
    ids = batch.input_ids[row][batch.roles.role[row] == role].tolist()
    return proc.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_sections_parsed_right(proc):
    st = _study(3, indication="Shortness of breath.", technique="PA and lateral views of the chest.",
                comparison="None available.", prior_report="The lungs are clear.",
                findings="Moderate right pleural effusion.")
    b = proc.build([st])
    assert _decode_role(proc, b, 0, Role.INDICATION) == " Shortness of breath."
    assert _decode_role(proc, b, 0, Role.TECHNIQUE) == " PA and lateral views of the chest."
    assert _decode_role(proc, b, 0, Role.COMPARISON) == " None available."
    assert _decode_role(proc, b, 0, Role.PRIOR_REPORT) == " The lungs are clear."
    assert _decode_role(proc, b, 0, Role.REPORT) == " Moderate right pleural effusion."
    instr = _decode_role(proc, b, 0, Role.INSTRUCTION)
    assert instr.startswith(SYSTEM_PROMPT) and "INDICATION:" in instr and instr.endswith("COMPARISON: ASSISTANT:")
    # BOS first, EOS last, both SPECIAL
    r = b.roles.role[0]
    assert r[0] == Role.SPECIAL and b.input_ids[0, 0] == proc.tokenizer.bos_token_id
    assert r[-1] == Role.SPECIAL and b.input_ids[0, -1] == proc.tokenizer.eos_token_id
    # the selection presets see what they should
    m = b.roles.mask("maira2_sae_paper")
    assert not (m & (b.roles.role == Role.IMAGE)).any() and not (m & (b.roles.role == Role.INSTRUCTION)).any()
    assert m.sum() == sum((b.roles.role == x).sum() for x in (Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON,
                                                               Role.PRIOR_REPORT, Role.REPORT))
    assert b.roles.mask("maira2_sae_paper_with_images").sum() == m.sum() + 12


def test_na_sections_get_section_roles(proc):
    b = proc.build([_study(1)])
    for role in (Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON):
        assert _decode_role(proc, b, 0, role) == " N/A"


def test_image_positions_slots_and_grid(proc):
    b = proc.build([_study(3)])
    img = b.roles.role[0] == Role.IMAGE
    assert img.sum() == 3 * 4 and (b.input_ids[0][img] == proc.image_token_id).all()
    assert (b.input_ids[0][~img] != proc.image_token_id).all()
    slots = b.roles.image_slot[0][img].tolist()
    assert slots == [ImageSlot.FRONTAL] * 4 + [ImageSlot.LATERAL] * 4 + [ImageSlot.PRIOR] * 4
    rows, cols = b.roles.patch_row[0][img].tolist(), b.roles.patch_col[0][img].tolist()
    assert rows == [0, 0, 1, 1] * 3 and cols == [0, 1, 0, 1] * 3  # row-major
    assert (b.roles.patch_row[0][~img] == -1).all() and (b.roles.image_slot[0][~img] == -1).all()
    assert b.roles.describe(0, int(img.nonzero()[5])) == "<lateral r00 c01>"


def test_segment_and_whole_tokenization_agree(tok):
    whole = Maira2Processor(tok, image_size=28, patch_size=14)
    segs = Maira2Processor(tok, image_size=28, patch_size=14, tokenization="segments")
    studies = [_study(1), _study(2, indication="Cough, fever (3 days).", technique="AP"),
               _study(3, prior_report="Unchanged cardiomegaly.  ", comparison="N/A", findings="Stable.\nNo change.")]
    for task, kw in (("findings", {}), ("grounded_reporting", {}),
                     ("phrase_grounding", {"phrase": "Small effusion", "reports": ["<obj>Small effusion</obj>"] * 3})):
        a, b = whole.build(studies, task, **kw), segs.build(studies, task, **kw)
        assert torch.equal(a.input_ids, b.input_ids), task
        assert all(torch.equal(x, y) for x, y in zip(a.roles.as_tuple(), b.roles.as_tuple(), strict=True)), task
    assert whole.straddling_tokens == 0


# ---- geometry ------------------------------------------------------------------------------------
def test_full_size_geometry_1369_tokens_per_518px_image(tok):
    p = Maira2Processor(tok, image_size=518, patch_size=14)
    assert p.tokens_per_image == 1369 and p.grid == 37
    b = p.build([_study(1), _study(3)])
    assert b.pixel_values.shape == (4, 3, 518, 518)
    per_row = (b.roles.role == Role.IMAGE).sum(1).tolist()
    assert per_row == [1369, 3 * 1369]
    assert ((b.input_ids == p.image_token_id).sum(1) == torch.tensor(per_row)).all()
    img = b.roles.role[1] == Role.IMAGE
    assert b.roles.patch_row[1][img].max() == 36 and b.roles.patch_col[1][img].max() == 36
    frontal = img & (b.roles.image_slot[1] == ImageSlot.FRONTAL)
    assert frontal.sum() == 1369
    assert b.roles.describe(1, int(frontal.nonzero()[-1])) == "<frontal r36 c36>"


def test_full_size_geometry_from_model_config(tok):
    from sae_rad_ext.adapters import full_size_maira2_config

    cfg = full_size_maira2_config()
    p = Maira2Processor.from_model_config(cfg, tok, check_image_token=False)  # tiny tokenizer: other id
    assert (p.image_size, p.patch_size, p.tokens_per_image) == (518, 14, 1369)
    with pytest.raises(ValueError, match="image_token_id"):
        Maira2Processor.from_model_config(cfg, tok)


def test_cls_kept_geometry(tok):
    p = Maira2Processor(tok, image_size=28, patch_size=14, tokens_per_image=5)
    b = p.build([_study(1)])
    img = b.roles.role[0] == Role.IMAGE
    assert img.sum() == 5
    assert b.roles.patch_row[0][img].tolist() == [-1, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="tokens_per_image"):
        Maira2Processor(tok, image_size=28, patch_size=14, tokens_per_image=7)


# ---- padding, labels, lengths --------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_roles_and_labels(proc, side):
    studies = [_study(1, findings="Normal."), _study(3, indication="Chest pain.", findings="Large left effusion.")]
    b = proc.build(studies, padding_side=side)
    B, T = b.input_ids.shape
    lens = b.attention_mask.sum(1)
    assert lens[0] < lens[1] == T
    pad = b.attention_mask == 0
    assert (b.roles.role[pad] == Role.PAD).all() and (b.roles.role[~pad] != Role.PAD).all()
    assert (b.input_ids[pad] == b.pad_token_id).all()
    if side == "left":
        assert pad[0, 0] and not pad[0, -1]
    else:
        assert pad[0, -1] and not pad[0, 0]
    for i in range(B):
        start = int(b.prompt_lengths[i])
        assert b.roles.role[i, start] == Role.REPORT and (b.roles.role[i, :start] != Role.REPORT).all()
        lab = b.labels[i]
        kept = (lab != -100).nonzero().flatten()
        assert kept[0] == start and b.input_ids[i, kept[-1]] == proc.tokenizer.eos_token_id
        assert torch.equal(lab[kept], b.input_ids[i, kept])
        assert len(kept) == int((b.roles.role[i] == Role.REPORT).sum()) + 1  # report + its EOS


def test_generation_batch_and_decode(proc, tok):
    studies = [_study(1), _study(2)]
    b = proc.build(studies, "grounded_reporting", with_report=False)
    T = b.input_ids.shape[1]
    assert (b.prompt_lengths == T).all() and (b.labels == -100).all()
    assert b.roles.role[:, -1].tolist() == [Role.INSTRUCTION] * 2  # ends with the generation prompt
    g0 = " <obj>Small left effusion.<box><x10><y50><x40><y90></box></obj>"
    g1 = " The lungs are clear."
    new = []
    for text in (g0, g1):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        new.append(ids)
    width = max(map(len, new)) + 2
    new = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids in new])
    out = torch.cat([b.input_ids, new], dim=1)
    texts = proc.decode_generated(b, out)
    assert texts[1] == g1.strip()
    assert parse_grounded(texts[0])[0].boxes == [(0.105, 0.505, 0.405, 0.905)]
    assert proc.decode_generated(b, out, keep_grounding=False)[0] == "Small left effusion."
    assert proc.decode_generated(b, new) == texts  # new tokens only also accepted
    r = proc.roles_for_generated(b, out)
    assert r.shape == out.shape
    gen = r.role[:, T:]
    n1 = len(tok(g1, add_special_tokens=False)["input_ids"])
    assert (gen[1, :n1] == Role.REPORT).all() and gen[1, n1] == Role.SPECIAL and (gen[1, n1 + 1 :] == Role.PAD).all()
    assert torch.equal(r.role[:, :T], b.roles.role)


def test_batch_to_and_model_inputs(proc):
    b = proc.build([_study(2)]).to("cpu", dtype=torch.float64)
    assert b.pixel_values.dtype == torch.float64 and set(b.model_inputs()) == {"input_ids", "attention_mask",
                                                                                 "pixel_values"}
    assert b.study_ids == ["s2"] and len(b) == 1 and b.original_sizes == [(40, 52), (40, 52)]


def test_pad_to_and_max_length(proc):
    b = proc.build([_study(1)], pad_to=300)
    assert b.input_ids.shape[1] == 300
    n = int(b.attention_mask.sum())
    with pytest.raises(ValueError, match="max_length"):
        proc.build([_study(1)], max_length=n - 1)
    assert proc.build([_study(1)], max_length=n).input_ids.shape[1] == n
    with pytest.raises(ValueError, match="pad_to"):
        proc.build([_study(1)], pad_to=n - 1)


# ---- clear errors --------------------------------------------------------------------------------
def test_clear_errors(proc):
    with pytest.raises(ValueError, match="empty batch"):
        proc.build([])
    with pytest.raises(ValueError, match="no frontal image"):
        proc.build([Study("nf", None, findings="x")])
    with pytest.raises(ValueError, match=r"study bad: .*\[H, W\]"):
        proc.build([Study("bad", np.zeros((3, 40, 40), dtype=np.uint8) + np.arange(40, dtype=np.uint8))])
    with pytest.raises(ValueError, match=r"study bad: .*\[H, W\]"):
        proc.build([Study("bad", np.zeros((4, 4, 4, 4)))])
    with pytest.raises(ValueError, match="image token"):
        proc.build([_study(1, indication="see <image>")])
    with pytest.raises(ValueError, match="task"):
        proc.build([_study(1)], "impression")
    with pytest.raises(ValueError, match="padding_side"):
        proc.build([_study(1)], padding_side="middle")


# ---- preprocessing -------------------------------------------------------------------------------
def test_preprocessing_matches_maira2_bit_image_processor():
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    hf = BitImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                              image_mean=[MAIRA2_IMAGE_MEAN] * 3, image_std=[MAIRA2_IMAGE_STD] * 3, resample=3)
    rng = np.random.default_rng(0)
    for shape in ((90, 70), (70, 90), (64, 64), (33, 47)):
        raw = rng.integers(20, 200, shape, dtype=np.uint8)
        normalised = Image.fromarray(to_greyscale_uint8(raw)).convert("L")  # MAIRA-2's _normalize_image
        ref = hf(images=[normalised], return_tensors="pt")["pixel_values"][0]
        ours = preprocess_image(raw, 64)
        assert ours.shape == ref.shape == (3, 64, 64)
        assert torch.allclose(ours, ref.float(), atol=1e-5), shape


def test_preprocessing_inputs_and_normalisation():
    rng = np.random.default_rng(1)
    g8 = rng.integers(0, 256, (50, 60), dtype=np.uint8)
    g8[0, 0], g8[0, 1] = 0, 255
    x = preprocess_image(g8, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    lo, hi = (0 - MAIRA2_IMAGE_MEAN) / MAIRA2_IMAGE_STD, (1 - MAIRA2_IMAGE_MEAN) / MAIRA2_IMAGE_STD
    assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6
    # min-max makes scale/offset irrelevant; uint16, float and RGB inputs agree with uint8
    assert torch.equal(preprocess_image(g8.astype(np.uint16) * 257, 32), x)
    step = 1 / 255 / MAIRA2_IMAGE_STD + 1e-5  # float rounding may move a pixel by one uint8 level (truncation)
    assert torch.allclose(preprocess_image(g8.astype(np.float64) / 255.0 * 7 - 3, 32), x, atol=step)
    assert torch.equal(preprocess_image(np.repeat(g8[..., None], 3, axis=-1), 32), x)
    assert torch.equal(preprocess_image(Image.fromarray(g8), 32), x)
    assert torch.equal(preprocess_image(torch.from_numpy(g8), 32), x)
    assert torch.equal(preprocess_image(g8[..., None], 32), x)
    # min-max stretch: a low-contrast image fills [0, 255]
    assert to_greyscale_uint8(np.array([[10, 20], [30, 40]], dtype=np.uint16)).tolist() == [[0, 85], [170, 255]]
    assert (to_greyscale_uint8(np.full((8, 8), 7.0)) == 0).all()  # constant image: zeros, no NaN
    with pytest.raises(ValueError, match="NaN"):
        preprocess_image(np.full((8, 8), np.nan))
    with pytest.raises(TypeError):
        preprocess_image([[1, 2], [3, 4]])


# ---- end to end with the tiny model --------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny_maira2", "tiny_llava"])
def test_end_to_end_forward(which):
    import sae_rad_ext.adapters as A

    model, tok = getattr(A, which)()
    p = Maira2Processor.from_model_config(model.config, tok)
    b = p.build([_study(1), _study(3, prior_report="Normal.")])
    n_img = (b.input_ids == model.config.image_token_id).sum()
    assert n_img == b.pixel_values.shape[0] * p.tokens_per_image == (b.roles.role == Role.IMAGE).sum()
    with torch.no_grad():
        out = model(**b.model_inputs(), labels=b.labels)
    assert out.logits.shape[:2] == b.input_ids.shape and torch.isfinite(out.loss)
    g = p.build([_study(2)], with_report=False)
    with torch.no_grad():
        gen = model.generate(**g.model_inputs(), max_new_tokens=4, do_sample=False)
    assert p.roles_for_generated(g, gen).shape == gen.shape and len(p.decode_generated(g, gen)) == 1


def test_hooked_activations_align_with_roles():
    from sae_rad_ext.adapters import HookedMaira2

    h = HookedMaira2.tiny()
    p = Maira2Processor.from_model_config(h.model.config, h.tokenizer)
    b = p.build([_study(1), _study(3, indication="Dyspnea.")])  # left padding: row 0 is shorter
    _, cache = h.run_with_cache(b.input_ids, pixel_values=b.pixel_values, attention_mask=b.attention_mask,
                                names_filter="blocks.1.hook_resid_post")
    acts = cache["blocks.1.hook_resid_post"]
    assert acts.shape[:2] == b.roles.shape
    sel = acts[b.roles.mask("maira2_sae_paper")]  # [n_selected, d_model]
    n_text = int(sum((b.roles.role == r).sum() for r in (Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON,
                                                           Role.PRIOR_REPORT, Role.REPORT)))
    assert sel.shape == (n_text, h.cfg.d_model)
    frontal = acts[b.roles.mask("image:frontal")]
    assert frontal.shape[0] == 2 * p.tokens_per_image


def _sentencepiece_style_tokenizer():
    """A Llama-like tokenizer (Metaspace "▁" pieces, byte fallback) trained locally on the tiny corpus."""
    from sae_rad_ext.adapters.tokenizer import _CORPUS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=[f"<0x{i:02X}>" for i in range(256)])
    tk.train_from_iterator([x for x in _CORPUS.splitlines() if x.strip()] * 4, trainer=trainer)
    # Llama's converted tokenizer runs BPE over the whole text (split=False); pieces start with "▁"
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<obj>", "</obj>", "<box>", "</box>"]})
    return tok


def test_sentencepiece_style_tokenizer_roles():
    tok = _sentencepiece_style_tokenizer()
    whole = Maira2Processor(tok, image_size=28, patch_size=14)
    segs = Maira2Processor(tok, image_size=28, patch_size=14, tokenization="segments")
    st = _study(3, prior_report="No effusion.", indication="Cough.", technique="PA and lateral.",
                findings="Small left pleural effusion.")
    a, b = whole.build([st]), segs.build([st])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.roles.role, b.roles.role)
    expect = {Role.INDICATION: "Cough.", Role.TECHNIQUE: "PA and lateral.", Role.COMPARISON: "N/A",
              Role.PRIOR_REPORT: "No effusion.", Role.REPORT: "Small left pleural effusion."}
    for role, text in expect.items():
        assert tok.decode(a.input_ids[0][a.roles.role[0] == role].tolist()) == text
    assert (a.roles.role[0] == Role.IMAGE).sum() == 12
    assert whole.straddling_tokens == 0
