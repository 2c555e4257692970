"""Publishing: SAELens release round trip, Neuronpedia schemas, uploader vs a local stub, HTML escaping, CLI."""

from __future__ import annotations

import copy
import gzip
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_rad_ext.adapters import build_tiny_tokenizer

from sae_rad_ext.demo.synthetic_run import demo_run
from sae_rad_ext.publish import (
    InterpretationRun,
    NeuronpediaSettings,
    build_site,
    records_from_sae,
    register_release,
    steering_vector_payloads,
    write_neuronpedia,
    write_release,
)

HOOK = "blocks.1.hook_resid_post"


def _sae(d_in: int = 16, d_sae: int = 160, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    for p in sae.parameters():
        torch.nn.init.normal_(p, std=0.5)
    sae.cfg.metadata.model_name = "tiny-maira2"
    sae.cfg.metadata.hook_name = HOOK
    return sae


class _Model:
    """Stand-in with the two things records_from_sae uses: W_U [d_model, d_vocab] and a tokenizer."""

    def __init__(self, d_in: int = 16):
        self.tokenizer = build_tiny_tokenizer()
        self.W_U = torch.randn(d_in, len(self.tokenizer))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[StandardSAE, InterpretationRun, Path]:
    root = tmp_path_factory.mktemp("demo")
    sae = _sae()
    run = demo_run(sae, root / "run", _Model(), n_features=140)
    run.records[0].explanations[0].text = "<script>alert('x')</script> effusion & \"quotes\""
    run.records[1].top_examples[0].tokens[3] = "<img src=x onerror=alert(1)>"
    run.save(root / "run")
    return sae, InterpretationRun.load(root / "run"), root


# ---- records ------------------------------------------------------------------------------------
def test_records_from_weights_and_roundtrip(tmp_path):
    sae, model = _sae(d_sae=40), _Model()
    run = records_from_sae(sae, model, with_vectors=True, n_logits=5, n_neighbors=3)
    assert len(run) == 40 and run.meta["hook_name"] == HOOK
    r = run.records[7]
    assert r.decoder_norm == pytest.approx(float(sae.W_dec[7].detach().norm()))
    logits = sae.W_dec[7].detach() @ model.W_U
    assert r.top_logits[0][1] == pytest.approx(float(logits.max()), rel=1e-5)
    assert r.bottom_logits[0][1] == pytest.approx(float(logits.min()), rel=1e-5)
    unit = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    cos = unit[7] @ unit.T
    cos[7] = -2
    assert r.decoder_neighbors[0][0] == int(cos.argmax())
    assert sum(r.logit_hist_counts) == model.W_U.shape[1]
    run.save(tmp_path)
    back = InterpretationRun.load(tmp_path)
    assert back.records == run.records
    assert back.records[7].vector() == pytest.approx(sae.W_dec[7].detach().tolist())
    with pytest.raises(ValueError, match="out of range"):
        records_from_sae(sae, features=[40])


def test_matryoshka_levels_from_group_sizes():
    sae = _sae(d_sae=12)
    sae.cfg.group_sizes = [4, 8]  # what our Matryoshka config carries
    run = records_from_sae(sae)
    assert [r.level for r in run.records] == [0] * 4 + [1] * 8 and run.meta["group_sizes"] == [4, 8]


def test_load_rejects_bad_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="features.jsonl"):
        InterpretationRun.load(tmp_path)
    (tmp_path / "features.jsonl").write_text(json.dumps({"index": 1, "bogus": 2}) + "\n")
    with pytest.raises(ValueError, match="line 1.*bogus"):
        InterpretationRun.load(tmp_path)


# ---- SAELens release ------------------------------------------------------------------------------
def _roundtrip(sae, tmp_path, release):
    info = write_release(
        sae,
        tmp_path / "rel",
        release=release,
        sae_id="layer1",
        context_size=64,
        positions="maira2_sae_paper",
        dataset_path="phantom-train",
        neuronpedia_id="tiny-maira2/1-res-160",
        log_sparsity=torch.linspace(-5, -1, sae.cfg.d_sae),
        metrics={"l0": 12.5, "explained_variance": 0.81},
        level_metrics=[{"width": 40, "l0": 4.0, "explained_variance": 0.5}, {"width": 160, "l0": 12.5, "explained_variance": 0.81}],
        training_config={"lr": 3e-4, "k": 16},
    )
    cfg = json.loads((info.folder / "cfg.json").read_text())
    for key in ("model_name", "hook_name", "context_size", "positions", "dataset_path", "neuronpedia_id"):
        assert cfg["metadata"][key] is not None, key
    card = (tmp_path / "rel" / "README.md").read_text()
    assert "explained_variance" in card and "Per Matryoshka level" in card and '"k": 16' in card
    register_release(release, tmp_path / "rel")
    loaded, cfg_dict, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(release, "layer1")
    x = torch.randn(32, sae.cfg.d_in)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))
    assert torch.allclose(sparsity, torch.linspace(-5, -1, sae.cfg.d_sae))
    assert loaded.cfg.metadata.neuronpedia_id == "tiny-maira2/1-res-160"
    return loaded


