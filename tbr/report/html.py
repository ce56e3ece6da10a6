"""report.html: one self-contained file (inline CSS, base64 PNGs, embedded JSON, vanilla JS).

It must open offline from a file:// URL, so it loads nothing: the Content-Security-Policy below
forbids every external fetch. Model responses are untrusted text (they contain <, >, & and quotes,
sometimes on purpose): Python-side text goes through html.escape, the sample JSON is embedded with
<, > and & as \\u escapes so no response can close the <script> element, and the browser code only
ever writes text with textContent, never innerHTML.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any

from tbr.report.tables import Cell, Table, Value, fmt, seeds_text

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:16px 24px 64px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0;padding-left:18px}.note{color:#555;font-size:12px;margin:4px 0 8px}
.tw{overflow-x:auto}table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f0f3;position:sticky;top:0}td.t,th.t{text-align:left}
.ci{color:#888;font-size:11px;margin-left:4px}.na{color:#aaa}
figure{margin:12px 0;background:#fff;border:1px solid #e3e3e3;padding:8px;display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto}figcaption{font-size:12px;color:#555}
.controls{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;background:#fff;border:1px solid #e3e3e3;padding:8px 12px}
.controls label{font-size:12px;color:#444}select,input[type=search]{font:inherit;font-size:13px;padding:2px 4px}
.browser{display:grid;grid-template-columns:minmax(260px,1fr) 2.4fr;gap:12px;margin-top:8px}
#tbr-list{background:#fff;border:1px solid #e3e3e3;max-height:640px;overflow-y:auto}
.item{padding:6px 8px;border-bottom:1px solid #eee;cursor:pointer;font-size:12px}
.item:hover{background:#f4f7ff}.item.sel{background:#e6eeff}
.badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:11px;margin-right:4px;color:#fff;background:#888}
.b-full_compliance{background:#2e7d32}.b-full_refusal{background:#c62828}.b-partial_refusal{background:#ef6c00}
.b-error{background:#6a1b9a}.b-safe{background:#1565c0}.b-unsafe{background:#4e342e}
.prompt{background:#fff;border:1px solid #e3e3e3;padding:8px 10px;white-space:pre-wrap;margin-bottom:8px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:10px}.cols.one{grid-template-columns:1fr}
.side{background:#fff;border:1px solid #e3e3e3;padding:8px 10px;min-width:0}
.side h3{font-size:14px;margin:0 0 6px}
.refl{background:#fff8d6;border-left:4px solid #e0b000;padding:6px 8px;white-space:pre-wrap;margin:6px 0}
.ans{white-space:pre-wrap;padding:6px 8px;border-left:4px solid #ccc;margin:6px 0}
.lbl{font-size:11px;color:#777;text-transform:uppercase;letter-spacing:.04em}
.raw{font-size:12px;color:#444;white-space:pre-wrap}.empty{color:#888;padding:12px}
"""

