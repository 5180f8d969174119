"""Reward model on tiny in-process models: the score's token, padding, normalisation, training, resume, rm-eval."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rlhflab.cli import main  # noqa: E402
from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.core.rundir import RunDir, RunError  # noqa: E402
from rlhflab.data.loaders import load_comparisons  # noqa: E402
from rlhflab.data.records import Comparison, Post, Summary  # noqa: E402
from rlhflab.models.reward import (  # noqa: E402
    last_token_index,
    load_reward_model,
    new_reward_model,
    normalise,
    pad_sequences,
    save_reward_model,
)
from rlhflab.train.reward import RewardConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WORDS = "cat dog rent job car house friend money school trip phone boss game sister lease work".split()


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


# ------------------------------------------------------------------------------------------------ data helpers

def synthetic_rows(n_posts: int = 48, seed: int = 0) -> list[dict]:
    """OpenAI-schema comparisons where people always prefer the summary that says "good" (a learnable rule).
    The chosen summary is the shorter one half the time, so length alone scores ~0.5."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_posts):
        topic = rng.sample(WORDS, 3)
        post = f"My {topic[0]} and my {topic[1]} had a fight about the {topic[2]}. What now?"
        for j in range(2):
            base = " ".join(rng.sample(WORDS, 2))
            good, bad = f" {base} good", f" {base} bad"
            if rng.random() < 0.5:
                good, bad = good + " ok so", bad
            else:
                good, bad = good, bad + " ok so"
            choice = rng.randrange(2)
            texts = [good, bad] if choice == 0 else [bad, good]
            conf = rng.choice([1, 2, 3, 4]) if choice == 0 else rng.choice([6, 7, 8, 9])
            rows.append({"info": {"id": f"p{i}", "post": post, "title": f"t{i}", "subreddit": "test"},
                         "split": "valid1", "summaries": [{"text": texts[0], "policy": "a"},
                                                          {"text": texts[1], "policy": "b"}],
                         "choice": choice, "worker": f"w{j}", "batch": "synthetic", "extra": {"confidence": conf}})
    return rows


def synthetic_posts(n: int = 12) -> list[dict]:
    return [{"id": f"r{i}", "subreddit": "test", "title": f"t{i}", "post": f"A post about the {WORDS[i % 16]}.",
             "summary": f"{WORDS[(i + 3) % 16]} {'good' if i % 2 else 'bad'}"} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") if path.suffix == ".gz" else open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_cfg(tmp_path: Path, **overrides) -> RewardConfig:
    comparisons = write_jsonl(tmp_path / "cmp.jsonl", synthetic_rows())
    posts = write_jsonl(tmp_path / "posts.jsonl", synthetic_posts())
    base = {"data.comparisons": comparisons, "data.limit": "null", "data.dev_fraction": 0.25,
            "data.max_query_tokens": 200, "normalise_on": posts, "epochs": 4, "optim.lr": 3e-3,
            "optim.warmup_ratio": 0.0, "eval_every": 0, "save_every": 4}
    base.update(overrides)
    return load_config(RewardConfig, "configs/rm/tiny.yaml", [f"{k}={v}" for k, v in base.items()])


# ------------------------------------------------------------------------------------------------ the model

def test_last_token_index_from_mask_for_both_padding_sides():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[0, 0]]))


def test_left_and_right_padding_give_the_same_score():
    rm = new_reward_model("tiny:3")
    eos = rm.tokenizer.eos_token_id
    seqs = [[5, 6, 7, 8, 9, 10, eos], [40, 41, eos], [70, 71, 72, 73, eos]]
    with torch.no_grad():
        right = rm(*pad_sequences(seqs, rm.tokenizer.pad_token_id, "right"))
        left = rm(*pad_sequences(seqs, rm.tokenizer.pad_token_id, "left"))
        alone = torch.cat([rm(*pad_sequences([s], eos)) for s in seqs])
    torch.testing.assert_close(right, left, atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)


