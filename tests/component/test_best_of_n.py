"""`rlhflab best-of-n` on a tiny policy and a tiny trained RM: the choice, resume, the EOS penalty, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rlhflab.cli import main  # noqa: E402
from rlhflab.core.config import ConfigError, load_config  # noqa: E402
from rlhflab.core.rundir import RunError  # noqa: E402
from rlhflab.models.generation import generate, pad_queries  # noqa: E402
from rlhflab.models.loading import ModelLoadError, save_model, tiny_model_and_tokenizer  # noqa: E402
from rlhflab.models.reward import load_reward_model, new_reward_model  # noqa: E402
from rlhflab.eval.best_of_n import (  # noqa: E402
    BestOfNConfig,
    best_index,
    best_of_n,
    expected_best_of_k,
    ranking_scores,
)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/best-of-n/tiny.yaml"


@pytest.fixture(scope="module")
def rm_run(shared_data, tmp_path_factory) -> Path:
    """A tiny RM trained for a few steps on real comparisons (an `rlhflab rm` run directory)."""
    from rlhflab.train.reward import RewardConfig, train

    out = tmp_path_factory.mktemp("rm") / "run"
    cfg = load_config(RewardConfig, REPO / "configs/rm/tiny.yaml", [
        f"data.comparisons={shared_data / 'comparisons/batch13.jsonl.gz'}", "data.limit=32",
        f"normalise_on={shared_data / 'tldr/train.jsonl.gz'}", "max_steps=2", "eval_every=0"])
    train(cfg, str(out))
    return out


def bo_cfg(shared_data: Path, rm_run: Path, *overrides: str) -> BestOfNConfig:
    return load_config(BestOfNConfig, TINY, [f"reward={rm_run}", f"posts={shared_data / 'tldr/eval.jsonl.gz'}",
                                             *overrides])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ the choice

def test_best_is_the_argmax_of_the_written_scores(shared_data, rm_run, tmp_path):
    out = tmp_path / "bo"
    summary = best_of_n(bo_cfg(shared_data, rm_run), str(out))
    rows, cands = read(out / "samples.jsonl"), read(out / "candidates.jsonl")
    assert len(rows) == 6 and len({r["post_id"] for r in rows}) == 6
    assert len(cands) == 6 * 4
    rm = load_reward_model(rm_run)
    for r in rows:
        x = r["extra"]
        assert r["policy"] == "bo4-tiny" and x["base_policy"] == "tiny" and x["n"] == 4 and len(x["scores"]) == 4
        assert x["best_index"] == max(range(4), key=lambda i: x["scores"][i])
        assert r["score"] == max(x["scores"]) == x["scores"][x["best_index"]]
        assert x["mean_score"] == pytest.approx(sum(x["scores"]) / 4)
        assert r["score"] >= x["mean_score"]
        mine = [c for c in cands if c["post_id"] == r["post_id"]]
        assert [c["index"] for c in mine] == [0, 1, 2, 3] and all(c["policy"] == "tiny" for c in mine)
        assert [c["score"] for c in mine] == x["scores"]
        best = mine[x["best_index"]]
        assert (best["text"], best["eos"], best["n_tokens"]) == (r["text"], r["eos"], r["n_tokens"])
    # the scores are the RM's own, as `rlhflab score` would give them (full sequences, no shared query)
    from rlhflab.data.loaders import load_posts

    posts = {p.id: p for p in load_posts(shared_data / "tldr/eval.jsonl.gz", limit=6)}
    again = rm.score([posts[c["post_id"]] for c in cands], [c["text"] for c in cands], eos=[c["eos"] for c in cands])
    torch.testing.assert_close(again, torch.tensor([c["score"] for c in cands]), atol=1e-4, rtol=0)

    assert summary["n_posts"] == 6 and summary["n_candidates"] == 24 and summary["n"] == 4
    assert summary["mean_best_score"] == pytest.approx(sum(r["score"] for r in rows) / 6)
    assert summary["mean_score"] == pytest.approx(sum(c["score"] for c in cands) / 24)
    assert summary["mean_best_score"] >= summary["mean_score"]
    by_k = summary["mean_best_score_by_k"]
    assert list(by_k) == ["1", "2", "4"]
    assert by_k["1"] == pytest.approx(summary["mean_score"]) and by_k["4"] == pytest.approx(summary["mean_best_score"])
    assert by_k["1"] <= by_k["2"] <= by_k["4"]
    assert summary["candidates_per_s"] > 0 and summary["wall_s"] > 0
    assert json.loads((out / "DONE.json").read_text())["n_posts"] == 6
    assert best_of_n(bo_cfg(shared_data, rm_run), str(out)) == json.loads((out / "DONE.json").read_text())


def test_with_n_1_it_is_plain_sampling(shared_data, rm_run, tmp_path):
    from rlhflab.eval.sample import SampleConfig, sample

    common = ["model=tiny", "limit=6", "max_query_tokens=400", "max_new_tokens=8", "batch_size=2", "seed=3",
              f"posts={shared_data / 'tldr/eval.jsonl.gz'}", "temperature=0.7"]
    sample(load_config(SampleConfig, None, common + ["n=1"]), str(tmp_path / "plain"))
    best_of_n(bo_cfg(shared_data, rm_run, *common, "n=1"), str(tmp_path / "bo1"))
    plain, bo = read(tmp_path / "plain/samples.jsonl"), read(tmp_path / "bo1/samples.jsonl")
    assert [(r["post_id"], r["text"], r["eos"], r["n_tokens"]) for r in plain] == \
           [(r["post_id"], r["text"], r["eos"], r["n_tokens"]) for r in bo]
    assert all(r["extra"]["scores"] == [r["score"]] and r["extra"]["best_index"] == 0 for r in bo)


def test_expected_best_of_k_by_hand():
    s = [3.0, 1.0, 2.0]
    assert expected_best_of_k(s, 1) == pytest.approx(2.0)  # the mean
    assert expected_best_of_k(s, 2) == pytest.approx((2 + 3 + 3) / 3)  # pairs {1,2} {1,3} {2,3}
    assert expected_best_of_k(s, 3) == 3.0
    with pytest.raises(ValueError):
        expected_best_of_k(s, 4)


# ------------------------------------------------------------------------------------------------ EOS penalty

def test_no_eos_penalty_ranks_truncated_summaries_last():
    rm_scores, eos = [0.2, 5.0, -0.3, 1.0], [True, False, True, False]
    assert best_index(ranking_scores(rm_scores, eos, None)) == 1  # the truncated one wins on its RM score
    ranked = ranking_scores(rm_scores, eos, -1.0)
    assert ranked == [0.2, -1.0, -0.3, -1.0] and best_index(ranked) == 0
    assert best_index(ranking_scores([0.5, 0.5], [False, False], -1.0)) == 0  # ties: the first sample


def test_no_eos_penalty_applies_in_a_run(shared_data, rm_run, tmp_path):
    # A random tiny policy at T=1 is nearly uniform over its 320 tokens: ~10% of 32-token summaries end (EOS).
    out = tmp_path / "bo"
    summary = best_of_n(bo_cfg(shared_data, rm_run, "n=8", "max_new_tokens=32", "temperature=1.0",
                               "no_eos_penalty=-100.0"), str(out))
    rows, cands = read(out / "samples.jsonl"), read(out / "candidates.jsonl")
    mixed = 0
    for r in rows:
        x = r["extra"]
        for s, raw, e in zip(x["scores"], x["rm_scores"], x["eos"]):
            assert s == (raw if e else -100.0)
            assert raw != -100.0
        assert r["score"] == max(x["scores"])
        if any(x["eos"]):
            assert r["eos"] and r["score"] > -100.0  # an ended summary beats every truncated one
            mixed += not all(x["eos"])
        else:
            assert r["score"] == -100.0
    assert mixed >= 1, "no post had both ended and truncated summaries; the test needs another seed"
    assert all(c["score"] == (c["extra"]["rm_score"] if c["eos"] else -100.0) for c in cands)
    assert summary["eos_rate"] >= summary["candidate_eos_rate"] > 0


# ------------------------------------------------------------------------------------------------ resume

def test_interrupted_runs_resume_to_the_same_files(shared_data, rm_run, tmp_path):
    cfg = bo_cfg(shared_data, rm_run)
    best_of_n(cfg, str(tmp_path / "straight"))
    straight = {f: (tmp_path / "straight" / f).read_text() for f in ("samples.jsonl", "candidates.jsonl")}

    # stopped between batches
    out = tmp_path / "stopped"
    assert best_of_n(cfg, str(out), stop_after=1) == {"stopped_at": 1}
    assert not (out / "DONE.json").exists() and len(read(out / "samples.jsonl")) == 2
    best_of_n(cfg, str(out))
    for f, text in straight.items():
        assert (out / f).read_text() == text, f

    # killed mid-batch: a batch's candidates written, its samples torn after the first row
    out = tmp_path / "killed"
    assert best_of_n(cfg, str(out), stop_after=2) == {"stopped_at": 2}
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    with open(out / "candidates.jsonl", "a") as f:
        f.write(straight["candidates.jsonl"].splitlines()[16][:30])  # a torn candidate of the next batch
    summary = best_of_n(cfg, str(out))
    for f, text in straight.items():
        assert (out / f).read_text() == text, f
    ids = [r["post_id"] for r in read(out / "samples.jsonl")]
    assert len(ids) == len(set(ids)) == 6
    assert summary["generated_this_run"] == 2 * 2 * 4  # the torn batch again (whole) and the last one
    done = json.loads((tmp_path / "straight/DONE.json").read_text())
    for key in ("n_posts", "n_candidates", "mean_best_score", "mean_score", "mean_best_score_by_k", "eos_rate"):
        assert summary[key] == done[key], key


# ------------------------------------------------------------------------------------------------ the pieces

def test_shared_prefill_generation_equals_repeated_queries():
    model, tok = tiny_model_and_tokenizer(seed=2)
    queries = [tok.encode("a short query TL;DR:"), tok.encode("another, rather longer query here TL;DR:")]
    ids, mask = pad_queries(tok, queries)
    k = 3
    rep = generate(model, tok, ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), max_new_tokens=10,
                   temperature=0.9, generator=torch.Generator().manual_seed(7))
    shared = generate(model, tok, ids, mask, max_new_tokens=10, temperature=0.9,
                      generator=torch.Generator().manual_seed(7), n_per_query=k)
    assert shared.response.shape == (2 * k, rep.response.shape[1])
    assert torch.equal(shared.response, rep.response) and torch.equal(shared.query_response, rep.query_response)
    assert torch.equal(shared.attention_mask, rep.attention_mask) and torch.equal(shared.eos, rep.eos)
    torch.testing.assert_close(shared.logprobs, rep.logprobs, atol=1e-5, rtol=0)


def test_grouped_rm_scores_equal_full_sequences():
    rm = new_reward_model("tiny:8")
    eos = rm.tokenizer.eos_token_id
    queries = [[1, 2, 3, 4, 5], [9, 8], [30, 31, 32, 33]]
    responses = [[11, eos], [12, 13, 14, eos], [15], [21, 22, eos], [23], [24, 25, 26, 27, 28], [40, eos], [41],
                 [42, 43, eos]]
    grouped = rm.score_groups(queries, responses, 3, batch_size=4)  # 1 query a forward
    full = rm.score_ids([queries[i // 3] for i in range(9)], responses)
    assert grouped.shape == (3, 3)
    torch.testing.assert_close(grouped.flatten(), full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs 9 responses"):
        rm.score_groups(queries, responses[:8], 3)


# ------------------------------------------------------------------------------------------------ errors

def test_bad_reward_paths_are_clear_errors_and_leave_no_run(shared_data, rm_run, tmp_path):
    out = tmp_path / "bo"
    with pytest.raises(RunError, match="not found"):
        best_of_n(bo_cfg(shared_data, rm_run, f"reward={tmp_path / 'nope'}"), str(out))
    save_model(*tiny_model_and_tokenizer(), tmp_path / "lm")
    with pytest.raises(ModelLoadError, match="not a reward model"):
        best_of_n(bo_cfg(shared_data, rm_run, f"reward={tmp_path / 'lm'}"), str(out))
    unfinished = tmp_path / "rm-unfinished"
    shutil.copytree(rm_run, unfinished)
    (unfinished / "DONE.json").unlink()
    with pytest.raises(RunError, match="unfinished"):
        best_of_n(bo_cfg(shared_data, rm_run, f"reward={unfinished}"), str(out))
    assert not out.exists()  # a corrected command starts cleanly, not "exists with a different config"


def test_config_errors():
    with pytest.raises(ConfigError, match="temperature=0 is greedy"):
        load_config(BestOfNConfig, TINY, ["temperature=0"])
    assert load_config(BestOfNConfig, TINY, ["temperature=0", "n=1"]).n == 1
    with pytest.raises(ConfigError, match="n must be >= 1"):
        load_config(BestOfNConfig, TINY, ["n=0"])
    with pytest.raises(ConfigError, match="no_eos_penalty"):
        load_config(BestOfNConfig, TINY, ["no_eos_penalty=abc"])


def test_cli(shared_data, rm_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    base = ["best-of-n", "--config", "configs/best-of-n/tiny.yaml", f"posts={shared_data / 'tldr/eval.jsonl.gz'}",
            "limit=2"]
    assert main(base[:3] + ["--out", str(tmp_path / "ok"), f"reward={rm_run}"] + base[3:]) == 0
    assert len(read(tmp_path / "ok/samples.jsonl")) == 2
    assert main(base[:3] + ["--out", str(tmp_path / "bad"), f"reward={tmp_path / 'nope'}"] + base[3:]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert main(base[:3] + ["--out", str(tmp_path / "bad"), f"reward={rm_run}", "temperature=0"] + base[3:]) == 2
    assert "temperature=0 is greedy" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["tiny", "smoke", "cpu", "gpu"])
def test_profiles_load(profile):
    cfg = load_config(BestOfNConfig, REPO / f"configs/best-of-n/{profile}.yaml")
    assert cfg.n >= 4 and cfg.temperature > 0
