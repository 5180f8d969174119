"""`rlhflab simulate-labels`: answer comparison tasks with a judge and a noise model, as a person would.

A simulated labeler makes the whole loop run without people, and makes over-optimisation measurable: when the
judge is a "gold" reward model trained on real human comparisons, the RM that PPO optimises learns the gold
judge's preferences only through these noisy labels, and the gold judge can later score the policy it never saw
during training (Gao et al. 2022 ran their over-optimisation study this way).

Any `JudgeSpec` answers (`rlhflab/eval/judges.py`); `judge.kind=style judge.spec=sentiment` (or `descriptiveness`)
is Ziegler et al. (2019)'s "mock" labeler, a programmatic score of each text alone.

For each task (two summaries of one post; the labelling app's pairs format) the judge gives p = P(a preferred).
The labeler then picks a with probability

    q = random_rate · ½ + (1 − random_rate) · σ(logit(p) / temperature)

(temperature 0: always the judge's choice; random_rate: the share of careless coin-flip answers) and states a
1–9 confidence on OpenAI's scale from its own belief q: |2q − 1| mapped to a distance of 1–4 from 5, leaning
towards the chosen summary (an answer against its own belief — a noisy one — leans the weakest way).
The output is `comparisons.jsonl` in OpenAI's schema, ready for `rlhflab rm` or `rlhflab label import`.

Best-of-N tasks (rows {"id", "query", "samples": [...]}, Ziegler et al.'s label type) need a judge that scores
(rm or style). The labeler picks continuation i with probability

    q_i = random_rate / N + (1 − random_rate) · softmax_i(s / (τ · temperature))

(the multinomial logit, which for N = 2 is the pairwise rule above, since logit(p) = (s_a − s_b)/τ for these
judges; temperature 0: the judge's top score). The output is `best_of_n.jsonl` (`rlhflab rm` trains on it).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from rlhflab.core.config import require, setting
from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir
from rlhflab.data import schema
from rlhflab.data.jsonl import DataError, read_jsonl
from rlhflab.data.loaders import write_best_of_n, write_comparisons
from rlhflab.data.preflight import check_files, rows_check
from rlhflab.data.records import CONFIDENCE_NO_PREFERENCE, BestOfN, Choice, Comparison, Post, Summary
from rlhflab.eval.judges import JudgeSpec, Text, build_judge
from rlhflab.models.device import Bf16, resolve_device
from rlhflab.models.reward import load_reward_model

log = get_logger(__name__)


@dataclass
class SimulateConfig:
    pairs: str = setting(
        "runs/pairs.jsonl",
        "tasks: the labelling app's pairs JSONL ({post, summary_a, summary_b}), or best-of-N tasks ({query, samples})")
    judge: JudgeSpec = setting(
        default_factory=lambda: JudgeSpec(name="gold", kind="rm", spec="runs/rm/cpu"),
        help="who answers: an RM run, a labels file, a python callable, a chat endpoint or a style score")
    temperature: float = setting(1.0, "P(a) = σ(logit(p_judge) / temperature); 0 = always the judge's choice")
    random_rate: float = setting(0.0, "share of answers that are a coin flip (a careless labeler)")
    seed: int = setting(0, "random seed of the noise model (which answers flip, the coin flips)")
    batch: str = setting("simulated", "the `batch` field of every comparison (e.g. round_1)")
    worker: str | None = setting(None, "the `worker` field; None: sim:<judge name>")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")

    def __post_init__(self) -> None:
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(0 <= self.random_rate <= 1, "random_rate", f"must be in [0, 1], got {self.random_rate}")


@dataclass(frozen=True)
class Task:
    post: Post
    a: Summary
    b: Summary
    line: int


# ------------------------------------------------------------------------------------------------ the math


def labeler_probability(p_judge: float, temperature: float, random_rate: float) -> float:
    """P(the simulated labeler picks summary a) given the judge's P(a preferred)."""
    if temperature == 0:
        sharp = 1.0 if p_judge > 0.5 else 0.0 if p_judge < 0.5 else 0.5
    else:
        p = min(max(p_judge, 1e-12), 1 - 1e-12)
        sharp = 1.0 / (1.0 + math.exp(-math.log(p / (1 - p)) / temperature))
    return random_rate * 0.5 + (1.0 - random_rate) * sharp