def test_score_is_read_at_the_last_real_token_which_may_be_eos():
    rm = new_reward_model("tiny:4")
    eos = rm.tokenizer.eos_token_id  # == pad id: a pad-id search would stop at the response's EOS or miss it
    assert eos == rm.tokenizer.pad_token_id
    seqs = [[5, 6, 7, eos], [9, 10, 11, 12, 13, 14, eos]]
    ids, mask = pad_sequences(seqs, eos)
    with torch.no_grad():
        base = rm(ids, mask)
        after = ids.clone()
        after[0, 4:] = 99  # tokens after the last real token (masked out) do not matter
        assert torch.equal(rm(after, mask), base)
        changed = ids.clone()
        changed[0, 3] = 42  # the last real token (the EOS) does
        assert not torch.isclose(rm(changed, mask)[0], base[0])
        without_eos = rm(*pad_sequences([[5, 6, 7]], eos))
        assert not torch.isclose(without_eos[0], base[0])  # the EOS itself is scored


@pytest.mark.parametrize("bf16", [False, True])
def test_shared_query_pairs_match_full_sequences_in_scores_and_gradients(bf16):
    rm = new_reward_model("tiny:6")
    eos = rm.tokenizer.eos_token_id
    queries = [[1, 2, 3, 4, 5, 6], [9, 8], [30, 31, 32]]
    chosen = [[11, 12, eos], [13, eos], [50, 51, 52, 53, 54, eos]]
    rejected = [[21, eos], [22, 23, 24, 25, eos], [60, eos]]
    results = []
    for share in (True, False):
        rm.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rc, rr = rm.forward_pairs(queries, chosen, rejected, share_query=share)
        (rc - 2 * rr).sum().backward()
        results.append((rc.detach(), rr.detach(), {n: p.grad.clone() for n, p in rm.named_parameters()}))
    (c1, r1, g1), (c2, r2, g2) = results
    tol = 5e-2 if bf16 else 1e-5
    torch.testing.assert_close(c1, c2, atol=tol, rtol=0)
    torch.testing.assert_close(r1, r2, atol=tol, rtol=0)
    if not bf16:
        for name in g1:
            torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)


def test_normalisation_makes_references_average_zero_and_survives_save_load(tmp_path):
    rm = new_reward_model("tiny:5", max_query_tokens=200)
    posts = [Post(id=f"x{i}", text=f"post number {i} about a {WORDS[i]}", title="t", subreddit="s",
                  reference=f"{WORDS[i]} summary") for i in range(10)]
    info = normalise(rm, posts)
    refs = rm.score(posts, [p.reference for p in posts])
    assert float(refs.mean()) == pytest.approx(0.0, abs=1e-5)
    assert info["n_references"] == 10 and info["bias"] == pytest.approx(float(rm.bias))
    save_reward_model(rm, tmp_path / "model")
    assert {"reward_head.safetensors", "reward.json", "model.safetensors", "config.json"} <= {
        p.name for p in (tmp_path / "model").iterdir()}
    loaded = load_reward_model(tmp_path / "model")
    torch.testing.assert_close(loaded.score(posts, [p.reference for p in posts]), refs, atol=1e-5, rtol=0)
    assert float(loaded.score(posts, [p.reference for p in posts]).mean()) == pytest.approx(0.0, abs=1e-5)


def test_a_plain_language_model_is_not_a_reward_model(tmp_path, capsys):
    from rlhflab.models.loading import ModelLoadError, save_model, tiny_model_and_tokenizer

    save_model(*tiny_model_and_tokenizer(), tmp_path / "lm")
    with pytest.raises(ModelLoadError, match="not a reward model"):
        load_reward_model(tmp_path / "lm")
    code = main(["rm-eval", "--config", "configs/rm-eval/tiny.yaml", "--out", str(tmp_path / "ev"),
                 f"model={tmp_path / 'lm'}"])
    err = capsys.readouterr().err
    assert code == 2 and "not a reward model" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ bad data

