"""The one generate+decode function and its end-of-report rule."""

from __future__ import annotations

import pytest
import torch
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor
from sae_rad_ext.adapters.generation import generate_reports

from tests._studies import random_studies


@pytest.fixture(scope="module")
def hooked():
    return HookedMaira2.tiny(seed=0)


@pytest.fixture(scope="module")
def proc(hooked):
    return Maira2Processor.from_model_config(hooked.model.config, hooked.tokenizer)


class _Scripted:
    """A model whose ``generate`` appends fixed tokens to every row (the decoding rule in isolation)."""

    def __init__(self, new: list[list[int]]) -> None:
        self.new = torch.tensor(new)
        self.kwargs: dict = {}

    def parameters(self):
        yield torch.zeros(1)

    def generate(self, input_ids, **kwargs):
        self.kwargs = kwargs
        return torch.cat([input_ids, self.new], 1)


def test_report_ends_at_first_eos_and_drops_special_tokens(proc):
    tok = proc.tokenizer
    words = tok(" heart enlarged", add_special_tokens=False)["input_ids"]
    after = tok(" lungs clear", add_special_tokens=False)["input_ids"]
    eos, pad = proc.eos_token_id, proc.pad_token_id
    width = len(words) + 1 + len(after)
    rows = [
        [*words, eos, *after],  # text after EOS is not part of the report
        [*words, *after, *[pad] * (width - len(words) - len(after))],  # no EOS: everything, pads dropped
    ]
    batch = proc.build(random_studies(2, seed=1), with_report=False)
    model = _Scripted(rows)
    g = generate_reports(model, proc, batch, max_new_tokens=width)
    assert g.token_ids[0] == words
    assert g.texts[0] == tok.decode(words).strip() and "lungs" not in g.texts[0]
    assert "lungs" in g.texts[1] and "<pad>" not in g.texts[1]
    assert g.output_ids.shape == (2, batch.input_ids.shape[1] + width)
    assert model.kwargs["eos_token_id"] == eos and model.kwargs["do_sample"] is False


def test_grounding_tokens_dropped_for_findings_only(proc):
    tok = proc.tokenizer
    ids = tok.convert_tokens_to_ids(["<obj>", "<x3>"]) + tok(" heart", add_special_tokens=False)["input_ids"]
    studies = random_studies(1, seed=2)
    findings = generate_reports(_Scripted([ids]), proc, proc.build(studies, with_report=False), max_new_tokens=3)
    grounded = proc.build(studies, task="grounded_reporting", with_report=False)
    kept = generate_reports(_Scripted([ids]), proc, grounded, max_new_tokens=3)
    assert "<x3>" not in findings.texts[0] and "heart" in findings.texts[0]
    assert "<x3>" in kept.texts[0]


def test_same_text_as_hf_generate_of_the_underlying_model(hooked, proc):
    batch = proc.build(random_studies(3, seed=3), with_report=False)
    g = generate_reports(hooked, proc, batch, max_new_tokens=6)
    with torch.no_grad():
        hf = hooked.model.generate(
            **batch.model_inputs(), max_new_tokens=6, do_sample=False,
            eos_token_id=proc.eos_token_id, pad_token_id=proc.pad_token_id,
        )
    assert torch.equal(g.output_ids.cpu(), hf)
    assert g.texts == proc.decode_generated(batch, hf)
    assert generate_reports(hooked.model, proc, batch, max_new_tokens=6).texts == g.texts
    T = batch.input_ids.shape[1]
    for row, ids in zip(hf[:, T:].tolist(), g.token_ids, strict=True):
        cut = row.index(proc.eos_token_id) if proc.eos_token_id in row else len(row)
        assert ids == row[:cut]


def test_stops_at_eos_on_the_tiny_model(hooked, proc):
    """A hook forcing EOS after two new tokens: generation stops there and the text has two tokens."""
    batch = proc.build(random_studies(2, seed=4), with_report=False)
    T, eos = batch.input_ids.shape[1], proc.eos_token_id
    W_U = hooked.W_U  # [d_model, d_vocab]

    def force_eos(resid, hook):
        if hooked.position_offset >= T + 1:  # the third new token onwards
            resid = resid + 1e4 * W_U[:, eos] / W_U[:, eos].norm()
        return resid

    hook = f"blocks.{hooked.cfg.n_layers - 1}.hook_resid_post"
    g = generate_reports(hooked, proc, batch, max_new_tokens=8, fwd_hooks=[(hook, force_eos)])
    assert all(len(ids) == 2 for ids in g.token_ids)
    assert (g.output_ids[:, T + 2] == eos).all()


def test_hooks_need_a_hooked_model(hooked, proc):
    batch = proc.build(random_studies(1), with_report=False)
    with pytest.raises(TypeError, match="HookedMaira2"):
        generate_reports(hooked.model, proc, batch, max_new_tokens=2, fwd_hooks=[("x", lambda t, hook: t)])
