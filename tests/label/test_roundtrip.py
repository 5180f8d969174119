"""Round trip: what the app exports is what rlhflab's comparison loader (the reward model's input) reads.

`rlhflab.data.loaders.load_comparisons` is the loader the reward-model stage trains from; these tests skip only
when it cannot be imported (the ones using /shared/data skip without it). The last test trains the reward model
(`rlhflab rm`, tiny in-process model) on an export, and skips without the training stack.
"""

from __future__ import annotations

import gzip
import json

import pytest

from rlhflab.label.cli import main as label_main
from labelkit import PASSWORD, Api, fast_settings

loaders = pytest.importorskip("rlhflab.data.loaders", reason="rlhflab.data.loaders is not available yet")
load_comparisons = loaders.load_comparisons


def _cli(*args: str) -> int:
    return label_main(["label", *args])


def test_cli_import_export_round_trip_of_openai_file(tmp_path, shared_data, capsys):
    src = shared_data / "comparisons" / "batch13.jsonl.gz"
    db = f"sqlite:///{tmp_path / 'l.db'}"
    assert _cli("import", "--db", db, "--project", "batch13", "--create", "--file", str(src)) == 0
    out = tmp_path / "export.jsonl.gz"
    assert _cli("export", "--db", db, "--project", "batch13", "--out", str(out)) == 0
    assert "wrote 1097 comparisons" in capsys.readouterr().out
    original, exported = load_comparisons(src), load_comparisons(out)
    assert len(exported) == len(original) == 1097 and exported.skipped == 0
    for a, b in zip(original, exported):
        assert (a.post.id, a.post.text, a.post.title, a.post.subreddit) == (b.post.id, b.post.text, b.post.title,
                                                                            b.post.subreddit)
        assert [(s.text, s.policy) for s in a.summaries] == [(s.text, s.policy) for s in b.summaries]
        assert (a.choice, a.confidence, a.worker, a.split) == (b.choice, b.confidence, b.worker, b.split)
        assert a.chosen.text == b.chosen.text
    # the file is plain OpenAI schema: same top-level keys, in the same order
    with gzip.open(src, "rt") as f:
        src_keys = list(json.loads(f.readline()))
    with gzip.open(out, "rt") as f:
        assert list(json.loads(f.readline())) == src_keys


def test_labels_from_the_app_load_as_comparisons(tmp_path, shared_data):
    """Posts + samples -> project -> labelers answer through the API -> export -> load_comparisons."""
    from rlhflab.label.app import create_app
    from rlhflab.label.formats import read_jsonl

    posts = [row for _, row in read_jsonl(shared_data / "tldr" / "eval.jsonl.gz")][:6]
    posts_file, samples_file = tmp_path / "posts.jsonl", tmp_path / "samples.jsonl"
    posts_file.write_text("".join(json.dumps(p) + "\n" for p in posts))  # TL;DR format
    samples = [{"post_id": p["id"], "policy": pol, "text": f" {pol} summary of {p['title'][:20]}", "n_tokens": 9,
                "index": 0, "eos": True, "score": None, "extra": {}}
               for p in posts for pol in ("sft", "ppo", "ref")]
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    db = f"sqlite:///{tmp_path / 'l.db'}"
    assert _cli("create-project", "--db", db, "--name", "rt", "--samples", str(samples_file), "--posts",
                str(posts_file), "--k", "1", "--gold-rate", "0") == 0
    app = create_app(fast_settings(db))
    with app.state.ctx.tx() as s:
        from rlhflab.label import service

        service.create_user(s, app.state.ctx.passwords, "ann", PASSWORD, "labeler")
        service.create_user(s, app.state.ctx.passwords, "root", PASSWORD, "admin")
    ann = Api(app).login("ann")
    picked = {}
    while True:
        a = ann.post("/api/projects/1/next").json()["assignment"]
        if a is None:
            break
        side, conf = ("left", 3) if a["left"] < a["right"] else ("right", 8)
        picked[a["task_id"]] = (a["left"], a["right"])[side == "right"]
        assert ann.post(f"/api/assignments/{a['assignment_id']}/answer",
                        {"side": side, "confidence": conf}).status_code == 201
    assert len(picked) == 6
    out = tmp_path / "labels.jsonl"
    out.write_text(Api(app).login("root").get("/api/projects/1/export/comparisons").text)
    comps = load_comparisons(out)
    assert len(comps) == 6
    by_id = {p["id"]: p for p in posts}
    for c in comps:
        assert c.post.text == by_id[c.post.id]["post"] and c.worker == "ann"
        assert c.chosen.text == picked[c.extra["task_id"]]
        assert c.confidence in (3, 8) and (c.confidence < 5) == (c.choice == 0)
        assert {s.policy for s in c.summaries} <= {"sft", "ppo", "ref"}


