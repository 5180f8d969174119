"""PPO end to end on a tiny model: it learns a synthetic reward, the KL controller works, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rlhflab.core.config import load_config  # noqa: E402
from rlhflab.models.loading import load_model  # noqa: E402
from rlhflab.models.reward import load_reward_model  # noqa: E402
from rlhflab.train import ppo  # noqa: E402
from rlhflab.train.reward import RewardConfig  # noqa: E402
from rlhflab.train.reward import train as train_rm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def lowercase_fraction(queries: list[str], responses: list[str]) -> list[float]:
    """A synthetic reward: the fraction of ASCII lowercase letters. A random byte-level model starts near 26/320."""
    return [sum(c.isascii() and c.islower() for c in r) / max(len(r), 1) for r in responses]


def tiny_cfg(*overrides: str) -> ppo.PPOConfig:
    return load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                       ["reward=python:tests.component.test_ppo:lowercase_fraction", *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("rm") / "rm"
    cfg = load_config(RewardConfig, REPO / "configs/rm/tiny.yaml", ["max_steps=2", "eval_every=0"])
    train_rm(cfg, str(out))
    return out


@pytest.mark.slow
def test_ppo_raises_a_synthetic_score_several_fold_and_the_controller_tracks_kl(tmp_path, shared_data):
    target = 4.0
    cfg = tiny_cfg("total_episodes=320", "rollout_batch_size=32", "mini_batch_size=16", "micro_batch_size=8",
                   "stop_at_eos=false", "max_new_tokens=8", "optim.lr=1e-2", "value_optim.lr=3e-3",
                   "ppo_epochs=4", f"kl.target={target}", "kl.horizon=160", "save_every=0")
    summary = ppo.train(cfg, str(tmp_path / "run"), reward_fn=lowercase_fraction)
    rows = metrics(tmp_path / "run")
    assert len(rows) == 10 and rows[-1]["episodes"] == 320
    first = rows[0]["objective/score"]
    late = sum(r["objective/score"] for r in rows[-3:]) / 3
    assert late > 3 * first, (first, late)  # several-fold within 320 episodes
    # the first rollout comes from the unchanged policy: its KL to the reference is exactly 0
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)
    # Ziegler's controller: β moves up exactly when the KL was above target, by the formula
    for a, b in zip(rows, rows[1:]):
        err = min(max(a["objective/kl"] / target - 1, -0.2), 0.2)
        assert b["objective/kl_coef"] == pytest.approx(a["objective/kl_coef"] * (1 + err * 32 / 160), rel=1e-6)
    late_kl = sum(r["objective/kl"] for r in rows[-3:]) / 3
    assert target / 2 < late_kl < 2 * target, late_kl  # held near the target, not run away
    # fixed-length responses, every phase timed, the policy saved as a plain loadable model
    # fixed length: 8 tokens are sampled every time; EOS, if sampled, still ends the scored response early
    assert all(r["response/length"] == 8 for r in rows if r["response/eos_rate"] == 0)
    # (an EOS sampled as the 8th token ends the response at 8 tokens: not shorter, not longer)
    assert all(r["response/length"] <= 8 for r in rows if r["response/eos_rate"] > 0)
    assert all(r["time/generation_s"] > 0 and r["time/training_s"] > 0 for r in rows)
    model, _ = load_model(str(tmp_path / "run"))
    assert summary["score_last"] == rows[-1]["objective/score"]
    assert model.config.vocab_size == 320


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_numbers(tmp_path, shared_data):
    cfg = tiny_cfg("total_episodes=48", "rollout_batch_size=8", "save_every=1")
    ppo.train(cfg, str(tmp_path / "straight"), reward_fn=lowercase_fraction)
    stopped = ppo.train(cfg, str(tmp_path / "resumed"), reward_fn=lowercase_fraction, stop_after=3)
    assert stopped == {"stopped_at": 3}
    assert len(metrics(tmp_path / "resumed")) == 3
    ppo.train(cfg, str(tmp_path / "resumed"), reward_fn=lowercase_fraction)
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    drop = ("time/", "wall")
    strip = [{k: v for k, v in r.items() if not k.startswith(drop)} for r in a]
    assert strip == [{k: v for k, v in r.items() if not k.startswith(drop)} for r in b]
    wa = load_model(str(tmp_path / "straight"))[0].state_dict()
    wb = load_model(str(tmp_path / "resumed"))[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_ppo_with_a_reward_model_run_and_lora(tmp_path, tiny_rm):
    cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                      [f"reward={tiny_rm}", "total_episodes=16", "lora.r=4", "lora.alpha=8", "sample_every=1",
                       "snapshot_every=1"])
    summary = ppo.train(cfg, str(tmp_path / "run"))
    rows = metrics(tmp_path / "run")
    assert len(rows) == 2 and summary["episodes"] == 16
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # reference = the base, adapters off
    assert rows[1]["objective/kl"] != 0.0  # ...and the adapters did move the policy
    table = [json.loads(line) for line in (tmp_path / "run/samples/update_00001.jsonl").read_text().splitlines()]
    assert len(table) == cfg.n_samples and all(isinstance(r["score"], float) for r in table)
    merged, _ = load_model(str(tmp_path / "run"))  # adapters merged into a plain model
    assert not any("lora" in name for name in merged.state_dict())
    # a snapshot per update, each a plain model; the last one is the final policy
    snapshots = sorted((tmp_path / "run/snapshots").iterdir())
    assert [p.name for p in snapshots] == ["update_00001", "update_00002"]
    first, _ = load_model(str(snapshots[0]))
    last, _ = load_model(str(snapshots[1]))
    assert not any("lora" in name for name in first.state_dict())
    final = merged.state_dict()
    assert all(torch.equal(t, final[k]) for k, t in last.state_dict().items())
    assert not all(torch.equal(t, final[k]) for k, t in first.state_dict().items())


def test_reward_normalisation_scores_the_initial_policy_once_and_rescales_every_score(tmp_path, monkeypatch):
    """reward_norm_episodes=16: two rollouts of the initial policy on posts of their own shuffle are scored before
    update 1, their (mean, std) rescales every later score, and a resumed run reads them back instead of
    sampling again (same numbers as a run that never stopped)."""
    calls: list[list[str]] = []  # the queries of each call of the reward

    def query_length(queries: list[str], responses: list[str]) -> list[float]:
        calls.append(list(queries))
        return [len(q) / 100 + lowercase_fraction([q], [r])[0] for q, r in zip(queries, responses)]

    seen: list[tuple[list[float], list[bool], tuple[float, float]]] = []
    real = ppo.reward_normalisation

    def recorded(scores, ended):
        out = real(scores, ended)
        seen.append((scores.tolist(), ended.tolist(), out))
        return out

    monkeypatch.setattr(ppo, "reward_normalisation", recorded)
    cfg = tiny_cfg("total_episodes=24", "rollout_batch_size=8", "reward_norm_episodes=16", "save_every=1")
    done = ppo.train(cfg, str(tmp_path / "straight"), reward_fn=query_length)
    (scores, _, (mean, std)), = seen
    assert done["reward_normalisation"] == {"mean": mean, "std": std} and std > 0
    # the first two calls scored the normalisation rollouts: 16 posts of the seed+1 shuffle, in rollouts of 8
    posts, query_texts, _ = ppo.load_queries(cfg, load_model("tiny")[1])
    want = [query_texts[i] for i in ppo.batch_indices(0, 16, len(posts), cfg.seed + 1)]
    assert calls[0] + calls[1] == want and len(calls) == 2 + 3
    # every update's scores are rescaled by them; the raw score is still logged
    rows = metrics(tmp_path / "straight")
    for row in rows:
        assert row["objective/score_normalised"] == pytest.approx((row["objective/score"] - mean) / std, abs=1e-5)
    assert abs(rows[0]["objective/score_normalised"]) < abs(rows[0]["objective/score"])
    # killed after update 1 and resumed: the normalisation is read back from state/, not sampled again
    seen.clear()
    ppo.train(cfg, str(tmp_path / "resumed"), reward_fn=query_length, stop_after=1)
    ppo.train(cfg, str(tmp_path / "resumed"), reward_fn=query_length)
    assert len(seen) == 1
    strip = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
    assert strip == [{k: v for k, v in r.items() if not k.startswith("time/")} for r in metrics(tmp_path / "resumed")]
    with pytest.raises(ValueError, match="reward_norm_episodes"):
        tiny_cfg("reward_norm_episodes=12")


def test_the_reward_model_scores_the_response_up_to_its_eos(tiny_rm):
    """Token ids go to the RM as written: up to and including EOS, nothing after; an unfinished response has no
    EOS. Same scores as the RM's own text path (" " + summary + EOS, the SFT format)."""
    from rlhflab.models.generation import Generation, decode_responses
    from rlhflab.models.reward import load_reward_model
    from rlhflab.ops.ppo import mask_after_eos

    rm = load_reward_model(tiny_rm)
    tok = rm.tokenizer
    eos = tok.eos_token_id
    queries = [tok.encode("POST: a b c\n\nTL;DR:"), tok.encode("POST: longer text\n\nTL;DR:")]
    rows = [tok.encode(" hey") + [eos, ord("x"), eos], tok.encode(" world!")]  # finished / cut at 7 tokens
    response = torch.tensor(rows)
    mask = mask_after_eos(response, eos)
    gen = Generation(query_response=response, attention_mask=mask.long(), response=response.masked_fill(~mask, eos),
                     logprobs=torch.zeros(2, 7), response_mask=mask, eos=torch.tensor([True, False]))
    texts = decode_responses(tok, gen)
    assert texts == [" hey", " world!"]
    query_texts = [tok.decode(q) for q in queries]
    got = ppo.score_responses(rm, tok, queries, gen, tiny_cfg(), (query_texts, texts), posts=[])
    want = rm.score(query_texts, ["hey", "world!"], eos=[True, False])
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, rm.score(query_texts, ["hey", "world!"], eos=[True, True]), atol=1e-5)