@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.update(choice=2), "choice"),
    (lambda r: r["summaries"].pop(), "summaries"),
    (lambda r: r["summaries"][1].pop("text"), "summaries[1].text"),
    (lambda r: r["extra"].update(confidence=11), "extra.confidence"),
])
def test_bad_comparison_row_is_a_clear_cli_error_naming_the_line(tmp_path, capsys, mutate, field):
    rows = synthetic_rows(n_posts=3)
    mutate(rows[4])
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code = main(["rm", "--config", "configs/rm/tiny.yaml", "--out", str(tmp_path / "run"),
                 f"data.comparisons={path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "line 5" in err and field in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------ training

def test_tiny_rm_learns_a_synthetic_preference_and_beats_length(tmp_path):
    out = tmp_path / "rm"
    summary = train(tiny_cfg(tmp_path), str(out))
    run = RunDir(out)
    assert run.is_done() and (run.model_dir / "reward_head.safetensors").exists()
    assert summary["dev_accuracy"] >= 0.9, summary
    assert summary["dev_accuracy_before"] < 0.8
    assert summary["normalisation"]["n_references"] == 12
    assert summary["data"]["data/train_rows_in"] + summary["data"]["data/dev_rows_in"] == 96
    rm = load_reward_model(out)  # from the run directory alone
    ref_scores = rm.score([Post(id=p["id"], text=p["post"], title=p["title"], subreddit=p["subreddit"])
                           for p in synthetic_posts()], [p["summary"] for p in synthetic_posts()])
    assert float(ref_scores.mean()) == pytest.approx(0.0, abs=1e-4)

    # rm-eval on the dev split: accuracy next to the length baseline, calibration, worst errors, plot
    ev = tmp_path / "eval"
    code = main(["rm-eval", "--config", "configs/rm-eval/tiny.yaml", "--out", str(ev), f"model={out}",
                 f"comparisons={tmp_path / 'cmp.jsonl'}", "split=dev", "dev_fraction=0.25", "limit=null",
                 "duplicates=drop", "contradictions=majority"])
    assert code == 0
    report = json.loads((ev / "report.json").read_text())
    assert report["n_pairs"] == summary["dev_pairs"]  # the RM run's own dev pairs
    assert report["accuracy"] == pytest.approx(summary["dev_accuracy"])
    for key in ("accuracy", "length_baseline_accuracy", "similar_length_accuracy", "per_confidence",
                "per_policy_pair", "per_split", "per_batch", "calibration", "worst_errors"):
        assert key in report, key
    assert report["accuracy"] >= 0.9 and report["length_baseline_accuracy"] < 0.8
    assert set(report["per_confidence"]) <= {"1", "2", "3", "4"}
    assert sum(b["n"] for b in report["calibration"]["bins"]) == report["n_pairs"]
    assert (ev / "reliability.png").exists() or report["reliability_plot"] is None
    pairs = [json.loads(line) for line in (ev / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == report["n_pairs"]
    assert sum(p["margin"] > 0 for p in pairs) / len(pairs) == pytest.approx(report["accuracy"])


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=1, save_every=3, eval_every=4)
    train(cfg, str(tmp_path / "straight"))
    assert train(cfg, str(tmp_path / "resumed"), stop_after=5) == {"stopped_at": 5}
    assert not RunDir(tmp_path / "resumed").is_done()
    with pytest.raises(RunError, match="unfinished"):
        load_reward_model(tmp_path / "resumed")
    assert load_reward_model(tmp_path / "resumed", allow_partial=True) is not None
    train(cfg, str(tmp_path / "resumed"))  # resumes from the step-3 checkpoint

    from safetensors.torch import load_file

    for name in ("model.safetensors", "reward_head.safetensors"):
        a = load_file(tmp_path / "straight/model" / name)
        b = load_file(tmp_path / "resumed/model" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    rows_a, rows_b = RunDir(tmp_path / "straight").read_metrics(), RunDir(tmp_path / "resumed").read_metrics()
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    assert [r.get("train/loss") for r in rows_a] == [r.get("train/loss") for r in rows_b]
    assert [r.get("eval/accuracy") for r in rows_a] == [r.get("eval/accuracy") for r in rows_b]


def test_confidence_loss_trains_and_score_command_fills_sample_scores(tmp_path):
    out = tmp_path / "rm"
    summary = train(tiny_cfg(tmp_path, loss="confidence", epochs=1, normalise_on="null"), str(out))
    assert summary["loss"] == "confidence" and summary["normalisation"] == {}
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"post_id": f"r{i}", "policy": "pi", "text": f" {w} good", "n_tokens": 5, "index": 0,
                           "eos": i % 2 == 0} for i, w in enumerate(WORDS[:6])])
    code = main(["score", "--config", "configs/score/tiny.yaml", "--out", str(tmp_path / "score"), f"model={out}",
                 f"samples={samples}", f"posts={tmp_path / 'posts.jsonl'}"])
    assert code == 0
    scored = [json.loads(line) for line in (tmp_path / "score/samples.jsonl").read_text().splitlines()]
    assert len(scored) == 6 and all(isinstance(r["score"], float) for r in scored)
    assert RunDir(tmp_path / "score").read_done()["mean_score_per_policy"]["pi"] == pytest.approx(
        sum(r["score"] for r in scored) / 6)


def test_comparisons_with_a_plain_pair_file_load(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "Q: x\nTL;DR:", "chosen": " a", "rejected": " b"}])
    (c,) = load_comparisons(path)
    assert c.chosen.text == " a" and c.post.source == "query"


