"""`rlhflab eval` on tiny models: every section of the report, its numbers checked against the judges by hand,
the HTML (images embedded, text escaped), resume after an interruption, judges, and bad input."""

from __future__ import annotations

import gzip
import html
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rlhflab.cli import main  # noqa: E402
from rlhflab.core.config import ConfigError, load_config  # noqa: E402
from rlhflab.core.rundir import RunError  # noqa: E402
from rlhflab.data.records import Post  # noqa: E402
from rlhflab.eval import sampling as sampling_module  # noqa: E402
from rlhflab.eval.evaluate import EvalConfig, evaluate  # noqa: E402
from rlhflab.eval.judges import JudgeSpec, OpenAIJudge, Text, parse_choice  # noqa: E402
from rlhflab.eval.metrics import lead_k, rouge  # noqa: E402
from rlhflab.eval.report import pair_difference, verdict  # noqa: E402
from rlhflab.models.loading import save_model, tiny_model_and_tokenizer  # noqa: E402
from rlhflab.models.reward import load_reward_model, new_reward_model, save_reward_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/eval/tiny.yaml"
NASTY = "<script>alert(1)</script> & <b>bold</b>"

POSTS = [
    {"id": f"p{i}", "subreddit": "relationships", "title": NASTY if i == 0 else f"Title {i}",
     "post": f"My friend and I argued about rent {i}. She says I owe more. I think we split it. What now? "
             f"Extra detail number {i} here.",
     "summary": NASTY if i == 0 else ("Friend and I disagree about rent." if i % 2 else "Rent fight with friend, "
                                      "who pays what?")}
    for i in range(6)]
ARTICLES = [{"id": f"a{i}", "article": f"(CNN)The city council met on Monday {i}. It voted to build a park. "
                                       "Residents cheered. The work starts in May.",
             "highlights": f"Council votes for a park {i} .\nWork starts in May ."} for i in range(3)]

