"""The phantom generator: synthetic chest radiographs with planted findings, their masks and reports.

``generate_studies(n, seed)`` is the entry point; :mod:`.generator` samples each study's findings,
:mod:`.anatomy` / :mod:`.geometry` / :mod:`.render` draw it, :mod:`.reports` writes its reports,
:mod:`.io` writes a generated set to disk in the layouts the readers accept.
"""

from sae_rad_ext.data.phantom.generator import (
    DEFAULT_FINDING_PROBS,
    FINDINGS,
    MASK_KEYS,
    force_findings,
    generate_studies,
    make_study,
    make_study_pair,
    parse_phantom_source,
    prior_state,
    sample_state,
    severity,
    split_of,
    truth_summary,
)

__all__ = [
    "DEFAULT_FINDING_PROBS",
    "FINDINGS",
    "MASK_KEYS",
    "force_findings",
    "generate_studies",
    "make_study",
    "make_study_pair",
    "parse_phantom_source",
    "prior_state",
    "sample_state",
    "severity",
    "split_of",
    "truth_summary",
]
