import torch
from sae_rad_ext.adapters import ImageSlot, Role, TokenRoles, build_tiny_tokenizer


def test_tokenizer_knows_maira2_specials_and_roundtrips():
    tok = build_tiny_tokenizer()
    text = "Small left pleural effusion.<obj>effusion<box><x12><y3><x40><y55></box></obj>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    for special in ["<image>", "<obj>", "</obj>", "<box>", "</box>", "<x0>", "<x99>", "<y99>"]:
        sid = tok.convert_tokens_to_ids(special)
        assert tok(special, add_special_tokens=False)["input_ids"] == [sid]
    assert build_tiny_tokenizer()("same text")["input_ids"] == tok("same text")["input_ids"]


def _roles() -> TokenRoles:
    role = torch.tensor(
        [[Role.PAD, Role.SPECIAL, Role.INSTRUCTION, Role.IMAGE, Role.IMAGE, Role.INDICATION, Role.REPORT]],
        dtype=torch.int8,
    )
    slot = torch.tensor([[-1, -1, -1, ImageSlot.FRONTAL, ImageSlot.LATERAL, -1, -1]], dtype=torch.int8)
    row = torch.tensor([[-1, -1, -1, 0, 0, -1, -1]], dtype=torch.int16)
    return TokenRoles(role, slot, row, row.clone())


def test_role_selection():
    r = _roles()
    assert r.mask("all").tolist() == [[False, False, True, True, True, True, True]]
    assert r.mask("text").tolist() == [[False, False, True, False, False, True, True]]
    assert r.mask("image:lateral").tolist() == [[False, False, False, False, True, False, False]]
    assert r.mask("report+image:frontal").tolist() == [[False, False, False, True, False, False, True]]
    assert r.mask("maira2_sae_paper").tolist() == [[False, False, False, False, False, True, True]]
    assert r.mask("maira2_sae_paper_with_images").tolist() == [[False, False, False, True, True, True, True]]
    assert r.describe(0, 4) == "<lateral r00 c00>"
    try:
        r.mask("imgae")
    except ValueError as e:
        assert "imgae" in str(e) and "image:frontal" in str(e)
    else:
        raise AssertionError("unknown selection must raise")
