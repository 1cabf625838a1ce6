"""memlaw.auditor and `memaudit`: real tiny model, real PEFT adapters, no mocks.

Two adapters are trained once per module on a small key → value corpus and stopped as soon as
*some* records are exact and some are not (a scoring pass after every step decides), so the tests
do not depend on how fast the tiny model learns:

* ``memft``: :func:`memlaw.memft.train_adapter` (all linear layers, rank 4, alpha 2·rank, sidecar);
* ``plain``: a hand-written PEFT loop on ``q_proj,v_proj`` only (rank 16, alpha 32), saved with
  ``save_pretrained`` and no sidecar, ``base_model_name_or_path`` set to ``tiny``.

JUnit convention checked here: one testcase per record; a record fails when it is not exact
(``fail_on="exact"``, the default) — or not locked when the gate has ``--min-locked``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from memlaw.auditor.audit import AuditResult, Gate, audit, audit_adapter
from memlaw.auditor.reports import to_html, to_json, to_junit, to_markdown
from memlaw.cli.memaudit import main as memaudit
from memlaw.errors import UserError

N_RECORDS = 24
pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.usefixtures("one_thread")]  # one_thread: see conftest.py


def _mixed(summary: dict) -> bool:
    """Some records exact and some not, with room on both sides."""
    n = summary["records"]
    return 0.2 * n <= summary["exact_records"] <= 0.8 * n


def _write_corpus(path: Path) -> Path:
    rng = random.Random(11)
    rows = [{"prompt": f"k{i:02d}:", "completion": " " + "".join(rng.choice("abcdefgh") for _ in range(5))}
            for i in range(N_RECORDS - 1)]
    # text that needs escaping in every report format
    rows.append({"prompt": "k<&>|`:", "completion": ' x<y&"z>|'})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train_memft(corpus: Path, out: Path) -> dict:
    from memlaw.memft import CorpusSpec, Recipe, train_adapter
    from memlaw.models import load_base
    from memlaw.corpus import encode_records
    from memlaw.scoring import score, summarize

    base = load_base("tiny")
    spec = CorpusSpec(str(corpus))
    encoded = encode_records(base.tokenizer, spec.read())

    def on_epoch(entry):  # base.model carries the LoRA layers PEFT injected into it
        return _mixed(summarize(score(base.model, encoded)))

    side = train_adapter(spec, "tiny", 4, out, recipe=Recipe(method="sft", lr=1e-2, batch_size=N_RECORDS,
                                                              max_steps=200, patience=200),
                         progress=False, on_epoch=on_epoch, base=base)
    assert side["train"]["stop_reason"] == "callback", side["train"]
    return side


def _train_plain_peft(corpus: Path, out: Path) -> None:
    """What another trainer would do: plain PEFT, attention modules only, HF-style masked labels."""
    from helpers import train_plain_peft
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import load_base

    base = load_base("tiny")
    encoded = encode_records(base.tokenizer, read_corpus(corpus))
    model = train_plain_peft(base, encoded, rank=16, alpha=32, lr=2e-2, max_steps=300, pad_id=0, stop=_mixed)
    if model is None:
        pytest.fail("the plain PEFT adapter never reached a mix of exact and non-exact records")
    model.save_pretrained(str(out))
    cfg_file = out / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = "tiny"
    cfg_file.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def env(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("audit")
    corpus = _write_corpus(root / "kv.jsonl")
    memft_dir, plain_dir = root / "memft-r4", root / "plain-qv"
    _train_memft(corpus, memft_dir)
    _train_plain_peft(corpus, plain_dir)
    return {"root": root, "corpus": corpus, "memft": memft_dir, "plain": plain_dir}


@pytest.fixture(scope="module")
def audits(env):
    return {"memft": audit_adapter(env["memft"]),  # corpus from memlaw.json, base from adapter_config
            "plain": audit_adapter(env["plain"], corpus=env["corpus"])}


def run(*args):
    result = CliRunner().invoke(memaudit, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def tree_hashes(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# the verdicts


@pytest.mark.parametrize("which", ["memft", "plain"])
def test_exact_matches_greedy_generation(env, audits, which):
    import torch

    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import attach_adapter, load_base

    result = audits[which]
    exact = [r.exact for r in result.records]
    assert any(exact) and not all(exact), "need both exact and non-exact records"
    base = load_base("tiny")
    model = attach_adapter(base, env[which])
    encoded = encode_records(base.tokenizer, read_corpus(env["corpus"]))
    assert len(encoded) == len(result.records) == N_RECORDS
    with torch.inference_mode():
        for e, r in zip(encoded, result.records):
            key = torch.tensor([e.key_ids])
            out = model.generate(input_ids=key, attention_mask=torch.ones_like(key), do_sample=False,
                                 max_new_tokens=e.n_target, pad_token_id=0)
            generated = out[0, len(e.key_ids):].tolist()
            assert (generated == list(e.target_ids)) == r.exact, (which, r.index, generated, e.target_ids)
            if not r.exact:  # greedy derails exactly at the anchor
                assert generated[:r.anchor] == list(e.target_ids[:r.anchor])
                assert generated[r.anchor] == r.tokens[r.anchor]["argmax"] != e.target_ids[r.anchor]


def test_record_details_are_consistent(audits):
    for result in audits.values():
        s = result.summary
        assert set(s) >= {"records", "target_tokens", "coverage", "exact_records", "locked_records", "mean_loss"}
        for r in result.records:
            locked = [t["p"] > 0.5 for t in r.tokens]
            assert r.locked == all(locked)
            assert r.exact == all(t["argmax"] == t["id"] for t in r.tokens)
            assert r.stubborn == [j for j, ok in enumerate(locked) if not ok]
            covered = {j for sp in r.spans for j in range(sp["start"], sp["end"])}
            assert covered == set(r.stubborn)
            if r.locked:
                assert r.exact  # p > 0.5 makes the token the argmax
        worst = result.worst(5)
        assert all(not r.locked for r in worst)
        assert [r.exact for r in worst] == sorted(r.exact for r in worst)


def test_audit_of_a_model_in_hand_matches_the_folder(env, audits):
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import attach_adapter, load_base

    base = load_base("tiny")
    model = attach_adapter(base, env["plain"])
    records = read_corpus(env["corpus"])
    result = audit(model, base, encode_records(base.tokenizer, records), records)
    assert isinstance(result, AuditResult)
    # audit() of a model in hand makes no base-model comparison: the folder's audit adds "effect"
    assert result.summary == {k: v for k, v in audits["plain"].summary.items() if k != "effect"}
    assert audits["plain"].summary["effect"]["no_effect"] is False


# --------------------------------------------------------------------------------------------
# reports


def test_json_report(env, audits, tmp_path):
    result = audits["memft"]
    path = tmp_path / "audit.json"
    to_json(result, path, gate=Gate(min_exact=1.0))
    d = json.loads(path.read_text(encoding="utf-8"))
    s = d["summary"]
    assert {"records", "target_tokens", "coverage", "exact_records", "locked_records", "mean_loss"} <= set(s)
    recs = d["records"]
    assert len(recs) == s["records"] == N_RECORDS
    for r in recs:
        assert {"index", "where", "exact", "locked", "log_likelihood", "anchor", "tokens", "spans"} <= set(r)
        for t in r["tokens"]:
            assert {"id", "text", "p", "argmax", "margin"} <= set(t)
        for sp in r["spans"]:
            assert {"start", "end", "text"} <= set(sp)
    tokens = [t for r in recs for t in r["tokens"]]
    assert s["target_tokens"] == len(tokens)
    assert s["exact_records"] == sum(r["exact"] for r in recs)
    assert s["locked_records"] == sum(r["locked"] for r in recs)
    assert s["coverage"] == pytest.approx(sum(t["p"] > 0.5 for t in tokens) / len(tokens))
    assert s["mean_loss"] == pytest.approx(-sum(r["log_likelihood"] for r in recs) / len(tokens), rel=1e-6)
    assert d["gate"]["passed"] is False and d["gate"]["failures"]
    assert recs[-1]["target"] == ' x<y&"z>|'


def _cells(row: str) -> list[str]:
    """Split a Markdown table row on unescaped pipes."""
    parts, cur, i = [], "", 0
    while i < len(row):
        if row[i] == "\\" and i + 1 < len(row):
            cur += row[i:i + 2]
            i += 2
            continue
        if row[i] == "|":
            parts.append(cur)
            cur = ""
        else:
            cur += row[i]
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts[1:-1]]


def test_markdown_report(audits, tmp_path):
    result = audits["memft"]
    text = to_markdown(result, tmp_path / "audit.md", gate=Gate(min_exact=1.0), worst=N_RECORDS)
    assert (tmp_path / "audit.md").read_text(encoding="utf-8") == text
    assert "Gate failed" in text and "--min-exact" in text
    lines = text.splitlines()
    tables, cur = [], []
    for ln in lines + [""]:
        if ln.startswith("|"):
            cur.append(ln)
        elif cur:
            tables.append(cur)
            cur = []
    summary, worst = tables[0], tables[1]
    assert {_cells(r)[0] for r in summary[2:]} >= {"records", "target tokens", "exact records", "locked records",
                                                   "mean loss"}
    assert all(len(_cells(r)) == 7 for r in worst), worst
    assert len(worst) - 2 == sum(not r.locked for r in result.records)
    # code fences are balanced
    assert sum(1 for ln in lines if ln.startswith("```")) % 2 == 0


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.tokens, self.text = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "br"):
            self.stack.append(tag)
        if tag == "span" and "t" in (dict(attrs).get("class") or "").split() and "title" in dict(attrs):
            self.tokens += 1

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained(audits, tmp_path):
    result = audits["memft"]
    text = to_html(result, tmp_path / "audit.html", gate=Gate(min_coverage=0.0))
    low = text.lower()
    for bad in ("http://", "https://", "src=", "<script", "<link", "@import", "url("):
        assert bad not in low, bad
    p = _Collect()
    p.feed(text)
    p.close()
    assert not p.stack  # every element closed
    assert p.tokens == result.summary["target_tokens"]  # one heat-map span per target token
    assert "<style>" in text
    assert "k<&>" not in text and "k&lt;&amp;&gt;|`:" in text  # escaped (the key is one piece)
    assert 'x<y&"z>' in "".join(p.text)  # and reads back as the original text


def test_junit_report(audits, tmp_path):
    result = audits["memft"]
    path = tmp_path / "audit.xml"
    to_junit(result, path, gate=Gate(min_exact=1.0))
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests")) == N_RECORDS + 1  # the one threshold, then the records
    assert cases[0].get("name") == "gate --min-exact 1" and cases[0].find("failure") is not None
    failed = [c for c in cases[1:] if c.find("failure") is not None]
    not_exact = [r for r in result.records if not r.exact]
    assert len(failed) + 1 == int(suite.get("failures")) == int(root.get("failures")) == len(not_exact) + 1
    for case, r in zip(failed, not_exact):
        msg = case.find("failure").get("message")
        assert f"record {r.index} " in case.get("name")
        assert "failing spans" in msg and repr(r.spans[0]["text"]) in msg and "--min-exact" in msg
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["gate_passed"] == "false"
    # a failing --min-locked fails every record that is not locked
    root = ET.fromstring(to_junit(result, gate=Gate(min_locked=1.0)).split("\n", 1)[1])
    assert int(root.get("failures")) == 1 + sum(not r.locked for r in result.records)
    # no gate: per-record detail only, nothing fails (memaudit exits 0)
    root = ET.fromstring(to_junit(result).split("\n", 1)[1])
    assert int(root.get("failures")) == 0 and int(root.get("tests")) == N_RECORDS
    detail = [c for c in root.iter("testcase") if c.find("system-out") is not None]
    assert len(detail) == sum(not r.locked for r in result.records) > 0


def _junit_failures(path: Path) -> tuple[int, list[str]]:
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    failing = [c.get("name") for c in cases if c.find("failure") is not None]
    assert int(root.get("failures")) == len(failing)
    return len(failing), failing


@pytest.mark.parametrize("gate_args", [
    ["--min-coverage", "0.1"],                       # passes although records are not exact (the bug)
    ["--min-exact", "0.01", "--max-mean-loss", "50"],  # passes
    ["--min-exact", "1.0"],                          # fails on records: the non-exact ones fail
    ["--min-coverage", "1.0"],                       # fails on a token threshold: only that testcase fails
    ["--min-locked", "1.0", "--min-coverage", "0"],  # one threshold fails, one holds
    [],                                              # no gate: exit 0, nothing fails
])
def test_cli_junit_agrees_with_exit_code(env, tmp_path, gate_args):
    """A CI test reporter reading the JUnit file must see what the exit code says: failures in it
    exactly when memaudit exits 1. A real audit of a real adapter with a mix of exact and not."""
    xml = tmp_path / "a.xml"
    r = run(env["memft"], *gate_args, "--quiet", "--junit", xml)
    assert r.exit_code in (0, 1), r.output
    n_failed, names = _junit_failures(xml)
    assert (n_failed > 0) == (r.exit_code == 1), (r.exit_code, names)
    given = [a for a in gate_args if a.startswith("--")]
    gate_cases = [c.get("name") for c in ET.parse(xml).getroot().iter("testcase") if c.get("name").startswith("gate ")]
    assert sorted(c.split()[1] for c in gate_cases) == sorted(given)  # every threshold is a testcase
    for opt in given:  # a failing threshold is a failing testcase, named for its option
        assert (f"({opt})" in r.output) == any(n.startswith(f"gate {opt} ") for n in names), (opt, r.output, names)


# --------------------------------------------------------------------------------------------
# the gate


def test_gate_checks_and_validates():
    s = {"records": 10, "target_tokens": 100, "coverage": 0.9, "exact_records": 8, "locked_records": 5,
         "mean_loss": 0.2}
    assert Gate().check(s) == [] and not Gate().active
    assert Gate(min_coverage=0.9, min_exact=0.8, min_locked=0.5, max_mean_loss=0.2).check(s) == []
    fails = Gate(min_coverage=0.95, min_exact=0.9, min_locked=0.6, max_mean_loss=0.1).check(s)
    assert len(fails) == 4 and "--min-coverage" in fails[0] and "--max-mean-loss" in fails[3]
    for bad in ({"min_coverage": 1.5}, {"min_exact": -0.1}, {"min_locked": float("nan")}, {"max_mean_loss": -1}):
        with pytest.raises(UserError):
            Gate(**bad)


# --------------------------------------------------------------------------------------------
# the CLI


def test_cli_loose_gate_passes_and_writes_reports(env, tmp_path):
    out = {k: tmp_path / f"audit.{k}" for k in ("json", "md", "html", "xml")}
    r = run(env["memft"], "--min-coverage", "0", "--min-exact", "0.01", "--json", out["json"],
            "--markdown", out["md"], "--html", out["html"], "--junit", out["xml"])
    assert r.exit_code == 0, r.output
    assert "gate passed" in r.output
    assert all(p.is_file() for p in out.values())
    assert json.loads(out["json"].read_text())["gate"]["passed"] is True


def test_cli_strict_gate_fails(env, tmp_path):
    r = run(env["plain"], "--corpus", env["corpus"], "--min-exact", "1.0", "--quiet", "--junit",
            tmp_path / "a.xml")
    assert r.exit_code == 1, r.output
    assert "--min-exact" in r.output
    assert (tmp_path / "a.xml").is_file()  # reports are written when the gate fails too


@pytest.mark.parametrize("args, needle", [
    (["{root}/nope"], "does not exist"),
    (["{memft}", "--min-coverage", "1.5"], "--min-coverage"),
    (["{memft}", "--min-locked", "-0.2"], "--min-locked"),
    (["{plain}"], "no corpus"),  # no sidecar and no --corpus
    (["{memft}", "--repair-steps", "5"], "--repair-out"),
    (["{memft}", "--corpus", "{root}/missing.jsonl"], "does not exist"),
    (["{memft}", "--precision", "fp8"], "unknown --precision 'fp8'"),
    (["{memft}", "--precision", "bf16"], "--no-effect-check"),
])
def test_cli_bad_input_exits_2(env, args, needle):
    args = [a.format(**{k: str(v) for k, v in env.items()}) for a in args]
    r = CliRunner().invoke(memaudit, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    if "--precision" in args:
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_cli_refuses_pickle_unless_allowed(env, tmp_path):
    import torch
    from safetensors.torch import load_file

    d = tmp_path / "pickled"
    shutil.copytree(env["memft"], d)
    torch.save(load_file(str(d / "adapter_model.safetensors")), d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()
    r = run(d, "--quiet")
    assert r.exit_code == 2 and "pickle" in r.output and "--allow-pickle" in r.output
    r = run(d, "--quiet", "--allow-pickle", "--min-coverage", "0")
    assert r.exit_code == 0, r.output


def test_adapter_config_cannot_point_at_a_local_path(env, tmp_path):
    """An untrusted adapter's config may not make memlaw load a model from an arbitrary folder."""
    d = tmp_path / "path-base"
    shutil.copytree(env["memft"], d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    for evil in ("/etc", "../../elsewhere", str(tmp_path)):
        cfg["base_model_name_or_path"] = evil
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        r = run(d, "--quiet")
        assert r.exit_code == 2 and "local path" in r.output, r.output
    r = run(d, "--quiet", "--base-model", "tiny", "--min-coverage", "0")  # the user's word counts
    assert r.exit_code == 0, r.output


def test_cli_wrong_tensor_shapes_exit_2(env, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    d = tmp_path / "bad-shapes"
    shutil.copytree(env["plain"], d)
    tensors = load_file(str(d / "adapter_model.safetensors"))
    key = next(k for k in tensors if ".lora_A." in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] // 2)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    r = run(d, "--corpus", env["corpus"], "--quiet")
    assert r.exit_code == 2, r.output
    assert "does not fit" in r.output and "--base-model" in r.output


def _save_tiny_like(path: Path, **kw) -> Path:
    from memlaw.models import tiny_model, tiny_tokenizer

    tiny_model(**kw).save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path


def test_cli_base_model_mismatch(env, tmp_path):
    # another tiny-like model with other widths: the adapter cannot fit it
    narrow = _save_tiny_like(tmp_path / "narrow", hidden=32)
    r = run(env["plain"], "--corpus", env["corpus"], "--base-model", narrow, "--quiet")
    assert r.exit_code == 2 and "does not fit" in r.output, r.output
    # same shapes, other weights: the sidecar's identity hash catches it…
    other = _save_tiny_like(tmp_path / "other-seed", seed=1)
    r = run(env["memft"], "--base-model", other, "--quiet")
    assert r.exit_code == 2, r.output
    assert "not the one" in r.output and "--force-base" in r.output
    # …unless forced
    r = run(env["memft"], "--base-model", other, "--force-base", "--min-coverage", "0", "--quiet")
    assert r.exit_code == 0, r.output
    assert "force-base" in r.output


def test_cli_tokenizer_mismatch(env, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path / "with-tokenizer"
    shutil.copytree(env["plain"], d)
    core = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>").save_pretrained(str(d))
    r = run(d, "--corpus", env["corpus"], "--quiet")
    assert r.exit_code == 2 and "tokenizer" in r.output, r.output


# --------------------------------------------------------------------------------------------
# repair


def test_repair_refuses_existing_out_before_anything(env, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    # the corpus does not exist either: the out check must come first, before reading or training
    r = CliRunner().invoke(memaudit, [str(env["memft"]), "--corpus", str(tmp_path / "missing.jsonl"),
                                      "--repair-out", str(out), "--method", "ot"])
    assert r.exit_code == 2, r.output
    assert "already exists" in r.output and str(out) in r.output
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left either


def test_repair_lifts_coverage_and_keeps_input(env, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(env["memft"], src)
    hashes = tree_hashes(src)
    out = tmp_path / "fixed"
    report = tmp_path / "after.json"
    r = run(src, "--repair-out", out, "--method", "ot", "--lr", "1e-2", "--repair-steps", "150",
            "--min-exact", "1.0", "--json", report, "--quiet")
    assert r.exit_code == 0, r.output  # the gate holds on the repaired adapter
    assert tree_hashes(src) == hashes  # the input adapter is byte-identical
    d = json.loads(report.read_text())
    before, after = d["repair"]["before"], d["summary"]
    assert after["coverage"] > before["coverage"]
    assert after["exact_records"] == after["records"] > before["exact_records"]
    assert "before" in r.output and "after" in r.output
    side = json.loads((out / "memlaw.json").read_text())
    assert side["repaired_from"]["adapter"] == str(src.resolve())
    assert side["repaired_from"]["before"]["coverage"] == before["coverage"]
    assert side["train"]["stop_reason"] == "gate_passed" and 0 < side["train"]["steps"] <= 150
    from memlaw.models import tiny_dir

    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir().resolve())
    # the repaired folder audits on its own (corpus from its sidecar), with the same numbers
    again = audit_adapter(out)
    assert again.summary == {k: v for k, v in after.items()}


def test_repair_library_on_a_foreign_adapter(env, tmp_path):
    """A plain-PEFT adapter (no sidecar, attention only) repairs too; the sidecar is created."""
    from memlaw.auditor.repair import repair

    src = tmp_path / "plain"
    shutil.copytree(env["plain"], src)
    hashes = tree_hashes(src)
    res = repair(src, tmp_path / "plain-fixed", corpus=env["corpus"], method="sw", steps=6, lr=1e-2)
    assert tree_hashes(src) == hashes
    assert res.after.summary["records"] == N_RECORDS and res.steps == 6
    side = json.loads((tmp_path / "plain-fixed" / "memlaw.json").read_text())
    assert side["template"]["target_modules"] == ["q_proj", "v_proj"] and side["rank"] == 16
    assert side["repaired_from"]["method"] == "sw"


def test_later_audit_reads_the_stored_prefix(env, tmp_path, monkeypatch):
    """An adapter above layer 0: the first memaudit stores the base model's layer-1 input per batch,
    a later one (another adapter on the same base and corpus) reads it, and every report number is
    the same as with no store at all — with the no-effect check's base-model pass too. memft train's
    final scoring pass stores the same states."""
    from memlaw.cli.memft import main as memft
    from memlaw.scoring import PREFIX_STORE_ENV

    monkeypatch.setenv("MEMLAW_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "cache" / "prefix"
    monkeypatch.setenv(PREFIX_STORE_ENV, "0")  # trained without a store: the first audit writes it
    adapters = []
    for seed in (0, 1):
        out = tmp_path / f"layer1-s{seed}"
        r = CliRunner().invoke(memft, ["train", str(env["corpus"]), "--model", "tiny", "--rank", "4", "--layers", "1",
                                       "--method", "sft", "--max-steps", "20", "--cycles", "1", "--seed", str(seed),
                                       "--quiet", "--out", str(out)])
        assert r.exit_code == 0, r.output
        adapters.append(out)
    assert not store.exists()
    monkeypatch.delenv(PREFIX_STORE_ENV)

    def audited(adapter, name):
        report = tmp_path / f"{name}.json"
        r = run(adapter, "--min-coverage", "0", "--json", report, "--quiet")
        assert r.exit_code == 0, r.output
        d = json.loads(report.read_text())
        return d["summary"], d["records"]

    first = audited(adapters[0], "first")
    stored = {p: p.stat().st_ino for p in store.rglob("*.safetensors")}
    assert stored  # written by the first audit
    later = audited(adapters[1], "later")
    assert {p: p.stat().st_ino for p in store.rglob("*.safetensors")} == stored  # read, not written again (same inodes)
    assert later[0]["coverage"] != first[0]["coverage"] or later[1] != first[1]  # another adapter, other numbers
    shutil.rmtree(store)
    r = CliRunner().invoke(memft, ["train", str(env["corpus"]), "--model", "tiny", "--rank", "4", "--layers", "1",
                                   "--max-steps", "2", "--cycles", "1", "--quiet", "--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    assert {p.name for p in store.rglob("*.safetensors")} == {p.name for p in stored}  # memft train stores them too
    monkeypatch.setenv(PREFIX_STORE_ENV, "0")
    shutil.rmtree(store)
    assert audited(adapters[1], "unstored") == later
    assert not store.exists()
