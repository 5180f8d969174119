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
from rlhflab.data.loaders import write_comparisons
from rlhflab.data.records import CONFIDENCE_NO_PREFERENCE, Comparison, Post, Summary
from rlhflab.eval.judges import JudgeSpec, Text, build_judge
from rlhflab.models.device import resolve_device
from rlhflab.models.reward import load_reward_model

log = get_logger(__name__)


@dataclass
class SimulateConfig:
    pairs: str = setting("runs/pairs.jsonl", "tasks: the labelling app's pairs JSONL ({post, summary_a, summary_b})")
    judge: JudgeSpec = setting(
        default_factory=lambda: JudgeSpec(name="gold", kind="rm", spec="runs/rm/cpu"),
        help="who answers: an RM run, a labels file, a python callable, a chat endpoint or a style score")
    temperature: float = setting(1.0, "P(a) = σ(logit(p_judge) / temperature); 0 = always the judge's choice")
    random_rate: float = setting(0.0, "share of answers that are a coin flip (a careless labeler)")
    seed: int = setting(0, "random seed of the noise model (which answers flip, the coin flips)")
    batch: str = setting("simulated", "the `batch` field of every comparison (e.g. round_1)")
    worker: str | None = setting(None, "the `worker` field; None: sim:<judge name>")
    bf16: bool = setting(False, "bf16 autocast (weights stay fp32)")
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


def simulate(cfg: SimulateConfig, out: str) -> dict:
    run = RunDir(out)
    if (done := run.open("simulate-labels", cfg)) is not None:
        return done
    t_start = time.time()
    tasks = read_tasks(cfg.pairs)
    device = resolve_device(cfg.device)
    judge = build_judge(cfg.judge, run.path / "judge", lambda spec: load_reward_model(spec).to(device).eval(),
                        bf16=cfg.bf16)
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


__all__ = ["SimulateConfig", "answer", "confidence_of", "labeler_probability", "read_tasks", "simulate"]