# Vanilla JS for the sample browser. Text only ever reaches the DOM through textContent.
JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("tbr-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function option(sel, value, text) { var o = el("option", null, text); o.value = value; sel.appendChild(o); }
  function isRefusal(l) { return l === "full_refusal" || l === "partial_refusal"; }
  function verdictOf(s) { return s.error ? "error" : (s.verdict || "none"); }
  function key(s) { return s.suite + "\u0000" + s.id; }

  var names = DATA.variants.map(function (v) { return v.name; });
  var index = {};  // variant -> key -> sample, for the side-by-side view
  names.forEach(function (n) {
    index[n] = {};
    (DATA.samples[n] || []).forEach(function (s) { index[n][key(s)] = s; });
  });
  var suites = [];
  names.forEach(function (n) { (DATA.samples[n] || []).forEach(function (s) {
    if (suites.indexOf(s.suite) < 0) suites.push(s.suite); }); });

  var selA = $("tbr-a"), selB = $("tbr-b"), selSuite = $("tbr-suite"), selFilter = $("tbr-filter");
  var search = $("tbr-search"), differ = $("tbr-differ"), list = $("tbr-list"), detail = $("tbr-detail");
  names.forEach(function (n) { option(selA, n, n); option(selB, n, n); });
  option(selB, "", "(none)");
  if (names.length > 1) selB.value = names[names.length - 1]; else selB.value = "";
  option(selSuite, "", "all suites");
  suites.forEach(function (s) { option(selSuite, s, s); });
  var selected = null;

  function matches(s) {
    if (selSuite.value && s.suite !== selSuite.value) return false;
    var f = selFilter.value, v = verdictOf(s);
    if (f === "false_refusal" && !(s.label === "safe" && isRefusal(v))) return false;
    if (f === "missed_unsafe" && !(s.label === "unsafe" && v === "full_compliance")) return false;
    if (f === "refusal" && !isRefusal(v)) return false;
    if (f === "compliance" && v !== "full_compliance") return false;
    if (f === "error" && v !== "error") return false;
    if (f === "reflection" && !s.reflection) return false;
    if (differ.checked) {
      var other = selB.value ? index[selB.value][key(s)] : null;
      if (!other || verdictOf(other) === v) return false;
    }
    var q = search.value.trim().toLowerCase();
    if (q && (s.prompt + "\n" + s.response).toLowerCase().indexOf(q) < 0) return false;
    return true;
  }

  function badge(text, cls) { return el("span", "badge b-" + cls, text); }

  function renderList() {
    list.textContent = "";
    var rows = (DATA.samples[selA.value] || []).filter(matches);
    var shown = rows.slice(0, 500);
    $("tbr-count").textContent = rows.length + " match" + (rows.length === 1 ? "" : "es") +
      (rows.length > shown.length ? " (first " + shown.length + " listed)" : "");
    if (!rows.length) { list.appendChild(el("div", "empty", "No samples match these filters.")); }
    shown.forEach(function (s) {
      var item = el("div", "item");
      item.setAttribute("data-key", key(s));
      if (selected === key(s)) item.className += " sel";
      item.appendChild(badge(verdictOf(s).replace("_", " "), verdictOf(s)));
      item.appendChild(badge(s.label || "?", s.label || "none"));
      item.appendChild(el("span", null, "[" + s.suite + (s.type ? " / " + s.type : "") + "] "));
      item.appendChild(el("span", null, s.prompt.length > 140 ? s.prompt.slice(0, 140) + "…" : s.prompt));
      item.addEventListener("click", function () { selected = key(s); renderList(); renderDetail(); });
      list.appendChild(item);
    });
  }

  function side(variant, s) {
    var box = el("div", "side");
    box.appendChild(el("h3", null, variant));
    if (!s) { box.appendChild(el("div", "empty", "This variant has no sample for this prompt.")); return box; }
    var head = el("div");
    head.appendChild(badge(verdictOf(s).replace("_", " "), verdictOf(s)));
    box.appendChild(head);
    if (s.reflection) {
      box.appendChild(el("div", "lbl", "safety reflection"));
      box.appendChild(el("div", "refl", s.reflection));
      box.appendChild(el("div", "lbl", "answer"));
      box.appendChild(el("div", "ans", s.answer !== null && s.answer !== undefined ? s.answer : s.response));
    } else {
      box.appendChild(el("div", "lbl", "response (no reflection found)"));
      box.appendChild(el("div", "ans", s.response));
    }
    var judges = Object.keys(s.verdicts || {});
    if (judges.length) {
      var d = el("details");
      d.appendChild(el("summary", "lbl", "judge verdicts (" + judges.length + ")"));
      judges.forEach(function (j) {
        var v = s.verdicts[j] || {};
        var row = el("div", "raw");
        row.appendChild(badge(v.error ? "error" : (v.label || "?"), v.error ? "error" : (v.label || "none")));
        row.appendChild(el("b", null, j + ": "));
        row.appendChild(el("span", null, v.error ? v.error : (v.raw || "")));
        d.appendChild(row);
      });
      box.appendChild(d);
    }
    return box;
  }

  function renderDetail() {
    detail.textContent = "";
    if (selected === null) {
      detail.appendChild(el("div", "empty", "Select a prompt on the left to read the responses."));
      return;
    }
    var a = index[selA.value] ? index[selA.value][selected] : null;
    var b = selB.value && selB.value !== selA.value ? index[selB.value][selected] : null;
    var any = a || b;
    if (!any) { detail.appendChild(el("div", "empty", "Not in this variant.")); return; }
    var p = el("div", "prompt");
    var meta = el("div", "lbl", any.suite + " · " + (any.type || "—") + " · " + (any.label || "?") + " · id " + any.id);
    p.appendChild(meta);
    p.appendChild(el("div", null, any.prompt));
    detail.appendChild(p);
    var cols = el("div", "cols" + (b || (selB.value && selB.value !== selA.value) ? "" : " one"));
    cols.appendChild(side(selA.value, a));
    if (selB.value && selB.value !== selA.value) cols.appendChild(side(selB.value, b));
    detail.appendChild(cols);
  }

  [selA, selB, selSuite, selFilter, differ].forEach(function (e) {
    e.addEventListener("change", function () { renderList(); renderDetail(); });
  });
  search.addEventListener("input", renderList);
  renderList();
  renderDetail();
  document.body.setAttribute("data-ready", "1");
})();
"""


def _cell(v: Value, text_col: bool) -> str:
    cls = ' class="t"' if text_col else ""
    if v is None:
        return f'<td{cls}><span class="na">—</span></td>'
    if isinstance(v, Cell):
        ci = (
            f'<span class="ci">[{v.lo:.2f}, {v.hi:.2f}]</span>'
            if v.lo is not None and v.hi is not None
            else ""
        )
        if v.signed and v.lo is not None and v.hi is not None:
            ci = f'<span class="ci">[{v.lo:+.2f}, {v.hi:+.2f}]</span>'
        seeds = f'<span class="ci">{html.escape(seeds_text(v))}</span>' if seeds_text(v) else ""
        n = f' title="n={v.n}"' if v.n else ""
        return f"<td{n}>{v.value:{'+' if v.signed else ''}.2f}{ci}{seeds}</td>"
    return f"<td{cls}>{html.escape(fmt(v))}</td>"


def table(t: Table) -> str:
    # Columns of names and paths read left-aligned, columns of numbers right-aligned.
    text = [not any(isinstance(r[i], Cell) for r in t.rows) for i in range(len(t.header))]
    head = "".join(
        (f'<th class="t">{html.escape(h)}</th>' if text[i] else f"<th>{html.escape(h)}</th>")
        for i, h in enumerate(t.header)
    )
    body = "".join("<tr>" + "".join(_cell(c, text[i]) for i, c in enumerate(r)) + "</tr>" for r in t.rows)
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return (
        f'<h2>{html.escape(t.title)}</h2>{note}<div class="tw"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def csp(script: str) -> str:
    """Nothing may load, and only our own script may run (allowed by its hash): an injected inline
    handler such as onerror=… would be refused too, a second line of defence behind the escaping."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def embed_json(obj: Any) -> str:
    """JSON that is safe inside <script>: no "</script>", "<!--" or "&" can survive escaping."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(
    title: str, meta: list[str], tables: list[Table], figures: list[tuple[str, Path]], data: dict[str, Any]
) -> str:
    figs = "".join(
        f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}"><figcaption>{html.escape(cap)}</figcaption></figure>'
        for cap, p in figures
    )
    n_samples = sum(len(v) for v in data["samples"].values())
    browser = f"""