def test_export_trains_the_reward_model_unchanged(tmp_path):
    """Labels made in the app -> `rlhflab label export` -> `rlhflab rm` (tiny in-process model) trains on the file
    as it is. Skips where the training stack (torch, transformers) is not installed."""
    pytest.importorskip("torch", reason="the reward-model stage needs torch")
    reward = pytest.importorskip("rlhflab.train.reward", reason="the reward-model stage is not available")
    from rlhflab.cli import main as rlhflab_main
    from rlhflab.core.rundir import RunDir
    from rlhflab.label import db as dbm
    from rlhflab.label import service

    words = ["cat", "dog", "rent", "job", "boss", "sister", "car", "loan", "trip", "exam", "flat", "game"]
    posts = [{"id": f"r{i}", "subreddit": "test", "title": f"t{i}",
              "post": f"A post about the {words[i % 12]} number {i}.", "summary": f" about the {words[i % 12]}"}
             for i in range(40)]
    posts_file, samples_file = tmp_path / "posts.jsonl", tmp_path / "samples.jsonl"
    posts_file.write_text("".join(json.dumps(p) + "\n" for p in posts))
    samples = [{"post_id": p["id"], "policy": pol, "text": text, "n_tokens": 4}
               for p in posts for pol, text in (("good", f" the {p['post'].split()[4]}"), ("bad", " nothing"))]
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    db = f"sqlite:///{tmp_path / 'l.db'}"
    assert _cli("create-project", "--db", db, "--name", "rm", "--samples", str(samples_file), "--posts",
                str(posts_file), "--k", "1", "--gold-rate", "0") == 0
    factory = dbm.session_factory(dbm.make_engine(db))
    for name in ("ann", "bob", "cat"):  # three labelers share the 40 tasks: "good" is better
        with dbm.session_scope(factory) as s:
            user = service.create_user(s, None, name, None, role="external")
            user.role = "labeler"
            project = service.get_project(s, 1)
            for _ in range(14):
                a = service.next_assignment(s, project, user)
                if a is None:
                    break
                good_left = (a.task.policy_a == "good") != a.swapped
                side = "left" if good_left else "right"
                service.submit_answer(s, user, a.id, side=side, confidence=2 if side == "left" else 8)
    export = tmp_path / "labels.jsonl"
    assert _cli("export", "--db", db, "--project", "rm", "--out", str(export)) == 0
    assert len(export.read_text().splitlines()) == 40
    out = tmp_path / "rm-run"
    code = rlhflab_main(["rm", "--config", "configs/rm/tiny.yaml", "--out", str(out), f"data.comparisons={export}",
                         "data.limit=null", "data.dev_fraction=0.25", "data.max_query_tokens=200",
                         f"normalise_on={posts_file}", "epochs=1", "eval_every=0", "save_every=100"])
    assert code == 0
    done = RunDir(out).read_done()
    assert RunDir(out).is_done() and reward is not None
    rows_in = {k: v for k, v in done.get("data", {}).items() if k.endswith("_rows_in")}
    assert sum(rows_in.values()) == 40, done


def test_a_comparison_with_an_empty_summary_imports_and_exports_back(tmp_path, capsys):
    """OpenAI's releases hold judged comparisons whose summary is "": the app takes them like the loaders do."""
    row = {"info": {"id": "t3_e", "post": "a post", "title": "T", "subreddit": "s"}, "split": "train",
           "summaries": [{"text": " a summary", "policy": "sup", "note": ""}, {"text": "", "policy": "ppo", "note": ""}],
           "choice": 0, "worker": "w1", "batch": "b", "extra": {"confidence": 2}}
    src = tmp_path / "empty.jsonl"
    src.write_text(json.dumps(row) + "\n")
    db = f"sqlite:///{tmp_path / 'e.db'}"
    assert _cli("import", "--db", db, "--project", "p", "--create", "--file", str(src)) == 0
    out = tmp_path / "out.jsonl"
    assert _cli("export", "--db", db, "--project", "p", "--out", str(out)) == 0
    [back] = load_comparisons(out)
    assert [s.text for s in back.summaries] == [" a summary", ""] and back.choice == 0
