"""Audit reports: terminal (rich), JSON, Markdown, self-contained HTML and JUnit XML.

Each ``to_*`` function returns the report as text and, given a ``path``, also writes it atomically
(:mod:`memlaw.io`). A report path is an output the user named: an existing file there is replaced.

Conventions shared by the reports:

* records are listed worst first (not exact, then not locked, then lowest coverage);
* a *failing span* is a maximal run of non-locked tokens (p ≤ 0.5), shown as ``[start, end)``
  token positions within the target;
* JUnit tells the same story as memaudit's exit code: it has failures exactly when the gate fails.
  One ``testcase`` per gate threshold (``gate --min-coverage 0.99``: fails when that threshold
  does), then one per record. A record fails only when a per-record threshold failed and it is
  one of the records that made it fail: not exact under a failing ``--min-exact``, not locked
  under a failing ``--min-locked``. Otherwise a record's problems (not exact, not locked, failing
  spans) are detail in its ``system-out``. The thresholds and outcome are also testsuite
  ``properties``; ``tests`` = thresholds + records, ``errors`` = ``skipped`` = 0.
"""

from __future__ import annotations

import html
import json
import math
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

from memlaw.auditor.audit import AuditResult, Gate, RecordAudit
from memlaw.io import atomic_write_text, atomic_writer


def _gate_block(result: AuditResult, gate: Gate | None) -> dict:
    gate = gate or Gate()
    failures = gate.check(result.summary)
    return {"thresholds": gate.to_dict(), "active": gate.active, "passed": not failures, "failures": failures}


