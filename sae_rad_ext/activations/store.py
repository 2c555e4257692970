"""``StudyActivationsStore``: a SAELens ``ActivationsStore`` whose activations come from image+text studies.

It overrides only what SAELens's runner, trainer and evals call: ``get_raw_llm_batch`` (one batch of
studies -> hook activations at the selected positions; the stock mixing buffer, epoch handling and
``__next__`` are inherited), ``get_batch_tokens`` / ``reset_input_dataset`` (eval batches, see
:class:`sae_rad_ext.training.runner.StudyBatchModel`) and the checkpoint state (studies consumed, so
``resume_from_checkpoint`` fast-forwards the study stream). With ``cached_activations_path`` it reads an
:mod:`sae_rad_ext.activations.cache` folder through SAELens's own cached-activations reader.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens import logger
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.util import str_to_dtype
from safetensors.torch import load_file

from sae_rad_ext.activations.extract import (
    RoleNormStats,
    activations_from_batch,
    default_processor,
    model_device,
)
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Batch, Maira2Processor
from sae_rad_ext.adapters.roles import Selection
from sae_rad_ext.data.study import Study
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, ProgressEvent

__all__ = ["EVAL_MASK_TOKEN", "StudyActivationsStore", "StudySource", "study_factory"]

StudySource = Callable[[], Iterable[Study]] | Iterable[Study] | str | Path
"""Studies: a zero-argument factory returning a fresh iterable (preferred: one call per epoch), a
re-iterable collection (list, tuple), or a source accepted by ``sae_rad_ext.data.readers.open_studies``."""

EVAL_MASK_TOKEN = -1
"""Token id that eval batches carry at positions outside the selection (listed as an excluded token)."""


def study_factory(studies: StudySource) -> Callable[[], Iterable[Study]]:
    """Turn any :data:`StudySource` into a zero-argument factory giving a fresh iterable each call."""
    if callable(studies):
        return studies
    if isinstance(studies, (str, Path)):
        from sae_rad_ext.data.readers import open_studies

        return lambda: open_studies(studies)
    if isinstance(studies, Iterator):
        raise TypeError(
            "studies is a one-shot iterator; training runs several epochs and evals need a second stream. "
            "Pass a factory instead, e.g. `lambda: generate_studies(64, seed=0)`, or a list."
        )
    return lambda: studies


class StudyActivationsStore(ActivationsStore):
    """An ``ActivationsStore`` whose activations come from study batches (images + prompt + report).

    Each LLM batch is ``store_batch_size_prompts`` studies; it yields the hook activations at the selected
    positions only (a variable number of rows). ``context_size`` is the nominal number of positions per
    study used to size the mixing buffer (``n_batches_in_buffer * context_size`` rows) and to report eval
    token counts. The study stream cycles (a fresh iterable from the factory per epoch).
    """

    def __init__(
        self,
        model: HookedMaira2,
        studies: StudySource,
        *,
        hook_name: str,
        d_in: int,
        context_size: int,
        n_batches_in_buffer: int,
        total_training_tokens: int,
        store_batch_size_prompts: int,
        train_batch_size_tokens: int,
        normalize_activations: str = "none",
        device: torch.device | str = "cpu",
        dtype: str = "float32",
        positions: Selection = "all",
        processor: Maira2Processor | None = None,
        with_report: bool = True,
        task: str = "findings",
        eval_studies: StudySource | None = None,
        exclude_token_ids: list[int] | None = None,
        activations_mixing_fraction: float = 0.5,
        autocast_lm: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        cached_activations_path: str | None = None,
    ) -> None:
        # Deliberately not calling ActivationsStore.__init__: it loads a token dataset. These are the
        # attributes SAELens 6.x's store methods, runner and evals read.
        self.model = model
        self.model_kwargs = model_kwargs or {}
        self.dataset = None
        self.hook_name = hook_name
        self.hook_head_index = None
        self.context_size = context_size
        self.d_in = d_in
        self.n_batches_in_buffer = n_batches_in_buffer
        self.total_training_tokens = total_training_tokens
        self.store_batch_size_prompts = store_batch_size_prompts
        self.train_batch_size_tokens = train_batch_size_tokens
        self.prepend_bos = False
        self.normalize_activations = normalize_activations
        self.device = torch.device(device)
        self.dtype = str_to_dtype(dtype)
        self.cached_activations_path = cached_activations_path
        self.autocast_lm = autocast_lm
        self.seqpos_slice = (None,)
        self.training_context_size = context_size
        self.disable_concat_sequences = False
        self.sequence_separator_token = None
        self.activations_mixing_fraction = activations_mixing_fraction
        self.use_chat_formatting = False
        self._hook_head_indices = {}
        self._dataloader = None
        self.exclude_special_tokens = torch.tensor(
            sorted({EVAL_MASK_TOKEN, *(exclude_token_ids or [])}), dtype=torch.long, device=self.device
        )
        # ours
        self.positions = positions
        self.processor = processor if processor is not None else default_processor(model)
        self.with_report = with_report
        self.task = task
        self.studies = study_factory(studies)
        self.eval_studies = study_factory(eval_studies) if eval_studies is not None else self.studies
        self.norm_stats = RoleNormStats()
        self.n_dataset_processed = 0  # studies consumed by training (all epochs)
        self.n_epochs = 0
        self._train_iter: Iterator[list[Study]] | None = None
        self._eval_iter: Iterator[list[Study]] | None = None
        self._eval_batches: dict[int, tuple[torch.Tensor, Maira2Batch]] = {}
        self.on_progress: ProgressCallback | None = None
        """Optional progress callback: stage ``"llm"`` counts positions the model produced, ``"train"``
        activations served to the trainer (both cumulative, no totals)."""
        self._served = {"llm": 0, "train": 0}
        self.cached_activation_dataset = self.load_cached_activation_dataset()

    # ---- construction from a runner config ---------------------------------------------------
    @classmethod
    def from_runner_config(
        cls,
        model: HookedMaira2,
        cfg: LanguageModelSAERunnerConfig[Any],
        studies: StudySource,
        **kwargs: Any,
    ) -> StudyActivationsStore:
        exclude = cfg.exclude_special_tokens
        if exclude is True:
            warnings.warn(
                "exclude_special_tokens=True is ignored: padding and BOS/special positions never enter "
                "(the position selection excludes them by role); pass a list of ids to drop other tokens.",
                stacklevel=2,
            )
        return cls(
            model,
            studies,
            hook_name=cfg.hook_name,
            d_in=cfg.sae.d_in,
            context_size=cfg.context_size,
            n_batches_in_buffer=cfg.n_batches_in_buffer,
            total_training_tokens=cfg.training_tokens,
            store_batch_size_prompts=cfg.store_batch_size_prompts,
            train_batch_size_tokens=cfg.train_batch_size_tokens,
            normalize_activations=cfg.sae.normalize_activations,
            device=cfg.act_store_device or cfg.device,
            dtype=cfg.dtype,
            exclude_token_ids=list(exclude) if isinstance(exclude, list) else None,
            activations_mixing_fraction=cfg.activations_mixing_fraction,
            autocast_lm=cfg.autocast_lm,
            model_kwargs=cfg.model_kwargs,
            cached_activations_path=cfg.cached_activations_path if cfg.use_cached_activations else None,
            **kwargs,
        )

    # ---- training stream ---------------------------------------------------------------------
    def _new_train_iter(self) -> Iterator[list[Study]]:
        return batched(self.studies(), self.store_batch_size_prompts)

    def _next_train_chunk(self, raise_on_epoch_end: bool) -> list[Study]:
        if self._train_iter is None:
            self._train_iter = self._new_train_iter()
        try:
            return next(self._train_iter)
        except StopIteration:
            self._train_iter = self._new_train_iter()
            self.n_epochs += 1
            if raise_on_epoch_end:
                raise StopIteration(
                    f"studies exhausted after {self.n_dataset_processed} studies; beginning the next epoch"
                ) from None
            try:
                return next(self._train_iter)
            except StopIteration:
                raise ValueError("the study source yielded no studies") from None

    def _activations(self, chunk: list[Study]):
        batch = self.processor.build(chunk, task=self.task, with_report=self.with_report)
        with torch.autocast(
            device_type=model_device(self.model).type, dtype=torch.bfloat16, enabled=self.autocast_lm
        ):
            return activations_from_batch(
                self.model,
                batch,
                self.hook_name,
                self.positions,
                device=self.device,
                dtype=self.dtype,
                model_kwargs=self.model_kwargs,
            )

    @torch.no_grad()
    def get_raw_llm_batch(self, raise_on_epoch_end: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(acts [n_selected, d_in], token_ids [n_selected])`` of the next ``store_batch_size_prompts`` studies."""
        if self.cached_activation_dataset is not None:
            acts, tokens = self._load_raw_llm_batch_from_cached(raise_on_epoch_end)
            self._report("llm", int(acts.shape[0]))
            return acts, tokens
        chunk = self._next_train_chunk(raise_on_epoch_end)
        out = self._activations(chunk)
        self.n_dataset_processed += len(chunk)
        self.norm_stats.update_batch(out)
        self._report("llm", len(out))
        if out.acts.shape[-1] != self.d_in:
            raise ValueError(
                f"hook {self.hook_name!r} has width {out.acts.shape[-1]} but the SAE's d_in is {self.d_in}"
            )
        return out.acts, out.token_id.to(self.device)

    def __next__(self) -> torch.Tensor:
        batch = super().__next__()
        self._report("train", int(batch.shape[0]))
        return batch

    def _report(self, stage: str, n: int) -> None:
        self._served[stage] += n
        if self.on_progress is not None:
            self.on_progress(ProgressEvent(stage, self._served[stage]))

    # ---- eval stream (SAELens's run_evals calls get_batch_tokens, then the model) -------------
    def get_batch_tokens(
        self,
        batch_size: int | None = None,
        raise_at_epoch_end: bool = False,
        move_to_model_device: bool = True,
    ) -> torch.Tensor:
        """Token ids of the next eval batch of studies, :data:`EVAL_MASK_TOKEN` outside the selection.

        The batch (images, attention mask, real ids) is remembered so :class:`StudyBatchModel` can run it.
        """
        n = batch_size or self.store_batch_size_prompts
        if self._eval_iter is None:
            self._eval_iter = batched(self.eval_studies(), n)
        try:
            chunk = next(self._eval_iter)
        except StopIteration:
            self._eval_iter = batched(self.eval_studies(), n)
            if raise_at_epoch_end:
                raise
            chunk = next(self._eval_iter)
        batch = self.processor.build(chunk, task=self.task, with_report=self.with_report)
        keep = batch.roles.mask(self.positions)
        tokens = torch.where(keep, batch.input_ids, torch.full_like(batch.input_ids, EVAL_MASK_TOKEN))
        if move_to_model_device:
            tokens = tokens.to(model_device(self.model))
        self._eval_batches = {id(tokens): (tokens, batch)}  # only the latest batch is kept
        return tokens

    def eval_batch_for(self, tokens: torch.Tensor) -> Maira2Batch:
        entry = self._eval_batches.get(id(tokens))
        if entry is None or entry[0] is not tokens:
            raise ValueError(
                "StudyBatchModel got a token tensor that is not the latest eval batch from "
                "StudyActivationsStore.get_batch_tokens(); image+text batches can only be run from there"
            )
        return entry[1]

    def reset_input_dataset(self) -> None:
        """Restart the eval stream at its first study."""
        self._eval_iter = None

    def shuffle_input_dataset(self, seed: int, buffer_size: int = 1) -> None:  # noqa: ARG002
        raise NotImplementedError("study streams are not shuffled by the store; shuffle the study source")

    # ---- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"n_dataset_processed": torch.tensor(self.n_dataset_processed)}

    def load(self, file_path: str) -> None:
        """Fast-forward the study stream (without running the model) to the checkpoint's position."""
        state = load_file(file_path)
        target = int(state["n_dataset_processed"].item()) if "n_dataset_processed" in state else 0
        if self.cached_activation_dataset is not None or target <= self.n_dataset_processed:
            return
        logger.info(f"fast-forwarding the study stream by {target - self.n_dataset_processed} studies")
        while self.n_dataset_processed < target:
            chunk = self._next_train_chunk(raise_on_epoch_end=False)
            self.n_dataset_processed += len(chunk)
