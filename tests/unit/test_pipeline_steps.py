"""The pipeline's own small steps: config merging, pairing samples into tasks, reading the app's progress, the
closing summary."""

from __future__ import annotations

import pytest

from rlhflab.data.records import Post, Sample
from rlhflab.pipeline import (PipelineConfig, PipelineError, closing_summary, merge, pair_samples, remaining_tasks,
                              validate)


def test_merge_puts_the_wiring_into_nested_sections_and_keeps_the_rest():
    base = {"model": "tiny", "data": {"limit": 64, "posts": "a"}, "kl": {"target": 1.0}}
    wiring = {"model": "runs/sft", "data": {"posts": "b"}, "policies": [{"name": "sft"}]}
    assert merge(base, wiring) == {"model": "runs/sft", "data": {"limit": 64, "posts": "b"}, "kl": {"target": 1.0},
                                   "policies": [{"name": "sft"}]}
    assert base["data"]["posts"] == "a"  # the YAML's mapping is not changed in place


def sample(post: str, index: int, text: str, policy: str = "sft") -> Sample:
    return Sample(post_id=post, policy=policy, text=text, n_tokens=len(text.split()), index=index)


def test_each_posts_samples_pair_up_in_order_and_identical_empty_or_nul_texts_are_left_out():
    posts = {p: Post(id=p, text=f"post {p}") for p in ("a", "b", "c", "d")}
    samples = [sample("a", 1, " two"), sample("a", 0, " one"), sample("a", 2, " three"), sample("a", 3, " four"),
               sample("b", 0, " same"), sample("b", 1, " same "), sample("c", 0, " x"), sample("c", 1, " y"),
               sample("d", 0, " "), sample("d", 1, " z"), sample("b", 2, " nul\x00"), sample("b", 3, " ok")]
    rows = pair_samples(samples, posts, pairs_per_post=2)
    got = [(r["post"]["id"], r["summary_a"]["text"], r["summary_b"]["text"]) for r in rows]
    assert got == [("a", " one", " two"), ("a", " three", " four"), ("c", " x", " y")]
    assert rows[0]["post"]["text"] == "post a" and rows[0]["summary_a"]["policy"] == "sft"
    assert len(pair_samples(samples, posts, pairs_per_post=1)) == 2  # one pair a post


def test_remaining_tasks_counts_only_the_regular_comparison_tasks():
    board = {"tasks": {"comparison": 12, "rating": 0, "gold": 2, "complete": 7}}
    assert remaining_tasks(board) == (3, 10)
    assert remaining_tasks({"tasks": {"comparison": 4, "gold": 0, "complete": 4}}) == (0, 4)


def test_settings_that_cannot_work_are_refused_before_anything_runs():
    with pytest.raises(PipelineError, match="rounds=0"):
        validate(PipelineConfig(rounds=0))
    cfg = PipelineConfig()
    cfg.gold.skip = True
    with pytest.raises(PipelineError, match="name the labeler's judge"):
        validate(cfg)
    cfg = PipelineConfig()
    cfg.rm.config = "configs/rm/nope.yaml"
    with pytest.raises(PipelineError, match="rm.config: configs/rm/nope.yaml not found"):
        validate(cfg)
    cfg = PipelineConfig(rounds=2)
    cfg.labels.source, cfg.labels.files = "import", ["configs/pipeline/tiny.yaml"]
    with pytest.raises(PipelineError, match="2 rounds need 2 labels.files"):
        validate(cfg)
    cfg.labels.files = ["configs/pipeline/tiny.yaml", "nope.jsonl"]
    with pytest.raises(PipelineError, match="not found: nope.jsonl"):
        validate(cfg)


def test_remaining_tasks_counts_best_of_n_tasks_too():
    assert remaining_tasks({"tasks": {"comparison": 0, "best_of_n": 6, "gold": 1, "complete": 2}}) == (3, 5)


def test_best_of_n_tasks_group_each_posts_samples_and_carry_the_query():
    from rlhflab.data.pairs import best_of_n_tasks
    from rlhflab.data.records import Sample

    def smp(post: str, i: int, text: str) -> Sample:
        return Sample(post_id=post, policy="base", text=text, n_tokens=3, index=i, eos=False,
                      extra={"query": f"Query {post}."})

    samples = [smp("a", i, f" a{i}.") for i in range(9)] + [smp("b", i, " " if i == 2 else f" b{i}.") for i in range(4)]
    rows = best_of_n_tasks(samples, 4)
    assert [(r["id"], [s["text"] for s in r["samples"]]) for r in rows] == [
        ("a", [" a0.", " a1.", " a2.", " a3."]), ("a", [" a4.", " a5.", " a6.", " a7."])]  # a8 left over; b empty
    assert rows[0]["query"] == "Query a." and rows[0]["samples"][0]["eos"] is False
    with pytest.raises(ValueError, match="write_query"):
        best_of_n_tasks([Sample("c", "base", " x", 1, i) for i in range(4)], 4)