def confidence_of(q_a: float, choice: int) -> int:
    """OpenAI's 1–9 confidence (below 5 leans to summary 0, above 5 to summary 1) of a labeler whose belief that
    summary 0 is better is q_a and who chose `choice`. Always leans to the chosen side, so it never contradicts the
    choice; the distance from 5 is round(4·|2q − 1|) clipped to 1–4, and 1 when the choice went against q."""
    agrees = (q_a >= 0.5) == (choice == 0)
    distance = min(4, max(1, round(4 * abs(2 * q_a - 1)))) if agrees else 1
    return CONFIDENCE_NO_PREFERENCE - distance if choice == 0 else CONFIDENCE_NO_PREFERENCE + distance


def pick_probabilities(scores: list[float], tau: float, temperature: float, random_rate: float) -> list[float]:
    """P(the simulated labeler picks continuation i) for a best-of-N task whose judge scores are `scores`."""
    n = len(scores)
    if temperature == 0:
        top = [i for i, v in enumerate(scores) if v == max(scores)]
        sharp = [1.0 / len(top) if i in top else 0.0 for i in range(n)]
    else:
        z = [v / (tau * temperature) for v in scores]
        e = [math.exp(v - max(z)) for v in z]
        sharp = [v / sum(e) for v in e]
    return [random_rate / n + (1.0 - random_rate) * q for q in sharp]


def pick(scores: list[float], tau: float, temperature: float, random_rate: float, rng: random.Random) -> int:
    """The index a simulated labeler picks as the best of a best-of-N task."""
    q = pick_probabilities(scores, tau, temperature, random_rate)
    u, acc = rng.random(), 0.0
    for i, qi in enumerate(q):
        acc += qi
        if u < acc:
            return i
    return len(q) - 1


def answer(p_judge: float, temperature: float, random_rate: float, rng: random.Random) -> tuple[int, int]:
    """(choice, confidence) of one simulated answer; choice 0 = summary a."""
    q = labeler_probability(p_judge, temperature, random_rate)
    choice = 0 if rng.random() < q else 1
    return choice, confidence_of(q, choice)


# ------------------------------------------------------------------------------------------------ the stage


def read_tasks(path: str) -> list[Task]:
    """Comparison tasks from a pairs JSONL (the post in any posts format); a bad row is an error that names the
    line and the field."""
    tasks = []
    for line, row in read_jsonl(path):
        try:
            tasks.append(Task(task_post(row), task_summary(row, "summary_a"), task_summary(row, "summary_b"), line))
        except schema.FieldError as err:
            raise DataError(path, line, err.field, err.problem) from None
    if not tasks:
        raise DataError(path, problem="no comparison tasks")
    return tasks


def task_post(row: schema.Row) -> Post:
    post = schema.obj(row, "post")
    fmt = schema.detect_post_format(post)
    if fmt is None:
        raise schema.FieldError("post", "no text (a posts-file row: text, or post, or article)")
    try:
        return schema.POST_PARSERS[fmt](post)
    except schema.FieldError as err:
        raise schema.FieldError(f"post.{err.field}", err.problem) from None


def task_summary(row: schema.Row, key: str) -> Summary:
    summary = schema.obj(row, key)
    return Summary(schema.string(summary, "text", f"{key}."), schema.optional_string(summary, "policy", f"{key}."))


def read_best_of_n_tasks(path: str) -> list[BestOfN]:
    """Best-of-N tasks ({"id", "query", "samples"}; a "best" already there is ignored); errors name the line."""
    tasks = []
    for line, row in read_jsonl(path):
        try:
            tasks.append(schema.best_of_n({**row, "best": 0}))
        except schema.FieldError as err:
            raise DataError(path, line, err.field, err.problem) from None
    if not tasks:
        raise DataError(path, problem="no best-of-N tasks")
    return tasks


def parse_task_row(row: schema.Row) -> object:
    """A comparison task or a best-of-N task row, parsed (FieldError names the field)."""
    if isinstance(row, dict) and "samples" in row:
        return schema.best_of_n({**row, "best": 0})
    return task_post(row), task_summary(row, "summary_a"), task_summary(row, "summary_b")


def is_best_of_n_file(path: str) -> bool:
    for _, row in read_jsonl(path):
        return isinstance(row, dict) and "samples" in row
    return False


