"""Training wiring: SAELens's runner on study activations, and the ``sae-rad train`` run config."""

from sae_rad_ext.training.runner import StudyBatchModel, StudySAETrainingRunner, make_runner, use_fused_adam

__all__ = ["StudyBatchModel", "StudySAETrainingRunner", "make_runner", "use_fused_adam"]
