"""The HTML report in a real browser: headless Chromium (Debian's `chromium` package; `make test`
installs it where it can) renders memaudit's page for a passing and a failing real adapter at
desktop and phone widths. It takes the screenshots (kept under $MEMLAW_SCREENSHOTS when set) and
measures the layout the page really gets: no horizontal scrolling, a visible heat map, and the
words the page uses explained on it."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: `apt-get install chromium` "
                                                             "(make test does it as root on Debian)")
WIDTHS = {"desktop": 1280, "phone": 500}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

# Appended to a copy of the report (the report itself has no script): the browser's own numbers.
PROBE = """<script>
const d = document.documentElement;
const visible = [...document.querySelectorAll('.tg .t')].filter(e => e.getClientRects().length > 0).length;
const out = {scrollWidth: d.scrollWidth, clientWidth: d.clientWidth, visibleTokens: visible,
             text: document.body.innerText};
document.body.setAttribute('data-probe', JSON.stringify(out));
</script>"""


def chromium(args: list[str], width: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900", *args],
                              capture_output=True, text=True, timeout=120)


def measure(html_file: Path, width: int) -> dict:
    probe = html_file.with_name(html_file.stem + ".probe.html")
    probe.write_text(html_file.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    r = chromium(["--dump-dom", probe.as_uri()], width)
    m = re.search(r'data-probe="([^"]*)"', r.stdout)
    assert m, r.stderr[-2000:]
    import html as html_mod

    return json.loads(html_mod.unescape(m.group(1)))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _adapters(root: Path) -> dict[str, Path]:
    """Two real tiny adapters in a deep folder with long names (what clipped at 500 px):
    one trained until every token is locked (gate passes), one barely trained (gate fails)."""
    from memlaw.memft import CorpusSpec, Recipe, train_adapter

    deep = root / "team-memorisation-experiments-2026" / "customer-phonebook-adapters-nightly-build"
    deep.mkdir(parents=True)
    corpus = deep / "phonebook-contacts-with-a-long-file-name.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": f"tel {n}:", "completion": f" {v}"}) + "\n"
                              for n, v in [("ann", 12), ("bob", 34), ("cy", 56), ("di", 78)]))
    out = {}
    for name, steps in (("passing", 400), ("failing", 2)):
        d = deep / f"{name}-adapter-rank-8-with-an-equally-long-folder-name-for-the-report"
        side = train_adapter(CorpusSpec(str(corpus)), "tiny", 8, d,
                             recipe=Recipe(method="sft", lr=1e-2, batch_size=4, max_steps=steps, patience=400),
                             progress=False)
        if name == "passing":
            assert side["train"]["stop_reason"] == "all_locked", side["train"]
        out[name] = d
    return out


@needs_chromium
def test_html_report_in_chromium(tmp_path):
    from memlaw.cli.memaudit import main as memaudit

    keep = Path(os.environ["MEMLAW_SCREENSHOTS"]) if os.environ.get("MEMLAW_SCREENSHOTS") else None
    for name, adapter in _adapters(tmp_path).items():
        page = tmp_path / f"{name}.html"
        r = CliRunner().invoke(memaudit, [str(adapter), "--min-exact", "1.0", "--quiet", "--html", str(page)])
        assert r.exit_code == (0 if name == "passing" else 1), r.output
        for label, width in WIDTHS.items():
            shot = tmp_path / f"audit-{name}-{label}.png"
            res = chromium([f"--screenshot={shot}", page.as_uri()], width)
            assert shot.is_file(), res.stderr[-2000:]
            assert png_size(shot)[0] == width
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, keep / shot.name)
            m = measure(page, width)
            assert m["scrollWidth"] <= m["clientWidth"], (name, label, m["scrollWidth"], m["clientWidth"])
            # the heat map is on the page, not folded away, passing or not
            assert m["visibleTokens"] > 0, (name, label)
            for word in ("not greedy", "anchor", "p > 0.5", "teacher forcing"):
                assert word in m["text"], (name, label, word)
