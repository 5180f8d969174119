"""`rlhflab score`: add a reward model's scores to a samples file (`Sample.score`).

Reads the samples JSONL (from `rlhflab sample`) and the posts they summarise (to rebuild each query), scores every
(query, summary) with the RM — the summary gets EOS when the policy ended it itself (`Sample.eos`) — and writes
`<out>/samples.jsonl` with `score` filled in, plus DONE.json with the mean score per policy and the mean length.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from rlhflab.core.config import setting
from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir
from rlhflab.data.jsonl import DataError
from rlhflab.data.loaders import load_posts, load_samples, write_samples
from rlhflab.eval.models import load_scorer
from rlhflab.models.device import Bf16

log = get_logger(__name__)


@dataclass
class ScoreConfig:
    model: str = setting("runs/rm/cpu", "an `rlhflab rm` run directory (or a saved reward-model directory)")
    allow_partial: bool = setting(False, "accept an unfinished RM run (its latest checkpoint)")
    samples: str = setting("runs/sample/sft/samples.jsonl", "a samples file, or a `rlhflab sample` run directory")
    posts: str = setting("../shared/data/tldr/eval.jsonl.gz", "the posts the samples summarise (for their queries)")
    posts_format: str = setting("auto", "format of the posts file: auto | tldr | cnndm | posts")
    batch_size: int = setting(16, "sequences per RM forward")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")


def samples_path(spec: str) -> Path:
    path = Path(spec)
    return path / "samples.jsonl" if path.is_dir() else path


def score(cfg: ScoreConfig, out: str) -> dict:
    run = RunDir(out)
    if (done := run.open("score", cfg)) is not None:
        return done
    t_start = time.time()
    src = samples_path(cfg.samples)
    samples = list(load_samples(src))
    posts = {p.id: p for p in load_posts(cfg.posts, format=cfg.posts_format)}
    missing = sorted({s.post_id for s in samples} - set(posts))
    if missing:
        raise DataError(cfg.posts, problem=f"has no post for {len(missing)} sample post ids (e.g. {missing[0]}); "
                                           f"pass the posts file that {src} was sampled from")
    rm = load_scorer(cfg.model, cfg.device, cfg.allow_partial)
    order = sorted(range(len(samples)), key=lambda i: len(posts[samples[i].post_id].text))
    scores = [0.0] * len(samples)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        s = rm.score([posts[samples[i].post_id] for i in idx], [samples[i].text for i in idx],
                     eos=[samples[i].eos for i in idx], batch_size=cfg.batch_size, bf16=cfg.bf16)
        for i, v in zip(idx, s.tolist()):
            scores[i] = v
    scored = [replace(smp, score=v) for smp, v in zip(samples, scores)]
    write_samples(run.path / "samples.jsonl", scored)
    per_policy: dict[str, list[float]] = defaultdict(list)
    for smp in scored:
        per_policy[smp.policy].append(smp.score or 0.0)
    summary = {"stage": "score", "wall_s": time.time() - t_start, "n_samples": len(scored),
               "samples": str(run.path / "samples.jsonl"),
               "mean_score": sum(scores) / max(len(scores), 1),
               "mean_score_per_policy": {k: sum(v) / len(v) for k, v in sorted(per_policy.items())},
               "mean_tokens": sum(s.n_tokens for s in scored) / max(len(scored), 1)}
    run.write_done(summary)
    return summary
