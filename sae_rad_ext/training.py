"""Train SAELens SAEs on image+text activations with the stock SAELens runner.

``make_runner(cfg, model, studies, positions="maira2_sae_paper").run()`` trains through SAELens's
``LanguageModelSAETrainingRunner``: its trainer, mixing buffer, activation normalisation
(``normalize_activations``), wandb logging, checkpoints, resume and evals are SAELens's own. Only the
activation source changes:

- :class:`StudyActivationsStore` subclasses ``ActivationsStore`` and overrides the narrow places the
  runner, trainer and evals call: ``get_raw_llm_batch`` (study batch -> hook activations at the selected
  positions), ``get_batch_tokens`` / ``reset_input_dataset`` (eval batches) and the checkpoint state
  (how many studies were consumed, so ``resume_from_checkpoint`` fast-forwards the study stream).
- :class:`StudySAETrainingRunner` subclasses the runner to build that store and to point SAELens's
  evaluator at :class:`StudyBatchModel`, which feeds each eval batch's images to the model; positions
  outside the selection are masked for the evals exactly as SAELens masks excluded special tokens.
- With ``cfg.use_cached_activations=True`` the store reads an activation cache written by
  :mod:`sae_rad_ext.cache` through SAELens's own cached-activations reader.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens import logger
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, LLMSaeEvaluator
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.util import str_to_dtype
from safetensors.torch import load_file

from sae_rad_ext.activations import (
    RoleNormStats,
    activations_from_batch,
    batched,
    default_processor,
    describe_positions,
    model_device,
)
from sae_rad_ext.adapters.roles import Selection
from sae_rad_ext.data.study import Study

__all__ = ["EVAL_MASK_TOKEN", "StudyActivationsStore", "StudyBatchModel", "StudySAETrainingRunner", "make_runner"]

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
        model: Any,
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
        processor: Any = None,
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
        self._eval_batches: dict[int, Any] = {}
        self.on_progress: Callable[[str, int], None] | None = None
        """Optional callback: ``("llm", n_positions)`` per model batch, ``("train", n)`` per batch served."""
        self.cached_activation_dataset = self.load_cached_activation_dataset()

    # ---- construction from a runner config ---------------------------------------------------
    @classmethod
    def from_runner_config(
        cls,
        model: Any,
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
            if self.on_progress is not None:
                self.on_progress("llm", int(acts.shape[0]))
            return acts, tokens
        chunk = self._next_train_chunk(raise_on_epoch_end)
        out = self._activations(chunk)
        self.n_dataset_processed += len(chunk)
        self.norm_stats.update_batch(out)
        if self.on_progress is not None:
            self.on_progress("llm", len(out))
        if out.acts.shape[-1] != self.d_in:
            raise ValueError(
                f"hook {self.hook_name!r} has width {out.acts.shape[-1]} but the SAE's d_in is {self.d_in}"
            )
        return out.acts, out.token_id.to(self.device)

    def __next__(self) -> torch.Tensor:
        batch = super().__next__()
        if self.on_progress is not None:
            self.on_progress("train", int(batch.shape[0]))
        return batch

    # ---- eval stream (SAELens's run_evals calls get_batch_tokens, then the model) -------------
    def get_batch_tokens(
        self, batch_size: int | None = None, raise_at_epoch_end: bool = False, move_to_model_device: bool = True
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

    def eval_batch_for(self, tokens: torch.Tensor) -> Any:
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


class StudyBatchModel:
    """The model as SAELens's evals see it: token tensors from :meth:`StudyActivationsStore.get_batch_tokens`
    are swapped for the remembered batch (real ids, images, attention mask) before the model runs.

    Implements what ``sae_lens.evals`` calls: ``run_with_cache``, ``__call__(tokens, return_type="both",
    loss_per_token=True)`` and ``run_with_hooks``; per-token loss is next-token cross-entropy
    ``[batch, seq-1]`` as in TransformerLens.
    """

    def __init__(self, model: Any, store: StudyActivationsStore) -> None:
        self.model = model
        self.store = store
        self.tokenizer = getattr(model, "tokenizer", None)
        self.cfg = getattr(model, "cfg", None)

    def _inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = self.store.eval_batch_for(tokens)
        dev = model_device(self.model)
        kw: dict[str, Any] = {}
        if getattr(batch, "pixel_values", None) is not None:
            kw["pixel_values"] = batch.pixel_values.to(dev)
        if getattr(batch, "attention_mask", None) is not None:
            kw["attention_mask"] = batch.attention_mask.to(dev)
        return batch.input_ids.to(dev), kw

    @staticmethod
    def _drop(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if k not in ("prepend_bos", "return_type", "loss_per_token")}

    def run_with_cache(self, tokens: torch.Tensor, **kwargs: Any):
        ids, kw = self._inputs(tokens)
        return self.model.run_with_cache(ids, **kw, **self._drop(kwargs))

    def _logits_and_loss(self, ids: torch.Tensor, out: Any, return_type: str | None):
        logits = out.logits if hasattr(out, "logits") else out
        if isinstance(logits, tuple):
            logits = logits[0]
        if return_type == "logits":
            return logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        loss = -logp.gather(-1, ids[:, 1:, None].long()).squeeze(-1)  # [batch, seq-1]
        return (logits, loss) if return_type == "both" else loss

    def __call__(self, tokens: torch.Tensor, return_type: str | None = "logits", **kwargs: Any):
        ids, kw = self._inputs(tokens)
        out = self.model(ids, **kw, **self._drop(kwargs))
        return self._logits_and_loss(ids, out, return_type)

    def run_with_hooks(self, tokens: torch.Tensor, return_type: str | None = "logits", fwd_hooks=(), **kwargs: Any):
        ids, kw = self._inputs(tokens)
        out = self.model.run_with_hooks(ids, fwd_hooks=list(fwd_hooks), **kw, **self._drop(kwargs))
        return self._logits_and_loss(ids, out, return_type)


class StudySAETrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` trained from image+text studies (see :func:`make_runner`)."""

    activations_store: StudyActivationsStore

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        model: Any,
        studies: StudySource,
        *,
        positions: Selection = "maira2_sae_paper",
        processor: Any = None,
        with_report: bool = True,
        eval_studies: StudySource | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        data_description: str | None = None,
    ) -> None:
        # Mirrors LanguageModelSAETrainingRunner.__init__ (SAELens 6.54) with the store replaced.
        self.cfg = cfg
        self.model = model
        self._compile_llm_if_needed()
        self.positions = positions
        self.data_description = data_description
        self.activations_store = StudyActivationsStore.from_runner_config(
            self.model,
            cfg,
            studies,
            positions=positions,
            processor=processor,
            with_report=with_report,
            eval_studies=eval_studies,
        )
        if override_sae is not None:
            self.sae = override_sae
        elif cfg.from_pretrained_path is not None:
            self.sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
        else:
            self.sae = TrainingSAE.from_dict(
                TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
            )
        self.sae.to(cfg.device)
        self.evaluator = LLMSaeEvaluator(
            model=StudyBatchModel(self.model, self.activations_store),  # type: ignore[arg-type]
            activations_store=self.activations_store,
            eval_batch_size_prompts=cfg.eval_batch_size_prompts,
            n_eval_batches=cfg.n_eval_batches,
            model_kwargs=cfg.model_kwargs,
        )

    def _set_sae_metadata(self) -> None:
        super()._set_sae_metadata()
        md = self.sae.cfg.metadata
        md.model_class_name = type(self.model).__name__
        md.position_selection = describe_positions(self.positions)
        md.with_report = self.activations_store.with_report
        md.prompt_task = self.activations_store.task
        md.prepend_bos = False  # the prompt builder writes BOS itself
        if self.data_description is not None:
            md.dataset_path = self.data_description
        if self.activations_store.cached_activation_dataset is not None:
            from sae_rad_ext.cache import read_cache_info

            info = read_cache_info(self.cfg.cached_activations_path) or {}
            md.cached_activations_path = self.cfg.cached_activations_path
            md.position_selection = info.get("positions", md.position_selection)
            md.with_report = info.get("with_report", md.with_report)
            md.role_norms = info.get("role_norms")
            if info.get("data"):
                md.dataset_path = info["data"]
        else:
            md.role_norms = self._initial_role_norms()

    def _initial_role_norms(self) -> dict[str, Any]:
        """Per-role norms of the first eval batches (so checkpoints carry them from the start)."""
        stats = RoleNormStats()
        store = self.activations_store
        for chunk in list(batched(store.eval_studies(), store.store_batch_size_prompts))[:2]:
            stats.update_batch(store._activations(chunk))
        return stats.to_dict()

    def save_final_sae(self, sae: TrainingSAE[Any], output_path: str, log_feature_sparsity=None):
        if self.activations_store.norm_stats.total:
            sae.cfg.metadata.role_norms = self.activations_store.norm_stats.to_dict()
        return super().save_final_sae(sae, output_path, log_feature_sparsity)