def test_length_baseline_similar_length_and_calibration_by_hand(tmp_path):
    from rlhflab.eval.rm_eval import calibration, length_baseline_correct, reliability_plot, similar_length

    def c(chosen: str, rejected: str) -> Comparison:
        return Comparison(post=Post(id="p", text="x"), summaries=(Summary(chosen), Summary(rejected)), choice=0)

    assert length_baseline_correct(c(" longer one", " short")) == 1.0
    assert length_baseline_correct(c(" ab", " abcd")) == 0.0
    assert length_baseline_correct(c(" abc ", "xyz")) == 0.5  # lengths of the stripped text
    assert similar_length("a" * 100, "b" * 90, 0.10) and not similar_length("a" * 100, "b" * 89, 0.10)
    rows = [{"pick_confidence": p, "correct": k} for p, k in [(0.55, 1.0), (0.58, 0.0), (0.95, 1.0), (1.0, 1.0)]]
    cal = calibration(rows, n_bins=2)  # bins [0.5, 0.75) and [0.75, 1.0]
    assert [b["n"] for b in cal["bins"]] == [2, 2]
    assert cal["bins"][0]["mean_predicted"] == pytest.approx(0.565) and cal["bins"][0]["observed"] == 0.5
    assert cal["bins"][1]["mean_predicted"] == pytest.approx(0.975) and cal["bins"][1]["observed"] == 1.0
    assert cal["expected_calibration_error"] == pytest.approx(0.5 * 0.065 + 0.5 * 0.025)
    pytest.importorskip("matplotlib")
    assert reliability_plot(cal, tmp_path / "r.png", "test") and (tmp_path / "r.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ best-of-N labels

def synthetic_best_of_4(n: int = 48, seed: int = 0) -> list[dict]:
    """Best-of-4 labels where the labeler always picks the one continuation that says "good"; the pick is the
    longest only by chance (lengths are shuffled), so "the longest wins" scores about chance."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        texts = [" " + " ".join(rng.sample(WORDS, rng.randint(2, 4))) + " bad." for _ in range(4)]
        best = rng.randrange(4)
        texts[best] = texts[best].replace(" bad.", " good.")
        rows.append({"id": f"q{i}", "query": f"The {rng.choice(WORDS)} sat by the {rng.choice(WORDS)}.",
                     "samples": [{"text": t, "eos": False} for t in texts], "best": best, "batch": "b0"})
    return rows


def test_best_of_4_rm_learns_the_pick_with_softmax_loss_and_labels_normalisation(tmp_path):
    labels = write_jsonl(tmp_path / "bo4.jsonl", synthetic_best_of_4())
    cfg = tiny_cfg(tmp_path, **{"data.comparisons": labels, "normalise_on": "labels", "epochs": 6})
    assert cfg.resolved_loss() == "best_of_n"
    summary = train(cfg, str(tmp_path / "rm"))
    assert summary["loss"] == "best_of_n" and summary["train_pairs"] + summary["dev_pairs"] == 48
    assert summary["dev_accuracy_before"] < 0.6 and summary["dev_accuracy"] >= 0.8, summary  # chance is 0.25
    assert summary["normalisation"]["on"] == "labels"
    rm = load_reward_model(tmp_path / "rm")
    rows = synthetic_best_of_4()[:8]
    raw = rm.score([r["query"] for r in rows for _ in range(4)], [s["text"] for r in rows for s in r["samples"]],
                   eos=False)
    assert float(raw.reshape(8, 4).argmax(1).eq(torch.tensor([r["best"] for r in rows])).float().mean()) >= 0.75

    # rm-eval: top-1 accuracy against chance and against "the longest wins"
    ev = tmp_path / "eval"
    assert main(["rm-eval", "--config", "configs/rm-eval/tiny.yaml", "--out", str(ev), f"model={tmp_path / 'rm'}",
                 f"comparisons={labels}", "split=dev", "dev_fraction=0.25", "limit=null"]) == 0
    report = json.loads((ev / "report.json").read_text())
    assert report["kind"] == "best_of_n" and report["chance"] == 0.25
    assert report["top1_accuracy"] == pytest.approx(summary["dev_accuracy"])
    assert report["longest_wins_accuracy"] < report["top1_accuracy"]


def test_a_pairwise_loss_on_best_of_n_labels_is_refused_naming_the_key(tmp_path):
    labels = write_jsonl(tmp_path / "bo4.jsonl", synthetic_best_of_4(4))
    with pytest.raises(ValueError, match="loss"):
        tiny_cfg(tmp_path, **{"data.comparisons": labels, "loss": "pairwise"}).resolved_loss()


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.update(best=4), "best"),
    (lambda r: r.update(samples=r["samples"][:1]), "samples"),
    (lambda r: r["samples"][2].update(eos="yes"), "samples[2].eos"),
])
def test_bad_best_of_4_row_is_a_clear_cli_error_naming_the_line(tmp_path, capsys, mutate, field):
    rows = synthetic_best_of_4(6)
    mutate(rows[3])
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code = main(["rm", "--config", "configs/rm/tiny.yaml", "--out", str(tmp_path / "run"), f"data.comparisons={path}",
                 "normalise_on=labels"])
    err = capsys.readouterr().err
    assert code == 2
    assert "line 4" in err and f"'{field}'" in err and "Traceback" not in err, err


def test_init_from_continues_the_previous_rms_weights(tmp_path):
    """Online collection: the next round's RM starts from the last one's backbone and head, not a fresh head."""
    labels = write_jsonl(tmp_path / "bo4.jsonl", synthetic_best_of_4())
    first = tiny_cfg(tmp_path, **{"data.comparisons": labels, "normalise_on": "labels", "epochs": 2})
    train(first, str(tmp_path / "rm1"))
    rm1 = load_reward_model(tmp_path / "rm1")
    # one step at a negligible learning rate: the weights are rm1's; a fresh start would have the seed's head
    tiny_lr = {"data.comparisons": labels, "normalise_on": "labels", "max_steps": 1, "optim.lr": 1e-12}
    train(tiny_cfg(tmp_path, **tiny_lr, init_from=tmp_path / "rm1"), str(tmp_path / "rm2"))
    train(tiny_cfg(tmp_path, **tiny_lr), str(tmp_path / "fresh"))
    rm2, fresh = load_reward_model(tmp_path / "rm2"), load_reward_model(tmp_path / "fresh")
    torch.testing.assert_close(rm2.head.weight, rm1.head.weight, atol=1e-6, rtol=0)
    for name, p in rm1.lm.named_parameters():
        torch.testing.assert_close(dict(rm2.lm.named_parameters())[name], p, atol=1e-6, rtol=0)
    assert (fresh.head.weight - rm1.head.weight).abs().max() > 1e-3
    assert "init_from" in (tmp_path / "rm2" / "config.yaml").read_text()


def test_normalisation_posts_that_cannot_fit_are_dropped_and_a_stopped_run_resumes_with_a_new_normalise_on(
        tmp_path, capsys):
    """The case of issue 20: a `normalise_on` post whose title alone is over the query budget used to crash step
    (5) after the whole training; now it is left out with a count. And a run stopped before normalising resumes
    with a corrected `normalise_on` (a key that only affects what is still to come), recorded in config.yaml."""
    import yaml

    long_title = synthetic_posts(1)[0] | {"id": "r_long", "title": "word " * 120}
    unfit = write_jsonl(tmp_path / "unfit.jsonl", [long_title, *synthetic_posts()])
    out = tmp_path / "rm"
    cfg = tiny_cfg(tmp_path, **{"normalise_on": unfit, "data.max_query_tokens": 120})
    train(cfg, str(out), stop_after=2)  # stopped after step 2, before (5) normalisation
    other = write_jsonl(tmp_path / "other.jsonl", [long_title, *synthetic_posts(8)])
    summary = train(tiny_cfg(tmp_path, **{"normalise_on": other, "data.max_query_tokens": 120}), str(out))
    assert summary["normalisation"]["n_references"] == 8 and summary["normalisation"]["n_dropped_unfit"] == 1
    doc = yaml.safe_load((out / "config.yaml").read_text())
    assert doc["changes"] == [{"key": "normalise_on", "old": str(unfit), "new": str(other), "at_step": 2}]

    # a key that changes what is already done is refused, with the diff, and nothing saved is touched
    stopped = tmp_path / "rm2"
    train(cfg, str(stopped), stop_after=2)
    code = main(["rm", "--config", "configs/rm/tiny.yaml", "--out", str(stopped), f"data.comparisons={tmp_path / 'cmp.jsonl'}",
                 "data.limit=null", "data.dev_fraction=0.25", "data.max_query_tokens=120", f"normalise_on={unfit}",
                 "epochs=4", "optim.lr=0.5", "optim.warmup_ratio=0.0", "eval_every=0", "save_every=4"])
    err = capsys.readouterr().err
    assert code == 2 and "optim.lr: 0.003 -> 0.5" in err and "normalise_on" in err, err
    assert yaml.safe_load((stopped / "config.yaml").read_text())["config"]["optim"]["lr"] == 0.003
    assert (stopped / "metrics.jsonl").exists() and not (stopped / "DONE.json").exists()


# ------------------------------------------------------------------------------------------------ post-less pairs

def postless_rows(n: int = 40, seed: int = 3) -> list[dict]:
    """Comparisons without posts ({id, chosen, rejected, ...}) that follow the same rule: "good" wins."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        base = " ".join(rng.sample(WORDS, 2))
        rows.append({"id": f"train-{i:05d}", "chosen": f" {base} {WORDS[i % 16]} good", "rejected": f" {base} {WORDS[i % 16]} bad",
                     "chosen_policy": "sup1", "rejected_policy": "ref", "batch": "batch3"})
    rows.append(dict(rows[0], id="train-dup"))  # the same two summaries labelled twice: a duplicate
    return rows


@pytest.mark.parametrize("schedule", ["first", "mixed"])
def test_postless_pairs_train_beside_the_comparisons_counted_and_never_in_dev(tmp_path, schedule):
    postless = write_jsonl(tmp_path / "no_posts.jsonl", postless_rows())
    cfg = tiny_cfg(tmp_path, **{"data.postless": postless, "data.postless_schedule": schedule,
                                "data.postless_weight": 0.5, "epochs": 2})
    plain = train(tiny_cfg(tmp_path, epochs=2), str(tmp_path / "plain"))
    summary = train(cfg, str(tmp_path / schedule))
    assert summary["postless_pairs"] == 40  # 41 rows, the duplicate dropped
    assert summary["data"]["data/postless_duplicate_rows_dropped"] == 1
    assert summary["train_pairs"] == plain["train_pairs"] + 40
    assert summary["dev_pairs"] == plain["dev_pairs"]  # dev is the comparisons' alone
    n, per_batch = plain["train_pairs"], 8  # configs/rm/tiny.yaml's batch
    expected = 40 // per_batch + 2 * (n // per_batch) if schedule == "first" else 2 * ((n + 40) // per_batch)
    assert plain["step"] == 2 * (n // per_batch) and summary["step"] == expected
    assert summary["dev_accuracy"] >= 0.8, summary


def test_a_first_schedule_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    postless = write_jsonl(tmp_path / "no_posts.jsonl", postless_rows())
    cfg = tiny_cfg(tmp_path, **{"data.postless": postless, "epochs": 1, "save_every": 3})
    train(cfg, str(tmp_path / "straight"))
    assert train(cfg, str(tmp_path / "resumed"), stop_after=4) == {"stopped_at": 4}  # inside the post-less phase
    train(cfg, str(tmp_path / "resumed"))
    a, b = (load_file(tmp_path / d / "model" / "reward_head.safetensors") for d in ("straight", "resumed"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_k_fold_dev_sets_partition_the_posts_and_rm_eval_finds_the_same_fold(tmp_path):
    from rlhflab.train.reward import load_data

    devs = []
    for k in range(3):
        _, dev, _ = load_data(tiny_cfg(tmp_path, **{"data.folds": 3, "data.fold": k}))
        devs.append({c.post.id for c in dev})
    assert sum(map(len, devs)) == 48 and len(set().union(*devs)) == 48
    out = tmp_path / "rm"
    summary = train(tiny_cfg(tmp_path, **{"data.folds": 3, "data.fold": 1, "epochs": 1}), str(out))
    code = main(["rm-eval", "--config", "configs/rm-eval/tiny.yaml", "--out", str(tmp_path / "ev"), f"model={out}",
                 f"comparisons={tmp_path / 'cmp.jsonl'}", "split=dev", "folds=3", "fold=1", "limit=null",
                 "duplicates=drop", "contradictions=majority"])
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert code == 0 and report["n_pairs"] == summary["dev_pairs"]
    assert report["accuracy"] == pytest.approx(summary["dev_accuracy"])


def test_empty_summaries_train_as_eos_alone_and_are_counted(tmp_path):
    rows = synthetic_rows()
    for r in rows[:6]:  # a policy that stopped at once: OpenAI's files hold such judged rows
        r["summaries"][1]["text"] = ""
    write_jsonl(tmp_path / "cmp_empty.jsonl", rows)
    cfg = tiny_cfg(tmp_path, **{"data.comparisons": tmp_path / "cmp_empty.jsonl", "epochs": 1})
    summary = train(cfg, str(tmp_path / "rm"))
    data = summary["data"]
    assert data["data/train_empty_summaries"] + data["data/dev_empty_summaries"] == 6
    rm = load_reward_model(tmp_path / "rm")
    assert rm.encode_response("") == [rm.tokenizer.eos_token_id]
