"""MAIRA-2's prompts as token batches with a role for every position.

The wording (MAIRA-2's ``processing_maira2.py``, reproduced in :mod:`~sae_rad_ext.adapters.wording`) is
wrapped in a chat turn and tokenized with a role for every position.

The chat wrapper is Vicuna-v1 style — ``<s>{SYSTEM_PROMPT} USER: {user turn} ASSISTANT:`` and, when
teacher-forcing, `` {report}</s>``. The system sentence is MAIRA-2's; the exact spacing of the
checkpoint's jinja chat template could not be read from a public source here, so it is a class attribute
(:attr:`Maira2Processor.chat_wrapper`) that a caller can set to match a checkpoint's template.

Tokenization: the prompt is assembled from (text, role) segments; by default the whole text is tokenized
once (what MAIRA-2's processor does, so ids match the checkpoint's training input) and each token gets the
role of the segment holding its first non-space character (offset mapping). Value segments carry their
leading space (``" Cough"``), so for byte-level BPE and SentencePiece tokenizers no token straddles a
role boundary; ``tokenization="segments"`` tokenizes each segment separately instead (identical ids for
the tiny tokenizer and a SentencePiece-style one; tested; tokens that do straddle a boundary are counted
in ``Maira2Processor.straddling_tokens``). Every ``<image>`` becomes ``tokens_per_image`` copies of the image token id.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from sae_rad_ext.adapters.preprocessing import MAIRA2_IMAGE_MEAN, MAIRA2_IMAGE_STD, image_hw, preprocess_image
from sae_rad_ext.adapters.roles import ImageSlot, Role, TokenRoles
from sae_rad_ext.adapters.wording import (  # noqa: F401 - re-exported
    GROUNDING_REQUEST,
    MISSING_SECTION,
    PHRASE_REQUEST,
    REQUEST,
    SYSTEM_PROMPT,
    TASKS,
    Segment,
    Task,
    prompt_segments,
    section_text,
)
from transformers import PretrainedConfig, PreTrainedTokenizerBase


@dataclass
class Maira2Batch:
    """A tokenized batch of studies, ready for ``model(**batch.model_inputs())``."""

    input_ids: torch.Tensor
    """``long [B, T]``; each image is ``tokens_per_image`` copies of the image token id."""
    attention_mask: torch.Tensor
    """``long [B, T]``; 0 on padding."""
    pixel_values: torch.Tensor | None
    """``float [n_images_total, 3, S, S]`` in the order of the image blocks across the flattened batch."""
    roles: TokenRoles
    """Role of every position (aligned with ``input_ids``)."""
    study_ids: list[str]
    images_per_study: list[int]
    prompt_lengths: torch.Tensor
    """``long [B]``: positions before the report starts, in padded coordinates (== T without a report)."""
    task: str = "findings"
    padding_side: str = "left"
    eos_token_id: int | None = None
    pad_token_id: int = 0
    image_token_id: int = -1
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    """``(height, width)`` of each source image, flattened like ``pixel_values`` (for box re-mapping)."""

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Maira2Batch:
        """Move tensors to ``device`` (and cast ``pixel_values`` to ``dtype`` if given)."""
        pv = self.pixel_values
        if pv is not None:
            pv = pv.to(device=device, dtype=dtype or pv.dtype)
        return Maira2Batch(
            self.input_ids.to(device), self.attention_mask.to(device), pv, self.roles.to(device),
            list(self.study_ids), list(self.images_per_study), self.prompt_lengths.to(device), self.task,
            self.padding_side, self.eos_token_id, self.pad_token_id, self.image_token_id,
            list(self.original_sizes),
        )

    @property
    def labels(self) -> torch.Tensor:
        """Teacher-forcing targets: ``input_ids`` on report tokens and the EOS ending them, -100 elsewhere."""
        is_report = self.roles.role == Role.REPORT
        keep = is_report.clone()
        if self.eos_token_id is not None:
            after_report = torch.zeros_like(is_report)
            after_report[:, 1:] = is_report[:, :-1]
            keep |= after_report & (self.input_ids == self.eos_token_id)
        return torch.where(keep, self.input_ids, torch.full_like(self.input_ids, -100))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``pixel_values`` (when there are images) as kwargs."""
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
        return out

    def model_args(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(input_ids, {"attention_mask", "pixel_values"?})`` for a
        :class:`~sae_rad_ext.adapters.hooked.HookedMaira2`, whose first argument is positional:
        ``ids, kw = batch.model_args(); model.run_with_cache(ids, **kw)``."""
        kw = self.model_inputs()
        return kw.pop("input_ids"), kw

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class Maira2Processor:
    """Builds MAIRA-2 prompts (findings, grounded reporting, phrase grounding) with a role table.

    ``tokens_per_image`` defaults to ``(image_size // patch_size) ** 2`` — 1369 for MAIRA-2 at 518 px /
    patch 14 (transformers-5 ``LlavaProcessor`` may count 1368 there; this class never does). Pass
    ``tokens_per_image = grid**2 + 1`` for a LLaVA whose projector keeps the CLS token ("full" strategy):
    the first position of each image then has patch row/col -1.
    """

    chat_wrapper: tuple[str, str, str] = (SYSTEM_PROMPT + " USER: ", " ASSISTANT:", " ")
    """``(before the user turn, after it — the generation prompt, before the report)``."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        image_size: int = 518,
        patch_size: int = 14,
        tokens_per_image: int | None = None,
        image_mean: float | tuple[float, float, float] = MAIRA2_IMAGE_MEAN,
        image_std: float | tuple[float, float, float] = MAIRA2_IMAGE_STD,
        padding_side: str = "left",
        image_token: str | None = None,
        tokenization: Literal["whole", "segments"] = "whole",
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if tokenization not in ("whole", "segments"):
            raise ValueError(f"tokenization must be 'whole' or 'segments', got {tokenization!r}")
        if image_size < patch_size or patch_size < 1:
            raise ValueError(f"image_size ({image_size}) must be ≥ patch_size ({patch_size}) ≥ 1")
        self.tokenizer = tokenizer
        self.image_size, self.patch_size = int(image_size), int(patch_size)
        self.grid = self.image_size // self.patch_size
        self.tokens_per_image = int(tokens_per_image or self.grid**2)
        if self.tokens_per_image not in (self.grid**2, self.grid**2 + 1):
            raise ValueError(
                f"tokens_per_image={self.tokens_per_image} fits neither the {self.grid}×{self.grid} patch grid "
                f"({self.grid**2}) nor grid + CLS ({self.grid**2 + 1})"
            )
        self.image_mean, self.image_std = image_mean, image_std
        self.straddling_tokens = 0
        """Tokens seen so far whose text spans two roles (role taken from the first non-space character)."""
        self.padding_side = padding_side
        self.tokenization = tokenization if getattr(tokenizer, "is_fast", False) else "segments"
        self.image_token = image_token or getattr(tokenizer, "image_token", None) or "<image>"
        ids = tokenizer.convert_tokens_to_ids([self.image_token])
        if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer does not know the image token {self.image_token!r}")
        self.image_token_id = int(ids[0])
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (tokenizer.unk_token_id or self.eos_token_id or 0))
        # a role template per image position (CLS first when tokens_per_image = grid² + 1)
        r = torch.arange(self.grid).repeat_interleave(self.grid)
        c = torch.arange(self.grid).repeat(self.grid)
        if self.tokens_per_image == self.grid**2 + 1:
            r, c = torch.cat([torch.tensor([-1]), r]), torch.cat([torch.tensor([-1]), c])
        self._patch_rc = (r.to(torch.int16), c.to(torch.int16))

    @classmethod
    def from_model_config(cls, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, *,
                          check_image_token: bool = True,
                          **kwargs: Any) -> Maira2Processor:
        """Geometry from a ``Maira2Config`` / ``LlavaConfig`` (``vision_config.image_size|patch_size``; one
        extra CLS position per image when ``vision_feature_select_strategy == "full"``), and a check that
        the tokenizer's image token id is the config's ``image_token_id``."""
        from sae_rad_ext.adapters.maira2 import image_geometry

        if getattr(config, "vision_config", None) is None:
            raise ValueError(
                f"{type(config).__name__} has no vision_config; pass a Maira2Config or LlavaConfig (or build "
                "Maira2Processor(tokenizer, image_size=, patch_size=) directly)"
            )
        geo = image_geometry(config)
        if geo.image_size[0] != geo.image_size[1] or geo.patch_grid[0] != geo.patch_grid[1]:
            raise ValueError(f"only square images are supported; the vision config says {geo.image_size}")
        patch = geo.image_size[0] // geo.patch_grid[0]
        kwargs.setdefault("tokens_per_image", geo.tokens_per_image)
        proc = cls(tokenizer, image_size=geo.image_size[0], patch_size=patch, **kwargs)
        cfg_id = getattr(config, "image_token_id", None)
        if cfg_id is None:
            cfg_id = getattr(config, "image_token_index", None)
        if check_image_token and cfg_id is not None and int(cfg_id) != proc.image_token_id:
            raise ValueError(
                f"config image_token_id={cfg_id} but the tokenizer maps {proc.image_token!r} to "
                f"{proc.image_token_id}; the model would not find its image positions"
            )
        return proc

    # ---- images ------------------------------------------------------------------------------
    def preprocess_image(self, image: Any) -> torch.Tensor:
        """One image (uint8/uint16/float numpy, tensor or PIL; greyscale or RGB) → ``[3, S, S]``."""
        return preprocess_image(image, self.image_size, self.image_mean, self.image_std)

    # ---- text --------------------------------------------------------------------------------
    def segments(self, study: Any, task: Task = "findings", *, phrase: str | None = None,
                 report: str | None = None) -> list[Segment]:
        """Full sequence of one study as segments: wrapper + user turn (+ report); BOS/EOS excluded."""
        head, gen_prompt, before_report = self.chat_wrapper
        seg: list[Segment] = [(head, Role.INSTRUCTION, ImageSlot.NONE)]
        seg += prompt_segments(study, task, phrase)
        seg.append((gen_prompt, Role.INSTRUCTION, ImageSlot.NONE))
        if report is not None:
            seg.append((before_report + report, Role.REPORT, ImageSlot.NONE))
        return seg

    def prompt_text(self, study: Any, task: Task = "findings", *, phrase: str | None = None) -> str:
        """The prompt as one string with a single ``<image>`` per image (MAIRA-2's processor text)."""
        return "".join(t if t is not None else self.image_token for t, _, _ in self.segments(study, task, phrase=phrase))

    def _encode(self, seg: list[Segment]) -> tuple[list[int], list[int], list[int]]:
        """Segments → (ids, roles, slots) with a single image token per image (not yet expanded)."""
        for t, _, _ in seg:
            if t is not None and self.image_token in t:
                raise ValueError(f"prompt text contains the image token {self.image_token!r}: {t[:80]!r}")
        ids: list[int] = []
        roles: list[int] = []
        slots: list[int] = []
        if self.tokenization == "segments":
            for t, role, slot in _merge(seg):
                if t is None:
                    ids.append(self.image_token_id)
                    roles.append(int(Role.IMAGE))
                    slots.append(int(slot))
                elif t:
                    new = self.tokenizer(t, add_special_tokens=False)["input_ids"]
                    ids += new
                    roles += [int(role)] * len(new)
                    slots += [-1] * len(new)
            return ids, roles, slots
        text, starts, image_slots = "", [], []
        for t, _, slot in seg:
            starts.append(len(text))
            text += t if t is not None else self.image_token
            if t is None:
                image_slots.append(int(slot))
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        n_img = 0
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            ids.append(int(tid))
            if tid == self.image_token_id:
                roles.append(int(Role.IMAGE))
                slots.append(image_slots[n_img])
                n_img += 1
                continue
            span = text[a:b]
            first = a + (len(span) - len(span.lstrip())) if span.strip() else a
            k = bisect.bisect_right(starts, first) - 1
            last = bisect.bisect_right(starts, max(a, a + len(span.rstrip()) - 1)) - 1
            if seg[last][1] != seg[k][1]:
                self.straddling_tokens += 1
            roles.append(int(seg[k][1]))
            slots.append(-1)
        if n_img != len(image_slots):
            raise RuntimeError(f"tokenizer produced {n_img} image tokens for {len(image_slots)} images")
        return ids, roles, slots

    def build(
        self,
        studies: Sequence[Any],
        task: Task = "findings",
        *,
        with_report: bool = True,
        phrase: str | Sequence[str] | None = None,
        reports: Sequence[str] | None = None,
        max_length: int | None = None,
        pad_to: int | None = None,
        padding_side: str | None = None,
    ) -> Maira2Batch:
        """Tokenize studies into a :class:`Maira2Batch`.

        ``with_report`` appends the teacher-forced target (``reports[i]`` if given, else
        ``study.report``) + EOS, role REPORT; without it the sequence ends with the generation prompt.
        ``phrase`` (one string or one per study) is required for ``task="phrase_grounding"``, where the
        target must come from ``reports=`` (e.g. ``format_grounded(...)``). ``max_length`` raises if a
        sequence is longer (image tokens cannot be truncated); ``pad_to`` pads every row to that length.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        studies = list(studies)
        if not studies:
            raise ValueError("build() needs at least one study; got an empty batch")
        if reports is not None and len(reports) != len(studies):
            raise ValueError(f"reports has {len(reports)} entries for {len(studies)} studies")
        phrases = [phrase] * len(studies) if phrase is None or isinstance(phrase, str) else list(phrase)
        if len(phrases) != len(studies):
            raise ValueError(f"phrase has {len(phrases)} entries for {len(studies)} studies")

        rows, pixels, sizes, n_images, plens = [], [], [], [], []
        for i, st in enumerate(studies):
            sid = getattr(st, "study_id", f"#{i}")
            if getattr(st, "frontal", None) is None:
                raise ValueError(f"study {sid}: no frontal image — MAIRA-2 prompts always start with one")
            imgs = [st.frontal] if task == "phrase_grounding" else [
                im for im in (st.frontal, st.lateral, st.prior_frontal) if im is not None]
            for im in imgs:
                try:
                    pixels.append(self.preprocess_image(im))
                except (ValueError, TypeError) as e:
                    raise type(e)(f"study {sid}: {e}") from e
                sizes.append(image_hw(im))
            n_images.append(len(imgs))
            report = None
            if with_report:
                report = reports[i] if reports is not None else (None if task == "phrase_grounding" else st.report)
                if report is None:
                    raise ValueError(
                        f"study {sid}: with_report=True but no target — phrase grounding needs reports=[...]"
                    )
            ids, roles, slots = self._encode(self.segments(st, task, phrase=phrases[i], report=report))
            if self.bos_token_id is not None:
                ids, roles, slots = [self.bos_token_id, *ids], [int(Role.SPECIAL), *roles], [-1, *slots]
            if with_report and self.eos_token_id is not None:
                ids, roles, slots = [*ids, self.eos_token_id], [*roles, int(Role.SPECIAL)], [*slots, -1]
            row = self._expand(ids, roles, slots)
            n = row[0].numel()
            if max_length is not None and n > max_length:
                raise ValueError(
                    f"study {sid}: sequence has {n} positions (of which {len(imgs)}×{self.tokens_per_image} "
                    f"image tokens) > max_length={max_length}; image tokens cannot be truncated"
                )
            report_pos = (row[1] == Role.REPORT).nonzero()
            plens.append(int(report_pos[0]) if len(report_pos) else n)
            rows.append(row)
        return self._pad(studies, task, side, rows, pixels, sizes, n_images, plens, pad_to)

    def _expand(self, ids: list[int], roles: list[int], slots: list[int]) -> tuple[torch.Tensor, ...]:
        """Expand each image token to ``tokens_per_image`` positions with slot and patch row/col."""
        P = self.tokens_per_image
        ids_t, roles_t, slots_t = torch.tensor(ids), torch.tensor(roles), torch.tensor(slots)
        reps = torch.where(ids_t == self.image_token_id, P, 1)
        ids_x = ids_t.repeat_interleave(reps)
        roles_x = roles_t.repeat_interleave(reps).to(torch.int8)
        slots_x = slots_t.repeat_interleave(reps).to(torch.int8)
        n_img = int((ids_t == self.image_token_id).sum())
        rows = torch.full_like(ids_x, -1, dtype=torch.int16)
        cols = torch.full_like(ids_x, -1, dtype=torch.int16)
        img = ids_x == self.image_token_id
        rows[img] = self._patch_rc[0].repeat(n_img)
        cols[img] = self._patch_rc[1].repeat(n_img)
        return ids_x, roles_x, slots_x, rows, cols

    def _pad(self, studies, task, side, rows, pixels, sizes, n_images, plens, pad_to) -> Maira2Batch:
        T = max(r[0].numel() for r in rows)
        if pad_to is not None:
            if pad_to < T:
                raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({T} positions)")
            T = pad_to
        fills = (self.pad_token_id, int(Role.PAD), -1, -1, -1)
        out = [torch.full((len(rows), T), f, dtype=rows[0][k].dtype) for k, f in enumerate(fills)]
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, row in enumerate(rows):
            n = row[0].numel()
            sl = slice(T - n, T) if side == "left" else slice(0, n)
            for k in range(5):
                out[k][b, sl] = row[k]
            mask[b, sl] = 1
            if side == "left":
                plens[b] += T - n
            elif plens[b] == n:  # no report: the prompt runs to the end of the row
                plens[b] = T
        return Maira2Batch(
            input_ids=out[0].long(), attention_mask=mask,
            pixel_values=torch.stack(pixels) if pixels else None,
            roles=TokenRoles(out[1], out[2], out[3], out[4]),
            study_ids=[str(getattr(s, "study_id", i)) for i, s in enumerate(studies)],
            images_per_study=n_images, prompt_lengths=torch.tensor(plens, dtype=torch.long), task=task,
            padding_side=side, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
            image_token_id=self.image_token_id, original_sizes=sizes,
        )

    # ---- generated output --------------------------------------------------------------------
    def _new_tokens(self, batch: Maira2Batch, output_ids: torch.Tensor) -> torch.Tensor:
        """The part of ``output_ids`` after the batch's sequence (accepts prompt+new or new only)."""
        T = batch.input_ids.shape[1]
        out = output_ids.to(batch.input_ids.device)
        if out.dim() != 2 or out.shape[0] != len(batch):
            raise ValueError(f"output_ids must be [{len(batch)}, T'], got {tuple(output_ids.shape)}")
        if out.shape[1] >= T and torch.equal(out[:, :T], batch.input_ids):
            return out[:, T:]
        return out

    def decode_generated(self, batch: Maira2Batch, output_ids: torch.Tensor,
                         keep_grounding: bool | None = None) -> list[str]:
        """Generated text per row (up to the first EOS), special tokens stripped.

        Grounding tokens (``<obj> <box> <xN> <yN> …``) are kept when ``keep_grounding`` (default: for the
        grounded tasks), so :func:`~sae_rad_ext.adapters.grounding.parse_grounded` can read the boxes.
        """
        if keep_grounding is None:
            keep_grounding = batch.task != "findings"
        new = self._new_tokens(batch, output_ids)
        drop = {self.pad_token_id, self.image_token_id, self.bos_token_id, self.eos_token_id}
        drop |= set(getattr(self.tokenizer, "all_special_ids", []) or [])
        texts = []
        for row in new.tolist():
            if self.eos_token_id is not None and self.eos_token_id in row:
                row = row[: row.index(self.eos_token_id)]
            toks = self.tokenizer.convert_ids_to_tokens(row)
            keep = []
            for tid, tok in zip(row, toks, strict=True):
                if isinstance(tok, str) and _is_grounding_token(tok):
                    if keep_grounding:
                        keep.append(tid)
                elif tid not in drop:
                    keep.append(tid)
            texts.append(self.tokenizer.decode(keep, skip_special_tokens=False,
                                               clean_up_tokenization_spaces=False).strip())
        return texts

    def roles_for_generated(self, batch: Maira2Batch, output_ids: torch.Tensor) -> TokenRoles:
        """Role table aligned with ``cat(batch.input_ids, new tokens)``: REPORT on generated tokens,
        SPECIAL on the EOS that ends a row, PAD after it."""
        new = self._new_tokens(batch, output_ids)
        role = torch.full(new.shape, int(Role.REPORT), dtype=torch.int8, device=new.device)
        if self.eos_token_id is not None:
            is_eos = new == self.eos_token_id
            ended_before = (is_eos.cumsum(1) - is_eos.long()) > 0
            role[ended_before] = int(Role.PAD)
            role[is_eos & ~ended_before] = int(Role.SPECIAL)
        minus = torch.full(new.shape, -1, device=new.device)
        gen = TokenRoles(role, minus.to(torch.int8), minus.to(torch.int16), minus.to(torch.int16))
        prev = batch.roles.to(new.device)
        return TokenRoles(*(torch.cat([a, b], dim=1) for a, b in zip(prev.as_tuple(), gen.as_tuple(), strict=True)))


def _is_grounding_token(tok: str) -> bool:
    if tok in ("<obj>", "</obj>", "<box>", "</box>"):
        return True
    return len(tok) > 3 and tok[1] in "xy" and tok[2:-1].isdigit()


def _merge(seg: list[Segment]) -> list[Segment]:
    """Join adjacent text segments of the same role (tokenized together in "segments" mode)."""
    out: list[Segment] = []
    for t, role, slot in seg:
        if out and t is not None and out[-1][0] is not None and out[-1][1] == role:
            out[-1] = (out[-1][0] + t, role, slot)
        else:
            out.append((t, role, slot))
    return out
