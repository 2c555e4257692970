"""``sae-rad map``: knowledge maps (probes, UMAP, lesioning, patching, saliency) and a recommended layer."""

from __future__ import annotations

from pathlib import Path

import typer

from sae_rad_ext.cli.app import app
from sae_rad_ext.cli.loaders import load_model_for_command, studies_for_command


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ".." in part or (part.count("-") == 1 and not part.startswith("-")):
                a, b = part.split(".." if ".." in part else "-")
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise typer.BadParameter(
                f"{what}: expected integers like '-1,0,3' or '0-5'; got {text!r}"
            ) from None
    return out


def _views(text: str) -> dict[str, float]:
    out = {"lateral": 0.5, "prior": 0.3}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, val = part.partition("=")
        try:
            if key not in out:
                raise ValueError
            out[key] = float(val)
        except ValueError:
            raise typer.BadParameter(f"--pair-views: expected 'lateral=P,prior=P'; got {text!r}") from None
    return out


@app.command("map")
def map_command(
    studies: str = typer.Option(
        ..., "--studies", help="Study source (folder, manifest, …) or phantom:N[,seed=S]."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (PNGs, knowledge_maps.json, recommendation.txt)."
    ),
    model: str = typer.Option(
        "tiny", "--model", help="'tiny' (untrained, for a smoke run) or a MAIRA-2 folder."
    ),
    layers: str = typer.Option(
        None, "--layers", help="Layers, e.g. '-1,0-5' (-1 = embeddings); default all."
    ),
    techniques: str = typer.Option(
        "probe,lesion,patch,saliency",
        "--techniques",
        help="Comma list of probe, umap, lesion, patch, saliency.",
    ),
    limit: int = typer.Option(None, "--limit", help="Use at most this many studies."),
    findings: str = typer.Option(
        None, "--findings", help="Comma list of findings to patch / saliency-map; default all."
    ),
    n_pairs: int = typer.Option(8, "--pairs", help="Phantom pairs per finding for patching."),
    pair_views: str = typer.Option(
        "lateral=0.5,prior=0.3",
        "--pair-views",
        help="Share of patching pairs with a lateral / prior image ('lateral=0,prior=0' for frontal-only models).",
    ),
    lesion_modes: str = typer.Option("skip,mean", "--lesion-modes", help="Comma list of skip, mean."),
    lesion_windows: str = typer.Option(
        "2", "--lesion-windows", help="Window widths besides single blocks ('' none)."
    ),
    saliency_studies: int = typer.Option(32, "--saliency-studies", help="Studies in the saliency objective."),
    lesion_studies: int = typer.Option(48, "--lesion-studies", help="Studies generated per lesion."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Generation length for lesioning."),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Map where findings live in the model and recommend a layer for an SAE."""
    import torch
    from rich.console import Console

    from sae_rad_ext.maps.knowledge_maps import TECHNIQUES, MapConfig, build_knowledge_maps
    from sae_rad_ext.util.progress import RichProgress

    console = Console()
    tech = [t.strip() for t in techniques.split(",") if t.strip()]
    bad = sorted(set(tech) - set(TECHNIQUES))
    if bad:
        raise typer.BadParameter(
            f"--techniques: unknown {bad}; expected a comma list of {', '.join(TECHNIQUES)}"
        )
    modes = [m.strip() for m in lesion_modes.split(",") if m.strip()]
    if set(modes) - {"skip", "mean"}:
        raise typer.BadParameter(f"--lesion-modes: expected a comma list of skip, mean; got {lesion_modes!r}")
    try:
        cfg = MapConfig(
            layers=_parse_ints(layers, "--layers"),
            techniques=tech,
            batch_size=batch_size,
            seed=seed,
            n_pairs=n_pairs,
            pair_lateral_prob=_views(pair_views)["lateral"],
            pair_prior_prob=_views(pair_views)["prior"],
            lesion_studies=lesion_studies,
            max_new_tokens=max_new_tokens,
            lesion_modes=modes,
            lesion_windows=_parse_ints(lesion_windows, "--lesion-windows") or [],
            saliency_studies=saliency_studies,
            **({"findings": [f.strip() for f in findings.split(",") if f.strip()]} if findings else {}),
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    torch.manual_seed(seed)
    hooked = load_model_for_command(model, device, seed=seed)
    source = studies_for_command(
        studies, limit=limit, on_error="skip", phantom_defaults={"image_size": int(hooked.cfg.image_size[0])}
    )
    data = list(source())
    console.print(
        f"[bold]sae-rad map[/]: {len(data)} studies, model {hooked.cfg.model_name} "
        f"({hooked.cfg.n_layers} layers), techniques {', '.join(tech)}"
    )
    with RichProgress(console=console, description_width=12) as bars:
        maps = build_knowledge_maps(hooked, data, out, cfg, progress=bars)
    console.print(maps.recommendation.summary())
    console.print(
        f"wrote {out / 'knowledge_maps.json'} and {len(maps.files) - 1} plot(s): {', '.join(maps.files)}"
    )
