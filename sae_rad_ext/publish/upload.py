"""Upload features and steering vectors to Neuronpedia through the ``neuronpedia`` package's API.

Only when the user gives a key (``api_key=`` / ``--api-key`` / ``NEURONPEDIA_API_KEY``); without one the
export writes files only. The base URL defaults to the package's (``neuronpedia.org/api``, or
``localhost:3000/api`` with ``USE_LOCALHOST=true``) and can be set with ``base_url=`` or
``SAE_RAD_NEURONPEDIA_URL``. Every request has a timeout; failures raise :class:`UploadError` saying
what went wrong and what to do.

Install the client with ``pip install "sae-rad-ext[neuronpedia]"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sae_rad_ext.publish.neuronpedia import (
    MAX_FEATURES_PER_BATCH,
    NeuronpediaSettings,
    steering_vector_payloads,
)
from sae_rad_ext.records import FeatureRecord, InterpretationRun

BASE_URL_ENV = "SAE_RAD_NEURONPEDIA_URL"
KEY_ENV = "NEURONPEDIA_API_KEY"


class UploadError(RuntimeError):
    """An upload could not be done (no key, bad key, unreachable server, timeout, rejected payload)."""


@dataclass
class UploadResult:
    """What was sent."""

    base_url: str
    features: int = 0
    batches: int = 0
    vectors: int = 0
    responses: list[Any] = field(default_factory=list)


def resolve_api_key(api_key: str | None = None) -> str | None:
    return api_key or os.environ.get(KEY_ENV) or None


def _client():
    try:
        from neuronpedia.requests import base_request
        from neuronpedia.requests.feature_request import FeatureRequest
        from neuronpedia.requests.source_set_request import SourceSetRequest
        from neuronpedia.requests.vector_request import VectorRequest
    except ImportError as e:
        raise UploadError(
            'uploading needs the neuronpedia client: pip install "sae-rad-ext[neuronpedia]" '
            f"(neuronpedia==1.2.1); import failed: {e}"
        ) from e
    return base_request, FeatureRequest, SourceSetRequest, VectorRequest


def feature_payload(r: FeatureRecord) -> dict[str, Any]:
    """One feature in the ``feature/upload-batch`` shape (the package's ``FeatureRequest`` fields)."""
    acts = []
    top_max = r.max_activation if r.max_activation is not None else max((e.max_value for e in r.top_examples), default=None)
    for ex in r.top_examples:
        acts.append({"tokens": ex.tokens, "values": ex.values, "quantileMax": top_max, "quantileMin": None, "quantileFraction": None})
    for g in r.quantile_groups:
        for ex in g.examples:
            frac = min(max(float(g.bin_contains), 0.0), 1.0)
            acts.append({"tokens": ex.tokens, "values": ex.values, "quantileMax": g.bin_max, "quantileMin": g.bin_min, "quantileFraction": frac})
    return {
        "index": int(r.index),
        "density": r.frac_nonzero,
        "activations": acts,
        "explanations": [{"text": e.text, "methodName": e.method, "modelName": e.model} for e in r.explanations],
        "topLogits": [{"token": t, "value": v} for t, v in r.top_logits] or None,
        "bottomLogits": [{"token": t, "value": v} for t, v in r.bottom_logits] or None,
    }


class NeuronpediaUploader:
    """Thin wrapper over the ``neuronpedia`` request classes with a base URL, a timeout and clear errors."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, timeout: float = 30.0):
        key = resolve_api_key(api_key)
        if not key:
            raise UploadError(
                f"no Neuronpedia API key: pass --api-key or set {KEY_ENV} to upload "
                "(without a key `sae-rad export --neuronpedia` writes the files only)"
            )
        self._base, self._Feature, self._SourceSet, self._Vector = _client()
        self.api_key = key
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or self._base.NPRequest.BASE_URL).rstrip("/")
        self.timeout = float(timeout)

    def _request(self, cls: type, uri: str, payload: dict[str, Any]) -> Any:
        import requests

        req = cls(api_key=self.api_key)
        req.BASE_URL = self.base_url  # the package's base-URL setting, per request object
        url = f"{self.base_url}/{req.endpoint}/{uri}"
        b = self._base
        try:
            return req.send_request(method="POST", uri=uri, json=payload, timeout=self.timeout)
        except b.NPUnauthorizedError as e:
            raise UploadError(
                f"Neuronpedia at {self.base_url} rejected the API key (HTTP 401) on {url}: check {KEY_ENV} / --api-key"
            ) from e
        except b.NPRateLimitError as e:
            raise UploadError(f"Neuronpedia rate limit hit on {url} (HTTP 429): retry later") from e
        except requests.Timeout as e:
            raise UploadError(f"no answer from {url} within {self.timeout:g}s (timeout); is the server up?") from e
        except requests.ConnectionError as e:
            raise UploadError(f"cannot reach Neuronpedia at {url}: {e.__class__.__name__}; check --neuronpedia-url") from e
        except b.NPInvalidResponseError as e:
            raise UploadError(f"{url} answered with something that is not JSON") from e
        except requests.HTTPError as e:
            raise UploadError(f"{url} refused the request: {e}") from e

    def create_source_set(self, s: NeuronpediaSettings) -> Any:
        payload = {"name": s.sae_set, "modelId": s.model_id, "description": s.release_title or s.sae_set, "url": s.url or None}
        return self._request(self._SourceSet, "new", payload)

    def upload_features(self, run: InterpretationRun, s: NeuronpediaSettings, result: UploadResult) -> None:
        records = [r for r in run.records if r.frac_nonzero is None or r.frac_nonzero > 0]
        n = min(s.features_per_batch, MAX_FEATURES_PER_BATCH)
        for i in range(0, len(records), n):
            batch = records[i : i + n]
            payload = {"modelId": s.model_id, "source": s.source_id, "features": [feature_payload(r) for r in batch]}
            result.responses.append(self._request(self._Feature, "upload-batch", payload))
            result.features += len(batch)
            result.batches += 1

    def upload_vectors(self, payloads: list[dict[str, Any]], result: UploadResult) -> None:
        for p in payloads:
            result.responses.append(self._request(self._Vector, "new", p))
            result.vectors += 1


def upload(
    run: InterpretationRun,
    settings: NeuronpediaSettings | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float = 30.0,
    create_source_set: bool = True,
    features: bool = True,
    vectors: bool = False,
) -> UploadResult:
    """Upload a run's features (and optionally steering vectors) to Neuronpedia."""
    s = settings or NeuronpediaSettings.from_run(run)
    up = NeuronpediaUploader(api_key, base_url, timeout)
    result = UploadResult(base_url=up.base_url)
    if create_source_set:
        result.responses.append(up.create_source_set(s))
    if features:
        up.upload_features(run, s, result)
    if vectors:
        up.upload_vectors(steering_vector_payloads(run, s), result)
    return result
