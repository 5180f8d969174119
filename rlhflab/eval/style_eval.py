"""`rlhflab style-eval`: Ziegler et al.'s measurement — how far each policy's continuations of held-out prompts move
a programmatic judge (sentiment, descriptiveness), and at what KL from the base model.

For every policy, on the same held-out prompts (by default the books in `data.schema.HELDOUT_BOOKS`):

1. greedy continuations and `samples` sampled ones at `temperature`, each cut by the task's stop rule (the first
   "." at or after token 16); the judge's mean score of each, with a 95% normal interval for the sampled mean;
2. KL from `kl_reference` in nats per continuation, from the policy's own samples at the same temperature (both
   models' logits divided by T): mean over samples of Σ_t log π(y_t|·) − log π_ref(y_t|·);
3. a best-of-N policy (`best_of: N`, `reward: RM run`) samples N continuations of `model` per prompt and keeps the
   one the RM scores highest; its KL is the analytic log N − (N−1)/N (Stiennon et al. 2020, App. G.3).

Writes `<out>/report.json` (`arms.<name>.{judge_score, judge_score_greedy, judge_score_ci, kl, mean_tokens,
ended_rate}`; `judge_score` is the sampled continuations' mean), `<out>/style.png` (judge score against KL), and
`<out>/arms/<name>.json` + `<name>.samples.jsonl` per policy as it finishes, so an interrupted run resumes at the
first unfinished policy.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhflab.core.config import require, setting
from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir, atomic_write_json
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import encode_query, format_queries
from rlhflab.data.jsonl import write_jsonl
from rlhflab.data.loaders import load_posts
from rlhflab.data.preflight import check_files, posts_check
from rlhflab.eval.metrics import best_of_n_kl, mean_and_se
from rlhflab.models.device import Bf16, autocast, resolve_device
from rlhflab.models.generation import Generation, decode_responses, generate, pad_queries, response_logprobs, stop_rule
from rlhflab.models.loading import load_model
from rlhflab.models.reward import load_reward_model
from rlhflab.models.style import style_scorer

log = get_logger(__name__)


@dataclass
class StylePolicy:
    name: str = setting("", "the policy's name in the report (unique)")
    model: str = setting("smollm2-135m", "a PPO or SFT run directory, model directory, embedded name or tiny")
    best_of: int = setting(0, "> 0: best-of-N — sample N continuations of `model`, keep the one `reward` scores highest")
    reward: str | None = setting(None, "best_of: the `rlhflab rm` run that picks")


@dataclass
class StyleEvalConfig:
    policies: list[StylePolicy] = setting(
        default_factory=lambda: [StylePolicy("base", "smollm2-135m")], help="the policies to compare")
    judge: str = setting("sentiment", "the style judge: sentiment | descriptiveness")
    kl_reference: str = setting("smollm2-135m", "KL is measured from this model (the PPO runs' reference)")
    posts: str = setting("../shared/data/books/passages.jsonl.gz", "the prompts: book passages (or any posts file)")
    format: str = setting("books-heldout", "format of the posts file (books-heldout: only the held-out books)")
    limit: int | None = setting(128, "prompts evaluated: N evenly spaced among those that fit the budget (None: all)")
    max_query_tokens: int = setting(64, "token budget of a prompt (whole sentences kept)")
    max_new_tokens: int = setting(24, "length limit of a continuation, in tokens")
    stop_token: str | None = setting(".", "a continuation also ends at this token (kept); None: EOS only")
    stop_after: int = setting(16, "the stop token ends a continuation only at 0-based position >= this")
    temperature: float = setting(0.7, "sampling temperature of the sampled continuations and of the KL")
    samples: int = setting(2, "sampled continuations per prompt (and per KL estimate)")
    batch_size: int = setting(32, "prompts per generation batch")
    seed: int = setting(1, "random seed of sampling (the same prompts and seeds for every policy)")
    bf16: Bf16 = setting("auto", "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device")
    plot: bool = setting(True, "write style.png")

    def __post_init__(self) -> None:
        names = [p.name for p in self.policies]
        require(bool(names) and all(names) and len(set(names)) == len(names), "policies",
                f"every policy needs a unique name, got {names}")
        require(self.temperature > 0, "temperature", "sampled continuations need temperature > 0")
        require(self.samples >= 1, "samples", f"must be >= 1, got {self.samples}")
        for p in self.policies:
            require(p.best_of == 0 or bool(p.reward), "policies",
                    f"policy {p.name}: best_of={p.best_of} needs reward= (an RM run that picks)")


@dataclass
class Prompts:
    ids: list[str]  # post ids
    tokens: list[list[int]]  # the formatted prompts' token ids
    meta: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ generation


def continuations(model, tok, prompts: Prompts, cfg: StyleEvalConfig, temperature: float, n: int
                  ) -> tuple[list[str], list[Generation], list[list[int]]]:
    """n continuations a prompt (prompt i's are rows i*n … i*n+n−1 of each batch), with each batch's prompt ids."""
    stop = stop_rule(tok, cfg.stop_token, cfg.stop_after)
    texts, gens, batches = [], [], []
    for start in range(0, len(prompts.tokens), cfg.batch_size):
        chunk = prompts.tokens[start : start + cfg.batch_size]
        ids, mask = pad_queries(tok, chunk)
        generator = torch.Generator().manual_seed(cfg.seed * 100003 + start)
        with autocast(resolve_device(cfg.device), cfg.bf16):
            gen = generate(model, tok, ids, mask, max_new_tokens=cfg.max_new_tokens, temperature=temperature,
                           generator=generator, n_per_query=n, stop=stop)
        texts += decode_responses(tok, gen)
        gens.append(gen)
        batches.append(ids.shape[1])
    return texts, gens, batches


@torch.no_grad()
def kl_of(model, reference, gens: list[Generation], query_lens: list[int], temperature: float) -> list[float]:
    """Σ_t log π − log π_ref per sampled continuation, both recomputed in float32 by one forward each."""
    out: list[float] = []
    for gen, q in zip(gens, query_lens):
        logp = response_logprobs(model, gen.query_response, gen.attention_mask, q, temperature)
        ref = response_logprobs(reference, gen.query_response, gen.attention_mask, q, temperature)
        out += (logp.float() - ref.float()).sum(-1).cpu().tolist()
    return out


def response_ids(gens: list[Generation]) -> list[list[int]]:
    """Each row's response tokens as generated (what PPO's RM scores: the stop token kept, EOS kept)."""
    return [gen.response[b, : int(gen.response_mask[b].sum())].tolist() for gen in gens
            for b in range(gen.response.shape[0])]


# ------------------------------------------------------------------------------------------------ one policy


def evaluate_policy(pol: StylePolicy, prompts: Prompts, cfg: StyleEvalConfig, reference, judge) -> dict[str, Any]:
    """The policy's arm: greedy and sampled judge scores, KL, length; and its samples rows."""
    model, tok = load_model(pol.model)
    model.to(resolve_device(cfg.device)).eval()
    if pol.best_of:
        return best_of_arm(pol, model, tok, prompts, cfg, judge)
    greedy, _, _ = continuations(model, tok, prompts, cfg, 0.0, 1)
    sampled, gens, qlens = continuations(model, tok, prompts, cfg, cfg.temperature, cfg.samples)
    kls = kl_of(model, reference, gens, qlens, cfg.temperature)
    return arm(judge(greedy), judge(sampled), gens, kls, "sampled: Σ log π − log π_ref on the policy's samples")


