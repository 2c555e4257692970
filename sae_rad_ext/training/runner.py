"""Train SAELens SAEs on image+text activations with the stock SAELens runner.

``make_runner(cfg, model, studies, positions="maira2_sae_paper").run()`` trains through SAELens's
``LanguageModelSAETrainingRunner``: its trainer, mixing buffer, activation normalisation
(``normalize_activations``), wandb logging, checkpoints, resume and evals are SAELens's own. Only the
activation source changes:

- :class:`~sae_rad_ext.activations.store.StudyActivationsStore` (in :mod:`sae_rad_ext.activations.store`) subclasses ``ActivationsStore`` and overrides the narrow places the
  runner, trainer and evals call: ``get_raw_llm_batch`` (study batch -> hook activations at the selected
  positions), ``get_batch_tokens`` / ``reset_input_dataset`` (eval batches) and the checkpoint state
  (how many studies were consumed, so ``resume_from_checkpoint`` fast-forwards the study stream).
- :class:`StudySAETrainingRunner` subclasses the runner to build that store and to point SAELens's
  evaluator at :class:`StudyBatchModel`, which feeds each eval batch's images to the model; positions
  outside the selection are masked for the evals exactly as SAELens masks excluded special tokens.
- With ``cfg.use_cached_activations=True`` the store reads an activation cache written by
  :mod:`sae_rad_ext.activations.cache` through SAELens's own cached-activations reader.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, LLMSaeEvaluator
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

from sae_rad_ext.activations.extract import RoleNormStats, describe_positions, model_device
from sae_rad_ext.activations.store import EVAL_MASK_TOKEN, StudyActivationsStore, StudySource
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import Selection
from sae_rad_ext.util.batching import batched

__all__ = [
    "EVAL_MASK_TOKEN",
    "StudyActivationsStore",
    "StudyBatchModel",
    "StudySAETrainingRunner",
    "make_runner",
    "use_fused_adam",
]

OPTIMIZERS = ("fused_adam", "stock")
"""``make_runner(optimizer=...)``: ``"fused_adam"`` (default) swaps SAELens's ``Adam`` for the same Adam with
``fused=True`` (see :func:`use_fused_adam`); ``"stock"`` keeps the trainer's optimizer untouched."""


def use_fused_adam(trainer: Any) -> bool:
    """Give a SAELens ``SAETrainer`` the same Adam with ``fused=True``: one pass per tensor and no
    temporaries, instead of the default single-tensor loop's ~7 full-size passes and 3 fresh allocations
    per parameter (measured in ``benchmarks/bench_training.py``, docs/benchmarks.md). Same update rule, same hyper-parameters: the state (moments,
    ``step``, ``lr``) and the LR scheduler's state are carried over, so it can be called after
    ``load_trainer_state`` (resume) and checkpoints stay loadable by the stock trainer.

    Returns ``True`` when the trainer now has a fused Adam, ``False`` (optimizer left as it was) when
    the optimizer is not a plain ``torch.optim.Adam`` or fused Adam does not support the parameters'
    device / dtype.
    """
    from sae_lens.training.optim import get_lr_scheduler

    old = trainer.optimizer
    if type(old) is not torch.optim.Adam:
        return False
    if all(g.get("fused") for g in old.param_groups):
        return True
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in old.param_groups]
    try:
        new = torch.optim.Adam(groups, fused=True, foreach=False)
    except (RuntimeError, ValueError, TypeError):  # device / dtype fused Adam does not support
        return False
    c = trainer.cfg
    sched = get_lr_scheduler(
        c.lr_scheduler_name,
        lr=c.lr,
        optimizer=new,
        warm_up_steps=c.lr_warm_up_steps,
        decay_steps=c.lr_decay_steps,
        training_steps=c.total_training_steps,
        lr_end=c.lr_end,
        num_cycles=c.n_restart_cycles,
    )
    new.load_state_dict(old.state_dict())  # moments, step, current lr / initial_lr
    for g in new.param_groups:  # load_state_dict copies the saved groups' fused=None back
        g["fused"], g["foreach"] = True, False
    sched.load_state_dict(trainer.lr_scheduler.state_dict())
    trainer.optimizer, trainer.lr_scheduler = new, sched
    return True