def test_release_roundtrip_stock_sae(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = _roundtrip(_sae(), tmp_path, "sae-rad-test-stock")
    assert type(loaded).__name__ == "StandardSAE"


def test_release_roundtrip_matryoshka(tmp_path):
    mat = pytest.importorskip("sae_rad_ext.saes.matryoshka")
    cls = getattr(mat, "RadMatryoshkaSAE", None)
    cfg_cls = getattr(mat, "RadMatryoshkaSAEConfig", None)
    if cls is None or cfg_cls is None:
        pytest.skip("sae_rad_ext.saes.matryoshka has no RadMatryoshkaSAE yet")
    try:
        sae = cls(cfg_cls(d_in=16, d_sae=160, group_sizes=[40, 120]))
    except TypeError as e:
        pytest.skip(f"RadMatryoshkaSAEConfig signature differs: {e}")
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(std=0.3)
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "tiny-maira2", HOOK
    loaded = _roundtrip(sae, tmp_path, "sae-rad-test-matryoshka")
    assert type(loaded) is cls and list(loaded.cfg.group_sizes) == [40, 120]


def test_register_release_errors(tmp_path):
    with pytest.raises(ValueError, match="neither an existing folder nor a hub repo"):
        register_release("x", tmp_path / "missing")
    with pytest.raises(ValueError, match="sae_ids"):
        register_release("x", "owner/repo")
    with pytest.raises(ValueError, match="no SAEs found"):
        register_release("x", tmp_path)


# ---- Neuronpedia schemas (from shared/REFERENCE.md and the example batch) ---------------------------
BATCH_TOP = {"model_id": str, "layer": int, "sae_set": str, "sae_id_suffix": (str, type(None)), "features": list}
FEATURE_FIELDS = {
    "feature_index": int,
    **{f: list for f in (
        "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
        "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
        "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
        "neg_str", "neg_values", "pos_str", "pos_values",
        "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
        "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
        "decoder_weights_dist", "vector", "activations")},
    "frac_nonzero": (int, float),
    "n_prompts_total": int,
    "n_tokens_in_prompt": int,
    "dataset": str,
}
ACTIVATION_FIELDS = {"bin_min": (int, float), "bin_max": (int, float), "bin_contains": (int, float), "tokens": list, "values": list, "qualifying_token_index": int}
BULK_FEATURE = {"modelId": str, "layer": str, "index": str, "maxActApprox": (int, float), "hasVector": bool, "vector": list, "pos_str": list, "neg_str": list, "frac_nonzero": (int, float), "topkCosSimIndices": list}
BULK_ACTIVATION = {"id": str, "tokens": list, "index": str, "layer": str, "modelId": str, "maxValue": (int, float), "maxValueTokenIndex": int, "minValue": (int, float), "values": list, "creatorId": str, "binMin": (int, float), "binMax": (int, float), "binContains": (int, float), "qualifyingTokenIndex": int}
BULK_META = {
    "release.jsonl": {"name": str, "description": str, "creatorName": str, "creatorId": str, "urls": list},
    "model.jsonl": {"id": str, "creatorId": str, "layers": int, "neuronsPerLayer": int, "displayName": str},
    "sourceset.jsonl": {"modelId": str, "name": str, "creatorId": str, "description": str, "releaseName": str},
    "source.jsonl": {"id": str, "modelId": str, "setName": str, "creatorId": str, "hasDashboards": bool},
}
EXPLANATION = {"id": str, "modelId": str, "layer": str, "index": str, "description": str, "authorId": str, "typeName": str, "scoreV1": (int, float)}
VECTOR_NEW = {"modelId": str, "layerNumber": int, "hookType": str, "vector": list, "vectorDefaultSteerStrength": (int, float), "vectorLabel": str}


def _check(obj: dict, schema: dict, where: str, exact: bool = False) -> None:
    for k, t in schema.items():
        assert k in obj, f"{where}: missing {k}"
        assert isinstance(obj[k], t) and not (t in (int, (int, float)) and isinstance(obj[k], bool)), f"{where}: {k}={obj[k]!r}"
    if exact:
        assert set(obj) == set(schema), f"{where}: extra {set(obj) - set(schema)}"


def _finite(x) -> None:
    if isinstance(x, float):
        assert math.isfinite(x)
    elif isinstance(x, list | tuple):
        for v in x:
            _finite(v)
    elif isinstance(x, dict):
        for v in x.values():
            _finite(v)


def _jsonl(path: Path) -> list[dict]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def test_neuronpedia_files_validate(demo, tmp_path):
    sae, run, _ = demo
    run = copy.deepcopy(run)
    run.records[5].frac_nonzero = 0.0  # dead -> skipped
    s = NeuronpediaSettings.from_run(run, include_vectors=True)
    res = write_neuronpedia(run, tmp_path, s)
    example = json.loads((Path(__file__).parents[1] / "fixtures" / "neuronpedia_dashboard_batch_example.json").read_text())
    _check(example, BATCH_TOP, "example", exact=True)
    _check(example["features"][0], FEATURE_FIELDS, "example feature", exact=True)
    batches = sorted((tmp_path / "dashboard").glob("batch-*.json"))
    assert [p.name for p in batches] == ["batch-0.json", "batch-1.json"] == [p.name for p in res["dashboard"]]
    n = 0
    for p in batches:
        doc = json.loads(p.read_text())
        _finite(doc)
        _check(doc, BATCH_TOP, p.name, exact=True)
        assert list(doc) == list(example)  # same field order as SAEDashboard
        assert 0 < len(doc["features"]) <= 128
        for f in doc["features"]:
            _check(f, FEATURE_FIELDS, f"{p.name} feature", exact=True)
            assert list(f) == list(example["features"][0])
            assert len(f["pos_str"]) == len(f["pos_values"]) and len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"])
            for a in f["activations"]:
                _check(a, ACTIVATION_FIELDS, "activation", exact=True)
                assert len(a["tokens"]) == len(a["values"]) and 0 <= a["qualifying_token_index"] < len(a["tokens"])
            n += 1
    assert n == len(run) - 1
    top = json.loads(batches[0].read_text())["features"][0]["activations"][0]
    assert top["bin_min"] == -1 and top["bin_contains"] == -1 and any(t.startswith("<frontal r") for t in top["tokens"])
    skipped = json.loads((tmp_path / "dashboard" / "skipped_indexes.json").read_text())
    assert 5 in skipped["skipped_indexes"] and set(skipped) == {"model_id", "layer", "sae_set", "log_sparsity", "skipped_indexes"}
    settings = json.loads((tmp_path / "dashboard" / "run_settings.json").read_text())
    assert settings["n_features_at_a_time"] == 128 and settings["sae_set"] == s.sae_set

    root = res["export"]
    assert root == tmp_path / "export" / s.model_id / f"{s.layer}-{s.sae_set}"
    for name, schema in BULK_META.items():
        rows = _jsonl(root / name)
        assert len(rows) == 1
        _check(rows[0], schema, name)
    feats = [r for p in sorted((root / "features").glob("batch-*.jsonl.gz")) for r in _jsonl(p)]
    acts = [r for p in sorted((root / "activations").glob("batch-*.jsonl.gz")) for r in _jsonl(p)]
    expl = [r for p in sorted((root / "explanations").glob("batch-*.jsonl.gz")) for r in _jsonl(p)]
    assert len(feats) == len(run) - 1 and len(expl) == len(run) - 1 and acts
    for f in feats:
        _check(f, BULK_FEATURE, "bulk feature")
        assert f["hasVector"] and len(f["vector"]) == sae.cfg.d_in
    for a in acts:
        _check(a, BULK_ACTIVATION, "bulk activation")
        assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
    for x in expl:
        _check(x, EXPLANATION, "explanation")
    assert any("<script>" in x["description"] for x in expl)  # stored raw; escaping is the viewer's job
    assert len({a["id"] for a in acts}) == len(acts)
    vec = _jsonl(res["vectors"])
    assert len(vec) == len(run)
    for v in vec:
        _check(v, VECTOR_NEW, "vector/new", exact=True)
        assert v["hookType"] == "hook_resid_post"


def test_batches_weights_only_and_bad_hook(tmp_path):
    run = records_from_sae(_sae(d_sae=300), with_vectors=True)
    s = NeuronpediaSettings.from_run(run)
    assert s.layer == 1 and s.model_id == "tiny-maira2"
    res = write_neuronpedia(run, tmp_path, s)
    assert len(res["dashboard"]) == 3  # 128 + 128 + 44
    s2 = NeuronpediaSettings.from_run(run, hook_name="blocks.1.hook_mlp_out")
    with pytest.raises(ValueError, match="hookType"):
        steering_vector_payloads(run, s2)


# ---- uploader against a stub on 127.0.0.1 -------------------------------------------------------------
class _Stub(BaseHTTPRequestHandler):
    calls: list = []

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.calls.append((self.path, self.headers.get("X-Api-Key"), body))
        if self.headers.get("X-Api-Key") != "good-key":
            self._send(401, {"message": "unauthorized"})
        elif self.path.endswith("/slow/feature/upload-batch"):
            import time

            time.sleep(1.5)
            self._send(200, {})
        else:
            self._send(200, {"ok": True, "n": len(body.get("features", []))})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client gave up (timeout test)
            pass


@pytest.fixture()
def stub():
    pytest.importorskip("neuronpedia", reason='the uploader needs pip install "sae-rad-ext[neuronpedia]"')
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    _Stub.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def test_uploader_against_stub(demo, stub, monkeypatch):
    from sae_rad_ext.publish.upload import UploadError, upload

    _, run, _ = demo
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    with pytest.raises(UploadError, match="no Neuronpedia API key"):
        upload(run, base_url=stub)
    res = upload(run, api_key="good-key", base_url=stub, timeout=5, vectors=True)
    assert res.batches == 2 and res.features == len(run) and res.vectors == len(run)
    paths = [c[0] for c in _Stub.calls]
    assert paths[0] == "/api/source-set/new" and paths.count("/api/feature/upload-batch") == 2
    body = [c[2] for c in _Stub.calls if c[0] == "/api/feature/upload-batch"][0]
    f = body["features"][0]
    assert body["modelId"] == "tiny-maira2" and body["source"] == "1-res-160"
    assert set(f) == {"index", "density", "activations", "explanations", "topLogits", "bottomLogits"}
    assert set(f["explanations"][0]) == {"text", "methodName", "modelName"}
    assert set(f["activations"][0]) == {"tokens", "values", "quantileMax", "quantileMin", "quantileFraction"}
    vec = [c[2] for c in _Stub.calls if c[0] == "/api/vector/new"][0]
    assert set(vec) == {"modelId", "layerNumber", "hookType", "vector", "vectorDefaultSteerStrength", "vectorLabel"}
    with pytest.raises(UploadError, match="rejected the API key"):
        upload(run, api_key="bad-key", base_url=stub, timeout=5)
    with pytest.raises(UploadError, match="timeout"):
        upload(run, api_key="good-key", base_url=stub + "/slow", timeout=0.3, create_source_set=False)
    with pytest.raises(UploadError, match="cannot reach"):
        upload(run, api_key="good-key", base_url="http://127.0.0.1:9/api", timeout=2)


# ---- HTML -------------------------------------------------------------------------------------------------
def test_html_escapes_everything(demo, tmp_path):
    _, run, _ = demo
    index = build_site(run, tmp_path)
    page0 = (tmp_path / "features" / "0.html").read_text()
    page1 = (tmp_path / "features" / "1.html").read_text()
    all_html = index.read_text() + page0 + page1
    assert "<script>alert" not in all_html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page0
    assert "<img src=x" not in all_html and "&lt;img src=x onerror=alert(1)&gt;" in page1
    assert all_html.count("<script>") == 1  # only the index's own search script
    assert "&lt;frontal r" in page0 and 'class="heatmap"' in page0
    assert 'alt="steering plot"' in page0 and (tmp_path / "img" / "f0_steering.png").is_file()
    imgs = list((tmp_path / "img").glob("*.png"))
    assert len(imgs) >= 3 * len(run)
    from PIL import Image

    im = Image.open(imgs[0])
    assert im.size[0] > 0 and im.mode == "RGB"


def test_cli_export(demo, tmp_path):
    from typer.testing import CliRunner

    from sae_rad_ext.cli.app import app

    sae, _, root = demo
    sae.save_model(tmp_path / "sae")
    torch.save(torch.randn(50, sae.cfg.d_in), tmp_path / "acts.pt")
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        ["export", "--sae", str(tmp_path / "sae"), "--interpretation", str(root / "run"), "--out", str(out),
         "--neuronpedia", "--html", "--upload", "--release", "cli-rel", "--sae-id", "l1",
         "--eval-activations", str(tmp_path / "acts.pt")],
        env={"NEURONPEDIA_API_KEY": ""},
    )
    assert r.exit_code == 0, r.output
    assert "nothing uploaded" in r.output
    assert (out / "html" / "index.html").is_file() and (out / "neuronpedia" / "dashboard" / "batch-0.json").is_file()
    assert (out / "release" / "l1" / "sparsity.safetensors").is_file() is False  # only 140 of 160 rates known
    assert "explained_variance" in (out / "release" / "README.md").read_text()
    register_release("cli-rel", out / "release")
    loaded = SAE.from_pretrained("cli-rel", "l1")
    x = torch.randn(4, sae.cfg.d_in)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
    r = CliRunner().invoke(app, ["export", "--sae", str(tmp_path), "--out", str(out)])
    assert r.exit_code != 0 and "neither cfg.json" in r.output


