"""A minimal client for any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server, OpenAI …).

    client = ChatClient.from_env()       # SAE_RAD_LLM_BASE_URL, SAE_RAD_LLM_MODEL, SAE_RAD_LLM_API_KEY
    client.chat([{"role": "user", "content": "hi"}])

Standard library only (``urllib``): ``POST {base_url}/chat/completions`` with a timeout per request,
retries with exponential backoff on connection errors, timeouts, 429 and 5xx, and clear
:class:`LLMError` messages for a rejected key (401/403), a missing model (404) or an unreachable
endpoint. Nothing is sent anywhere unless the caller builds a client with a URL.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = ["ChatClient", "LLMError"]


class LLMError(RuntimeError):
    """The endpoint could not answer: what was tried, what came back, what to do."""


@dataclass
class ChatClient:
    """OpenAI-compatible ``/chat/completions`` client."""

    base_url: str
    """e.g. ``http://127.0.0.1:8000/v1`` (vLLM) or ``http://localhost:11434/v1`` (Ollama)."""
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    """Seconds per request."""
    retries: int = 3
    """Extra attempts after the first on retryable failures."""
    backoff: float = 1.0
    """First wait between attempts (doubles each time)."""
    temperature: float = 0.0
    max_tokens: int = 256

    @classmethod
    def from_env(cls, **overrides: Any) -> ChatClient:
        """From ``SAE_RAD_LLM_BASE_URL``, ``SAE_RAD_LLM_MODEL``, ``SAE_RAD_LLM_API_KEY`` (or ``OPENAI_API_KEY``)."""
        url = overrides.pop("base_url", None) or os.environ.get("SAE_RAD_LLM_BASE_URL")
        model = overrides.pop("model", None) or os.environ.get("SAE_RAD_LLM_MODEL")
        if not url or not model:
            raise LLMError(
                "no LLM endpoint configured: set SAE_RAD_LLM_BASE_URL and SAE_RAD_LLM_MODEL (or pass "
                "--llm-url/--llm-model); the offline explainer/scorers need none"
            )
        key = (
            overrides.pop("api_key", None)
            or os.environ.get("SAE_RAD_LLM_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
        )
        return cls(base_url=url, model=model, api_key=key, **overrides)

    def chat(self, messages: list[dict[str, str]], **params: Any) -> str:
        """The assistant message text of one chat completion."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **params,
        }
        data = self._post("/chat/completions", body)
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as e:
            raise LLMError(
                f"{self.base_url}: unexpected response (no choices[0].message.content): {str(data)[:300]}"
            ) from e

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url.rstrip("/") + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=payload, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 - user-given URL
                    return json.loads(r.read().decode() or "{}")
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                if e.code in (401, 403):
                    raise LLMError(
                        f"{url} rejected the API key (HTTP {e.code}): set SAE_RAD_LLM_API_KEY / --llm-key "
                        f"to a valid key. Server said: {detail}"
                    ) from e
                if e.code == 404:
                    raise LLMError(
                        f"{url} answered 404: check the base URL (it usually ends in /v1) and the model "
                        f"name {self.model!r}. Server said: {detail}"
                    ) from e
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}: {detail}"
                    continue
                raise LLMError(f"{url} answered HTTP {e.code}: {detail}") from e
            except TimeoutError as e:
                last = f"no answer within {self.timeout:g} s ({e})"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError | socket.timeout):
                    last = f"no answer within {self.timeout:g} s"
                else:
                    last = f"unreachable ({e.reason})"
            except json.JSONDecodeError as e:
                raise LLMError(f"{url} did not return JSON: {e}") from e
        raise LLMError(
            f"{url}: gave up after {self.retries + 1} attempt(s): {last}. Is the server running and the "
            "URL right? (--llm-url / SAE_RAD_LLM_BASE_URL)"
        )
