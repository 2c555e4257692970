"""``sae-rad export``: SAELens release folder, Neuronpedia files, static dashboard, optional upload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sae_rad_ext.cli.app import app
from sae_rad_ext.cli.loaders import load_sae_for_command
from sae_rad_ext.errors import BadInputError

if TYPE_CHECKING:
    import torch


def _load_tensor(path: Path) -> torch.Tensor:
    """The ``[N, d_in]`` activations in ``path`` (.safetensors / .npy / torch.save; a dict's
    ``activations`` entry, else its first); :class:`BadInputError` naming the file when unreadable."""
    import numpy as np
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            t = load_file(str(path))
            return t.get("activations", next(iter(t.values())))
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path))
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any reader failure means the file is not what the option needs)
        raise BadInputError(
            f"--eval-activations {path}: cannot read activations ({type(e).__name__}: {e}); expected a "
            ".safetensors, .npy or torch.save file holding an [N, d_in] tensor"
        ) from e
    if isinstance(t, dict):
        t = t.get("activations", next(iter(t.values())))
    return t


@app.command("export")
def export(
    sae: Path = typer.Option(..., "--sae", exists=True, file_okay=False, help="SAE folder (SAELens cfg.json + weights, or maira-2-sae ae.pt)."),
    out: Path = typer.Option(..., "--out", help="Output folder (release/, neuronpedia/, html/)."),
    interpretation: Path | None = typer.Option(
        None, "--interpretation", exists=True, file_okay=False, help="Interpretation run folder (features.jsonl); weights-only records without it."
    ),
    neuronpedia: bool = typer.Option(False, "--neuronpedia", help="Write Neuronpedia dashboard batches, bulk export and steering vectors."),
    html: bool = typer.Option(False, "--html", help="Write the static HTML dashboard."),
    upload: bool = typer.Option(False, "--upload", help="Upload features to Neuronpedia (needs --api-key or NEURONPEDIA_API_KEY)."),
    release: str | None = typer.Option(None, "--release", help="SAELens release name (default: <model>-<hook>)."),
    sae_id: str | None = typer.Option(None, "--sae-id", help="SAE id inside the release (default: <hook>__<d_sae>)."),
    model_name: str | None = typer.Option(None, "--model-name"),
    hook_name: str | None = typer.Option(None, "--hook-name"),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset the SAE was trained on (cfg.json metadata)."),
    positions: str | None = typer.Option(None, "--positions", help="Position selection used in training, e.g. maira2_sae_paper."),
    neuronpedia_id: str | None = typer.Option(None, "--neuronpedia-id", help="model/layer-set, e.g. maira-2/15-maira2-res-mtk-16k."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="NEURONPEDIA_API_KEY", help="Neuronpedia API key."),
    neuronpedia_url: str | None = typer.Option(None, "--neuronpedia-url", envvar="SAE_RAD_NEURONPEDIA_URL", help="Neuronpedia API base URL."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per upload request."),
    eval_activations: Path | None = typer.Option(
        None, "--eval-activations", exists=True, dir_okay=False,
        help="Activations [N, d_in] (.safetensors/.pt/.npy) to measure explained variance / L0 (per level) for the model card.",
    ),
) -> None:
    """Publish an SAE: a SAELens release folder (always), Neuronpedia files, an HTML dashboard, an upload."""
    import torch

    from sae_rad_ext.publish.release import write_release
    from sae_rad_ext.records import InterpretationRun, records_from_sae

    model = load_sae_for_command(sae)
    md = model.cfg.metadata
    model_name = model_name or md.get("model_name")
    hook_name = hook_name or md.get("hook_name")
    if not model_name or not hook_name:
        raise typer.BadParameter("the SAE's cfg.json lacks model_name/hook_name: pass --model-name and --hook-name")
    md.model_name, md.hook_name = model_name, hook_name
    base = records_from_sae(model, with_vectors=True)
    run = InterpretationRun.load(interpretation).merge(base) if interpretation else base
    run.meta.setdefault("model_name", model_name)
    run.meta.setdefault("hook_name", hook_name)
    for k, v in (("positions", positions), ("dataset", dataset), ("neuronpedia_id", neuronpedia_id)):
        if v:
            run.meta[k] = v
    release = release or f"{model_name}-{hook_name}".replace("/", "-")
    log_sparsity = None
    rates = {r.index: r.frac_nonzero for r in run.records if r.frac_nonzero is not None}
    if len(rates) == model.cfg.d_sae:
        log_sparsity = torch.log10(torch.tensor([rates[i] for i in range(model.cfg.d_sae)]).clamp(min=1e-10))
    metrics = run.meta.get("metrics") or {}
    written = write_release(
        model,
        out / "release",
        release=release,
        sae_id=sae_id,
        model_name=model_name,
        hook_name=hook_name,
        context_size=run.meta.get("context_size"),
        positions=positions or run.meta.get("positions"),
        dataset_path=dataset or run.meta.get("dataset"),
        neuronpedia_id=neuronpedia_id or run.meta.get("neuronpedia_id"),
        log_sparsity=log_sparsity,
        metrics=metrics,
        level_metrics=run.meta.get("level_metrics"),
        training_config=run.meta.get("training_config"),
        eval_activations=_load_tensor(eval_activations) if eval_activations else None,
    )
    run.meta.update({"release": release, "sae_id": written.sae_id})
    typer.echo(f"SAELens release: {out / 'release'} (SAE.from_pretrained({release!r}, {written.sae_id!r}) after register_release)")
    settings = None
    if neuronpedia or upload:
        from sae_rad_ext.publish.neuronpedia import NeuronpediaSettings, write_neuronpedia

        settings = NeuronpediaSettings.from_run(run)
        res = write_neuronpedia(run, out / "neuronpedia", settings)
        typer.echo(f"Neuronpedia: {len(res['dashboard'])} dashboard batch(es), bulk export {res['export']}")
    if html:
        from sae_rad_ext.publish.html import build_site

        typer.echo(f"HTML dashboard: {build_site(run, out / 'html')}")
    if upload:
        from sae_rad_ext.publish.upload import UploadError, resolve_api_key
        from sae_rad_ext.publish.upload import upload as do_upload

        if not resolve_api_key(api_key):
            typer.echo("No Neuronpedia API key (--api-key / NEURONPEDIA_API_KEY): files written, nothing uploaded.")
            return
        try:
            result = do_upload(run, settings, api_key=api_key, base_url=neuronpedia_url, timeout=timeout)
        except UploadError as e:
            typer.echo(f"upload failed: {e}", err=True)
            raise typer.Exit(2) from e
        typer.echo(json.dumps({"uploaded_features": result.features, "batches": result.batches, "to": result.base_url}))