def simulate_best_of_n(cfg: SimulateConfig, run: RunDir, judge, t_start: float) -> dict:
    """Answer best-of-N tasks: the judge scores every continuation, the noise model picks one."""
    tasks = read_best_of_n_tasks(cfg.pairs)
    texts = [Text(c.text, c.eos) for t in tasks for c in t.samples]
    posts = [t.post for t in tasks for _ in t.samples]
    scores = judge.scores(posts, texts)
    if scores is None:
        raise ValueError(f"judge {cfg.judge.name} (kind {cfg.judge.kind}) compares but does not score: best-of-N "
                         "tasks need a judge that scores each continuation (kind rm or style)")
    rng, tau = random.Random(cfg.seed), float(getattr(judge, "tau", 1.0))
    labels, top, longest, at = [], 0, 0, 0
    for t in tasks:
        s = scores[at : at + len(t.samples)]
        at += len(t.samples)
        best = pick(s, tau, cfg.temperature, cfg.random_rate, rng)
        top += s[best] == max(s)
        longest += len(t.samples[best].text) >= max(len(c.text) for c in t.samples)
        labels.append(BestOfN(post=t.post, samples=t.samples, best=best, worker=cfg.worker or f"sim:{cfg.judge.name}",
                              batch=cfg.batch, split="train", extra={"judge_scores": [round(v, 6) for v in s]}))
    write_best_of_n(run.path / "best_of_n.jsonl", labels)
    n = len(labels)
    summary = {"stage": "simulate-labels", "kind": "best_of_n", "labels": n, "tasks": n,
               "samples_per_task": len(tasks[0].samples), "agreement_with_judge": top / n,
               "longest_chosen_rate": longest / n, "temperature": cfg.temperature, "random_rate": cfg.random_rate,
               "judge": cfg.judge.spec, "labels_file": str(run.path / "best_of_n.jsonl"),
               "wall_s": time.time() - t_start}
    run.log_metrics(0, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
    run.write_done(summary)
    log.info("simulate-labels: %d best-of-%d labels, %.0f%% the judge's top pick, the longest in %.0f%%", n,
             summary["samples_per_task"], 100 * top / n, 100 * longest / n)
    return summary


def simulate(cfg: SimulateConfig, out: str) -> dict:
    run = RunDir(out)
    check_files([rows_check("pairs", cfg.pairs, parse_task_row)])  # step 0: before the judge loads
    if (done := run.open("simulate-labels", cfg)) is not None:
        return done
    t_start = time.time()
    device = resolve_device(cfg.device)
    judge = build_judge(cfg.judge, run.path / "judge", lambda spec: load_reward_model(spec).to(device).eval(),
                        bf16=cfg.bf16)
    if is_best_of_n_file(cfg.pairs):
        return simulate_best_of_n(cfg, run, judge, t_start)
    tasks = read_tasks(cfg.pairs)
    p_judge = judge.prefer([t.post for t in tasks], [Text(t.a.text) for t in tasks], [Text(t.b.text) for t in tasks])
    rng = random.Random(cfg.seed)
    comparisons, agree, longer, no_verdict = [], 0, 0, 0
    for task, p in zip(tasks, p_judge):
        if p is None:  # e.g. a labels judge that has no label for this pair
            no_verdict += 1
            continue
        choice, confidence = answer(p, cfg.temperature, cfg.random_rate, rng)
        agree += (choice == 0) == (p > 0.5) if p != 0.5 else 1
        texts = (task.a.text, task.b.text)
        longer += len(texts[choice]) >= len(texts[1 - choice])
        comparisons.append(Comparison(post=task.post, summaries=(task.a, task.b), choice=choice,
                                      confidence=confidence, worker=cfg.worker or f"sim:{cfg.judge.name}",
                                      batch=cfg.batch, split="train",
                                      extra={"judge_p_a": round(float(p), 6), "task_line": task.line}))
    if not comparisons:
        raise DataError(cfg.pairs, problem=f"judge {cfg.judge.name} gave no verdict on any of the {len(tasks)} tasks")
    write_comparisons(run.path / "comparisons.jsonl", comparisons)  # atomic: a reader never sees half of it
    n = len(comparisons)
    summary = {"stage": "simulate-labels", "comparisons": n, "tasks": len(tasks), "no_verdict": no_verdict,
               "agreement_with_judge": agree / n, "longer_chosen_rate": longer / n,
               "temperature": cfg.temperature, "random_rate": cfg.random_rate, "judge": cfg.judge.spec,
               "comparisons_file": str(run.path / "comparisons.jsonl"), "wall_s": time.time() - t_start}
    run.log_metrics(0, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
    run.write_done(summary)
    log.info("simulate-labels: %d comparisons, %.0f%% agree with judge %s, the longer summary chosen in %.0f%%",
             n, 100 * summary["agreement_with_judge"], cfg.judge.name, 100 * summary["longer_chosen_rate"])
    return summary


__all__ = ["SimulateConfig", "answer", "pick", "pick_probabilities", "confidence_of", "labeler_probability", "read_tasks", "simulate"]