def _write(path, text: str) -> str:
    if path is not None:
        atomic_write_text(path, text)
    return text


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _visible(text: str) -> str:
    """Token text for one-line display: newlines, tabs and other control characters made visible."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("⏎")
        elif ch == "\t":
            out.append("→")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _summary_rows(s: dict) -> list[tuple[str, str]]:
    n, t = s["records"], s["target_tokens"]
    locked_tokens = s.get("locked_tokens", round(s["coverage"] * t))
    return [
        ("records", f"{n}"),
        ("target tokens", f"{t}"),
        ("coverage (p > 0.5)", f"{_pct(s['coverage'])} ({locked_tokens}/{t})"),
        ("exact records", f"{s['exact_records']}/{n} ({_pct(s['exact_records'] / n if n else 0)})"),
        ("locked records", f"{s['locked_records']}/{n} ({_pct(s['locked_records'] / n if n else 0)})"),
        ("mean loss", f"{s['mean_loss']:.4f} nats"),
    ]


COMPARE_ROWS = (("coverage", "coverage", "{:.4f}"), ("exact records", "exact_records", "{}"),
                ("locked records", "locked_records", "{}"), ("mean loss", "mean_loss", "{:.4f}"))


# --------------------------------------------------------------------------------------------
# JSON


def to_json(result: AuditResult, path=None, *, gate: Gate | None = None, tokens: bool = True) -> str | None:
    """Full per-token detail: ``summary``, ``gate``, ``records`` (each with ``index``, ``where``,
    ``exact``, ``locked``, ``log_likelihood``, ``anchor``, ``tokens`` [{id, text, p, argmax,
    margin, …}], ``spans`` [{start, end, text}], …), plus where the audit came from.
    ``tokens=False`` leaves out the per-token lists (spans, stubborn positions and anchors stay).
    Given a ``path`` the report is streamed there one record at a time (a million-token audit never
    sits in memory as one string) and None is returned; else the text is."""
    return _stream(_json_chunks(result, gate, tokens), path)


def _stream(chunks, path) -> str | None:
    """The joined text when ``path`` is None; else the chunks written there one by one (atomically)."""
    if path is None:
        return "".join(chunks)
    with atomic_writer(path) as f:
        for chunk in chunks:
            f.write(chunk)
    return None


def _json_chunks(result: AuditResult, gate: Gate | None, tokens: bool):
    head = {**result.head_dict(), "gate": _gate_block(result, gate)}
    keys = ["schema", "adapter", "base_model", "corpus", "summary", "gate", "repair", "conflicts", "warnings",
            "backend", "backend_note", "seconds"]
    # Readable head, one compact line per record (a corpus of thousands stays a manageable file).
    text = json.dumps({k: head[k] for k in keys if k in head}, indent=1, ensure_ascii=False, allow_nan=False)
    yield text[:-1].rstrip() + ',\n "records": [\n'
    for i, r in enumerate(result.records):
        yield ("  " if i == 0 else ",\n  ") + json.dumps(r.to_dict(tokens), ensure_ascii=False, allow_nan=False)
    yield ("\n" if result.records else "") + " ]\n}\n"


# --------------------------------------------------------------------------------------------
# Markdown


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|<>~])")


def _md(text: str) -> str:
    """Escape text for a Markdown table cell or paragraph (GitHub flavour)."""
    text = _visible(str(text))
    return _MD_SPECIAL.sub(r"\\\1", text).replace("&", "&amp;")


def _md_code(text: str) -> str:
    """Inline code that survives any backticks inside, and pipes in tables."""
    text = _visible(str(text)).replace("|", "\\|")
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fence_for(text: str) -> str:
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, run + 1)


def _marked_lines(r: RecordAudit, width: int = 100) -> list[str]:
    """The target as visible text with a caret line under every non-locked token, wrapped."""
    lines, top, bottom = [], "", ""
    for t in r.tokens:
        txt = _visible(t["text"]) or "∅"
        locked = t["p"] is not None and t["p"] > 0.5
        mark = (" " if locked else "^") * len(txt)
        if top and len(top) + len(txt) > width:
            lines += [top, bottom.rstrip()]
            top, bottom = "", ""
        top += txt
        bottom += mark
    if top:
        lines += [top, bottom.rstrip()]
    return lines


def _fmt_spans(r: RecordAudit, limit: int = 6) -> str:
    parts = [f"[{s['start']}, {s['end']}) {_md_code(s['text'])}" for s in r.spans[:limit]]
    if len(r.spans) > limit:
        parts.append(f"… {len(r.spans) - limit} more")
    return ", ".join(parts) if parts else "—"


def _repair_rows(result: AuditResult) -> list[tuple[str, str, str]]:
    before = (result.repair or {}).get("before") or {}
    rows = []
    for label, key, fmt in COMPARE_ROWS:
        if key in before:
            rows.append((label, fmt.format(before[key]), fmt.format(result.summary[key])))
    return rows


def to_markdown(result: AuditResult, path=None, *, gate: Gate | None = None, worst: int = 10) -> str:
    """A pull-request comment: summary table, gate result, the worst records with failing spans."""
    g = _gate_block(result, gate)
    s = result.summary
    name = Path(result.adapter).name if result.adapter else "model"
    verdict = ("✅ gate passed" if g["passed"] else "❌ gate failed") if g["active"] else "no gate"
    out = [f"## memaudit: {_md_code(name)} — {verdict}", ""]
    src = []
    if result.base_model.get("name"):
        src.append(f"base model {_md_code(result.base_model.get('requested') or result.base_model['name'])}")
    if result.corpus and result.corpus.get("path"):
        src.append(f"corpus {_md_code(Path(result.corpus['path']).name)}")
    if src:
        out += [" · ".join(src), ""]
    out += ["| metric | value |", "| --- | ---: |"]
    out += [f"| {k} | {v} |" for k, v in _summary_rows(s)]
    out.append("")
    if g["active"]:
        thresholds = (gate or Gate()).describe()
        if g["passed"]:
            out.append(f"**Gate passed** ({_md_code(thresholds)})")
        else:
            out.append(f"**Gate failed** ({_md_code(thresholds)}):")
            out.append("")
            out += [f"- {_md(f)}" for f in g["failures"]]
        out.append("")
    if result.repair:
        out += [f"### Repair ({_md(result.repair.get('method', '?'))}, {result.repair.get('steps', '?')} steps, "
                f"from {_md_code(Path(str(result.repair.get('repaired_from', '?'))).name)})", "",
                "| metric | before | after |", "| --- | ---: | ---: |"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in _repair_rows(result)]
        out.append("")
    for w in result.warnings:
        out.append(f"> ⚠️ {_md(w)}")
    if result.warnings:
        out.append("")
    failing = result.not_locked_records()
    shown = result.worst(worst)
    if not failing:
        out += ["Every record is locked: every target token has p > 0.5.", ""]
        return _write(path, "\n".join(out))
    out += [f"### Worst records ({len(shown)} of {failing} not locked)", "",
            "| # | where | exact | locked | coverage | anchor | failing spans |",
            "| ---: | --- | :---: | :---: | ---: | ---: | --- |"]
    for r in shown:
        locked_n = sum(1 for t in r.tokens if t["p"] is not None and t["p"] > 0.5)
        out.append(f"| {r.index} | {_md_code(r.where)} | {'✅' if r.exact else '❌'} | {'✅' if r.locked else '❌'} "
                   f"| {locked_n}/{r.n_tokens} | {'—' if r.anchor is None else r.anchor} | {_fmt_spans(r)} |")
    out.append("")
    out += ["<details><summary>Token detail (^ marks tokens with p ≤ 0.5)</summary>", ""]
    for r in shown:
        body = [f"key:    {_visible(r.key)}"] if r.key else []
        lines = _marked_lines(r)
        body += [("target: " if i == 0 else "        ") + ln if i % 2 == 0 else "        " + ln
                 for i, ln in enumerate(lines)]
        stub = ", ".join(f"{j}:{_visible(r.tokens[j]['text'])!r} p={r.tokens[j]['p']:.3f}" for j in r.stubborn[:12])
        body.append(f"stubborn: {stub}{' …' if len(r.stubborn) > 12 else ''}")
        text = "\n".join(body)
        fence = _fence_for(text)
        out += [f"**#{r.index}** {_md_code(r.where)}", "", fence, text, fence, ""]
    out += ["</details>", ""]
    return _write(path, "\n".join(out))


# --------------------------------------------------------------------------------------------
# HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;
color:#1d1d1f;padding:0 1rem}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}h3{font-size:1rem;margin:.2rem 0}
table.sum{border-collapse:collapse;margin:1rem 0}table.sum td{padding:.25rem .8rem;border-bottom:1px solid #ddd}
table.sum td.v{text-align:right;font-variant-numeric:tabular-nums}
.gate{padding:.5rem .8rem;border-radius:.4rem;display:inline-block;font-weight:600}
.pass{background:#d9f2dc;color:#14532d}.fail{background:#fde0de;color:#7f1d1d}.none{background:#eee}
.warn{background:#fff6d6;padding:.4rem .8rem;border-radius:.3rem;margin:.3rem 0}
.rec{border:1px solid #ddd;border-radius:.4rem;padding:.6rem .8rem;margin:.6rem 0}
.meta{color:#555;font-size:.85rem}.key{color:#666;font-family:ui-monospace,Menlo,Consolas,monospace;
white-space:pre-wrap;margin:.3rem 0}
.tg{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;line-height:1.9;word-break:break-all}
.t{border-radius:2px;padding:1px 0}.t.s{text-decoration:underline wavy #b91c1c}.t.w{outline:1.5px solid #b91c1c}
.b0{background:#f8696b}.b1{background:#f98370}.b2{background:#fa9d75}.b3{background:#fcb77a}
.b4{background:#fdd17f}.b5{background:#ffeb84}.b6{background:#e0e383}.b7{background:#c1da81}
.b8{background:#a2d07f}.b9{background:#63be7b}
.legend span{display:inline-block;padding:.1rem .45rem;font-size:.8rem;font-family:ui-monospace,monospace}
details{margin:.6rem 0}summary{cursor:pointer}
h1,h3,.meta,.key,table.sum td,li,.warn{overflow-wrap:anywhere}
.legend{line-height:1.9}.help{color:#444;font-size:.85rem;max-width:46rem}.help dt{font-weight:600;margin-top:.3rem}
.help dd{margin:0 0 0 1rem}
@media (max-width:600px){body{margin:1rem auto;padding:0 .6rem}table.sum td{padding:.2rem .4rem}}
"""