def best_of_arm(pol: StylePolicy, model, tok, prompts: Prompts, cfg: StyleEvalConfig, judge) -> dict[str, Any]:
    rm = load_reward_model(pol.reward or "").to(resolve_device(cfg.device)).eval()
    texts, gens, _ = continuations(model, tok, prompts, cfg, cfg.temperature, pol.best_of)
    n = pol.best_of
    scores = rm.score_ids([q for q in prompts.tokens for _ in range(n)], response_ids(gens),
                          batch_size=cfg.batch_size, bf16=cfg.bf16).reshape(-1, n)  # (P, N)
    picks = [i * n + int(j) for i, j in enumerate(scores.argmax(dim=1).tolist())]
    best = [texts[i] for i in picks]
    ended = [bool(g.ended[b]) for g in gens for b in range(g.response.shape[0])]
    lengths = [int(g.response_mask[b].sum()) for g in gens for b in range(g.response.shape[0])]
    s, se = mean_and_se(judge(best))
    return {"judge_score": s, "judge_score_ci": ci(s, se), "judge_score_greedy": None, "kl": best_of_n_kl(n),
            "kl_method": f"analytic log N - (N-1)/N, N={n}", "mean_tokens": sum(lengths[i] for i in picks) / len(picks),
            "ended_rate": sum(ended[i] for i in picks) / len(picks), "best_of": n, "reward": pol.reward,
            "rows": [{"post_id": prompts.ids[k], "text": best[k]} for k in range(len(best))]}