JUDGE_MODULE = '''
def prefer_longer(posts, a, b):
    """P(a preferred): 1 when a is longer, 0 when shorter, 0.5 on equal length."""
    return [1.0 if len(x) > len(y) else 0.0 if len(x) < len(y) else 0.5 for x, y in zip(a, b)]
'''


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") if path.suffix == ".gz" else open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny runs of every earlier stage on synthetic posts: an RM, a PPO run with a snapshot, a best-of-4 run, an
    rm-eval report, human labels and ratings, and a python judge module."""
    root = tmp_path_factory.mktemp("world")
    posts = write_jsonl(root / "posts.jsonl", POSTS)
    articles = write_jsonl(root / "articles.jsonl.gz", ARTICLES)
    rm = new_reward_model("tiny", max_query_tokens=400, max_response_tokens=48, seed=3)
    save_reward_model(rm, root / "rm")

    ppo = root / "ppo"  # a PPO run directory as `rlhflab ppo` leaves it: config, metrics, a snapshot, the model
    (ppo / "snapshots").mkdir(parents=True)
    (ppo / "config.yaml").write_text(json.dumps({"stage": "ppo", "config": {"model": "tiny",
                                                                          "reward": str(root / "rm")}}))
    (ppo / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "objective/kl": 0.3 * s,
                                                           "objective/score": 0.1 * s}) + "\n" for s in (1, 2)))
    for seed, where in ((1, ppo / "snapshots/update_00001"), (2, ppo / "snapshots/update_00002"), (2, ppo / "model")):
        save_model(*tiny_model_and_tokenizer(seed=seed), where)
    (ppo / "DONE.json").write_text(json.dumps({"stage": "ppo", "updates": 2}))

    from rlhflab.eval.best_of_n import BestOfNConfig, best_of_n

    best_of_n(BestOfNConfig(model="tiny", reward=str(root / "rm"), posts=str(posts), n=4, temperature=1.0,
                            max_query_tokens=400, max_new_tokens=8, batch_size=2, write_all=True, device="cpu"),
              str(root / "bo"))

    rm_eval = root / "rm-eval"
    rm_eval.mkdir()
    (rm_eval / "report.json").write_text(json.dumps({
        "model": "rm", "split": "dev", "n_pairs": 30, "accuracy": 0.6, "length_baseline_accuracy": 0.55,
        "per_confidence": {"1": {"n": 10, "accuracy": 0.5, "length_baseline_accuracy": 0.6},
                           "4": {"n": 20, "accuracy": 0.65, "length_baseline_accuracy": 0.5}}}))

    lead = [lead_k(p["post"]) for p in POSTS]
    info = [{"id": p["id"], "post": p["post"], "title": p["title"], "subreddit": p["subreddit"]} for p in POSTS]
    labels = write_jsonl(root / "labels.jsonl", [
        {"info": info[0], "split": "", "summaries": [{"text": " " + lead[0]}, {"text": NASTY}], "choice": 0,
         "worker": "u1", "batch": "b", "extra": {"confidence": 2}},
        {"info": info[0], "split": "", "summaries": [{"text": NASTY}, {"text": lead[0]}], "choice": 0,
         "worker": "u2", "batch": "b", "extra": {"confidence": 5}},  # no preference: counts half
        {"info": info[1], "split": "", "summaries": [{"text": lead[1]}, {"text": POSTS[1]["summary"]}], "choice": 1,
         "worker": "u1", "batch": "b", "extra": {"confidence": 8}}])
    axes = {"overall": 6, "accuracy": 5, "coverage": 4, "coherence": 7}
    ratings = write_jsonl(root / "ratings.jsonl", [
        {"info": info[0], "summary": {"text": NASTY, "policy": "ref", "axes": axes}, "worker": "u1"},
        {"info": info[1], "summary": {"text": POSTS[1]["summary"], "policy": "ref", "axes": {**axes, "overall": 3}},
         "worker": "u1"},
        {"info": info[2], "summary": {"text": "nobody wrote this", "policy": "x", "axes": axes}, "worker": "u1"}])

    (root / "judgemod").mkdir()
    (root / "judgemod" / "tiny_judges.py").write_text(JUDGE_MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root / "judgemod"))
        yield {"root": root, "posts": posts, "articles": articles, "rm": root / "rm", "ppo": ppo, "bo": root / "bo",
               "rm_eval": rm_eval, "labels": labels, "ratings": ratings}
    sys.modules.pop("tiny_judges", None)


def cfg_for(world, *extra: str) -> EvalConfig:
    policies = [{"name": "sft", "model": "tiny"}, {"name": "ppo", "model": str(world["ppo"])},
                {"name": "bo4", "samples": str(world["bo"])}, {"name": "lead3", "builtin": "lead3"},
                {"name": "reference", "builtin": "reference"}]
    judges = [{"name": "rm", "kind": "rm", "spec": str(world["rm"]), "note": "the RM PPO optimised"},
              {"name": "py", "kind": "python", "spec": "python:tiny_judges:prefer_longer"},
              {"name": "labels", "kind": "labels", "spec": str(world["labels"])}]
    return load_config(EvalConfig, TINY, [
        f"policies={json.dumps(policies)}", f"judges={json.dumps(judges)}", f"posts={world['posts']}", "limit=null",
        f"ppo_run={world['ppo']}", f"best_of_n_run={world['bo']}", f"rm_eval_runs={json.dumps([str(world['rm_eval'])])}",
        f"ratings={world['ratings']}", f"transfer.posts={world['articles']}", "transfer.limit=3", "device=cpu",
        "bootstrap=30", *extra])


@pytest.fixture(scope="module")
def full(world):
    out = world["root"] / "eval"
    summary = evaluate(cfg_for(world), str(out))
    return out, summary, json.loads((out / "report.json").read_text())


# ------------------------------------------------------------------------------------------------ the numbers


def test_report_has_every_policy_metric(full):
    out, summary, rep = full
    pol = rep["policies"]
    assert list(pol) == ["sft", "ppo", "bo4", "lead3", "reference"]
    for name, r in pol.items():
        for key in ("win_rate", "win_rate_ci", "length_controlled_win_rate", "length_controlled_win_rate_ci",
                    "mean_tokens", "rouge", "kl", "eos_rate", "by_judge"):
            assert key in r, (name, key)
        assert set(r["rouge"]) == {"rouge1", "rouge2", "rougeL"}
        lo, hi = r["win_rate_ci"]
        assert lo <= r["win_rate"] <= hi and 0 <= r["length_controlled_win_rate"] <= 1
        assert r["judge"] == "rm" and r["win_rate"] == r["by_judge"]["rm"]["win_rate"]
        assert set(r["by_judge"]) == {"rm", "py", "labels"}
    assert pol["reference"]["win_rate"] == 0.5 and pol["reference"]["length_controlled_win_rate"] == 0.5
    assert pol["reference"]["rouge"]["rouge1"] == pytest.approx(1.0)
    # lengths: the tiny tokenizer is byte-level, so a summary's tokens are its UTF-8 bytes
    refs = [p["summary"].strip() for p in POSTS]
    assert pol["reference"]["mean_tokens"] == pytest.approx(sum(len(t.encode()) for t in refs) / 6)
    assert rep["reference_mean_tokens"] == pol["reference"]["mean_tokens"]
    # KL: the SFT model is the reference (0 exactly); best-of-4 gets log 4 − 3/4; builtins have none
    assert pol["sft"]["kl"] == 0.0 and isinstance(pol["ppo"]["kl"], float) and pol["ppo"]["kl_se"] is not None
    assert pol["bo4"]["kl"] == pytest.approx(math.log(4) - 0.75)
    assert pol["lead3"]["kl"] is None
    assert summary["win_rate"] == {k: v["win_rate"] for k, v in pol.items()}
    assert rep["judges"][0]["note"] == "the RM PPO optimised" and rep["judges"][0]["length_slope"] is not None


def test_judges_agree_with_a_hand_computation(full, world):
    out, _, rep = full
    lead = [lead_k(p["post"]) for p in POSTS]
    refs = [p["summary"].strip() for p in POSTS]
    lead3 = rep["policies"]["lead3"]
    # python judge "longer wins": count by hand
    longer = [1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5 for a, b in zip(lead, refs)]
    assert lead3["by_judge"]["py"]["win_rate"] == pytest.approx(sum(longer) / 6)
    # RM judge: score both with the RM and count r_policy > r_reference
    rm = load_reward_model(world["rm"])
    posts = [Post(id=p["id"], text=p["post"], title=p["title"], subreddit=p["subreddit"]) for p in POSTS]
    r_lead, r_ref = rm.score(posts, lead).tolist(), rm.score(posts, refs).tolist()
    assert lead3["by_judge"]["rm"]["win_rate"] == pytest.approx(sum(a > b for a, b in zip(r_lead, r_ref)) / 6)
    assert lead3["by_judge"]["rm"]["score"]["mean"] == pytest.approx(sum(r_lead) / 6, abs=1e-5)
    # labels: post 0 has votes 1 and 0.5 (no preference) -> 0.75, a win; post 1 a loss; the rest unlabelled
    lab = lead3["by_judge"]["labels"]
    assert (lab["n"], lab["wins"], lab["losses"], lab["win_rate"]) == (2, 1, 1, 0.5)
    assert rep["policies"]["sft"]["by_judge"]["labels"]["n"] == 0
    assert rep["policies"]["sft"]["by_judge"]["labels"]["win_rate"] is None
    # ROUGE wiring: the report's lead-3 ROUGE is rouge() of the same texts
    assert lead3["rouge"] == pytest.approx(rouge(lead, refs))
    # Likert: the two matched reference ratings, overall 6 and 3
    assert rep["likert"]["n_ratings"] == 3 and rep["likert"]["n_matched"] == 2
    assert rep["policies"]["reference"]["likert"]["overall"] == {"mean": 4.5, "n": 2}
    assert "likert" not in rep["policies"]["sft"]


def test_curves_rm_accuracy_and_transfer(full, world):
    out, _, rep = full
    curve = rep["kl_curve"]
    # the snapshot at the last update is the final model: evaluated once, as the run's model
    assert [p["update"] for p in curve["points"]] == [0, 1, 2] and curve["n_snapshots"] == 2
    assert curve["points"][2]["model"] == str(world["ppo"])
    assert curve["points"][0]["kl"] == 0.0 and all("reward_score" in p for p in curve["points"])
    assert curve["points"][2]["by_judge"]["rm"]["win_rate"] == rep["policies"]["ppo"]["win_rate"]
    assert curve["points"][2]["kl"] == rep["policies"]["ppo"]["kl"]  # the same cached samples
    assert [t["update"] for t in curve["training"]] == [1, 2]
    bon = rep["best_of_n"]
    assert bon["k"] == [1, 2, 4] and bon["n"] == 4 and bon["n_posts"] == 6
    assert bon["kl"][0] == 0.0 and bon["kl"][2] == pytest.approx(math.log(4) - 0.75)
    assert bon["mean_reward_score"][0] <= bon["mean_reward_score"][1] <= bon["mean_reward_score"][2]
    # best of all 4 is exactly the best-of-4 policy's pick, judged the same way
    assert bon["by_judge"]["rm"]["win_rate"][-1] == pytest.approx(rep["policies"]["bo4"]["by_judge"]["rm"]["win_rate"])
    acc = rep["rm_accuracy_vs_confidence"][0]
    assert list(acc["per_confidence"]) == ["1", "4"]
    lo, hi = acc["per_confidence"]["4"]["accuracy_ci"]
    assert lo < 0.65 < hi
    tr = rep["transfer"]
    assert list(tr["policies"]) == ["sft", "ppo", "lead3", "reference"] and tr["posts"]["n"] == 3
    lead = [lead_k(a["article"]) for a in ARTICLES]
    highlights = [" ".join(a["highlights"].split()) for a in ARTICLES]
    assert tr["policies"]["lead3"]["rouge"] == pytest.approx(rouge(lead, highlights))
    assert tr["policies"]["sft"]["kl"] is None  # transfer.kl is off by default


def test_html_embeds_every_plot_and_escapes_text(full):
    out, _, rep = full
    assert set(rep["plots"]) == {"win_rate", "scores", "pareto", "kl_curve", "best_of_n", "rm_confidence", "transfer"}
    for name in rep["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(rep["plots"])
    assert "<script>" not in page and NASTY not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "Zero-shot transfer" in page and "Over-optimisation" in page


def test_kl_of_a_copy_of_the_reference_is_exactly_zero(world, tmp_path):
    save_model(*tiny_model_and_tokenizer(seed=0), tmp_path / "copy")  # the weights of `tiny`, as a directory
    cfg = load_config(EvalConfig, TINY, [f"posts={world['posts']}", "transfer.posts=null", "device=cpu",
                                         f"policies=[{{name: copy, model: {tmp_path / 'copy'}}}]",
                                         "judges=[{name: py, kind: python, spec: 'python:tiny_judges:prefer_longer'}]"])
    rep = evaluate(cfg, str(tmp_path / "out")) and json.loads((tmp_path / "out/report.json").read_text())
    copy = rep["policies"]["copy"]
    assert copy["kl"] == 0.0 and "12 samples" in copy["kl_method"]  # measured (6 posts × 2), not assumed
    rows = [json.loads(x) for x in next((tmp_path / "out/main/kl").glob("*.jsonl")).read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["kl"]) == 2 and r["kl"] == [0.0, 0.0] for r in rows)


# ------------------------------------------------------------------------------------------------ resume


def test_interrupted_eval_resumes_without_resampling_and_gives_the_same_report(full, world, monkeypatch):
    out = world["root"] / "eval-resumed"
    cfg = cfg_for(world)
    assert evaluate(cfg, str(out), stop_after=1) == {"stopped_after": 1}
    assert not (out / "DONE.json").exists() and not (out / "report.json").exists()
    (sft_samples,) = list((out / "main/samples").glob("tiny-*.jsonl"))
    assert len(sft_samples.read_text().splitlines()) == 6
    sampled = []
    real = sampling_module.sample_batch

    def spy(model, tok, chunk, name, *args):
        sampled.append((name, chunk[0].source))
        return real(model, tok, chunk, name, *args)

    monkeypatch.setattr(sampling_module, "sample_batch", spy)
    evaluate(cfg, str(out))
    assert ("sft", "tldr") not in sampled and ("ppo", "tldr") in sampled  # SFT's summaries came from the cache
    assert len(sft_samples.read_text().splitlines()) == 6
    assert json.loads((out / "report.json").read_text()) == full[2]
    assert evaluate(cfg, str(out)) == json.loads((out / "DONE.json").read_text())  # finished: left alone


# ------------------------------------------------------------------------------------------------ CLI, configs, errors


def test_cli_tiny_profile_on_real_data(shared_data, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    out = tmp_path / "eval"
    args = ["eval", "--config", str(TINY), "--out", str(out), f"posts={shared_data / 'tldr/eval.jsonl.gz'}",
            f"transfer.posts={shared_data / 'cnndm/validation.jsonl.gz'}", "limit=4", "transfer.limit=2",
            f"judges=[{{name: rm, kind: rm, spec: {world['rm']}}}]", "bootstrap=10", "device=cpu"]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["posts"]["n"] == 4 and rep["transfer"]["posts"]["n"] == 2
    assert set(rep["policies"]) == {"sft", "ppo", "lead3", "reference"}
    assert main(["eval", "--show-config"]) == 0
    shown = capsys.readouterr().out
    assert "kl_reference" in shown and "transfer.posts" in shown
    assert "policies[].samples (str | None)" in shown and "judges[].kind ('rm' | 'labels' |" in shown


@pytest.mark.parametrize("override, message", [
    ("policies=[{name: a, modle: tiny}]", "policies[0]"),
    ("policies=[{name: a, model: tiny, builtin: lead3}]", "exactly one of model, samples, builtin"),
    ("policies=[{name: a, model: tiny}, {name: a, builtin: lead3}]", "unique"),
    ("judges=[{name: j, kind: openai}]", "base_url"),
    ("judges=[{name: j, kind: python}]", "spec"),
    ("transfer.policies=[nope]", "transfer.policies"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(EvalConfig, TINY, [override])


def test_bad_samples_file_is_a_clear_cli_error_naming_file_and_line(world, tmp_path, capsys):
    good = {"post_id": "p0", "policy": "x", "text": " hi", "n_tokens": 2}
    bad = write_jsonl(tmp_path / "bad.jsonl", [good, {"post_id": "p1", "policy": "x", "n_tokens": 1}])
    def run(out: str, *overrides: str) -> int:
        return main(["eval", "--config", str(TINY), "--out", str(tmp_path / out), f"posts={world['posts']}",
                     "transfer.posts=null", "device=cpu", f"judges=[{{name: rm, kind: rm, spec: {world['rm']}}}]",
                     *overrides])

    assert run("a", f"policies=[{{name: x, samples: {bad}}}]") == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 2" in err and "text" in err
    short = write_jsonl(tmp_path / "short.jsonl", [good])
    assert run("b", f"policies=[{{name: x, samples: {short}}}]") == 2
    assert "has no summary for 5 of the 6 eval posts" in capsys.readouterr().err
    assert run("c", "judges=[{name: rm, kind: rm, spec: /no/such/rm}]") == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert run("d", "policies=[{name: lead3, builtin: lead3}]", "ratings=/no/such/ratings.jsonl") == 2
    assert "no such ratings file" in capsys.readouterr().err


def test_python_judge_must_return_probabilities(world, tmp_path):
    (tmp_path / "badjudge.py").write_text("def f(posts, a, b):\n    return [2.0 for _ in a]\n")
    sys.path.insert(0, str(tmp_path))
    try:
        cfg = load_config(EvalConfig, TINY, [f"posts={world['posts']}", "transfer.posts=null", "device=cpu",
                                             "policies=[{name: lead3, builtin: lead3}]",
                                             "judges=[{name: j, kind: python, spec: 'python:badjudge:f'}]"])
        with pytest.raises(RunError, match="not a probability"):
            evaluate(cfg, str(tmp_path / "out"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("badjudge", None)


# ------------------------------------------------------------------------------------------------ the LLM judge


class _StubChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that prefers the longer summary, wherever it is shown."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _StubChat.seen.append({"auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][0]["content"]
        a = prompt.split("Summary A:\n", 1)[1].split("\n\nSummary B:", 1)[0]
        b = prompt.split("Summary B:\n", 1)[1].split("\n\nFIRST", 1)[0]
        answer = f"Comparison: one is longer.\nPreferred: {'A' if len(a) > len(b) else 'B'}"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_judge_maps_the_shown_order_back(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _StubChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = JudgeSpec(name="llm", kind="openai", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                         model="stub")
        judge = OpenAIJudge(spec, tmp_path, api_key="sk-test")
        posts = [Post(id=f"p{i}", text="post", title="t") for i in range(8)]
        a = [Text("a much longer summary " * (i % 2 + 1)) for i in range(8)]
        b = [Text("short") if i % 2 else Text("a much longer summary text here, longer still") for i in range(8)]
        got = judge.prefer(posts, a, b)
        assert got == [1.0 if len(x.text) > len(y.text) else 0.0 for x, y in zip(a, b)]
        orders = {judge.a_first(p, x.text, y.text) for p, x, y in zip(posts, a, b)}
        assert orders == {True, False}  # both orders were shown
        assert _StubChat.seen[0]["auth"] == "Bearer sk-test" and _StubChat.seen[0]["body"]["model"] == "stub"
        n = len(_StubChat.seen)
        assert judge.prefer(posts, a, b) == got and len(_StubChat.seen) == n  # cached: no second request
    finally:
        server.shutdown()
    with pytest.raises(RunError, match="cannot reach"):
        OpenAIJudge(JudgeSpec(name="x", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", timeout_s=2),
                    tmp_path / "x").prefer(posts[:1], a[:1], b[:1])


@pytest.mark.parametrize("answer, choice", [("Comparison: x.\nPreferred: B", "B"), ("Preferred: **A**", "A"),
                                            ("I pick\nA", "A"), ("no idea", None), ('Preferred: "b"', "B")])
def test_parse_choice(answer, choice):
    assert parse_choice(answer) == choice


# ------------------------------------------------------------------------------------------------ the page


def fake_report(*rates: tuple[str, float, float, float], differences: tuple[dict, ...] = ()) -> dict:
    return {"primary_judge": "gold", "settings": {"ci_level": 0.95},
            "judges": [{"name": "gold", "differences": list(differences)}],
            "policies": {name: {"by_judge": {"gold": {"win_rate": r, "win_rate_ci": [lo, hi], "n": 100}}}
                         for name, r, lo, hi in rates}}


def difference(a: str, b: str, d: float, lo: float, hi: float) -> dict:
    return {"a": a, "b": b, "n": 100, "win_rate_difference": d, "win_rate_difference_ci": [lo, hi],
            "differ": lo > 0 or hi < 0}


def test_the_verdict_names_the_winner_and_says_whether_the_paired_difference_is_beyond_its_ci():
    apart = verdict(fake_report(("sft", 0.40, 0.31, 0.49), ("ppo", 0.62, 0.52, 0.71),
                                differences=(difference("sft", "ppo", -0.22, -0.30, -0.14),)))
    assert apart.startswith("On the primary judge (gold), ppo is preferred to the reference most often: 0.620 "
                            "[0.52, 0.71] of 100 posts, above 0.5 beyond its 95% CI; ahead of sft (0.400")
    # the difference is stored as sft − ppo: the verdict turns it to the winner's side
    assert apart.endswith("by +0.220 [+0.14, +0.30] on the same 100 posts, beyond its CI.")
    # overlapping intervals, yet the paired difference can be beyond its CI: the verdict follows the pairs
    paired = verdict(fake_report(("sft", 0.45, 0.35, 0.55), ("ppo", 0.50, 0.40, 0.60),
                                 differences=(difference("ppo", "sft", 0.05, 0.01, 0.09),)))
    assert paired.endswith("by +0.050 [+0.01, +0.09] on the same 100 posts, beyond its CI.")
    close = verdict(fake_report(("sft", 0.45, 0.35, 0.55), ("ppo", 0.48, 0.38, 0.58),
                                differences=(difference("ppo", "sft", 0.03, -0.05, 0.11),)))
    assert "ppo is preferred" in close and "within its 95% CI" in close
    assert close.endswith("but by +0.030 [-0.05, +0.11] on the same 100 posts: the two are not shown to differ.")
    assert "below 0.5 beyond its" in verdict(fake_report(("ppo", 0.2, 0.1, 0.3)))


def test_a_pair_difference_read_the_other_way_round_flips_every_difference_and_interval():
    stored = difference("sft", "ppo", -0.22, -0.30, -0.14) | {"score_difference": -0.4,
                                                              "score_difference_ci": [-0.5, -0.3]}
    rep = fake_report(("sft", 0.40, 0.31, 0.49), ("ppo", 0.62, 0.52, 0.71), differences=(stored,))
    got = pair_difference(rep, "gold", "ppo", "sft")
    assert (got["a"], got["b"], got["n"], got["differ"]) == ("ppo", "sft", 100, True)
    assert got["win_rate_difference"] == 0.22 and got["win_rate_difference_ci"] == [0.14, 0.30]
    assert got["score_difference"] == 0.4 and got["score_difference_ci"] == [0.3, 0.5]
    assert pair_difference(rep, "gold", "sft", "ppo") == stored and pair_difference(rep, "gold", "sft", "x") is None


def test_pareto_view_and_paired_differences_match_a_hand_computation(full):
    out, summary, rep = full
    pol = rep["policies"]
    view = rep["pareto"]["rm"]
    assert view["y"] == "mean score" and [p["policy"] for p in view["points"]] == list(pol)
    for p in view["points"]:
        r = pol[p["policy"]]
        assert p["mean_tokens"] == r["mean_tokens"] and p["y"] == r["by_judge"]["rm"]["score"]["mean"]
        lo, hi = p["y_ci"]
        assert lo < p["y"] < hi
        # on the front exactly when no other policy is at most as long and at least as good, one strictly
        beaten = any(q["mean_tokens"] <= p["mean_tokens"] and q["y"] >= p["y"] and
                     (q["mean_tokens"] < p["mean_tokens"] or q["y"] > p["y"]) for q in view["points"] if q is not p)
        assert p["on_front"] is not beaten
    assert rep["pareto"]["py"]["y"] == "win rate against the reference"  # a judge that does not score
    # differences: every two policies but the reference; lead3 − sft on the python judge by hand
    diffs = {(d["a"], d["b"]): d for d in next(j for j in rep["judges"] if j["name"] == "py")["differences"]}
    assert set(diffs) == {("sft", "ppo"), ("sft", "bo4"), ("sft", "lead3"), ("ppo", "bo4"), ("ppo", "lead3"),
                          ("bo4", "lead3")}
    d = diffs[("sft", "lead3")]
    assert d["n"] == 6 and "score_difference" not in d
    assert d["win_rate_difference"] == pytest.approx(pol["sft"]["by_judge"]["py"]["win_rate"]
                                                     - pol["lead3"]["by_judge"]["py"]["win_rate"])
    lo, hi = d["win_rate_difference_ci"]
    assert lo <= d["win_rate_difference"] <= hi and d["differ"] == (lo > 0 or hi < 0)
    rm_diff = next(j for j in rep["judges"] if j["name"] == "rm")["differences"][0]
    assert rm_diff["score_difference"] == pytest.approx(pol["sft"]["by_judge"]["rm"]["score"]["mean"]
                                                        - pol["ppo"]["by_judge"]["rm"]["score"]["mean"], abs=1e-6)
    # DONE.json: the primary judge's intervals and differences, for scripts and the pipeline's closing summary
    assert summary["win_rate_ci"] == {k: v["win_rate_ci"] for k, v in pol.items()}
    assert summary["mean_score_ci"]["sft"] == pol["sft"]["by_judge"]["rm"]["mean_score_ci"]
    assert summary["differences"] == next(j for j in rep["judges"] if j["name"] == "rm")["differences"]
    page = (out / "report.html").read_text()
    assert "More than length?" in page and "Which policies differ" in page


def test_the_first_screen_gives_the_verdict(full):
    out, _, rep = full
    page = (out / "report.html").read_text()
    assert page.index("class=verdict") < page.index("<h2>")
    assert html.escape(verdict(rep), quote=True) in page


@pytest.mark.browser
def test_at_1280_px_every_table_scrolls_in_its_box_and_no_cell_is_clipped(full, chromium):
    from playwright.sync_api import sync_playwright

    out, _, _ = full
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((out / "report.html").as_uri())
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # the page itself never scrolls sideways
        boxes = page.evaluate("""() => [...document.querySelectorAll('table')].map(t => {
            const box = t.parentElement;
            box.scrollLeft = box.scrollWidth;  // scrolled to the end, the last column must be inside the box
            const last = t.rows[0].cells[t.rows[0].cells.length - 1].getBoundingClientRect();
            const r = box.getBoundingClientRect();
            return {cls: box.className, wide: t.scrollWidth > box.clientWidth, right: last.right, box: r.right};
        })""")
        browser.close()
    assert boxes and all(b["cls"] == "scroll" for b in boxes)
    assert any(b["wide"] for b in boxes)  # the policies table is wider than the page: it is what this checks
    assert all(b["right"] <= b["box"] + 1 for b in boxes), boxes