# What the marks on the page mean, in the design brief's words (docs/DESIGN.md, "Definitions").
_HELP = (
    ("p", "the probability the model gives the target token, reading the key and the true preceding "
          "target tokens (teacher forcing). Hover a token to see it."),
    ("locked (p > 0.5)", "a token with p > 0.5 is the greedy choice whatever the other tokens' scores; a record "
                         "whose tokens are all locked is reproduced verbatim, robustly."),
    ("wavy underline: p ≤ 0.5", "not locked: the token may or may not come out of greedy decoding."),
    ("outline: not greedy", "greedy decoding (always taking the most probable next token) would write a "
                            "different token here: the record does not come out verbatim."),
    ("anchor", "the first not-greedy token of a record: where greedy decoding derails, and everything after it "
               "is at risk."),
)


def _bucket(p) -> int:
    if p is None or not math.isfinite(p):
        return 0
    return min(9, max(0, int(p * 10)))


def _token_span(t: dict) -> str:
    p = t["p"] if t["p"] is not None else 0.0
    cls = ["t", f"b{_bucket(p)}"]
    if not p > 0.5:
        cls.append("s")
    if t["argmax"] != t["id"]:
        cls.append("w")
    margin = "?" if t["margin"] is None else f"{t['margin']:+.3f}"
    title = f"p={p:.4f} · argmax {t['argmax_text']!r} · margin {margin} · id {t['id']}"
    text = t["text"].replace("\n", "⏎\n") if t["text"] else "∅"
    return (f'<span class="{" ".join(cls)}" title="{html.escape(title, quote=True)}">'
            f"{html.escape(text, quote=True)}</span>")