def test_validate_needs_base_model_when_sft_is_skipped():
    from rlhflab.pipeline import FirstStageSpec, StageSpec

    with pytest.raises(PipelineError, match="base_model"):
        validate(PipelineConfig(sft=FirstStageSpec(skip=True), sample=StageSpec(None), rm=StageSpec(None),
                                ppo=StageSpec(None), eval=StageSpec(None)))


def test_only_the_first_stages_list_and_take_skip_and_from_run(tmp_path):
    """--show-config lists `skip` and `from_run` for sft and gold only, and the others refuse them as unknown keys."""
    from rlhflab.cli import describe_config
    from rlhflab.core.config import ConfigError, load_config

    keys = [line.split()[0] for line in describe_config(PipelineConfig) if line.strip()]
    for stage in ("sft", "gold"):
        assert any(k.startswith(f"{stage}.skip") for k in keys) and any(k.startswith(f"{stage}.from_run") for k in keys)
    for stage in ("sample", "rm", "ppo", "eval"):
        assert not any(k.startswith((f"{stage}.skip", f"{stage}.from_run")) for k in keys), stage
        with pytest.raises(ConfigError, match=f"{stage}.skip"):
            load_config(PipelineConfig, None, [f"{stage}.skip=true"])
    # from_run must be a finished run of that stage
    from rlhflab.pipeline import FirstStageSpec, StageSpec

    run = tmp_path / "sft"
    run.mkdir()
    (run / "config.yaml").write_text("stage: rm\nconfig: {}\n")
    (run / "DONE.json").write_text("{}")
    specs = dict(sample=StageSpec(None), rm=StageSpec(None), ppo=StageSpec(None), eval=StageSpec(None))
    with pytest.raises(PipelineError, match="not a finished `rlhflab sft` run"):
        validate(PipelineConfig(sft=FirstStageSpec(None, from_run=str(run)), **specs))
    with pytest.raises(PipelineError, match="exclude each other"):
        validate(PipelineConfig(sft=FirstStageSpec(None, skip=True, from_run=str(run)), base_model="m", **specs))


def test_a_reused_sft_run_is_what_the_next_stages_start_from(tmp_path, monkeypatch, capsys):
    from rlhflab import pipeline
    from rlhflab.core.config import load_config

    run = tmp_path / "existing_sft"
    run.mkdir()
    (run / "config.yaml").write_text("stage: sft\nconfig: {}\n")
    (run / "DONE.json").write_text("{}")
    cfg = load_config(PipelineConfig, None, [f"sft.from_run={run}"])
    calls = []

    class Stop(Exception):
        pass

    def fake_stage(self, label, command, spec, out, wiring, distributed=False):
        calls.append((command, out, wiring))
        raise Stop  # the gold RM: enough to see its wiring

    monkeypatch.setattr(pipeline.StageRunner, "stage", fake_stage)
    runner = pipeline.StageRunner(cfg, str(tmp_path / "pipe"))
    with pytest.raises(Stop):
        pipeline.run_pipeline(runner)
    [(command, out, wiring)] = calls
    assert command == "rm" and wiring["model"] == str(run)  # the gold RM starts from the reused SFT run
    assert runner.record[0] == {"stage": "sft", "run_dir": str(run), "skipped": True, "reused": True}
    assert "reused, not retrained" in capsys.readouterr().out


def test_the_closing_summary_gives_every_win_rate_with_its_ci_and_says_which_policies_do_not_differ():
    summary = {"wall_s": 120, "out": "runs/x", "report": "runs/x/eval/report.html", "rounds": [], "judge": "gold",
               "ci_level": 0.9, "win_rate": {"sft": 0.30, "ppo": 0.42},
               "win_rate_ci": {"sft": [0.21, 0.41], "ppo": [0.32, 0.53]},
               "length_controlled_win_rate": {"sft": 0.33, "ppo": 0.38},
               "length_controlled_win_rate_ci": {"sft": [0.25, 0.41], "ppo": [0.29, 0.47]},
               "mean_tokens": {"sft": 24.0, "ppo": 31.5},
               "differences": [{"a": "sft", "b": "ppo", "n": 64, "win_rate_difference": -0.12,
                                "win_rate_difference_ci": [-0.25, 0.01], "differ": False}]}
    text = closing_summary(summary)
    assert "(judge gold) [90% CI]" in text
    assert "sft        0.30 [0.21, 0.41]  (length-controlled 0.33 [0.25, 0.41], 24.0 tokens)" in text
    assert "ppo        0.42 [0.32, 0.53]  (length-controlled 0.38 [0.29, 0.47], 31.5 tokens)" in text
    assert "sft − ppo: -0.12 [-0.25, 0.01] on 64 posts: do not differ: the CI of the difference includes 0" in text
    summary["differences"][0] |= {"win_rate_difference_ci": [-0.20, -0.04], "differ": True}
    assert "on 64 posts: differ beyond the CI" in closing_summary(summary)
    # a summary from before the intervals were recorded still prints
    old = {k: v for k, v in summary.items() if k not in ("win_rate_ci", "length_controlled_win_rate_ci",
                                                         "differences", "ci_level")}
    assert "sft        0.30  (length-controlled 0.33, 24.0 tokens)" in closing_summary(old)
