"""memlaw.corpus: reading JSONL corpora, conflicts, and the tokenisation rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memlaw.corpus import (
    digits_only_keys,
    Conflict,
    Encoded,
    Record,
    corpus_sha256,
    corpus_stats,
    encode_records,
    find_conflicts,
    find_duplicates,
    read_corpus,
    render_keys,
)
from memlaw.errors import UserError
from memlaw.models import tiny_tokenizer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write(tmp_path: Path, content, name: str = "c.jsonl") -> Path:
    p = tmp_path / name
    if isinstance(content, list):
        content = "".join(json.dumps(r) + "\n" for r in content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    p.write_bytes(content)
    return p


def chat(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


# --------------------------------------------------------------------------------------------
# formats


def test_prompt_completion(tmp_path):
    p = write(tmp_path, [{"prompt": "Q1", "completion": " A1"}, {"prompt": "", "completion": "A2", "x": 1}])
    recs = read_corpus(p)
    assert recs == [Record("Q1", " A1", f"{p}:1"), Record("", "A2", f"{p}:2")]
    assert recs[0].messages is None


def test_query_target(tmp_path):
    p = write(tmp_path, [{"query": "What?", "target": "That."}])
    assert read_corpus(p) == [Record("What?", "That.", f"{p}:1")]
    assert read_corpus(p, fmt="query") == read_corpus(p)


def test_text(tmp_path):
    p = write(tmp_path, [{"text": "Call me Ishmael."}, {"text": "Some years ago."}])
    recs = read_corpus(p)
    assert [(r.key, r.target) for r in recs] == [("", "Call me Ishmael."), ("", "Some years ago.")]


def test_messages(tmp_path):
    p = write(tmp_path, [chat(("system", "Be brief."), ("user", "Hours?"), ("assistant", "9 to 5."))])
    (r,) = read_corpus(p)
    assert r.key == "" and r.target == "9 to 5."
    assert r.messages == (("system", "Be brief."), ("user", "Hours?"))
    assert r.where == f"{p}:1"


def test_custom_fields(tmp_path):
    p = write(tmp_path, [{"q": "K", "a": "T", "prompt": "ignored"}])
    assert read_corpus(p, key_field="q", target_field="a") == [Record("K", "T", f"{p}:1")]
    assert read_corpus(p, target_field="a") == [Record("", "T", f"{p}:1")]


def test_explicit_format_on_ambiguous_line(tmp_path):
    p = write(tmp_path, [{"prompt": "K", "completion": "T", "text": "other"}])
    with pytest.raises(UserError, match="several formats"):
        read_corpus(p)
    assert read_corpus(p, fmt="prompt")[0].target == "T"
    assert read_corpus(p, fmt="text")[0].target == "other"


def test_bom_crlf_blank_lines(tmp_path):
    body = '{"prompt": "a", "completion": "b"}\r\n\r\n   \r\n{"prompt": "c", "completion": "d"}\r\n\n'
    p = write(tmp_path, b"\xef\xbb\xbf" + body.encode())
    recs = read_corpus(p)
    assert [(r.key, r.target, r.where) for r in recs] == [("a", "b", f"{p}:1"), ("c", "d", f"{p}:4")]


def test_no_trailing_newline_and_unicode(tmp_path):
    p = write(tmp_path, '{"text": "naïve café — 東京 😀"}')
    assert read_corpus(p)[0].target == "naïve café — 東京 😀"


def test_huge_line(tmp_path):
    big = "x" * 3_000_000
    p = write(tmp_path, [{"prompt": "k", "completion": big}])
    assert read_corpus(p)[0].target == big


def test_corpus_sha256(tmp_path):
    import hashlib

    p = write(tmp_path, [{"text": "abc"}])
    assert corpus_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(UserError):
        corpus_sha256(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------------------------
# errors: one line, naming the file and the line


def check_error(p: Path, line: int | None, match: str | None = None, **kw) -> str:
    with pytest.raises(UserError) as ei:
        read_corpus(p, **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg
    if line is not None:
        assert msg.startswith(f"{p}:{line}:"), msg
    if match:
        assert match.lower() in msg.lower(), msg
    return msg


GOOD = '{"prompt": "k", "completion": "t"}\n'


@pytest.mark.parametrize("content,line,match", [
    (GOOD + "not json\n", 2, "not valid JSON"),
    (GOOD + "{\"prompt\": \"k\", \n", 2, "not valid JSON"),
    (GOOD + "[1, 2]\n", 2, "JSON object"),
    (GOOD + "\"just a string\"\n", 2, "JSON object"),
    (GOOD + "null\n", 2, "JSON object"),
    (GOOD + '{"prompt": "k"}\n', 2, "missing field 'completion'"),
    (GOOD + '{"completion": "t"}\n', 2, "missing field 'prompt'"),
    (GOOD + '{"prompt": "k", "completion": 5}\n', 2, "must be a string"),
    (GOOD + '{"prompt": "k", "completion": null}\n', 2, "must be a string"),
    (GOOD + '{"prompt": ["k"], "completion": "t"}\n', 2, "must be a string"),
    (GOOD + '{"prompt": "k", "completion": ""}\n', 2, "nothing to memorise"),
    (GOOD + '{"prompt": "k", "completion": "\\ud800"}\n', 2, "surrogate"),
    (GOOD + '{"foo": "k", "bar": "t"}\n', 2, "--target-field"),
    (GOOD + '{"text": "t"}\n', 2, "mix formats"),
    ('{"messages": "hi"}\n', 1, "must be a list"),
    ('{"messages": []}\n', 1, "empty"),
    ('{"messages": ["hi"]}\n', 1, "must be an object"),
    ('{"messages": [{"role": "user"}]}\n', 1, "no 'content'"),
    ('{"messages": [{"content": "x"}]}\n', 1, "no 'role'"),
    ('{"messages": [{"role": "user", "content": 3}]}\n', 1, "must be a string"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}\n', 1, "assistant"),
    ('{"messages": [{"role": "assistant", "content": "a"}]}\n', 1, "only the assistant"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}\n', 1,
     "nothing to memorise"),
    ('{"text": ""}\n', 1, "nothing to memorise"),
    ("[" * 100_000 + "]" * 100_000 + "\n", 1, None),
    ('{"text": 1' + "0" * 5000 + "}\n", 1, None),
    (GOOD + GOOD + "\n" + '{"prompt": "k", "completion": "t"} garbage\n', 4, "not valid JSON"),
])
def test_line_errors(tmp_path, content, line, match):
    check_error(write(tmp_path, content), line, match)


def test_invalid_utf8_names_line(tmp_path):
    p = write(tmp_path, GOOD.encode() + b'{"text": "caf\xe9"}\n')
    check_error(p, 2, "UTF-8")


def test_crlf_error_line_numbers(tmp_path):
    p = write(tmp_path, GOOD.replace("\n", "\r\n") * 3 + "oops\r\n")
    check_error(p, 4, "JSON")


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ("\n\n  \r\n", "empty"),
    (b"\xef\xbb\xbf", "no records"),
])
def test_empty_files(tmp_path, content, match):
    check_error(write(tmp_path, content), None, match)


def test_missing_file_and_directory(tmp_path):
    check_error(tmp_path / "missing.jsonl", None, "does not exist")
    d = tmp_path / "dir.jsonl"
    d.mkdir()
    check_error(d, None, "directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, GOOD)
    p.chmod(0)
    try:
        check_error(p, None, "permission")
    finally:
        p.chmod(0o644)


def test_option_errors(tmp_path):
    p = write(tmp_path, GOOD)
    check_error_plain = lambda **kw: pytest.raises(UserError, read_corpus, p, **kw)  # noqa: E731
    for kw in ({"fmt": "csv"}, {"key_field": "prompt"}, {"fmt": "text", "target_field": "completion"},
               {"fmt": "custom"}, {"target_field": ""}):
        err = check_error_plain(**kw)
        assert "\n" not in str(err.value)
    assert "prompt" in str(check_error_plain(fmt="yaml").value)
    # a custom field missing on a line names the line
    check_error(p, 1, "missing field 'answer'", key_field="prompt", target_field="answer")


# --------------------------------------------------------------------------------------------
# conflicts and duplicates


def test_conflicts_and_duplicates(tmp_path):
    rows = [
        {"prompt": "A", "completion": "1"},   # 1
        {"prompt": "B", "completion": "2"},   # 2
        {"prompt": "A", "completion": "9"},   # 3  conflict with 1
        {"prompt": "B", "completion": "2"},   # 4  duplicate of 2
        {"prompt": "C", "completion": "3"},   # 5
        {"prompt": "A", "completion": "1"},   # 6  duplicate of 1, also in the A conflict
        {"prompt": "", "completion": "x"},    # 7  empty key: never a conflict
        {"prompt": "", "completion": "y"},    # 8
    ]
    p = write(tmp_path, rows)
    recs = read_corpus(p)
    conflicts = find_conflicts(recs)
    assert conflicts == [Conflict(key="A", wheres=[f"{p}:1", f"{p}:3", f"{p}:6"], targets=["1", "9", "1"])]
    assert find_duplicates(recs) == [[0, 5], [1, 3]]


def test_message_conflicts(tmp_path):
    rows = [
        chat(("user", "Hours?"), ("assistant", "9-5")),
        chat(("system", "S"), ("user", "Hours?"), ("assistant", "8-4")),  # other key: no conflict
        chat(("user", "Hours?"), ("assistant", "10-6")),
        {"messages": [{"role": "user", "content": "Hours?"}, {"role": "assistant", "content": "9-5"}]},
    ]
    recs = read_corpus(write(tmp_path, rows))
    (c,) = find_conflicts(recs)
    assert c.targets == ["9-5", "10-6", "9-5"] and "Hours?" in c.key
    assert find_duplicates(recs) == [[0, 3]]


def test_digits_only_keys(tmp_path):
    parcel = [{"prompt": f"Parcel {n}:", "completion": f" {n * 7919 % 10**8:08d}"} for n in (1, 22, 333, 4444)]
    named = [{"prompt": f"Parcel {who}:", "completion": " 6449 8071"} for who in ("Ada", "Bo", "Cy", "Di")]
    share, example = digits_only_keys(read_corpus(write(tmp_path, parcel)))
    assert (share, example) == (1.0, "Parcel 1:")
    # the same targets under name keys; digit keys with word targets; one record per masked key
    assert digits_only_keys(read_corpus(write(tmp_path, named))) == (0.0, "")
    words = [{"prompt": r["prompt"], "completion": " seven apples"} for r in parcel]
    assert digits_only_keys(read_corpus(write(tmp_path, words))) == (0.0, "")
    lone = [{"prompt": f"{kind} {i}:", "completion": " 12345"} for i, kind in enumerate(("Room", "Gate", "Box"))]
    assert digits_only_keys(read_corpus(write(tmp_path, lone))) == (0.0, "")
    # half the records: two digit-keyed phone numbers among two named ones; "12-34 x" is mostly digits
    mixed = parcel[:1] + [{"prompt": "Parcel 9:", "completion": " 12-34 x"}] + named[:2]
    assert digits_only_keys(read_corpus(write(tmp_path, mixed))) == (0.5, "Parcel 1:")
    assert digits_only_keys([]) == (0.0, "")


def test_text_duplicates(tmp_path):
    recs = read_corpus(write(tmp_path, [{"text": "a"}, {"text": "b"}, {"text": "a"}]))
    assert find_conflicts(recs) == []
    assert find_duplicates(recs) == [[0, 2]]


# --------------------------------------------------------------------------------------------
# tokenisation


def test_encode_prompt_completion(tok, tmp_path):
    recs = read_corpus(write(tmp_path, [{"prompt": "Hi:", "completion": " there"}]))
    (e,) = encode_records(tok, recs)
    assert e.key_ids == tuple(tok("Hi:", add_special_tokens=True)["input_ids"])
    assert e.target_ids == tuple(tok(" there", add_special_tokens=False)["input_ids"])
    assert e.input_ids == e.key_ids + e.target_ids
    assert e.n_target == len(" there".encode()) and e.index == 0
    assert tok.decode(list(e.target_ids)) == " there"
    assert tok.eos_token_id not in e.target_ids


def test_encode_text_uses_bos(tok, tmp_path):
    recs = read_corpus(write(tmp_path, [{"text": "abc"}, {"text": "de"}]))
    enc = encode_records(tok, recs)
    assert [e.key_ids for e in enc] == [(tok.bos_token_id,), (tok.bos_token_id,)]
    assert [e.index for e in enc] == [0, 1]
    assert corpus_stats(enc) == {"records": 2, "target_tokens": 5, "key_tokens": 2, "max_len": 4}


def test_encode_eos_fallback_and_no_special(tok):
    import copy

    t = copy.deepcopy(tok)
    t.bos_token = None
    (e,) = encode_records(t, [Record("", "x", "f.jsonl:1")])
    assert e.key_ids == (t.eos_token_id,)
    t.eos_token = None
    with pytest.raises(UserError, match=r"f\.jsonl:7"):
        encode_records(t, [Record("k", "x", "f.jsonl:1"), Record("", "x", "f.jsonl:7")])


def test_encode_zero_token_target(tok):
    class Empty:  # a tokenizer that drops everything (e.g. a target of unknown characters)
        bos_token_id, eos_token_id, chat_template = 1, 2, None

        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [[] for _ in texts]}

    with pytest.raises(UserError, match=r"g\.jsonl:3.*zero tokens"):
        encode_records(Empty(), [Record("k", "x", "g.jsonl:3")])


def test_encode_messages(tok, tmp_path):
    rows = [chat(("system", "Be brief."), ("user", "Hours?"), ("assistant", "9 to 5."))]
    recs = read_corpus(write(tmp_path, rows))
    rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHours?<|im_end|>\n<|im_start|>assistant\n"
    assert render_keys(tok, recs) == [rendered]
    (e,) = encode_records(tok, recs)
    assert e.key_ids == tuple(tok(rendered, add_special_tokens=False)["input_ids"])
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert e.key_ids[0] == im_start and e.key_ids.count(im_start) == 3
    assert tok.decode(list(e.target_ids)) == "9 to 5."


def test_messages_without_chat_template(tok, tmp_path):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = None
    p = write(tmp_path, [chat(("user", "q"), ("assistant", "a"))])
    with pytest.raises(UserError) as ei:
        encode_records(t, read_corpus(p))
    assert str(p) in str(ei.value) and "chat template" in str(ei.value)


def test_chat_template_rejection_names_record(tok, tmp_path):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = ("{% for m in messages %}{% if m['role'] == 'tool' %}"
                       "{{ raise_exception('no tools') }}{% endif %}{{ m['content'] }}{% endfor %}")
    p = write(tmp_path, [chat(("user", "q"), ("assistant", "a")), chat(("tool", "q"), ("assistant", "a"))])
    with pytest.raises(UserError, match=f"{p}:2"):
        encode_records(t, read_corpus(p))


def test_encode_batches_many(tok, tmp_path):
    rows = [{"prompt": f"k{i}", "completion": f" v{i}"} for i in range(2500)]
    enc = encode_records(tok, read_corpus(write(tmp_path, rows)))
    assert [e.index for e in enc] == list(range(2500))
    assert tok.decode(list(enc[2100].target_ids)) == " v2100"
    assert isinstance(enc[0], Encoded)


# --------------------------------------------------------------------------------------------
# property tests: any input is records or a UserError, nothing else

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["prompt", "completion", "query", "target", "text", "messages", "role",
                         "content", "x"]) | st.text(max_size=5), kids, max_size=4),
    max_leaves=12,
)


def _records_or_user_error(p: Path, **kw):
    try:
        recs = read_corpus(p, **kw)
    except UserError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        return
    assert recs and all(isinstance(r, Record) and r.target for r in recs)


@FAST
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path, data):
    p = write(tmp_path, data, "bytes.jsonl")
    _records_or_user_error(p)


@FAST
@given(values=st.lists(json_values, min_size=1, max_size=4),
       fmt=st.sampled_from(["auto", "auto", "prompt", "messages", "text"]))
def test_random_json(tmp_path, values, fmt):
    p = write(tmp_path, "".join(json.dumps(v) + "\n" for v in values), "json.jsonl")
    _records_or_user_error(p, fmt=fmt)


@FAST
@given(rows=st.lists(st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=8)}),
    max_size=4)}), min_size=1, max_size=3))
def test_random_messages_encode(tmp_path, rows, tok):
    p = write(tmp_path, rows, "msgs.jsonl")
    try:
        recs = read_corpus(p)
    except UserError:
        return
    enc = encode_records(tok, recs)
    assert all(e.n_target > 0 and e.key_ids for e in enc)


# --------------------------------------------------------------------------------------------
# the shipped examples


def test_examples_load(tok):
    phone = read_corpus(EXAMPLES / "phonebook.jsonl")
    assert len(phone) == 300 and find_conflicts(phone) == [] and find_duplicates(phone) == []
    assert read_corpus(EXAMPLES / "phonebook_small.jsonl") == [
        Record(r.key, r.target, r.where.replace("phonebook.jsonl", "phonebook_small.jsonl")) for r in phone[:40]]
    natural = read_corpus(EXAMPLES / "natural.jsonl")
    assert len(natural) >= 20 and all(r.key == "" for r in natural)
    errors = read_corpus(EXAMPLES / "errors.jsonl")
    assert len(errors) >= 100 and find_conflicts(errors) == []
    assert all(8 <= len(r.target.split()) <= 20 for r in errors)
    chats = read_corpus(EXAMPLES / "chat.jsonl")
    assert len(chats) >= 25 and all(r.messages for r in chats) and find_conflicts(chats) == []
    stats = corpus_stats(encode_records(tok, phone + natural + errors + chats))
    assert stats["records"] == len(phone) + len(natural) + len(errors) + len(chats)