def _record_html(r: RecordAudit) -> str:
    e = html.escape
    status = ("locked" if r.locked else "exact, not locked" if r.exact else "not exact")
    locked_n = sum(1 for t in r.tokens if t["p"] is not None and t["p"] > 0.5)
    meta = [f"#{r.index}", e(r.where), status, f"coverage {locked_n}/{r.n_tokens}"]
    if r.anchor is not None:
        meta.append(f'<span title="first not-greedy token: greedy decoding derails here">anchor at token '
                    f"{r.anchor}</span>")
    if r.log_likelihood is not None:
        meta.append(f"log-likelihood {r.log_likelihood:.3f}")
    spans = ", ".join(f"[{s['start']}, {s['end']}) {e(repr(s['text']))}" for s in r.spans)
    parts = [f'<div class="rec" id="r{r.index}">', f'<h3>{" · ".join(meta)}</h3>']
    if r.key:
        parts.append(f'<div class="key">{e(r.key)}</div>')
    parts.append('<div class="tg">' + "".join(_token_span(t) for t in r.tokens) + "</div>")
    if spans:
        parts.append(f'<div class="meta">failing spans: {spans}</div>')
    parts.append("</div>")
    return "\n".join(parts)


def to_html(result: AuditResult, path=None, *, gate: Gate | None = None) -> str:
    """A self-contained page (inline CSS, no script, no external resource): the summary, the gate,
    and every record as a per-token heat map (red p → 0, green p → 1; wavy underline: p ≤ 0.5;
    outline: not the greedy choice). Hover a token for p, the greedy choice and the margin."""
    result = result.for_display()  # capped, worst records first, with a note: 1M tokens ≈ 100 MB of HTML
    e = html.escape
    g = _gate_block(result, gate)
    name = Path(result.adapter).name if result.adapter else "model"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>memaudit — {e(name)}</title><style>{_CSS}</style></head><body>",
           f"<h1>memaudit: {e(name)}</h1>"]
    src = []
    if result.adapter:
        src.append(f"adapter {e(str(result.adapter))}")
    if result.base_model.get("name"):
        src.append(f"base model {e(str(result.base_model.get('requested') or result.base_model['name']))}")
    if result.corpus and result.corpus.get("path"):
        src.append(f"corpus {e(str(result.corpus['path']))}")
    if src:
        out.append(f'<p class="meta">{" · ".join(src)}</p>')
    if g["active"]:
        cls, word = ("pass", "Gate passed") if g["passed"] else ("fail", "Gate failed")
        out.append(f'<p><span class="gate {cls}">{word}</span> <span class="meta">'
                   f"{e((gate or Gate()).describe())}</span></p>")
        if g["failures"]:
            out.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in g["failures"]) + "</ul>")
    else:
        out.append('<p><span class="gate none">No gate</span></p>')
    out.append('<table class="sum">' + "".join(f'<tr><td>{e(k)}</td><td class="v">{e(v)}</td></tr>'
                                             for k, v in _summary_rows(result.summary)) + "</table>")
    if result.repair:
        out.append(f"<h2>Repair ({e(str(result.repair.get('method', '?')))}, "
                   f"{e(str(result.repair.get('steps', '?')))} steps)</h2>")
        out.append('<table class="sum"><tr><td></td><td class="v">before</td><td class="v">after</td></tr>'
                   + "".join(f'<tr><td>{e(a)}</td><td class="v">{e(b)}</td><td class="v">{e(c)}</td></tr>'
                             for a, b, c in _repair_rows(result)) + "</table>")
    for w in result.warnings:
        out.append(f'<div class="warn">{e(w)}</div>')
    out.append('<p class="legend">p: ' + "".join(f'<span class="b{i}">{i / 10:.1f}</span>' for i in range(10))
               + ' <span class="t s">p ≤ 0.5</span> <span class="t w">not greedy</span>'
               + ' <a href="#help">what these mean</a></p>')
    ordered = sorted(result.records, key=lambda r: (r.locked, r.exact, r.coverage, r.index))
    failing = [r for r in ordered if not r.locked]
    locked = [r for r in ordered if r.locked]
    out.append(f"<h2>Records not locked ({len(failing)})</h2>")
    out += [_record_html(r) for r in failing] or ["<p>None: every target token has p &gt; 0.5.</p>"]
    if locked:
        # Open when nothing fails: a passing adapter's page is its heat map, not an empty page.
        out.append(f"<details{'' if failing else ' open'}><summary>Locked records ({len(locked)})</summary>")
        out += [_record_html(r) for r in locked]
        out.append("</details>")
    out.append('<h2 id="help">Reading this page</h2><dl class="help">'
               + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _HELP) + "</dl>")
    out.append("</body></html>\n")
    return _write(path, "\n".join(out))


