"""Loaders: real files, every kind of malformed row, skip_bad, round trips, hub fallbacks (no network)."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from rlhflab.data.jsonl import DataError, write_jsonl
from rlhflab.data.loaders import (
    LoadResult, load_cnndm, load_comparisons, load_posts, load_samples, load_tldr, write_comparisons,
    write_posts, write_samples,
)
from rlhflab.data.records import Comparison, Post, Sample, Summary

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA} (see DESIGN.md)")

TLDR = {"id": "t3_a", "subreddit": "relationships", "title": "A title", "post": "SECRET post body.",
        "summary": "A summary."}
CNNDM = {"id": "abc123", "article": "An article.\nSecond line.", "highlights": "Highlights."}
COMPARISON = {
    "info": {"id": "t3_x", "post": "SECRET body", "title": "T", "subreddit": "tifu"}, "split": "valid2",
    "summaries": [{"text": " one", "policy": "p0", "note": "ok"}, {"text": " two", "policy": "p1", "note": ""}],
    "choice": 1, "worker": "w1", "batch": "batch13", "extra": {"confidence": 7},
}


def _write(tmp_path: Path, rows: list, name: str = "rows.jsonl.gz") -> Path:
    path = tmp_path / name
    write_jsonl(path, rows)
    return path


def _with(base: dict, dotted: str, value) -> dict:
    """A deep copy of `base` with the field at `dotted` (a.b, a[1].b) set, or deleted if value is DELETE."""
    row = copy.deepcopy(base)
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    target = row
    for p in parts[:-1]:
        target = target[int(p)] if isinstance(target, list) else target[p]
    last = int(parts[-1]) if isinstance(target, list) else parts[-1]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return row


DELETE = object()


# ---------------------------------------------------------------------------------------------- real data

@needs_data
@pytest.mark.parametrize("rel, loader, n, source", [
    ("tldr/train.jsonl.gz", load_tldr, 1345, "tldr"),
    ("tldr/eval.jsonl.gz", load_tldr, 300, "tldr"),
    ("cnndm/validation.jsonl.gz", load_cnndm, 1000, "cnndm"),
    ("tldr/eval.jsonl.gz", load_posts, 300, "tldr"),
    ("cnndm/validation.jsonl.gz", load_posts, 1000, "cnndm"),
])
def test_real_posts(rel, loader, n, source):
    posts = loader(DATA / rel)
    assert len(posts) == n and posts.skipped == 0
    assert all(p.source == source and p.text.strip() and p.reference for p in posts)
    assert len({p.id for p in posts}) == n


@needs_data
def test_real_comparisons():
    comps = load_comparisons(str(DATA / "comparisons/batch13.jsonl.gz"))
    assert len(comps) == 1097 and comps.skipped == 0
    assert len({c.post.id for c in comps}) == 905
    assert {c.confidence for c in comps} == {1, 2, 3, 4, 6, 7, 8, 9}
    assert all(c.choice in (0, 1) and c.summaries[0].text.startswith(" ") for c in comps)
    assert {c.summaries[0].policy for c in comps} | {c.summaries[1].policy for c in comps} == {
        "sup4_ppo_rm4_t.7", "sup4_12b_t0.7"}


@needs_data
def test_real_comparisons_round_trip(tmp_path):
    src = DATA / "comparisons/batch13.jsonl.gz"
    comps = load_comparisons(src)
    out = tmp_path / "c.jsonl.gz"
    assert write_comparisons(out, comps) == len(comps)
    assert load_comparisons(out) == comps
    with __import__("gzip").open(src, "rt") as f:
        original = [json.loads(line) for line in f]
    with __import__("gzip").open(out, "rt") as f:
        written = [json.loads(line) for line in f]
    assert written == original  # the file itself survives, not just our view of it


@needs_data
def test_limit_on_real_data():
    assert len(load_tldr(DATA / "tldr/train.jsonl.gz", limit=7)) == 7
    assert load_tldr(DATA / "tldr/train.jsonl.gz", limit=0) == []


# ---------------------------------------------------------------------------------------------- malformed rows

@pytest.mark.parametrize("field, value, problem", [
    ("post", DELETE, "missing"),
    ("post", "", "empty string"),
    ("post", "  \n", "empty string"),
    ("post", 5, "expected a string, got number"),
    ("summary", None, "expected a string, got null"),
    ("title", ["x"], "expected a string, got array"),
    ("id", "", "empty string"),
    ("id", 1.5, "expected a string id, got number"),
])
def test_bad_tldr_row_names_file_line_field(tmp_path, field, value, problem):
    path = _write(tmp_path, [TLDR, TLDR, _with(TLDR, field, value)])
    with pytest.raises(DataError) as info:
        load_tldr(path)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 3, field)
    assert str(err) == f"{path} line 3, field '{field}': {problem}"
    assert "SECRET" not in str(err)


def test_bad_json_line_names_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(TLDR) + "\n{not json\n")
    with pytest.raises(DataError, match=r"x\.jsonl line 2: bad JSON"):
        load_tldr(path)


@pytest.mark.parametrize("field, value, problem", [
    ("choice", 2, "must be 0 or 1, got 2"),
    ("choice", -1, "must be 0 or 1"),
    ("choice", "0", "expected an integer, got string"),
    ("choice", True, "expected an integer, got boolean"),
    ("choice", DELETE, "missing"),
    ("summaries", [COMPARISON["summaries"][0]], "expected exactly 2 summaries, got 1"),
    ("summaries", "x", "expected an array"),
    ("summaries[1].text", DELETE, "missing"),
    ("summaries[0].text", 3, "expected a string"),
    ("summaries[1]", "text", "expected an object"),
    ("extra.confidence", 0, "must be 1–9, got 0"),
    ("extra.confidence", 10, "must be 1–9, got 10"),
    ("extra.confidence", "3", "expected an integer"),
    ("info.post", "", "empty string"),
    ("info.post", DELETE, "missing"),
    ("info.id", DELETE, "missing"),
    ("info", DELETE, "missing"),
    ("info", [], "expected an object"),
])
def test_bad_comparison_names_field(tmp_path, field, value, problem):
    path = _write(tmp_path, [COMPARISON, _with(COMPARISON, field, value)])
    with pytest.raises(DataError) as info:
        load_comparisons(path)
    assert (info.value.line, info.value.field) == (2, field)
    assert problem in str(info.value) and "SECRET" not in str(info.value)


def test_comparison_optional_fields(tmp_path):
    row = _with(_with(COMPARISON, "extra", {}), "worker", None)
    hub_style = _with(COMPARISON, "extra.confidence", None)
    hub_style["info"].update(site=None, article=None)
    comps = load_comparisons(_write(tmp_path, [row, hub_style]))
    assert [c.confidence for c in comps] == [None, None] and comps[0].worker == ""
    assert comps[1].post.source == "tldr"
    assert comps[0].chosen.text == " two" and comps[0].rejected.text == " one"


def test_cnndm_comparison_info_round_trips(tmp_path):
    row = _with(COMPARISON, "info", {"id": "cnn-1", "site": "dailymail", "title": "News", "article": "Body."})
    row["extra"] = {"confidence": 2, "other": "kept"}
    path = _write(tmp_path, [row])
    (c,) = load_comparisons(path)
    assert c.post == Post(id="cnn-1", text="Body.", title="News", subreddit="dailymail", source="cnndm")
    assert c.extra == {"other": "kept"} and c.confidence == 2
    write_comparisons(tmp_path / "back.jsonl", [c])
    assert json.loads((tmp_path / "back.jsonl").read_text()) == row


def test_plain_pairs(tmp_path):
    rows = [{"post": "A post", "chosen": "good", "rejected": "bad", "id": "p1", "confidence": 2},
            {"query": "SUBREDDIT: r/x\n\nTITLE: t\n\nPOST: p\n\nTL;DR:", "chosen": " c", "rejected": " r"},
            {"post": "A post", "chosen": "good", "rejected": "bad"}]
    a, b, c = load_comparisons(_write(tmp_path, rows))
    assert a.post.id == "p1" and a.choice == 0 and a.confidence == 2
    assert (a.chosen.text, a.rejected.text) == ("good", "bad")
    assert b.post.source == "query" and b.post.text.endswith("TL;DR:")
    assert c.post.id.startswith("sha1:") and c.post.id == load_comparisons(_write(tmp_path, rows[2:]))[0].post.id
    with pytest.raises(DataError, match="field 'rejected': missing"):
        load_comparisons(_write(tmp_path, [{"post": "p", "chosen": "c"}]))


# ---------------------------------------------------------------------------------------------- skip_bad

def test_skip_bad_counts_and_warns_without_text(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    lines = [json.dumps(TLDR), "{bad", json.dumps(_with(TLDR, "post", "")), json.dumps(TLDR),
             json.dumps(_with(TLDR, "title", 3))]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.DEBUG, logger="rlhflab.data"):
        posts = load_tldr(path, skip_bad=True)
    assert isinstance(posts, LoadResult) and isinstance(posts, list)
    assert len(posts) == 2 and posts.skipped == 3
    assert [(e.line, e.field) for e in posts.errors] == [(2, None), (3, "post"), (5, "title")]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "skipped 3" in warnings[0].getMessage()
    assert not any("SECRET" in r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG)


def test_skip_bad_with_limit_counts_only_good_rows(tmp_path):
    rows = [_with(TLDR, "post", ""), TLDR, _with(TLDR, "post", ""), TLDR, TLDR]
    posts = load_tldr(_write(tmp_path, rows), limit=2, skip_bad=True)
    assert len(posts) == 2 and posts.skipped == 2


def test_no_skipped_rows_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_tldr(_write(tmp_path, [TLDR])).skipped == 0
    assert not caplog.records


# ---------------------------------------------------------------------------------------------- formats

def test_load_posts_auto_detects_and_round_trips(tmp_path):
    posts = load_posts(_write(tmp_path, [TLDR]))
    assert posts == [Post(id="t3_a", text="SECRET post body.", title="A title", subreddit="relationships",
                          reference="A summary.", source="tldr")]
    assert load_posts(_write(tmp_path, [CNNDM], "c.jsonl"))[0].source == "cnndm"
    mixed = posts + load_cnndm(_write(tmp_path, [CNNDM], "c.jsonl")) + [Post(id="n", text="no ref")]
    write_posts(tmp_path / "own.jsonl", mixed)
    assert load_posts(tmp_path / "own.jsonl") == mixed
    assert load_posts(tmp_path / "own.jsonl", format="posts") == mixed


def test_load_posts_errors(tmp_path):
    with pytest.raises(DataError, match="cannot tell the post format"):
        load_posts(_write(tmp_path, [{"foo": 1}]))
    with pytest.raises(DataError, match="line 2, field 'post': missing"):
        load_posts(_write(tmp_path, [TLDR, CNNDM]))  # the first row fixes the format
    with pytest.raises(ValueError, match="unknown post format"):
        load_posts(_write(tmp_path, [TLDR]), format="reddit")


def test_json_array_file(tmp_path):
    path = tmp_path / "posts.json"
    path.write_text(json.dumps([TLDR, 3]))
    with pytest.raises(DataError, match="item 2: expected a JSON object"):
        load_tldr(path)
    assert len(load_tldr(path, skip_bad=True)) == 1


def test_samples_round_trip(tmp_path):
    samples = [Sample("p1", "sft", " a summary", 4), Sample("p1", "ppo", "", 0, index=1, eos=False, score=-1.0,
                                                                extra={"kl": 0.5})]
    write_samples(tmp_path / "s.jsonl.gz", samples)
    assert load_samples(tmp_path / "s.jsonl.gz") == samples
    bad = [dict(samples[0].to_dict(), n_tokens="4")]
    with pytest.raises(DataError, match="line 1, field 'n_tokens'"):
        load_samples(_write(tmp_path, bad))


def test_comparison_write_read_round_trip(tmp_path):
    comps = [Comparison(Post("a", "text a", "T", "sub"), (Summary(" x", "p"), Summary(" y", "q", "n")), 1, 8,
                        "w", "b", "valid1"),
             Comparison(Post("b", "text b"), (Summary(" x"), Summary(" y")), 0)]
    write_comparisons(tmp_path / "c.jsonl", comps)
    assert load_comparisons(tmp_path / "c.jsonl") == comps


# ---------------------------------------------------------------------------------------------- sources

def test_missing_local_file_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # any hub attempt would fail differently
    for src in [tmp_path / "absent.jsonl.gz", "data/absent.jsonl", "./absent"]:
        with pytest.raises(DataError, match="no such file"):
            load_tldr(src)
    with pytest.raises(DataError, match="is a directory"):
        load_tldr(tmp_path)


def _fake_datasets(monkeypatch, load_dataset) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_unreachable_says_so(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/summarize_from_feedback' on the Hub")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError) as info:
        load_comparisons("openai/summarize_from_feedback")
    msg = str(info.value)
    assert "hub may be unreachable" in msg and "pass a local path" in msg and "ConnectionError" in msg


def test_hub_rows_are_parsed_with_config_and_split(monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [COMPARISON, _with(COMPARISON, "choice", 3)] if "feedback" in name else [CNNDM]

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(DataError, match=r"^openai/summarize_from_feedback row 2, field 'choice'"):
        load_comparisons("openai/summarize_from_feedback", split="validation")
    assert load_cnndm("abisee/cnn_dailymail")[0].id == "abc123"
    assert calls == [("openai/summarize_from_feedback", "comparisons", "validation"),
                     ("abisee/cnn_dailymail", "3.0.0", "validation")]


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="not installed"):
        load_tldr("someone/some_dataset")


def test_loaders_do_not_import_torch_or_datasets():
    code = ("import sys, rlhflab.data.loaders, rlhflab.data.format, rlhflab.data.splits; "
            "bad = [m for m in ('torch', 'datasets', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_an_empty_summary_is_a_response_not_a_malformed_row(tmp_path):
    """OpenAI's releases hold comparisons whose summary is "" (a policy that stopped at once, still judged):
    they load, and only really malformed rows are refused."""
    empty = _with(COMPARISON, "summaries[1].text", "")
    blank = _with(COMPARISON, "summaries[0].text", "  ")
    rows = load_comparisons(_write(tmp_path, [COMPARISON, empty, blank]))
    assert [c.summaries[1].text for c in rows][:2] == [COMPARISON["summaries"][1]["text"], ""]
    assert rows[2].summaries[0].text == "  "
    from rlhflab.data.format import format_reference

    assert format_reference("", "</s>") == "</s>" and format_reference("  ", "</s>") == "</s>"  # EOS alone
    assert format_reference(" ok ", "</s>") == " ok</s>"