def arm(greedy_scores: list[float], sampled_scores: list[float], gens: list[Generation], kls: list[float],
        kl_method: str) -> dict[str, Any]:
    s, se = mean_and_se(sampled_scores)
    kl, kl_se = mean_and_se(kls)
    ended = torch.cat([g.ended for g in gens]).float()
    lengths = torch.cat([g.response_mask.sum(1) for g in gens]).float()
    return {"judge_score": s, "judge_score_ci": ci(s, se), "judge_score_greedy": mean_and_se(greedy_scores)[0],
            "kl": kl, "kl_ci": ci(kl, kl_se), "kl_method": kl_method, "mean_tokens": float(lengths.mean()),
            "ended_rate": float(ended.mean())}


def ci(mean: float | None, se: float | None) -> list[float] | None:
    return None if mean is None or se is None else [mean - 1.96 * se, mean + 1.96 * se]


# ------------------------------------------------------------------------------------------------ the stage


def load_prompts(cfg: StyleEvalConfig, tok) -> Prompts:
    posts = list(load_posts(cfg.posts, format=cfg.format))
    kept, queries, dropped = format_queries(posts, tok, cfg.max_query_tokens)
    if cfg.limit is not None and len(kept) > cfg.limit:  # evenly spaced: every held-out book gets its share
        step = len(kept) / cfg.limit
        picked = [int(i * step) for i in range(cfg.limit)]
        kept, queries = [kept[i] for i in picked], [queries[i] for i in picked]
    if not kept:
        raise ValueError(f"{cfg.posts} (format {cfg.format}): no prompt fits max_query_tokens={cfg.max_query_tokens}")
    return Prompts([p.id for p in kept], [encode_query(tok, q) for q in queries],
                   {"books": sorted({p.title for p in kept if p.title}), "dropped_unfit": dropped})


def style_eval(cfg: StyleEvalConfig, out: str) -> dict:
    run = RunDir(out)
    check_files([posts_check("posts", cfg.posts, cfg.format)])  # step 0: before any model loads
    if (done := run.open("style-eval", cfg)) is not None:
        return done
    seed_everything(cfg.seed)
    t_start = time.time()
    reference, tok = load_model(cfg.kl_reference)
    reference.to(resolve_device(cfg.device)).eval()
    prompts = load_prompts(cfg, tok)
    score = style_scorer(cfg.judge)
    arms: dict[str, dict[str, Any]] = {}
    for pol in cfg.policies:  # (1)-(3) a policy at a time; a finished one is read back on resume
        path = run.path / "arms" / f"{pol.name}.json"
        if not path.exists():
            log.info("style-eval: %s (%s) on %d prompts", pol.name, pol.model, len(prompts.ids))
            result = evaluate_policy(pol, prompts, cfg, reference, score)
            write_jsonl(run.path / "arms" / f"{pol.name}.samples.jsonl", result.pop("rows", []))
            atomic_write_json(path, {"model": pol.model, **result})
        arms[pol.name] = json.loads(path.read_text())
    report = {"judge": cfg.judge, "posts": cfg.posts, "format": cfg.format, "n_prompts": len(prompts.ids),
              "heldout_books": prompts.meta["books"], "dropped_unfit_prompts": prompts.meta["dropped_unfit"],
              "temperature": cfg.temperature, "samples_per_prompt": cfg.samples, "kl_reference": cfg.kl_reference,
              "stop": {"token": cfg.stop_token, "after": cfg.stop_after, "max_new_tokens": cfg.max_new_tokens},
              "arms": arms}
    atomic_write_json(run.path / "report.json", report)
    if cfg.plot:
        plot_arms(arms, cfg.judge, run.path / "style.png")
    summary = {"stage": "style-eval", "wall_s": time.time() - t_start, "report": str(run.path / "report.json"),
               "judge": cfg.judge, "judge_score": {k: v["judge_score"] for k, v in arms.items()},
               "kl": {k: v["kl"] for k, v in arms.items()}}
    run.write_done(summary)
    return summary


def plot_arms(arms: dict[str, dict[str, Any]], judge: str, path: Path) -> None:
    """Judge score (sampled, with its interval; greedy as an open marker) against KL, one point a policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, a in arms.items():
        kl = max(a["kl"] or 0.0, 0.0)
        lo, hi = a["judge_score_ci"] or (a["judge_score"], a["judge_score"])
        ax.errorbar([kl], [a["judge_score"]], yerr=[[a["judge_score"] - lo], [hi - a["judge_score"]]], fmt="o",
                    capsize=3, label=name)
        if a.get("judge_score_greedy") is not None:
            ax.plot([kl], [a["judge_score_greedy"]], marker="o", mfc="none", color=ax.lines[-1].get_color())
        ax.annotate(name, (kl, a["judge_score"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("KL from the base model (nats per continuation)")
    ax.set_ylabel(f"{judge} (mean over held-out prompts)")
    ax.set_title(f"{judge}: sampled (filled, 95% CI) and greedy (open)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["StyleEvalConfig", "StylePolicy", "style_eval"]