# --------------------------------------------------------------------------------------------
# JUnit XML


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _x(text) -> str:
    """Text XML 1.0 can carry (escaping is ElementTree's job; it cannot escape control characters)."""
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _failure_message(r: RecordAudit) -> str:
    head = "not exact" if not r.exact else "not locked"
    parts = [head]
    if r.anchor is not None:
        parts.append(f"greedy decoding derails at token {r.anchor} "
                     f"(wants {r.tokens[r.anchor]['text']!r}, gets {r.tokens[r.anchor]['argmax_text']!r})")
    spans = "; ".join(f"[{s['start']}, {s['end']}) {s['text']!r}" for s in r.spans)
    parts.append(f"failing spans: {spans}" if spans else "no failing span")
    return ", ".join(parts)


def _token_lines(r: RecordAudit) -> str:
    lines = [f"key: {r.key!r}", f"target: {r.target!r}", "pos  p        margin   token  (greedy)"]
    for j, t in enumerate(r.tokens):
        flag = "" if t["p"] is not None and t["p"] > 0.5 else "  <- p <= 0.5"
        greedy = "" if t["argmax"] == t["id"] else f"  ({t['argmax_text']!r})"
        margin = float("nan") if t["margin"] is None else t["margin"]
        lines.append(f"{j:<4} {t['p'] or 0:<8.4f} {margin:<+8.3f} {t['text']!r}{greedy}{flag}")
    return "\n".join(lines)


def _gate_cases(result: AuditResult, gate: Gate | None) -> list[tuple[str, str | None]]:
    """(testcase name, failure message or None) for every threshold the gate holds."""
    gate = gate or Gate()
    out = []
    for key, opt in Gate._OPTIONS.items():
        want = getattr(gate, key)
        if want is None:
            continue
        fails = Gate(**{key: want}).check(result.summary)
        out.append((f"gate {opt} {want:g}", fails[0] if fails else None))
    if gate.fail_on_no_effect:
        fails = Gate(fail_on_no_effect=True).check(result.summary)
        out.append(("gate --fail-on-no-effect", fails[0] if fails else None))
    return out


def _failing_records(result: AuditResult, gate: Gate | None):
    """Which records fail their testcase (a test on a record), how many, and why: only those that
    made a failing per-record threshold fail (--min-locked: not locked; --min-exact: not exact)."""
    gate = gate or Gate()
    if gate.min_locked is not None and Gate(min_locked=gate.min_locked).check(result.summary):
        return (lambda r: not r.locked), result.not_locked_records(), "--min-locked"
    if gate.min_exact is not None and Gate(min_exact=gate.min_exact).check(result.summary):
        return (lambda r: not r.exact), result.not_exact_records(), "--min-exact"
    return (lambda r: False), 0, None


def to_junit(result: AuditResult, path=None, *, gate: Gate | None = None) -> str | None:
    """JUnit XML for CI, failing exactly when the gate does (see the module docstring). Given a
    ``path`` it is streamed there one testcase at a time and None is returned (a million-token
    audit's XML, ~60 MB, never sits in memory as one tree); else the text is."""
    return _stream(_junit_chunks(result, gate), path)


