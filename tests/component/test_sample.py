"""`rlhflab sample` on a tiny model: one row per (post, index), resumable, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from rlhflab.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_sample_cli_writes_and_resumes(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "samples"
    args = ["sample", "--config", "configs/sample/tiny.yaml", "--out", str(out),
            f"posts={shared_data / 'tldr/eval.jsonl.gz'}"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12  # 6 posts × n=2
    assert len({(r["post_id"], r["index"]) for r in rows}) == 12
    assert all(r["policy"] == "tiny" and 0 <= r["n_tokens"] <= 8 for r in rows)
    done = json.loads((out / "DONE.json").read_text())
    assert done["n_samples"] == 12

    # An interrupted run (DONE.json missing, half the rows written, a torn last line) resumes without duplicates.
    (out / "DONE.json").unlink()
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:10])
    assert main(args) == 0
    again = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted((r["post_id"], r["index"]) for r in again) == sorted((r["post_id"], r["index"]) for r in rows)



@pytest.mark.parametrize("kept", [0, 3, 4, 5, 11])
def test_resumed_sampling_writes_the_same_bytes_as_an_uninterrupted_run(shared_data, tmp_path, monkeypatch, kept):
    """At temperature 0.7 a resumed run (killed after `kept` rows and a torn line) writes the same file, byte for
    byte: each batch is seeded from its place in the full (post, index) order, not from how much was done."""
    monkeypatch.chdir(REPO)

    def run(out: Path) -> bytes:
        args = ["sample", "--config", "configs/sample/tiny.yaml", "--out", str(out), "temperature=0.7",
                f"posts={shared_data / 'tldr/eval.jsonl.gz'}"]
        assert main(args) == 0
        return (out / "samples.jsonl").read_bytes()

    straight = run(tmp_path / "straight")
    assert len(straight.splitlines()) == 12
    out = tmp_path / "resumed"
    run(out)
    (out / "DONE.json").unlink()
    lines = straight.splitlines(keepends=True)
    (out / "samples.jsonl").write_bytes(b"".join(lines[:kept]) + lines[kept][:12])
    assert run(out) == straight

def test_cli_config_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["sft", "--config", "configs/sft/tiny.yaml", "--out", str(tmp_path / "x"), "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert main(["sft", "--show-config"]) == 0
    assert "optim.lr (float)" in capsys.readouterr().out


def test_a_posts_summaries_share_one_prefill_even_where_a_batch_splits_them(shared_data, tmp_path, monkeypatch):
    """n=3 in batches of 4 cuts posts across batches; each post's query is prefilled once for its summaries in a
    batch. The file must be byte for byte the one that prefilling every row on its own writes (the same batches
    and seeds, `generate` given each row's query instead of counts)."""
    import torch

    from rlhflab.eval import sample as sample_module

    monkeypatch.chdir(REPO)

    def run(out: Path) -> bytes:
        args = ["sample", "--config", "configs/sample/tiny.yaml", "--out", str(out), "n=3", "limit=5",
                "batch_size=4", f"posts={shared_data / 'tldr/eval.jsonl.gz'}"]
        assert main(args) == 0
        return (out / "samples.jsonl").read_bytes()

    calls = []
    real_generate = sample_module.generate

    def generate_each_row_alone(model, tokenizer, ids, mask, *, n_per_query, **kw):
        calls.append(list(n_per_query))
        counts = torch.as_tensor(n_per_query)
        return real_generate(model, tokenizer, ids.repeat_interleave(counts, 0), mask.repeat_interleave(counts, 0),
                             n_per_query=1, **kw)

    shared = run(tmp_path / "shared")
    monkeypatch.setattr(sample_module, "generate", generate_each_row_alone)
    alone = run(tmp_path / "alone")
    assert calls == [[3, 1], [2, 2], [1, 3], [3]]  # posts of 3 summaries cut into batches of 4
    assert shared == alone
    rows = [json.loads(line) for line in shared.splitlines()]
    assert [(r["post_id"], r["index"]) for r in rows][:4] == [(rows[0]["post_id"], i) for i in range(3)] + [
        (rows[3]["post_id"], 0)]
    assert len({r["text"] for r in rows}) > 5  # T=0.7: samples, not copies, so a row given another post's shows