class StudyBatchModel:
    """The model as SAELens's evals see it: token tensors from :meth:`StudyActivationsStore.get_batch_tokens`
    are swapped for the remembered batch (real ids, images, attention mask) before the model runs.

    Implements what ``sae_lens.evals`` calls: ``run_with_cache``, ``__call__(tokens, return_type="both",
    loss_per_token=True)`` and ``run_with_hooks``; per-token loss is next-token cross-entropy
    ``[batch, seq-1]`` as in TransformerLens.
    """

    def __init__(self, model: HookedMaira2, store: StudyActivationsStore) -> None:
        self.model = model
        self.store = store
        # a run on cached activations may pass a model-less placeholder (any HookedRootModule)
        hooked = isinstance(model, HookedMaira2)
        self.tokenizer = model.tokenizer if hooked else None
        self.cfg = model.cfg if hooked else None

    def _inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = self.store.eval_batch_for(tokens)
        dev = model_device(self.model)
        kw: dict[str, Any] = {"attention_mask": batch.attention_mask.to(dev)}
        if batch.pixel_values is not None:
            kw["pixel_values"] = batch.pixel_values.to(dev)
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

    def run_with_hooks(
        self, tokens: torch.Tensor, return_type: str | None = "logits", fwd_hooks=(), **kwargs: Any
    ):
        ids, kw = self._inputs(tokens)
        out = self.model.run_with_hooks(ids, fwd_hooks=list(fwd_hooks), **kw, **self._drop(kwargs))
        return self._logits_and_loss(ids, out, return_type)


class StudySAETrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` trained from image+text studies (see :func:`make_runner`)."""

    activations_store: StudyActivationsStore

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        model: HookedMaira2,
        studies: StudySource,
        *,
        positions: Selection = "maira2_sae_paper",
        processor: Maira2Processor | None = None,
        with_report: bool = True,
        eval_studies: StudySource | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        data_description: str | None = None,
        optimizer: str = "fused_adam",
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.optimizer_name = optimizer
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
            from sae_rad_ext.activations.cache import read_cache_info

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
        for chunk in itertools.islice(batched(store.eval_studies(), store.store_batch_size_prompts), 2):
            stats.update_batch(store._activations(chunk))
        return stats.to_dict()

    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        # Called by run() after the trainer is built and any checkpoint state is loaded into it.
        if self.optimizer_name == "fused_adam":
            use_fused_adam(trainer)
        return super().run_trainer_with_interruption_handling(trainer)

    def save_checkpoint(self, checkpoint_path) -> None:
        # SAELens's interruption handler (SIGINT/SIGTERM) calls this for a folder nobody created yet.
        if checkpoint_path is not None:
            Path(checkpoint_path).mkdir(parents=True, exist_ok=True)
        super().save_checkpoint(checkpoint_path)

    def save_final_sae(self, sae: TrainingSAE[Any], output_path: str, log_feature_sparsity=None):
        if self.activations_store.norm_stats.total:
            sae.cfg.metadata.role_norms = self.activations_store.norm_stats.to_dict()
        return super().save_final_sae(sae, output_path, log_feature_sparsity)


def make_runner(
    cfg: LanguageModelSAERunnerConfig[Any],
    model: HookedMaira2,
    studies: StudySource,
    *,
    positions: Selection = "maira2_sae_paper",
    processor: Maira2Processor | None = None,
    with_report: bool = True,
    eval_studies: StudySource | None = None,
    override_sae: TrainingSAE[Any] | None = None,
    model_name: str | None = None,
    data_description: str | None = None,
    optimizer: str = "fused_adam",
) -> StudySAETrainingRunner:
    """A SAELens training runner whose activations come from image+text studies.

    ``cfg`` is a plain ``LanguageModelSAERunnerConfig`` (``hook_name``, ``sae``, ``training_tokens``,
    ``train_batch_size_tokens``, ``store_batch_size_prompts`` = studies per LLM batch, ``context_size`` =
    nominal positions per study for buffer sizing, ``normalize_activations`` on the SAE config, logging,
    checkpoints, ``resume_from_checkpoint``, ``use_cached_activations`` …). ``cfg.dataset_path`` is not
    read. ``model_name`` (default: ``model.cfg.model_name``) names the model in the SAE's metadata.
    ``optimizer="fused_adam"`` (default) runs SAELens's Adam with ``fused=True`` (same update, fewer passes over the
    weights, :func:`use_fused_adam`); ``"stock"`` keeps the trainer's own Adam.
    """
    name = model_name or (model.cfg.model_name if isinstance(model, HookedMaira2) else None)
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
        optimizer=optimizer,
    )
