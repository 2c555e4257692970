"""Token roles: what every position of a MAIRA-2 / LLaVA batch is.

A batch built by the prompt builder carries a :class:`TokenRoles` aligned with ``input_ids`` — one
entry per position — so later code selects activations by meaning ("report tokens", "frontal image
patches", "the indication section") rather than by index arithmetic.

Selections are strings (``"all"``, ``"text"``, ``"report"``, ``"image"``, ``"image:frontal"``,
``"prompt"``, ``"section:indication"``, combined with ``+``, e.g. ``"report+image:frontal"``), named
presets (see :data:`PRESETS`) or a callable ``(TokenRoles) -> bool tensor``. Padding and BOS/special
positions are never selected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import torch


class Role(IntEnum):
    """Role of one token position (stored as ``int8`` codes in :class:`TokenRoles.role`)."""

    PAD = 0
    SPECIAL = 1  # BOS / EOS / other special tokens that are not image placeholders
    IMAGE = 2  # an image patch (see image_slot / patch_row / patch_col)
    INSTRUCTION = 3  # prompt boilerplate ("Given the current frontal image", the request, ...)
    INDICATION = 4
    TECHNIQUE = 5
    COMPARISON = 6
    PRIOR_REPORT = 7
    REPORT = 8  # report text: teacher-forced target or generated
    PHRASE = 9  # the finding to ground in a phrase-grounding prompt ("Finding: <phrase>")


class ImageSlot(IntEnum):
    """Which image an image position belongs to (MAIRA-2's order)."""

    NONE = -1
    FRONTAL = 0  # current frontal
    LATERAL = 1  # current lateral
    PRIOR = 2  # prior frontal


PROMPT_ROLES = (
    Role.INSTRUCTION, Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON, Role.PRIOR_REPORT, Role.PHRASE,
)
TEXT_ROLES = (*PROMPT_ROLES, Role.REPORT)
SECTION_NAMES = {
    "instruction": Role.INSTRUCTION,
    "indication": Role.INDICATION,
    "technique": Role.TECHNIQUE,
    "comparison": Role.COMPARISON,
    "prior_report": Role.PRIOR_REPORT,
    "report": Role.REPORT,
    "phrase": Role.PHRASE,
}
SLOT_NAMES = {"frontal": ImageSlot.FRONTAL, "lateral": ImageSlot.LATERAL, "prior": ImageSlot.PRIOR}


@dataclass
class TokenRoles:
    """Per-position roles for a batch, aligned with ``input_ids`` ``[batch, seq]``.

    All tensors are ``[batch, seq]``.
    """

    role: torch.Tensor
    """``int8`` :class:`Role` code of each position."""
    image_slot: torch.Tensor
    """``int8`` :class:`ImageSlot` of image positions, -1 elsewhere."""
    patch_row: torch.Tensor
    """``int16`` patch-grid row of image positions, -1 elsewhere."""
    patch_col: torch.Tensor
    """``int16`` patch-grid column of image positions, -1 elsewhere."""

    def __post_init__(self) -> None:
        shapes = {t.shape for t in (self.role, self.image_slot, self.patch_row, self.patch_col)}
        if len(shapes) != 1 or self.role.dim() != 2:
            raise ValueError(
                "TokenRoles tensors must all be [batch, seq] with the same shape; got "
                f"role {tuple(self.role.shape)}, image_slot {tuple(self.image_slot.shape)}, "
                f"patch_row {tuple(self.patch_row.shape)}, patch_col {tuple(self.patch_col.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        return self.role.shape

    def to(self, device: torch.device | str) -> TokenRoles:
        return TokenRoles(*(t.to(device) for t in self.as_tuple()))

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.role, self.image_slot, self.patch_row, self.patch_col)

    def __getitem__(self, idx: object) -> TokenRoles:
        """Index the batch dimension (or both), e.g. ``roles[0:2]`` or ``roles[:, :10]``."""
        parts = [t[idx] for t in self.as_tuple()]  # type: ignore[index]
        if parts[0].dim() == 1:
            parts = [p.unsqueeze(0) for p in parts]
        return TokenRoles(*parts)

    @staticmethod
    def cat(items: list[TokenRoles], pad_to: int | None = None, left: bool = False) -> TokenRoles:
        """Concatenate along the batch dimension, padding sequences (role PAD, -1 elsewhere)."""
        seq = pad_to or max(r.shape[1] for r in items)
        out = []
        for i, fill in enumerate((int(Role.PAD), -1, -1, -1)):
            padded = []
            for r in items:
                t = r.as_tuple()[i]
                extra = seq - t.shape[1]
                if extra < 0:
                    raise ValueError(f"cannot pad a sequence of {t.shape[1]} positions to {seq}")
                pad = torch.full((t.shape[0], extra), fill, dtype=t.dtype, device=t.device)
                padded.append(torch.cat([pad, t] if left else [t, pad], dim=1))
            out.append(torch.cat(padded, dim=0))
        return TokenRoles(*out)

    # ---- selection -------------------------------------------------------------------------
    def mask(self, selection: Selection) -> torch.Tensor:
        """Boolean ``[batch, seq]`` mask of the positions a selection keeps (never PAD or SPECIAL)."""
        if callable(selection):
            m = selection(self)
            if not isinstance(m, torch.Tensor) or m.shape != self.shape or m.dtype != torch.bool:
                raise ValueError(
                    f"a position-selection callable must return a bool tensor of shape {tuple(self.shape)}; "
                    f"got {type(m).__name__} {getattr(m, 'shape', '')} {getattr(m, 'dtype', '')}"
                )
        else:
            m = torch.zeros(self.shape, dtype=torch.bool, device=self.role.device)
            for part in _expand(selection).split("+"):
                m |= self._mask_one(part.strip())
        return m & (self.role != Role.PAD) & (self.role != Role.SPECIAL)

    def _mask_one(self, part: str) -> torch.Tensor:
        r = self.role
        if part == "all":
            return torch.ones_like(r, dtype=torch.bool)
        if part == "text":
            return _isin(r, TEXT_ROLES)
        if part == "prompt":
            return _isin(r, PROMPT_ROLES)
        if part == "image":
            return r == Role.IMAGE
        if part in SECTION_NAMES:
            return r == SECTION_NAMES[part]
        if part.startswith("section:") and part[8:] in SECTION_NAMES:
            return r == SECTION_NAMES[part[8:]]
        if part.startswith("image:") and part[6:] in SLOT_NAMES:
            return (r == Role.IMAGE) & (self.image_slot == SLOT_NAMES[part[6:]])
        raise ValueError(
            f"unknown position selection {part!r}; expected one of: all, text, prompt, report, image, "
            f"image:frontal|lateral|prior, section:{'|'.join(SECTION_NAMES)}, a preset "
            f"({', '.join(PRESETS)}), '+'-joined combinations, or a callable(TokenRoles) -> bool tensor"
        )

    def describe(self, b: int, t: int) -> str:
        """Readable token label for position ``t`` of row ``b`` (``<frontal r12 c05>`` for patches)."""
        role = Role(int(self.role[b, t]))
        if role == Role.IMAGE:
            slot = ImageSlot(int(self.image_slot[b, t])).name.lower()
            return f"<{slot} r{int(self.patch_row[b, t]):02d} c{int(self.patch_col[b, t]):02d}>"
        return role.name.lower()


Selection = str | Callable[[TokenRoles], torch.Tensor]

PRESETS: dict[str, str] = {
    # The MAIRA-2 SAE paper's filter (Bouzid et al. 2025, arXiv:2507.12950, Fig. 1A: "we filter out token
    # indices corresponding to intermediate image tokens and boilerplate parts of the prompt"). Our
    # reading: the image-token positions spliced into the middle of the prompt are dropped entirely, and
    # so is the boilerplate (system sentence, requests, section headers); the study-specific prompt
    # values and the report stay. The paper gives no finer rule; see docs/adapters-and-prompts.md.
    "maira2_sae_paper": "indication+technique+comparison+prior_report+phrase+report",
    # The same plus every image patch (for image-conditioned features on the image positions themselves).
    "maira2_sae_paper_with_images": "image+indication+technique+comparison+prior_report+phrase+report",
}


def _expand(selection: str) -> str:
    return "+".join(PRESETS.get(p.strip(), p.strip()) for p in selection.split("+"))


def _isin(r: torch.Tensor, roles: tuple[Role, ...]) -> torch.Tensor:
    return torch.isin(r, torch.tensor([int(x) for x in roles], dtype=r.dtype, device=r.device))