def test_batches_walk_through_epochs_deterministically():
    seen = [i for u in range(5) for i in ppo.batch_indices(u, 4, 10, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))  # whole epochs
    assert ppo.batch_indices(3, 4, 10, seed=3) == ppo.batch_indices(3, 4, 10, seed=3)
    assert ppo.batch_indices(0, 4, 10, seed=3) != ppo.batch_indices(0, 4, 10, seed=4)


@pytest.mark.parametrize("override, message", [
    ("rollout_batch_size=6", "multiple of mini_batch_size"),
    ("temperature=0", "temperature"),
    ("total_episodes=4", "total_episodes"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        ppo.train(tiny_cfg(override), str(tmp_path / "run"), reward_fn=lowercase_fraction)
    assert not (tmp_path / "run" / "state").exists()


def test_cli_lists_ppo_settings(capsys):
    from rlhflab.cli import main

    assert main(["ppo", "--show-config"]) == 0
    out = capsys.readouterr().out
    for key in ("kl.controller", "kl.target", "lora.r", "no_eos_penalty", "ppo_epochs", "frozen_bf16"):
        assert key in out


def test_reusing_the_frozen_layers_gives_the_same_run(tmp_path, caplog):
    """freeze_layers=1: the lower layer runs once per rollout instead of in every PPO epoch; same numbers."""
    cfg = tiny_cfg("total_episodes=24", "freeze_layers=1", "save_every=0")
    with caplog.at_level("INFO", logger="rlhflab.train.ppo"):
        reused = ppo.train(cfg, str(tmp_path / "reused"))
    assert "frozen lower 1 layers run once per rollout" in caplog.text
    plain = ppo.train(load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml",
                                  ["reward=python:tests.component.test_ppo:lowercase_fraction", "total_episodes=24",
                                   "freeze_layers=1", "save_every=0", "reuse_frozen=false"]), str(tmp_path / "plain"))
    a, b = metrics(tmp_path / "reused"), metrics(tmp_path / "plain")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for key in ("objective/score", "objective/kl", "ppo/policy_loss", "ppo/value_loss", "ppo/approxkl"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
    assert reused["score_last"] == pytest.approx(plain["score_last"], rel=1e-5)
    # bf16 autocast with a bf16 reference reading the fp32 policy states: runs, and starts at KL ≈ 0
    ppo.train(tiny_cfg("total_episodes=8", "freeze_layers=1", "bf16=true", "frozen_bf16=true", "save_every=0"),
              str(tmp_path / "bf16"))
    assert abs(metrics(tmp_path / "bf16")[0]["objective/kl"]) < 0.05


def test_the_reward_model_reads_the_value_models_frozen_layers_with_the_same_scores(tmp_path, tiny_rm, caplog):
    """The value model starts as the RM, so with freeze_layers=1 both have the same lowest layer: the RM then runs
    only its upper layer on the value model's states, in the rollout's layout — same scores as scoring the ids."""
    args = [f"reward={tiny_rm}", "total_episodes=16", "freeze_layers=1", "save_every=0"]
    with caplog.at_level("INFO", logger="rlhflab.train.ppo"):
        ppo.train(load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", args), str(tmp_path / "shared"))
    assert "shares the value model's frozen lower 1 layers" in caplog.text
    ppo.train(load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", [*args, "reuse_frozen=false"]),
              str(tmp_path / "plain"))
    a, b = metrics(tmp_path / "shared"), metrics(tmp_path / "plain")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("objective/score", "objective/kl", "ppo/value_loss", "ppo/policy_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key


def test_a_run_continues_from_an_earlier_policy_against_the_sft_reference(tmp_path):
    """policy_init: round k's PPO starts from round k-1's policy while the reference stays the SFT model, so the
    first rollout already has KL > 0. Without freeze_layers' equality (the first run trained every layer) the
    reference must run its own lower layers; reuse_frozen on and off then give the same numbers."""
    ppo.train(tiny_cfg("total_episodes=16", "save_every=0", "optim.lr=1e-2"), str(tmp_path / "round1"))
    args = ["total_episodes=8", "save_every=0", f"policy_init={tmp_path / 'round1'}", "freeze_layers=1"]
    ppo.train(tiny_cfg(*args), str(tmp_path / "round2"))
    ppo.train(tiny_cfg(*args, "reuse_frozen=false"), str(tmp_path / "round2_plain"))
    fresh = ppo.train(tiny_cfg("total_episodes=8", "save_every=0"), str(tmp_path / "fresh"))
    a, b = metrics(tmp_path / "round2"), metrics(tmp_path / "round2_plain")
    assert a[0]["objective/kl"] > 0.05 and abs(metrics(tmp_path / "fresh")[0]["objective/kl"]) < 1e-4
    assert a[0]["objective/kl"] == pytest.approx(b[0]["objective/kl"], rel=1e-4)
    assert fresh["episodes"] == 8
    with pytest.raises(ValueError, match="policy_init with lora"):
        ppo.train(tiny_cfg(*args, "lora.r=4"), str(tmp_path / "lora"))


def test_the_value_model_starts_as_the_rm_or_with_a_fresh_head_on_the_policy(tiny_rm):
    """value_init=reward (the default) copies the RM, head included; fresh puts a zero head on `model`: every
    value starts at 0, not at the RM's score of the partial response."""
    rm = load_reward_model(str(tiny_rm))
    base = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", [f"reward={tiny_rm}"])
    from_rm = ppo.load_value_model(base, torch.device("cpu"))
    assert torch.equal(from_rm.head.weight, rm.head.weight) and torch.equal(from_rm.bias, rm.bias)
    fresh_cfg = load_config(ppo.PPOConfig, REPO / "configs/ppo/tiny.yaml", [f"reward={tiny_rm}", "value_init=fresh"])
    fresh = ppo.load_value_model(fresh_cfg, torch.device("cpu"))
    assert fresh.base_model_spec == fresh_cfg.model and not fresh.head.weight.any() and fresh.bias == 0
    assert all(p.requires_grad for p in fresh.head.parameters())