def _junit_chunks(result: AuditResult, gate: Gate | None):
    import xml.etree.ElementTree as ET

    g = _gate_block(result, gate)
    name = Path(result.adapter).name if result.adapter else "model"
    gate_cases = _gate_cases(result, gate)
    fails, n_failing_records, failed_by = _failing_records(result, gate)
    n = len(gate_cases) + len(result.records)
    n_failed = sum(1 for _, f in gate_cases if f) + n_failing_records
    t = f"{result.seconds:.3f}"
    root = ET.Element("testsuites", name="memaudit", tests=str(n), failures=str(n_failed), errors="0", time=t)
    suite = ET.SubElement(root, "testsuite", name=_x(f"memaudit.{name}"), tests=str(n), failures=str(n_failed),
                          errors="0", skipped="0", time=t,
                          timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          hostname=_x(socket.gethostname() or "localhost"))
    # The two enclosing tags come from ElementTree itself (a marker child split off), so the
    # streamed file is byte for byte what indenting the whole tree would give.
    ET.SubElement(suite, "memlaw-children")
    ET.indent(root, space=" ")
    head, tail = ET.tostring(root, encoding="unicode").split("<memlaw-children />")
    yield '<?xml version="1.0" encoding="UTF-8"?>\n' + head

    def children():
        props = ET.Element("properties")
        s = result.summary
        for k in ("records", "target_tokens", "coverage", "exact_records", "locked_records", "mean_loss"):
            ET.SubElement(props, "property", name=k, value=_x(s[k]))
        if result.adapter:
            ET.SubElement(props, "property", name="adapter", value=_x(result.adapter))
        ET.SubElement(props, "property", name="gate",
                      value=_x((gate or Gate()).describe() if g["active"] else "none"))
        ET.SubElement(props, "property", name="gate_passed", value=str(g["passed"]).lower())
        for i, f in enumerate(g["failures"]):
            ET.SubElement(props, "property", name=f"gate_failure_{i}", value=_x(f))
        yield props
        for case_name, failure in gate_cases:
            case = ET.Element("testcase", classname=_x(f"memaudit.{name}.gate"), name=_x(case_name), time="0")
            if failure:
                ET.SubElement(case, "failure", type="GateFailed", message=_x(failure))
            yield case
        per = result.seconds / len(result.records) if result.records else 0.0
        for r in result.records:
            case = ET.Element("testcase", classname=_x(f"memaudit.{name}.records"),
                              name=_x(f"record {r.index} ({r.where})"), time=f"{per:.4f}")
            if fails(r):
                fail = ET.SubElement(case, "failure", type="NotExact" if not r.exact else "NotLocked",
                                     message=_x(f"{_failure_message(r)} (fails {failed_by})"))
                fail.text = _x(_token_lines(r))
            elif not r.locked:
                why = "not exact" if not r.exact else "exact but not locked (fragile)"
                out = ET.SubElement(case, "system-out")
                out.text = _x(f"{why}, no failing threshold asks this record to pass: {_failure_message(r)}\n"
                              f"{_token_lines(r)}")
            yield case
        summary_out = ET.Element("system-out")
        lines = [f"{k}: {v}" for k, v in _summary_rows(s)]
        if g["active"]:
            lines.append(f"gate ({(gate or Gate()).describe()}): {'passed' if g['passed'] else 'failed'}")
            lines += [f"  {f}" for f in g["failures"]]
        else:
            lines.append("no gate: pass --min-coverage, --min-exact, --min-locked or --max-mean-loss to gate")
        summary_out.text = _x("\n".join(lines))
        yield summary_out

    prev = None
    for child in children():  # one element in hand at a time; each ends with the next one's indent
        if prev is not None:
            ET.indent(prev, space=" ", level=2)
            prev.tail = "\n  "
            yield ET.tostring(prev, encoding="unicode")
        prev = child
    ET.indent(prev, space=" ", level=2)
    prev.tail = None
    yield ET.tostring(prev, encoding="unicode") + tail + "\n"


def write_reports(result: AuditResult, *, json_path=None, markdown=None, html_path=None, junit=None,
                  gate: Gate | None = None, worst: int = 10, json_tokens: bool = True) -> list[Path]:
    """Write every report given a path; returns the paths written."""
    written = []
    for p, fn in ((json_path, lambda p: to_json(result, p, gate=gate, tokens=json_tokens)),
                  (markdown, lambda p: to_markdown(result, p, gate=gate, worst=worst)),
                  (html_path, lambda p: to_html(result, p, gate=gate)),
                  (junit, lambda p: to_junit(result, p, gate=gate))):
        if p is not None:
            fn(p)
            written.append(Path(p))
    return written
