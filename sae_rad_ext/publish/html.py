"""A static, image-aware feature dashboard: ``index.html`` + one page per feature, no server needed.

The index lists features with a search box and sorting (index, frequency, concept F1, explanation
score). Each feature page shows the explanation(s) and scores, the activation histogram (inline SVG),
the top studies as radiograph thumbnails with the feature's patch map overlaid (PNG rendered here
with Pillow + a matplotlib colormap, or the PNG interpretation made), the top text contexts with
token highlighting, the concept-alignment table, top/bottom logits, neighbours, and the steering
plot if present. All text from records (explanations, report tokens, study ids) is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sae_rad_ext.interpret.heatmaps import THUMB, render_overlay
from sae_rad_ext.interpret.heatmaps import load_display_image as load_image
from sae_rad_ext.records import FeatureExample, FeatureRecord, InterpretationRun


def e(x: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe inside attributes)."""
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    try:
        return f"{float(v):.{digits}g}"
    except (TypeError, ValueError):
        return e(v)


# ---- small HTML pieces -----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em auto;max-width:1100px;color:#222;padding:0 1em}
a{color:#0b62c4;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:.5em 0} td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;font-size:14px}
th{background:#f4f4f4} .num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777} .tok{white-space:pre-wrap;border-radius:2px;padding:0 1px;font-family:ui-monospace,monospace;font-size:13px}
.ctx{margin:.3em 0 .8em;line-height:1.7} .thumbs{display:flex;flex-wrap:wrap;gap:10px}
.thumb{width:THUMBpx;font-size:12px} .thumb img{width:THUMBpx;display:block;border:1px solid #ccc}
.expl{font-size:1.15em;background:#fffbe6;border-left:4px solid #f0b400;padding:.4em .8em}
#search{font-size:15px;padding:4px 8px;width:22em} select{font-size:15px}
section{margin:1.2em 0} h2{font-size:1.15em;border-bottom:1px solid #eee;padding-bottom:.2em}
""".replace("THUMB", str(THUMB))


def svg_histogram(edges: list[float], counts: list[float], width: int = 420, height: int = 130, label: str = "") -> str:
    """Inline SVG bar chart of a histogram (``edges`` has one more entry than ``counts``)."""
    if not counts or len(edges) != len(counts) + 1:
        return '<p class="muted">no histogram</p>'
    top = max(counts) or 1.0
    n = len(counts)
    pad = 24
    bw = (width - 2 * pad) / n
    bars = []
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / top
        x, y = pad + i * bw, height - pad - h
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}" fill="#e07b00">'
            f"<title>{e(_fmt(edges[i]))}–{e(_fmt(edges[i + 1]))}: {e(_fmt(c, 6))}</title></rect>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{e(label)}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        + "".join(bars)
        + f'<text x="{pad}" y="{height - 6}" font-size="11">{e(_fmt(edges[0]))}</text>'
        f'<text x="{width - pad}" y="{height - 6}" font-size="11" text-anchor="end">{e(_fmt(edges[-1]))}</text>'
        f'<text x="{pad}" y="14" font-size="11">{e(label)} (max count {e(_fmt(top, 6))})</text></svg>'
    )


def highlight_tokens(ex: FeatureExample, vmax: float | None = None) -> str:
    """Tokens as spans shaded by activation (hover shows the value); the qualifying token underlined."""
    top = vmax or max([abs(v) for v in ex.values] + [1e-9])
    spans = []
    for i, (t, v) in enumerate(zip(ex.tokens, ex.values, strict=False)):
        a = min(max(float(v) / top, 0.0), 1.0)
        style = f"background:rgba(255,140,0,{a:.2f})"
        if i == ex.qualifying_token_index:
            style += ";text-decoration:underline;font-weight:600"
        spans.append(f'<span class="tok" style="{style}" title="{e(_fmt(v))}">{e(t)}</span>')
    return "".join(spans)


def _page(title: str, body: str, script: str = "") -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>{body}"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>\n"
    )


def _table(headers: list[str], rows: list[list[str]], num_cols: tuple[int, ...] = ()) -> str:
    """Rows are already-escaped HTML cells."""
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if j in num_cols else f"<td>{c}</td>" for j, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- the site -------------------------------------------------------------------------------------------
class _Site:
    def __init__(self, run: InterpretationRun, out: Path, title: str):
        self.run, self.out, self.title = run, out, title
        (out / "features").mkdir(parents=True, exist_ok=True)
        (out / "img").mkdir(parents=True, exist_ok=True)
        self.present = {r.index for r in run.records}
        self.first_thumb: dict[int, str] = {}
        self._images: dict[str, np.ndarray] = {}

    def _copy(self, src: str | None, name: str) -> str | None:
        p = self.run.resolve(src)
        if p is None or not p.is_file():
            return None
        dst = self.out / "img" / f"{name}{p.suffix.lower()}"
        shutil.copyfile(p, dst)
        return f"../img/{dst.name}"

    def _thumb(self, r: FeatureRecord, j: int, ex: FeatureExample, vmax: float | None) -> str | None:
        name = f"f{r.index}_ex{j}"
        if ex.heatmap_png:
            return self._copy(ex.heatmap_png, name)
        if ex.patch_map is None:
            return None
        img_path = self.run.resolve(ex.image_path)
        image = self._image(img_path) if img_path is not None and img_path.is_file() else None
        render_overlay(image, ex.patch_map, self.out / "img" / f"{name}.png", vmax=vmax)
        return f"../img/{name}.png"

    def _image(self, path: Path) -> np.ndarray:
        key = str(path)
        if key not in self._images:
            if len(self._images) > 64:
                self._images.clear()
            self._images[key] = load_image(path)
        return self._images[key]

    def _link(self, i: int, value: float | None = None) -> str:
        label = f"#{i}" + (f" ({_fmt(value)})" if value is not None else "")
        return f'<a href="{i}.html">{e(label)}</a>' if i in self.present else e(label)

    def feature_page(self, r: FeatureRecord) -> str:
        parts = [f'<p><a href="../index.html">&larr; all features</a></p><h1>Feature {e(r.index)}</h1>']
        if r.explanations:
            parts.append(f'<p class="expl">{e(r.explanations[0].text)}</p>')
            rows = []
            for x in r.explanations:
                sc = ", ".join(f"{e(k)}: {e(_fmt(v))}" for k, v in x.scores.items()) or "–"
                rows.append([e(x.text), e(x.method), e(x.model or "–"), sc])
            parts.append("<section><h2>Explanations and scores</h2>" + _table(["explanation", "method", "model", "scores"], rows) + "</section>")
        else:
            parts.append('<p class="muted">no explanation yet</p>')
        stats = [
            ["firing frequency", e(_fmt(r.frac_nonzero))],
            ["max activation", e(_fmt(r.max_activation))],
            ["mean activation (when firing)", e(_fmt(r.mean_activation))],
            ["decoder norm", e(_fmt(r.decoder_norm))],
        ]
        if r.level is not None:
            stats.append(["Matryoshka level", e(r.level)])
        stats += [[f"frequency: {e(k)}", e(_fmt(v))] for k, v in r.role_frequency.items()]
        stats += [[e(k), e(v if isinstance(v, str) else json.dumps(v))] for k, v in r.notes.items()]
        parts.append("<section><h2>Statistics</h2>" + _table(["", "value"], stats, (1,)) + "</section>")
        parts.append(
            '<section><h2>Activation histogram</h2><div id="hist">'
            + svg_histogram(r.hist_edges, r.hist_counts, label="activations (non-zero)")
            + "</div></section>"
        )
        vmax = r.max_activation or max((ex.max_value for ex in r.top_examples), default=None)
        thumbs = []
        for j, ex in enumerate(r.top_examples):
            src = self._thumb(r, j, ex, vmax)
            if src:
                self.first_thumb.setdefault(r.index, src.removeprefix("../"))
                cap = f"{ex.study_id}" + (f" · {ex.view}" if ex.view else "") + f" · max {_fmt(ex.max_value)}"
                thumbs.append(
                    f'<div class="thumb"><img class="heatmap" src="{e(src)}" alt="{e(cap)}" loading="eager">{e(cap)}</div>'
                )
        if thumbs:
            parts.append('<section><h2>Top studies (feature map over the radiograph)</h2><div class="thumbs">' + "".join(thumbs) + "</div></section>")
        ctx = [
            f'<div class="ctx"><span class="muted">{e(ex.study_id)} · max {e(_fmt(ex.max_value))}</span><br>{highlight_tokens(ex, vmax)}</div>'
            for ex in r.top_examples
        ]
        parts.append("<section><h2>Top contexts</h2>" + ("".join(ctx) or '<p class="muted">none</p>') + "</section>")
        for g in reversed(r.quantile_groups):
            head = f"Interval {_fmt(g.bin_min)}–{_fmt(g.bin_max)} ({_fmt(100 * g.bin_contains)}% of activations)"
            ctx = "".join(
                f'<div class="ctx"><span class="muted">{e(ex.study_id)}</span><br>{highlight_tokens(ex, vmax)}</div>' for ex in g.examples
            )
            parts.append(f"<section><h2>{e(head)}</h2>{ctx}</section>")
        crow = [
            [e(c.concept), e(_fmt(c.f1)), e(_fmt(c.auroc)), e(_fmt(c.precision)), e(_fmt(c.recall)), e(_fmt(c.iou)), e(c.positions or "–")]
            for c in r.concepts
        ]
        parts.append(
            '<section><h2>Concept alignment</h2><div id="concepts">'
            + _table(["concept", "F1", "AUROC", "precision", "recall", "map IoU", "positions"], crow, (1, 2, 3, 4, 5))
            + "</div></section>"
        )
        lrows = [
            [e(a[0]) if a else "", e(_fmt(a[1])) if a else "", e(b[0]) if b else "", e(_fmt(b[1])) if b else ""]
            for a, b in zip(
                r.top_logits + [None] * max(0, len(r.bottom_logits) - len(r.top_logits)),
                r.bottom_logits + [None] * max(0, len(r.top_logits) - len(r.bottom_logits)),
                strict=True,
            )
        ]
        parts.append("<section><h2>Logits (W_dec · W_U)</h2>" + _table(["promoted", "", "suppressed", ""], lrows, (1, 3)) + "</section>")
        nb = ", ".join(self._link(i, v) for i, v in r.decoder_neighbors) or '<span class="muted">none</span>'
        co = ", ".join(self._link(i, v) for i, v in r.correlated_features) or '<span class="muted">none</span>'
        parts.append(f"<section><h2>Related features</h2><p>decoder cosine: {nb}</p><p>activation correlation: {co}</p></section>")
        if r.steering_plot:
            src = self._copy(r.steering_plot, f"f{r.index}_steering")
            if src:
                parts.append(f'<section><h2>Steering</h2><img src="{e(src)}" alt="steering plot" style="max-width:100%"></section>')
        return _page(f"{self.title} · feature {r.index}", "".join(parts))

    def _mini(self, i: int) -> str:
        src = self.first_thumb.get(i)
        return f'<img class="heatmap mini" src="{e(src)}" alt="feature {i} map" width="44" height="44">' if src else ""

    def index_page(self) -> str:
        rows = []
        for r in self.run.records:
            ex = r.explanation
            bc = r.best_concept
            score = ex.primary_score if ex else None
            search = " ".join(
                [str(r.index), ex.text if ex else "", bc.concept if bc else ""] + [t for t, _ in r.top_logits[:5]]
            ).lower()
            rows.append(
                f'<tr class="feat" data-index="{r.index}" data-freq="{_num_attr(r.frac_nonzero)}" '
                f'data-f1="{_num_attr(bc.f1 if bc else None)}" data-score="{_num_attr(score)}" data-text="{e(search)}">'
                f'<td class="num"><a href="features/{r.index}.html">{r.index}</a></td>'
                f"<td>{self._mini(r.index)}</td>"
                f'<td>{e(ex.text) if ex else "<span class=muted>–</span>"}</td>'
                f'<td class="num">{e(_fmt(score))}</td><td>{e(bc.concept) if bc else "–"}</td>'
                f'<td class="num">{e(_fmt(bc.f1 if bc else None))}</td><td class="num">{e(_fmt(r.frac_nonzero))}</td>'
                f'<td class="num">{e(_fmt(r.max_activation))}</td></tr>'
            )
        meta = self.run.meta
        facts = ", ".join(f"{e(k)}: {e(meta[k])}" for k in ("model_name", "hook_name", "d_sae", "positions", "dataset", "n_studies") if meta.get(k) is not None)
        body = (
            f"<h1>{e(self.title)}</h1><p class=muted>{facts}</p>"
            '<p><input id="search" type="search" placeholder="search explanation, concept, index, logit token…" autofocus> '
            'sort by <select id="sort"><option value="index">index</option><option value="freq">frequency</option>'
            '<option value="f1">concept F1</option><option value="score">explanation score</option></select> '
            '<span id="count" class="muted"></span></p>'
            '<table id="features"><thead><tr><th>#</th><th>map</th><th>explanation</th><th>score</th><th>best concept</th><th>F1</th>'
            "<th>frequency</th><th>max act</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
        return _page(self.title, body, INDEX_JS)


def _num_attr(v: float | None) -> str:
    return "" if v is None else repr(float(v))


INDEX_JS = """
(function(){
  var q=document.getElementById('search'), s=document.getElementById('sort'), tb=document.querySelector('#features tbody');
  var rows=Array.prototype.slice.call(tb.querySelectorAll('tr.feat'));
  function num(r,k){var v=r.dataset[k]; return v===''?-Infinity:parseFloat(v);}
  function apply(){
    var t=q.value.trim().toLowerCase(), k=s.value, shown=0;
    rows.sort(function(a,b){return k==='index'?num(a,'index')-num(b,'index'):num(b,k)-num(a,k);});
    rows.forEach(function(r){var ok=!t||r.dataset.text.indexOf(t)>=0; r.style.display=ok?'':'none'; if(ok)shown++; tb.appendChild(r);});
    document.getElementById('count').textContent=shown+' of '+rows.length+' features';
  }
  q.addEventListener('input',apply); s.addEventListener('change',apply); apply();
})();
"""


def build_site(run: InterpretationRun, out_dir: str | Path, title: str | None = None) -> Path:
    """Write the static dashboard; returns the path of ``index.html``."""
    out = Path(out_dir)
    t = title or f"SAE features · {run.meta.get('model_name', 'model')} · {run.meta.get('hook_name', '')}".rstrip(" ·")
    site = _Site(run, out, t)
    for r in run.records:
        (out / "features" / f"{r.index}.html").write_text(site.feature_page(r), encoding="utf-8")
    index = out / "index.html"
    index.write_text(site.index_page(), encoding="utf-8")
    return index