def test_release_measures_metrics_per_level(tmp_path):
    mat = pytest.importorskip("sae_rad_ext.saes.matryoshka")
    if not hasattr(mat, "RadMatryoshkaSAE"):
        pytest.skip("no RadMatryoshkaSAE yet")
    sae = mat.RadMatryoshkaSAE(mat.RadMatryoshkaSAEConfig(d_in=16, d_sae=160, group_sizes=[40, 120]))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(std=0.3)
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "tiny-maira2", HOOK
    info = write_release(sae, tmp_path / "rel", release="m", sae_id="x", eval_activations=torch.randn(64, 16))
    saved = json.loads((info.folder / "release_info.json").read_text())
    assert [lm["width"] for lm in saved["level_metrics"]] == [40, 160]
    assert {"explained_variance", "l0", "mse"} <= set(saved["metrics"])
    assert saved["level_metrics"][-1]["l0"] == pytest.approx(saved["metrics"]["l0"], rel=1e-5)
    card = (tmp_path / "rel" / "README.md").read_text()
    assert "Per Matryoshka level" in card and "| 1 | 160 |" in card


def test_register_release_maira2_sae_format(tmp_path):
    m2 = pytest.importorskip("sae_rad_ext.saes.maira2_format")
    torch.manual_seed(0)
    d_in, d_sae = 16, 64
    folder = tmp_path / "rel" / "layer15_x4"
    m2.save_maira2_sae_format(
        folder,
        W_enc=torch.randn(d_in, d_sae),
        b_enc=torch.zeros(d_sae),
        W_dec=torch.randn(d_sae, d_in),
        b_dec=torch.zeros(d_in),
        k=4,
        group_sizes=[16, 48],
        threshold=0.1,
    )
    register_release("m2-format-test", tmp_path / "rel")
    sae = SAE.from_pretrained("m2-format-test", "layer15_x4")
    ref = m2.load_maira2_sae(folder)
    x = torch.randn(8, d_in)
    with torch.no_grad():
        assert torch.equal(sae.encode(x), ref.encode(x)) and torch.equal(sae.decode(sae.encode(x)), ref.decode(ref.encode(x)))


def test_records_through_hooked_maira2_unembedding():
    try:
        from sae_rad_ext.adapters.hooked import HookedMaira2
    except ImportError as err:  # the adapter issue's module
        pytest.skip(f"HookedMaira2 not importable: {err}")
    h = HookedMaira2.tiny()
    sae = _sae(d_in=h.W_U.shape[0], d_sae=24)
    run = records_from_sae(sae, h, n_logits=4)
    logits = sae.W_dec.detach().float() @ h.W_U.detach().float()
    r = run.records[3]
    assert r.top_logits[0][1] == pytest.approx(float(logits[3].max()), rel=1e-4)
    top_id = int(logits[3].argmax())
    assert r.top_logits[0][0] == h.tokenizer.convert_ids_to_tokens(top_id).replace("▁", " ").replace("Ġ", " ")


def test_html_for_weights_only_run(tmp_path):
    run = records_from_sae(_sae(d_sae=8), _Model())
    index = build_site(run, tmp_path)
    page = (tmp_path / "features" / "3.html").read_text()
    assert "no explanation yet" in page and "Logits (W_dec · W_U)" in page
    assert index.read_text().count('class="feat"') == 8