def make_runner(
    cfg: LanguageModelSAERunnerConfig[Any],
    model: Any,
    studies: StudySource,
    *,
    positions: Selection = "maira2_sae_paper",
    processor: Any = None,
    with_report: bool = True,
    eval_studies: StudySource | None = None,
    override_sae: TrainingSAE[Any] | None = None,
    model_name: str | None = None,
    data_description: str | None = None,
) -> StudySAETrainingRunner:
    """A SAELens training runner whose activations come from image+text studies.

    ``cfg`` is a plain ``LanguageModelSAERunnerConfig`` (``hook_name``, ``sae``, ``training_tokens``,
    ``train_batch_size_tokens``, ``store_batch_size_prompts`` = studies per LLM batch, ``context_size`` =
    nominal positions per study for buffer sizing, ``normalize_activations`` on the SAE config, logging,
    checkpoints, ``resume_from_checkpoint``, ``use_cached_activations`` …). ``cfg.dataset_path`` is not
    read. ``model_name`` (default: ``model.cfg.model_name``) names the model in the SAE's metadata.
    """
    name = model_name or getattr(getattr(model, "cfg", None), "model_name", None)
    if name and cfg.model_name == LanguageModelSAERunnerConfig.model_name:
        cfg.model_name = name
    cfg.model_class_name = type(model).__name__
    return StudySAETrainingRunner(
        cfg,
        model,
        studies,
        positions=positions,
        processor=processor,
        with_report=with_report,
        eval_studies=eval_studies,
        override_sae=override_sae,
        data_description=data_description,
    )
