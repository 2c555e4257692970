"""What the commands load from their options: an SAE folder, a model, a study source.

One implementation each, shared by ``sae-rad interpret``, ``steer``, ``export`` and ``map``. Problems a
user can fix raise :mod:`sae_rad_ext.errors` types naming the file or option (the command line prints
them as one ``error:`` line, exit code 2).
"""

from __future__ import annotations

import itertools
import json
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_rad_ext.errors import BadInputError, CheckpointError, ConfigMismatchError

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_rad_ext.adapters.hooked import HookedMaira2
    from sae_rad_ext.data.study import Study

__all__ = [
    "DEFAULT_PHANTOM_STUDIES",
    "check_sae_fits_model",
    "load_model_for_command",
    "load_sae_for_command",
    "studies_for_command",
]

DEFAULT_PHANTOM_STUDIES = 200
"""Phantom studies generated for ``phantom:...`` sources without ``n`` when no limit is given."""

_RELEASE_NAME = "_sae_rad_command_input"
"""The SAELens release name a maira-2-sae ``ae.pt`` folder is registered under to load it."""


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this file is missing, truncated or not what it claims to be"."""
    kinds: list[type[BaseException]] = [OSError, ValueError, KeyError, RuntimeError, EOFError]
    kinds += [json.JSONDecodeError, pickle.UnpicklingError, TypeError]
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency of sae-lens
        pass
    return tuple(kinds)


def load_sae_for_command(path: str | Path, device: str = "cpu") -> SAE[Any]:
    """Load the SAE in folder ``path`` onto ``device``.

    Accepts a SAELens folder (``cfg.json`` + weights, any architecture SAELens or sae-rad-ext registers)
    or a maira-2-sae folder (``ae.pt`` + ``config.json``, loaded through SAELens's pretrained path so the
    result is a :class:`~sae_rad_ext.saes.matryoshka.RadMatryoshkaSAE`). Raises
    :class:`~sae_rad_ext.errors.CheckpointError` naming the folder when it is missing, holds neither
    file, or its files cannot be read (missing weights, truncated or invalid files).
    """
    from sae_lens import SAE

    import sae_rad_ext  # noqa: F401  (registers our architectures)

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            "no such SAE folder; expected a folder holding cfg.json (SAELens) or ae.pt (maira-2-sae format)",
            path=folder,
        )
    try:
        if (folder / "cfg.json").is_file():
            return SAE.load_from_disk(str(folder), device=device)
        if (folder / "ae.pt").is_file():
            from sae_rad_ext.publish.release import register_release

            register_release(_RELEASE_NAME, folder.parent, [folder.name])
            return SAE.from_pretrained(_RELEASE_NAME, folder.name, device=device)
    except _load_errors() as e:
        raise CheckpointError(
            f"could not load the SAE ({type(e).__name__}: {e}); expected a complete SAELens folder (cfg.json + "
            "sae_weights.safetensors) or maira-2-sae folder (ae.pt + config.json); re-save or re-download it",
            path=folder,
        ) from e
    raise CheckpointError(
        "holds neither cfg.json (SAELens) nor ae.pt (maira-2-sae format); pass the folder an SAE was saved to",
        path=folder,
    )


def load_model_for_command(spec: str, device: str = "cpu", *, seed: int = 0) -> HookedMaira2:
    """The hooked model a ``--model`` option names, on ``device``.

    ``"tiny"`` is the random tiny MAIRA-2 architecture (``HookedMaira2.tiny(seed)``, offline); anything
    else must be a MAIRA-2 checkpoint folder (loaded strictly, no remote code). Raises
    :class:`~sae_rad_ext.errors.CheckpointError` naming the folder when it does not exist or cannot be
    loaded.
    """
    from sae_rad_ext.adapters.hooked import HookedMaira2

    if spec == "tiny":
        return HookedMaira2.tiny(seed=seed).to(device)
    folder = Path(spec)
    if not folder.is_dir():
        raise CheckpointError(
            "no such model folder; --model must be 'tiny' or a MAIRA-2 checkpoint folder", path=spec
        )
    try:
        model = HookedMaira2.from_pretrained(str(folder), device=device)
    except _load_errors() as e:
        raise CheckpointError(
            f"could not load a MAIRA-2 checkpoint ({type(e).__name__}: {e}); expected config.json, "
            "weights and tokenizer files of a MAIRA-2 (LLaVA-family) model; re-download or re-save it",
            path=folder,
        ) from e
    return model.to(device)


def check_sae_fits_model(sae: SAE[Any], model: HookedMaira2, option: str = "--model") -> None:
    """Raise :class:`~sae_rad_ext.errors.ConfigMismatchError` unless the SAE's ``d_in`` is the model's
    residual width ``d_model``."""
    d_in, d_model = int(sae.cfg.d_in), int(model.cfg.d_model)
    if d_in != d_model:
        raise ConfigMismatchError(
            f"the SAE reads d_in={d_in} but the model's d_model is {d_model}; pass the model the SAE was "
            f"trained on ({option})"
        )


def _phantom_factory(
    source: str, limit: int | None, defaults: Mapping[str, Any]
) -> Callable[[], Iterable[Study]]:
    from sae_rad_ext.data.phantom.generator import generate_studies, parse_phantom_source

    try:
        kw: dict[str, Any] = {**defaults, **parse_phantom_source(source)}
    except ValueError as e:
        raise BadInputError(f"--studies: {e}") from None
    n = int(kw.pop("n", limit or DEFAULT_PHANTOM_STUDIES))
    n = min(n, limit) if limit else n
    seed = int(kw.pop("seed", 0))
    return lambda: generate_studies(n, seed, **kw)


def studies_for_command(
    source: str,
    *,
    split: str | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    phantom_defaults: Mapping[str, Any] | None = None,
) -> Callable[[], Iterable[Study]]:
    """A zero-argument callable yielding the studies of a ``--studies`` source afresh on each call.

    ``source`` is ``phantom:N[,seed=S][,start=I][,image_size=PX][,lateral_prob=P][,prior_prob=P]`` (phantoms
    generated on the fly; ``phantom_defaults`` fills options the source leaves out; ``N`` defaults to
    ``limit``, else :data:`DEFAULT_PHANTOM_STUDIES`) or anything
    :func:`~sae_rad_ext.data.readers.open_studies` reads (MIMIC-CXR-JPG, a datasets folder, a manifest,
    DICOM, a phantom folder). ``split`` is one split or a comma list (``validate,test``), read in order;
    ``limit`` caps the studies of one pass in total; ``on_error`` goes to the reader (``"skip"`` passes
    over unreadable studies). A bad phantom option or an unusable source raises
    :class:`~sae_rad_ext.errors.BadInputError`.
    """
    if source.startswith("phantom:"):
        return _phantom_factory(source, limit, phantom_defaults or {})
    from sae_rad_ext.data.readers import open_studies

    splits = [s.strip() for s in split.split(",") if s.strip()] if split else [None]
    kw: dict[str, Any] = {"on_error": on_error}
    if limit:
        kw["max_studies"] = limit

    def open_all() -> list[Iterable[Study]]:
        return [open_studies(source, **kw, **({"split": sp} if sp else {})) for sp in splits]

    unused = [open_all()]  # opened now so that an unusable source fails before any model is loaded

    def chained() -> Iterator[Study]:
        every = itertools.chain.from_iterable(unused.pop() if unused else open_all())
        return itertools.islice(every, limit) if limit else every

    return chained
