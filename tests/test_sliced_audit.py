"""The sliced audit (issue #18): the same result and byte-identical reports as the whole-corpus
audit, in memory that does not grow with the corpus."""

import json
import random
import re

import pytest
from click.testing import CliRunner

from memlaw.auditor.audit import Gate, audit_adapter
from memlaw.auditor.reports import to_html, to_json, to_junit, to_markdown
from memlaw.cli.render import print_terminal
from memlaw.cli.memaudit import main as memaudit

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TRAINED = 120


def _rows(n: int, seed: int = 3) -> list[dict]:
    """Key → value records; keys repeat every 115 so some keys get two targets (conflicts)."""
    rng = random.Random(seed)
    return [{"prompt": f"id {i % 115}:", "completion": " " + "".join(rng.choice("abcd") for _ in range(rng.randint(2, 40)))}
            for i in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A tiny adapter that locks some of its records (150 steps): coverage ~0.85, ~10 locked and
    ~14 exact of the 120 trained; the audited corpus adds 280 records it never saw."""
    from memlaw.memft import CorpusSpec, Recipe, train_adapter

    d = tmp_path_factory.mktemp("sliced")
    rows = _rows(400)
    train_on = _write(d / "train.jsonl", rows[:TRAINED])
    train_adapter(CorpusSpec(str(train_on)), "tiny", 8, d / "adapter",
                  recipe=Recipe(max_steps=150, lr=1e-2, batch_size=TRAINED), progress=False)
    return d / "adapter", _write(d / "audit.jsonl", rows)


def _no_timestamp(xml: str) -> str:
    return re.sub(r' timestamp="[^"]*"', "", xml)


def _terminal(result, gate) -> str:
    from rich.console import Console

    console = Console(record=True, width=120, force_terminal=False)
    print_terminal(console, result, worst=5, gate=gate)
    return console.export_text()


def test_sliced_audit_gives_the_whole_corpus_audit_byte_for_byte(trained):
    from memlaw.auditor.sliced import _slices
    from memlaw.corpus import encode_records, read_corpus
    from memlaw.models import load_base
    from memlaw.scoring import batch_cuts

    adapter, corpus = trained
    slice_tokens = 300
    enc = encode_records(load_base("tiny").tokenizer, read_corpus(corpus))
    order, cuts = batch_cuts([len(e.input_ids) for e in enc])
    n_slices = len(list(_slices(order, cuts, [e.n_target for e in enc], slice_tokens)))
    assert n_slices >= 4  # several slices, each one or more of the whole corpus's batches

    whole = audit_adapter(adapter, corpus, backend="transformers")
    sliced = audit_adapter(adapter, corpus, backend="transformers", keep_records=False, slice_tokens=slice_tokens)
    try:
        s = whole.summary
        assert 0 < s["locked_records"] < s["exact_records"] < s["records"] == 400  # a mix: every branch of the reports
        assert whole.conflicts and whole.warnings
        assert "effect" in s and not s["effect"]["no_effect"]  # the base-model comparison ran, slice by slice
        assert sliced.summary == s
        assert (sliced.conflicts, sliced.warnings, sliced.corpus, sliced.base_model, sliced.backend) == \
               (whole.conflicts, whole.warnings, whole.corpus, whole.base_model, whole.backend)
        sliced.seconds = whole.seconds = 1.5  # wall clock: the one field that may differ

        gates = [Gate(), Gate(min_locked=1.0), Gate(min_exact=1.0), Gate(min_coverage=0.1, max_mean_loss=50),
                 Gate(min_coverage=0.99, fail_on_no_effect=True)]
        for gate in gates:
            assert sliced.passed(gate) == whole.passed(gate) and sliced.failures(gate) == whole.failures(gate)
            assert to_json(sliced, gate=gate) == to_json(whole, gate=gate)
            assert to_json(sliced, gate=gate, tokens=False) == to_json(whole, gate=gate, tokens=False)
            assert _no_timestamp(to_junit(sliced, gate=gate)) == _no_timestamp(to_junit(whole, gate=gate))
            assert to_html(sliced, gate=gate) == to_html(whole, gate=gate)
            for worst in (10, 200):  # 200: more than the sliced audit keeps, read back from its spool
                assert to_markdown(sliced, gate=gate, worst=worst) == to_markdown(whole, gate=gate, worst=worst)
            assert _terminal(sliced, gate) == _terminal(whole, gate)
        # the capped page (a small cap: the default 50,000 tokens needs a corpus too big for a test)
        capped = whole.for_display(500)
        assert len(capped.records) < len(whole.records) and to_html(sliced.for_display(500)) == to_html(capped)

        # the records themselves, read back from the spool
        assert len(sliced.records) == 400
        assert [r.to_dict() for r in sliced.records] == [r.to_dict() for r in whole.records]
        assert sliced.records[7].to_dict() == whole.records[7].to_dict()
        assert [r.index for r in sliced.worst(20)] == [r.index for r in whole.worst(20)]
    finally:
        sliced.close()


def test_memaudit_streams_and_exits_as_the_gate_says(trained, tmp_path):
    adapter, corpus = trained
    whole = audit_adapter(adapter, corpus)  # memaudit's --backend auto, and its note
    gate = Gate(min_locked=1.0)
    out = tmp_path / "a.json"
    got = CliRunner().invoke(memaudit, [str(adapter), "--corpus", str(corpus), "--quiet", "--min-locked", "1.0",
                                        "--json", str(out)])
    assert got.exit_code == 1, got.output
    data = json.loads(out.read_text())
    whole.seconds = data["seconds"]
    whole.adapter = data["adapter"]
    assert out.read_text() == to_json(whole, gate=gate)


def _peak_growth(adapter, tmp_path, sliced: bool) -> tuple[float, list[int]]:
    """Bytes of Python-traced peak memory per extra target token, from 250 to 1,000 records, of an
    audit and its JSON, Markdown and JUnit reports (the HTML page holds up to DISPLAY_MAX_TOKENS =
    50,000 tokens by design, so it is left out)."""
    import tracemalloc

    from memlaw.auditor.audit import audit_inputs, load_adapter_inputs
    from memlaw.auditor.reports import write_reports
    from memlaw.auditor.sliced import audit_inputs_sliced

    peaks, tokens = [], []
    for n in (250, 1000):
        corpus = _write(tmp_path / f"c{n}.jsonl", _rows(n, seed=n))
        inputs = load_adapter_inputs(adapter, corpus, stream_corpus=sliced)
        try:
            tracemalloc.start()
            if sliced:
                # spool_in_memory=1: the verdicts go to disk at once (by default the first 4 MiB stay in memory)
                result = audit_inputs_sliced(inputs, effect_check=False, slice_tokens=1000, display_cap=1000,
                                             spool_in_memory=1)
            else:
                result = audit_inputs(inputs, backend="transformers", effect_check=False)
            write_reports(result, json_path=tmp_path / "a.json", markdown=tmp_path / "a.md",
                          junit=tmp_path / "a.xml", gate=Gate(min_locked=1.0))
            peaks.append(tracemalloc.get_traced_memory()[1])
            tokens.append(result.summary["target_tokens"])
            result.close()
        finally:
            tracemalloc.stop()
            if sliced:
                inputs.encoded.close()
    assert tokens[1] > 3.5 * tokens[0]
    return (peaks[1] - peaks[0]) / (tokens[1] - tokens[0]), peaks


def test_sliced_audit_memory_does_not_grow_with_the_corpus(trained, tmp_path):
    """The whole-corpus audit holds every record's ids, scores and verdict: its peak grows by tens
    of bytes a target token. The sliced one holds a slice, plus a few tens of bytes a record
    (offsets, lengths, per-record sums): with these ~20-token records, a few bytes a token."""
    adapter, _ = trained
    sliced, sliced_peaks = _peak_growth(adapter, tmp_path, sliced=True)
    whole, whole_peaks = _peak_growth(adapter, tmp_path, sliced=False)
    assert whole > 60, (whole, whole_peaks)  # what the test would see without the sliced path
    # 9–19 bytes a token measured (transformers 5.24 here, 5.19 in CI): a bound well under the whole path's
    assert sliced < 30 and sliced < whole / 3, \
        f"the sliced audit's peak grew {sliced:.1f} bytes a target token ({sliced_peaks}; whole path {whole:.1f})"