<h2>Sample browser</h2>
<p class="note">{n_samples} judged samples. A false refusal is a safe-labelled prompt that the primary judge
({html.escape(str(data.get("judge") or "first judge"))}) labelled a full or partial refusal. Pick a second
variant to read both responses to the same prompt side by side; the safety reflection is highlighted.</p>
<div class="controls">
<label>variant A <select id="tbr-a"></select></label>
<label>compare with B <select id="tbr-b"></select></label>
<label>suite <select id="tbr-suite"></select></label>
<label>show <select id="tbr-filter">
<option value="false_refusal">false refusals (safe prompt refused)</option>
<option value="missed_unsafe">unsafe prompt answered</option>
<option value="refusal">all refusals</option>
<option value="compliance">all full compliance</option>
<option value="reflection">with a reflection</option>
<option value="error">judge errors</option>
<option value="all">all samples</option>
</select></label>
<label><input type="checkbox" id="tbr-differ"> only where A and B differ</label>
<label>search <input type="search" id="tbr-search" placeholder="prompt or response text"></label>
<span class="note" id="tbr-count"></span>
</div>
<div class="browser"><div id="tbr-list"></div><div id="tbr-detail"></div></div>"""
    meta_html = "".join(f"<li>{html.escape(m)}</li>" for m in meta)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp(JS)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>{html.escape(title)}</h1><ul class="meta">{meta_html}</ul>
{table(tables[0])}{table(tables[1])}
<h2>Figures</h2>{figs or '<p class="note">No figure: no variant has the suites they need.</p>'}
{"".join(table(t) for t in tables[2:])}
{browser}
</main>
<script type="application/json" id="tbr-data">{embed_json(data)}</script>
<script>{JS}</script>
</body></html>
"""
