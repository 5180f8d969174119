"""`rlhflab eval`: does the policy beat the humans' own TL;DRs? Sample, judge, report — for any set of runs.

Given policies (model or run directories, samples files such as a best-of-N run's, or the builtins `lead3` and
`reference`) and a post set, the stage

1. writes each model policy's summaries of the posts (greedy by default) to `<out>/<set>/samples/*.jsonl`
   (`rlhflab sample`'s format, appended batch by batch: an interrupted eval resumes without sampling again);
2. estimates each model policy's KL from the SFT model (`kl_reference`) in nats per response, from the policy's
   own samples at `kl_temperature` (logits divided by T for both models): KL ≈ mean over samples of
   Σ_t log π(y_t|·) − log π_sft(y_t|·); best-of-N policies get the analytic log N − (N−1)/N;
3. asks every judge (`judges`, see `rlhflab.eval.judges`) whether the policy's summary beats the reference, and
   reports per policy and judge the win rate with a 95% Wilson interval, the length-controlled win rate (a
   logistic regression on log(len policy / len reference) with per-policy intercepts, read at ratio 1, with a
   bootstrap interval over posts), the score distribution (RM judges), the mean length in tokens, ROUGE-1/2/L
   against the reference, and Likert means when a `ratings` export is given;
4. optionally: the over-optimisation curve (RM score and judge win rate against KL over a PPO run's snapshots,
   `ppo_run`), best-of-N win rate against N from a best-of-N run's candidates (`best_of_n_run`), RM accuracy
   against labeler confidence (`rm_eval_runs`), and zero-shot transfer to CNN/DM with the lead-3 baseline
   (`transfer.posts`);
5. writes `<out>/report.json`, the plots as PNG files and a self-contained `<out>/report.html`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir, RunError, atomic_write_json
from rlhflab.core.seed import seed_everything
from rlhflab.data.format import format_query
from rlhflab.data.jsonl import DataError
from rlhflab.data.loaders import load_posts, load_samples
from rlhflab.data.records import Post, Sample
from rlhflab.eval import metrics
from rlhflab.eval.cache import append_rows, read_rows, slug
from rlhflab.eval.judges import JudgeSpec, RMJudge, Text, build_judge
from rlhflab.eval.report import write_html, write_plots
from rlhflab.models.device import autocast, resolve_device
from rlhflab.models.generation import generate, pad_queries, response_logprobs
from rlhflab.models.loading import load_model, load_tokenizer
from rlhflab.models.reward import load_reward_model

log = get_logger(__name__)

SEED_STRIDE = 1_000_003  # a batch's sampling generator is seeded with seed * SEED_STRIDE + its first post's index
NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass
class PolicySpec:
    """One policy to evaluate: exactly one of `model`, `samples` or `builtin`."""

    name: str = ""
    model: str | None = None  # run directory, model directory, snapshot, embedded name, hub id or tiny
    samples: str | None = None  # a samples JSONL (or a run directory holding samples.jsonl, e.g. best-of-n)
    builtin: Literal["lead3", "reference"] | None = None  # first three sentences of the post; the human reference

    def __post_init__(self) -> None:
        if not self.name or not NAME.fullmatch(self.name):
            raise ValueError(f"policy name {self.name!r}: use letters, digits, '.', '_' or '-'")
        given = [k for k in ("model", "samples", "builtin") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"policy {self.name}: give exactly one of model, samples, builtin (got "
                             f"{', '.join(given) or 'none'})")

    @property
    def kind(self) -> str:
        return "model" if self.model else "samples" if self.samples else str(self.builtin)


@dataclass
class TransferConfig:
    """Zero-shot transfer: the TL;DR policies on news articles (`{article}\\n\\nTL;DR:`), with lead-3."""

    posts: str | None = None  # e.g. ../shared/data/cnndm/validation.jsonl.gz; None: no transfer section
    format: str = "auto"
    limit: int | None = 24
    max_query_tokens: int = 512
    policies: list[str] | None = None  # names of `policies` (model or lead3) to run; None: every model policy
    lead3: bool = True  # add the lead-3 baseline
    kl: bool = False  # also estimate KL on the articles


@dataclass
class EvalConfig:
    policies: list[PolicySpec] = field(default_factory=lambda: [
        PolicySpec(name="sft", model="runs/sft/cpu"), PolicySpec(name="ppo", model="runs/ppo/cpu"),
        PolicySpec(name="reference", builtin="reference")])
    posts: str = "../shared/data/tldr/eval.jsonl.gz"  # TL;DR, CNN/DM or posts JSONL (with references)
    format: str = "auto"  # auto | tldr | cnndm | posts
    limit: int | None = None
    skip_bad: bool = False
    max_query_tokens: int = 512
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy (the paper's evaluation setting)
    top_p: float = 1.0
    batch_size: int = 8  # posts per generation batch
    seed: int = 1
    bf16: bool = False
    device: str = "auto"  # auto = the first CUDA GPU when there is one, else the CPU
    allow_partial: bool = False  # use unfinished runs' last checkpoints
    judges: list[JudgeSpec] = field(default_factory=lambda: [JudgeSpec(name="rm", kind="rm", spec="runs/rm/cpu")])
    kl_reference: str | None = "runs/sft/cpu"  # the SFT model KL is measured from; None: no KL
    kl_samples: int = 1  # sampled responses per post for the KL estimate
    kl_temperature: float = 0.7  # the KL is between the temperature-T distributions (PPO's sampling temperature)
    length_tokenizer: str | None = None  # tokens for lengths: a model spec, or "words"; default: kl_reference
    bootstrap: int = 1000  # resamples of posts for the length-controlled CI (0: none)
    ci_level: float = 0.95
    ratings: str | None = None  # a ratings export (`rlhflab label export --ratings`): Likert means per policy
    ppo_run: str | None = None  # a PPO run: KL curve over its snapshots/ (and final model) + its metrics.jsonl
    curve_limit: int | None = None  # posts per curve point (the first ones of `posts`); None: all
    curve_reward: str | None = None  # the RM whose score the curve shows; default: the PPO run's reward
    best_of_n_run: str | None = None  # a best-of-n run with candidates.jsonl (write_all=true): win rate vs N
    rm_eval_runs: list[str] = field(default_factory=list)  # rm-eval runs: RM accuracy vs labeler confidence
    transfer: TransferConfig = field(default_factory=TransferConfig)
    n_examples: int = 20  # posts in the report's table of summaries
    plot: bool = True

    def __post_init__(self) -> None:
        names = [p.name for p in self.policies]
        if not names:
            raise ValueError("policies: give at least one policy")
        if len(set(names)) != len(names):
            raise ValueError(f"policies: names must be unique, got {names}")
        jnames = [j.name for j in self.judges]
        if not jnames:
            raise ValueError("judges: give at least one judge (e.g. kind: rm, spec: an RM run directory)")
        if len(set(jnames)) != len(jnames):
            raise ValueError(f"judges: names must be unique, got {jnames}")
        for key in ("max_new_tokens", "max_query_tokens", "batch_size", "kl_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature < 0 or self.kl_temperature <= 0:
            raise ValueError("temperature must be >= 0 and kl_temperature > 0")
        if not 0 < self.ci_level < 1:
            raise ValueError(f"ci_level must be in (0, 1), got {self.ci_level}")
        unknown = [n for n in self.transfer.policies or [] if n not in names]
        if unknown:
            raise ValueError(f"transfer.policies: {unknown[0]} is not one of policies ({', '.join(names)})")


class _Stopped(Exception):
    """`stop_after` policies were sampled: the test hook that simulates an interruption."""


@dataclass
class PolicyTexts:
    spec: PolicySpec
    texts: list[Text]  # aligned with the posts
    kl: float | None = None
    kl_se: float | None = None
    kl_method: str | None = None
    source: str = ""


def reference_text(post: Post) -> str:
    """The human reference as a judge sees it (CNN/DM highlights are one bullet a line: joined by spaces)."""
    text = post.reference or ""
    return " ".join(text.split()) if post.source == "cnndm" else text.strip()


def model_key(spec: str) -> str:
    """A model spec as an identity: the resolved path when it is one (so `runs/x` and `./runs/x` are one model)."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


class Evaluator:
    """One eval run: settings, the run directory, loaded models (one policy at a time) and judges."""

    def __init__(self, cfg: EvalConfig, run: RunDir, stop_after: int | None = None):
        self.cfg, self.run, self.stop_after = cfg, run, stop_after
        self.device = resolve_device(cfg.device)
        self.sampled = 0
        self._policy: tuple[str, Any, Any] | None = None
        self._ref: tuple[Any, Any] | None = None
        self._rms: dict[str, Any] = {}
        self._len_tok: Any = None
        self.judges = [build_judge(j, run.path / "judges" / j.name, self.load_rm, bf16=cfg.bf16) for j in cfg.judges]

    # ------------------------------------------------------------------------------------------- models

    def load_rm(self, spec: str):
        key = model_key(spec)
        if key not in self._rms:
            self._rms[key] = load_reward_model(spec, allow_partial=self.cfg.allow_partial).to(self.device)
        return self._rms[key]

    def policy(self, spec: str):
        key = model_key(spec)
        if self._policy is None or self._policy[0] != key:
            self._policy = None  # free the previous policy before loading the next
            model, tok = load_model(spec, allow_partial=self.cfg.allow_partial)
            self._policy = (key, model.to(self.device).eval(), tok)
        return self._policy[1], self._policy[2]

    def reference_model(self):
        if self._ref is None:
            model, tok = load_model(str(self.cfg.kl_reference), allow_partial=self.cfg.allow_partial)
            self._ref = (model.to(self.device).eval(), tok)
        return self._ref

    def count_tokens(self, text: str) -> int:
        spec = self.cfg.length_tokenizer or self.cfg.kl_reference or self._first_model() or "words"
        if spec == "words":
            return len(text.split())
        if self._len_tok is None:
            self._len_tok = load_tokenizer(spec, allow_partial=self.cfg.allow_partial)
        return len(self._len_tok.encode(text.strip(), add_special_tokens=False))

    def length_unit(self) -> str:
        spec = self.cfg.length_tokenizer or self.cfg.kl_reference or self._first_model() or "words"
        return "whitespace-separated words" if spec == "words" else f"tokens of the {spec} tokenizer"

    def _first_model(self) -> str | None:
        return next((p.model for p in self.cfg.policies if p.model), None)

    # ------------------------------------------------------------------------------------------- sampling

    def samples(self, spec: str, posts: Sequence[Post], set_name: str, budget: int, name: str) -> dict[str, dict]:
        """post id -> sample row of `spec`'s summaries of `posts`, sampled where not cached yet.

        Batches are fixed slices of `posts`, each seeded from its position; a slice already complete is skipped
        and a partly written one is sampled again whole, only its missing rows appended.
        """
        path = self.run.path / set_name / "samples" / f"{slug(model_key(spec))}.jsonl"
        rows = {r["post_id"]: r for r in read_rows(path)}
        slices = [posts[i : i + self.cfg.batch_size] for i in range(0, len(posts), self.cfg.batch_size)]
        todo = [(i * self.cfg.batch_size, s) for i, s in enumerate(slices) if any(p.id not in rows for p in s)]
        if not todo:
            return rows
        model, tok = self.policy(spec)
        bar = tqdm(total=sum(len(s) for _, s in todo), desc=f"sample {name} ({set_name})", unit="summary",
                   dynamic_ncols=True)
        for start, chunk in todo:
            generator = torch.Generator().manual_seed(self.cfg.seed * SEED_STRIDE + start)
            new = self._sample_batch(model, tok, chunk, name, budget, generator)
            fresh = [r for r in new if r.post_id not in rows]
            append_rows(path, (r.to_dict() for r in fresh))
            rows.update({r.post_id: r.to_dict() for r in fresh})
            bar.update(len(chunk))
        bar.close()
        self.sampled += 1
        if self.stop_after is not None and self.sampled >= self.stop_after:
            raise _Stopped
        return rows

    @torch.no_grad()
    def _sample_batch(self, model, tok, chunk: Sequence[Post], name: str, budget: int,
                      generator: torch.Generator) -> list[Sample]:
        queries = [tok.encode(format_query(p, tok, budget), add_special_tokens=False) for p in chunk]
        ids, mask = pad_queries(tok, queries)
        with autocast(self.device, self.cfg.bf16):
            gen = generate(model, tok, ids, mask, max_new_tokens=self.cfg.max_new_tokens,
                           temperature=self.cfg.temperature, top_p=self.cfg.top_p, generator=generator)
        out = []
        for b, post in enumerate(chunk):
            n = int(gen.response_mask[b].sum())
            eos = bool(gen.eos[b])
            token_ids = gen.response[b, :n].tolist()
            text = tok.decode(token_ids[:-1] if eos else token_ids, skip_special_tokens=False)
            out.append(Sample(post_id=post.id, policy=name, text=text, n_tokens=n - int(eos), eos=eos,
                              extra={"temperature": self.cfg.temperature}))
        return out

    # ------------------------------------------------------------------------------------------- KL

    def kl(self, spec: str, posts: Sequence[Post], set_name: str, budget: int,
           name: str) -> tuple[float | None, float | None, str | None]:
        """(KL in nats per response, its standard error, how it was measured) of a model policy from the SFT
        model, from `kl_samples` samples per post at `kl_temperature`."""
        cfg = self.cfg
        if cfg.kl_reference is None:
            return None, None, None
        if model_key(spec) == model_key(cfg.kl_reference):
            return 0.0, 0.0, "the policy is the KL reference"
        path = self.run.path / set_name / "kl" / f"{slug(model_key(spec))}.jsonl"
        rows = {r["post_id"]: r for r in read_rows(path)}
        slices = [posts[i : i + cfg.batch_size] for i in range(0, len(posts), cfg.batch_size)]
        todo = [(i * cfg.batch_size, s) for i, s in enumerate(slices) if any(p.id not in rows for p in s)]
        if todo:
            model, tok = self.policy(spec)
            ref, ref_tok = self.reference_model()
            if model.config.vocab_size != ref.config.vocab_size or tok.eos_token_id != ref_tok.eos_token_id:
                log.warning("eval: %s and the KL reference %s do not share a vocabulary: no KL", spec,
                            cfg.kl_reference)
                return None, None, "not measured: the policy and the KL reference have different vocabularies"
            bar = tqdm(total=sum(len(s) for _, s in todo), desc=f"kl {name} ({set_name})", unit="post",
                       dynamic_ncols=True)
            for start, chunk in todo:
                generator = torch.Generator().manual_seed(cfg.seed * SEED_STRIDE + start + 7)
                kls, lens = self._kl_batch(model, tok, ref, chunk, budget, generator)
                k = cfg.kl_samples
                fresh = [{"post_id": p.id, "kl": kls[b * k : (b + 1) * k], "n_tokens": lens[b * k : (b + 1) * k]}
                         for b, p in enumerate(chunk) if p.id not in rows]
                append_rows(path, fresh)
                rows.update({r["post_id"]: r for r in fresh})
                bar.update(len(chunk))
            bar.close()
        values = [v for p in posts for v in rows[p.id]["kl"]]
        mean, se = metrics.mean_and_se(values)
        return mean, se, (f"mean over {len(values)} samples (T={cfg.kl_temperature}) of Σ_t log π(y_t) − "
                          f"log π_ref(y_t), logits divided by T; reference {cfg.kl_reference}")

    @torch.no_grad()
    def _kl_batch(self, model, tok, ref, chunk: Sequence[Post], budget: int,
                  generator: torch.Generator) -> tuple[list[float], list[int]]:
        cfg = self.cfg
        queries = [tok.encode(format_query(p, tok, budget), add_special_tokens=False) for p in chunk]
        ids, mask = pad_queries(tok, queries)  # (B, Tq)
        with autocast(self.device, cfg.bf16):
            gen = generate(model, tok, ids, mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.kl_temperature,
                           top_p=1.0, generator=generator, n_per_query=cfg.kl_samples)
        # Both log-probs by the same full forward in float32 (bf16 logits would add ~0.01 nats of noise a token), so
        # a policy identical to the reference gives exactly 0.
        logp = response_logprobs(model, gen.query_response, gen.attention_mask, ids.shape[1],
                                 cfg.kl_temperature)  # (B*k, Tr)
        ref_logp = response_logprobs(ref, gen.query_response, gen.attention_mask, ids.shape[1],
                                     cfg.kl_temperature)  # (B*k, Tr)
        kl = (logp.float() - ref_logp.float()).sum(-1)  # (B*k,) masked positions are 0 in both
        return kl.cpu().tolist(), gen.response_mask.sum(-1).cpu().tolist()

    # ------------------------------------------------------------------------------------------- policies

    def policy_texts(self, pol: PolicySpec, posts: Sequence[Post], set_name: str, budget: int,
                     with_kl: bool) -> PolicyTexts:
        if pol.kind == "model":
            assert pol.model is not None
            rows = self.samples(pol.model, posts, set_name, budget, pol.name)
            texts = [Text(rows[p.id]["text"], bool(rows[p.id]["eos"])) for p in posts]
            kl, se, how = self.kl(pol.model, posts, set_name, budget, pol.name) if with_kl else (None, None, None)
            return PolicyTexts(pol, texts, kl, se, how, source=pol.model)
        if pol.kind == "samples":
            assert pol.samples is not None
            return samples_policy(pol, posts)
        if pol.kind == "lead3":
            return PolicyTexts(pol, [Text(metrics.lead_k(p.text, 3)) for p in posts],
                               source="the first three sentences of the post")
        return PolicyTexts(pol, [Text(reference_text(p)) for p in posts], source="the human reference")

    # ------------------------------------------------------------------------------------------- one post set

    def evaluate_set(self, set_name: str, posts: list[Post], policies: list[PolicySpec], budget: int,
                     with_kl: bool) -> dict[str, Any]:
        refs = [Text(reference_text(p)) for p in posts]
        ref_len = [self.count_tokens(r.text) for r in refs]
        results: dict[str, Any] = {}
        texts: dict[str, PolicyTexts] = {}
        for pol in policies:
            texts[pol.name] = self.policy_texts(pol, posts, set_name, budget, with_kl)
        prefs: dict[str, dict[str, list[float | None]]] = {}
        scores: dict[str, dict[str, list[float]]] = {}
        for judge in self.judges:
            prefs[judge.name], scores[judge.name] = {}, {}
            if isinstance(judge, RMJudge):  # every summary of a post in one group: the query runs once
                everything = [refs] + [pt.texts for pt in texts.values()]
                judge.scores([p for _ in everything for p in posts], [t for ts in everything for t in ts],
                             progress=set_name)
                scores[judge.name]["(reference)"] = judge.scores(posts, refs)
            for name, pt in texts.items():
                prefs[judge.name][name] = judge_pairs(judge, posts, pt.texts, refs)
                if isinstance(judge, RMJudge):
                    scores[judge.name][name] = judge.scores(posts, pt.texts, progress=name)
        lengths = {name: [self.count_tokens(t.text) for t in pt.texts] for name, pt in texts.items()}
        for name, pt in texts.items():
            results[name] = {
                "kind": pt.spec.kind, "source": pt.source, "n_posts": len(posts),
                "mean_tokens": sum(lengths[name]) / len(posts),
                "mean_chars": sum(len(t.text.strip()) for t in pt.texts) / len(posts),
                "eos_rate": sum(t.eos for t in pt.texts) / len(posts),
                "rouge": metrics.rouge([t.text for t in pt.texts], [r.text for r in refs]),
                "kl": pt.kl, "kl_se": pt.kl_se, "kl_method": pt.kl_method,
            }
        judged: dict[str, Any] = {}
        for judge in self.judges:
            per_policy, block = self.aggregate(judge, posts, texts, prefs[judge.name], scores[judge.name], lengths,
                                               ref_len)
            judged[judge.name] = block
            for name, r in per_policy.items():
                results[name].setdefault("by_judge", {})[judge.name] = r
        primary = self.judges[0].name
        for r in results.values():
            p = r["by_judge"][primary]
            r.update({"judge": primary, "win_rate": p["win_rate"], "win_rate_ci": p["win_rate_ci"],
                      "length_controlled_win_rate": p["length_controlled_win_rate"],
                      "length_controlled_win_rate_ci": p["length_controlled_win_rate_ci"]})
        return {"posts": posts, "refs": refs, "texts": texts, "results": results, "judges": judged,
                "reference_mean_tokens": sum(ref_len) / len(posts), "scores": scores, "prefs": prefs}

    def aggregate(self, judge, posts: list[Post], texts: dict[str, PolicyTexts], prefs: dict[str, list],
                  scores: dict[str, list[float]], lengths: dict[str, list[int]],
                  ref_len: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per policy: win rate + Wilson CI, length-controlled win rate + bootstrap CI, score distribution."""
        cfg = self.cfg
        rows_y, rows_x, rows_g, rows_c = [], [], [], []
        for name, pt in texts.items():
            if pt.spec.kind == "reference":
                continue
            for i, p in enumerate(posts):
                if prefs[name][i] is not None:
                    rows_y.append(metrics.win_outcome(prefs[name][i]))
                    rows_x.append(metrics.log_length_ratio(lengths[name][i], ref_len[i]))
                    rows_g.append(name)
                    rows_c.append(p.id)
        fit = metrics.length_controlled_win_rates(rows_y, rows_x, rows_g) if rows_y else None
        cis = metrics.bootstrap_length_controlled(rows_y, rows_x, rows_g, rows_c, n_boot=cfg.bootstrap,
                                                  level=cfg.ci_level, seed=cfg.seed) if rows_y else {}
        out: dict[str, Any] = {}
        for name, pt in texts.items():
            ps = [v for v in prefs[name] if v is not None]
            outcomes = [metrics.win_outcome(v) for v in ps]
            wins = sum(outcomes)
            r: dict[str, Any] = {
                "n": len(ps), "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
                "losses": sum(o == 0.0 for o in outcomes), "win_rate": metrics.win_rate(outcomes),
                "win_rate_ci": _pair(metrics.wilson_interval(wins, len(ps), cfg.ci_level)),
                "mean_preference": sum(ps) / len(ps) if ps else None,
            }
            if pt.spec.kind == "reference":
                r.update(win_rate_ci=[0.5, 0.5], length_controlled_win_rate=0.5,
                         length_controlled_win_rate_ci=[0.5, 0.5],
                         note="the reference itself: a tie by definition")
            else:
                r["length_controlled_win_rate"] = fit.rates.get(name) if fit else None
                r["length_controlled_win_rate_ci"] = _pair(cis.get(name))
            if name in scores:
                s, ref = scores[name], scores["(reference)"]
                r["score"] = metrics.summary_stats(s)
                r["mean_score_margin"] = sum(a - b for a, b in zip(s, ref)) / len(s)
            else:
                r["preference_distribution"] = metrics.summary_stats(ps)
            out[name] = r
        block = {"kind": judge.kind, "spec": judge.spec, "note": judge.note,
                 "length_slope": fit.slope if fit else None, "n_comparisons": len(rows_y)}
        if "(reference)" in scores:
            block["reference_score"] = metrics.summary_stats(scores["(reference)"])
        return out, block

    # ------------------------------------------------------------------------------------------- curves

    def kl_curve(self, posts: list[Post]) -> dict[str, Any] | None:
        cfg = self.cfg
        if not cfg.ppo_run:
            return None
        run = RunDir(cfg.ppo_run)
        if not run.path.exists():
            raise RunError(f"ppo_run={cfg.ppo_run}: not found")
        ppo_cfg = run.read_config().get("config", {})
        sft = cfg.kl_reference or ppo_cfg.get("model")
        reward = cfg.curve_reward or ppo_cfg.get("reward")
        points: list[tuple[int, str]] = [(0, str(sft))]
        snaps = sorted((int(d.name.split("_")[-1]), d) for d in (run.path / "snapshots").glob("update_*")
                       if (d / "config.json").exists())
        final = None
        if run.is_done() and (run.model_dir / "config.json").exists():
            final = int(run.read_done().get("updates", (snaps[-1][0] if snaps else 0) + 1))
        # a snapshot taken at the last update holds the final model's weights: only the final model is evaluated
        points += [(u, str(d)) for u, d in snaps if u != final]
        if final is not None:
            points.append((final, str(run.path)))
        posts = posts[: cfg.curve_limit] if cfg.curve_limit else posts
        proxy = None
        if reward and not str(reward).startswith("python:") and Path(reward).expanduser().exists():
            proxy = next((j for j in self.judges if isinstance(j, RMJudge) and model_key(j.spec) == model_key(reward)),
                         None) or RMJudge(JudgeSpec(name="proxy-rm", kind="rm", spec=str(reward)),
                                          self.run.path / "judges" / "_curve_reward", self.load_rm, bf16=cfg.bf16)
        refs = [Text(reference_text(p)) for p in posts]
        out_points = []
        for update, spec in points:
            rows = self.samples(spec, posts, "main", cfg.max_query_tokens, f"update {update}")
            texts = [Text(rows[p.id]["text"], bool(rows[p.id]["eos"])) for p in posts]
            kl, se, _ = self.kl(spec, posts, "main", cfg.max_query_tokens, f"update {update}")
            point: dict[str, Any] = {"update": update, "model": spec, "kl": kl, "kl_se": se,
                                     "mean_tokens": sum(self.count_tokens(t.text) for t in texts) / len(posts)}
            if proxy is not None:
                point["reward_score"] = sum(proxy.scores(posts, texts)) / len(posts)
            for judge in self.judges:
                outcomes = [metrics.win_outcome(v) for v in judge_pairs(judge, posts, texts, refs) if v is not None]
                point.setdefault("by_judge", {})[judge.name] = {
                    "n": len(outcomes), "win_rate": metrics.win_rate(outcomes),
                    "win_rate_ci": _pair(metrics.wilson_interval(sum(outcomes), len(outcomes), cfg.ci_level))}
            out_points.append(point)
        training = [{"update": r["step"], "kl": r.get("objective/kl"), "score": r.get("objective/score")}
                    for r in run.read_metrics() if "objective/kl" in r]
        return {"ppo_run": cfg.ppo_run, "reward": reward, "n_posts": len(posts), "points": out_points,
                "training": training, "n_snapshots": len(snaps),
                "note": "update 0 is the SFT model; reward_score is the mean score of the RM the PPO run optimised "
                        "(greedy summaries); training is the PPO run's own per-update (KL, score) on its "
                        "sampled rollouts"}

    def best_of_n_curve(self, posts: list[Post]) -> dict[str, Any] | None:
        cfg = self.cfg
        if not cfg.best_of_n_run:
            return None
        path = Path(cfg.best_of_n_run)
        cand_path = path / "candidates.jsonl" if path.is_dir() else path
        if not cand_path.exists():
            raise RunError(f"best_of_n_run={cfg.best_of_n_run}: no candidates.jsonl — run `rlhflab best-of-n` with "
                           "write_all=true")
        groups: dict[str, list[Sample]] = {}
        for s in load_samples(cand_path):
            groups.setdefault(s.post_id, []).append(s)
        by_id = {p.id: p for p in posts}
        ids = [p.id for p in posts if p.id in groups]
        if not ids:
            raise DataError(cand_path, problem=f"has candidates for none of the {len(posts)} eval posts; run "
                                               "best-of-n on the same posts file")
        n = min(len(groups[i]) for i in ids)
        if any(len(groups[i]) != n for i in ids):
            raise DataError(cand_path, problem="posts have different numbers of candidates")
        cands = [sorted(groups[i], key=lambda s: s.index) for i in ids]
        flat_posts = [by_id[i] for i, c in zip(ids, cands) for _ in c]
        flat_texts = [Text(s.text, s.eos) for c in cands for s in c]
        refs = [Text(reference_text(p)) for p in flat_posts]
        ks = sorted({2**j for j in range(n.bit_length()) if 2**j <= n} | {n})
        orders = [metrics.rank_order([float(s.score if s.score is not None else 0.0) for s in c]) for c in cands]
        out: dict[str, Any] = {"run": cfg.best_of_n_run, "n": n, "n_posts": len(ids), "k": ks,
                               "kl": [metrics.best_of_n_kl(k) for k in ks],
                               "mean_reward_score": [
                                   sum(metrics.expected_best_of_k([float(c[i].score or 0.0) for i in o], k)
                                       for c, o in zip(cands, orders)) / len(ids) for k in ks],
                               "mean_tokens": [
                                   sum(metrics.expected_best_of_k([self.count_tokens(c[i].text) for i in o], k)
                                       for c, o in zip(cands, orders)) / len(ids) for k in ks],
                               "by_judge": {},
                               "note": "E[best of k] from the n candidates of each post (no sampling again); "
                                       "KL = log k − (k−1)/k; mean_reward_score is the best-of-n run's own "
                                       "ranking score"}
        for judge in self.judges:
            flat = judge_pairs(judge, flat_posts, flat_texts, refs)
            per_post = [flat[j * n : (j + 1) * n] for j in range(len(ids))]
            usable = [(pp, o) for pp, o in zip(per_post, orders) if all(v is not None for v in pp)]
            rates = [sum(metrics.expected_best_of_k([metrics.win_outcome(pp[i]) for i in o], k) for pp, o in usable)
                     / len(usable) if usable else None for k in ks]
            out["by_judge"][judge.name] = {"n_posts": len(usable), "win_rate": rates}
        return out

    def rm_accuracy(self) -> list[dict[str, Any]]:
        out = []
        for spec in self.cfg.rm_eval_runs:
            path = Path(spec)
            report_path = path / "report.json" if path.is_dir() else path
            if not report_path.exists():
                raise RunError(f"rm_eval_runs: {spec}: no report.json — expected an `rlhflab rm-eval` run")
            rep = json.loads(report_path.read_text())
            if "per_confidence" not in rep:
                raise DataError(report_path, field="per_confidence", problem="missing (not an rm-eval report?)")
            per = {}
            for d, b in sorted(rep["per_confidence"].items(), key=lambda kv: int(kv[0])):
                ci = metrics.wilson_interval(b["accuracy"] * b["n"], b["n"], self.cfg.ci_level) if b["n"] else None
                per[d] = {"n": b["n"], "accuracy": b["accuracy"], "accuracy_ci": _pair(ci),
                          "length_baseline_accuracy": b["length_baseline_accuracy"]}
            out.append({"run": spec, "model": rep.get("model"), "split": rep.get("split"), "n_pairs": rep.get("n_pairs"),
                        "accuracy": rep.get("accuracy"), "length_baseline_accuracy": rep.get("length_baseline_accuracy"),
                        "per_confidence": per})
        return out


# ------------------------------------------------------------------------------------------------ helpers


def judge_pairs(judge, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
    """P(a preferred) per pair; identical summaries are a tie (0.5) without asking the judge."""
    out: list[float | None] = [None] * len(posts)
    ask = []
    for i, (x, y) in enumerate(zip(a, b)):
        if " ".join(x.text.split()) == " ".join(y.text.split()):
            out[i] = 0.5
        else:
            ask.append(i)
    if ask:
        got = judge.prefer([posts[i] for i in ask], [a[i] for i in ask], [b[i] for i in ask])
        for i, v in zip(ask, got):
            out[i] = v
    return out


def samples_policy(pol: PolicySpec, posts: Sequence[Post]) -> PolicyTexts:
    """A policy given as a samples file: the lowest-index summary of each post; best-of-N gets its analytic KL."""
    assert pol.samples is not None
    path = Path(pol.samples)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.exists():
        raise DataError(pol.samples, problem=f"no such samples file (policy {pol.name})")
    best: dict[str, Sample] = {}
    for s in load_samples(path):
        if s.post_id not in best or s.index < best[s.post_id].index:
            best[s.post_id] = s
    missing = [p.id for p in posts if p.id not in best]
    if missing:
        raise DataError(path, problem=f"has no summary for {len(missing)} of the {len(posts)} eval posts (e.g. post "
                                      f"{missing[0]}); sample the same posts file and limit (policy {pol.name})")
    texts = [Text(best[p.id].text, best[p.id].eos) for p in posts]
    ns = {best[p.id].extra.get("n") for p in posts}
    kl = how = None
    if len(ns) == 1 and isinstance(next(iter(ns)), int) and "scores" in best[posts[0].id].extra:
        n = int(next(iter(ns)))  # type: ignore[arg-type]
        kl, how = metrics.best_of_n_kl(n), f"best-of-{n}: the analytic log n − (n−1)/n from its base policy"
    return PolicyTexts(pol, texts, kl, None, how, source=str(path))


def load_eval_posts(source: str, fmt: str, limit: int | None, skip_bad: bool) -> list[Post]:
    posts: list[Post] = []
    seen: set[str] = set()
    for p in load_posts(source, format=fmt, limit=limit, skip_bad=skip_bad):
        if p.id in seen:
            continue
        seen.add(p.id)
        if not (p.reference or "").strip():
            raise DataError(source, problem=f"post {p.id} has no reference summary (evaluation compares every "
                                            "policy against the human reference)")
        posts.append(p)
    if not posts:
        raise DataError(source, problem="no posts to evaluate")
    return posts


def read_likert(path: str, policies: dict[str, PolicyTexts], posts: Sequence[Post]) -> dict[str, Any]:
    """Mean 1–7 ratings per policy and axis from a ratings export, matched on the post id and summary text."""
    from rlhflab.data.jsonl import read_jsonl

    if not Path(path).expanduser().is_file():
        raise DataError(path, problem="no such ratings file (`rlhflab label export --ratings --out FILE`)")
    owners: dict[tuple[str, str], list[str]] = {}
    for name, pt in policies.items():
        for p, t in zip(posts, pt.texts):
            owners.setdefault((p.id, " ".join(t.text.split())), []).append(name)
    sums: dict[str, dict[str, list[float]]] = {}
    n_rows = matched = 0
    for line, row in read_jsonl(path):
        n_rows += 1
        info, summary = row.get("info"), row.get("summary")
        if not isinstance(info, dict) or "id" not in info:
            raise DataError(path, line, "info.id", "missing")
        if not isinstance(summary, dict) or not isinstance(summary.get("text"), str):
            raise DataError(path, line, "summary.text", "missing or not a string")
        axes = summary.get("axes")
        if not isinstance(axes, dict):
            raise DataError(path, line, "summary.axes", "missing or not an object")
        names = owners.get((str(info["id"]), " ".join(summary["text"].split())), [])
        matched += bool(names)
        for axis, value in axes.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 7:
                raise DataError(path, line, f"summary.axes.{axis}", "must be a number from 1 to 7")
            for name in names:
                sums.setdefault(name, {}).setdefault(axis, []).append(float(value))
    return {"file": path, "n_ratings": n_rows, "n_matched": matched,
            "per_policy": {name: {axis: {"mean": sum(v) / len(v), "n": len(v)} for axis, v in axes.items()}
                           for name, axes in sums.items()}}


def _pair(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


def _public(set_result: dict[str, Any], with_fits: bool = True) -> dict[str, Any]:
    """The JSON part of an evaluated set (no texts, no models)."""
    out = {"n_posts": len(set_result["posts"]), "reference_mean_tokens": set_result["reference_mean_tokens"],
           "policies": set_result["results"]}
    return {**out, "judge_fits": set_result["judges"]} if with_fits else out


# ------------------------------------------------------------------------------------------------ the stage


def preflight(cfg: EvalConfig) -> None:
    """Every input path exists: a typo is reported before the run directory is made (a corrected command would
    otherwise be refused as "a different config") and before any sampling."""
    def need(path: str | None, what: str, error: type[Exception] = RunError) -> None:
        if path and not Path(path).expanduser().exists():
            raise error(f"{what}={path}: not found")

    for j in cfg.judges:
        if j.kind == "rm" and not Path(j.spec or "").expanduser().exists():
            raise RunError(f"judge {j.name}: spec={j.spec}: not found — expected an `rlhflab rm` run directory")
        if j.kind == "labels" and not Path(j.spec or "").expanduser().is_file():
            raise DataError(str(j.spec), problem=f"no such file (judge {j.name}: a comparisons export, "
                                                 "`rlhflab label export --out FILE`)")
    for p in cfg.policies:
        need(p.samples, f"policy {p.name}: samples")
        looks_local = p.model and (p.model.startswith((".", "/", "~")) or p.model.count("/") > 1)
        if looks_local and not Path(str(p.model)).expanduser().exists():  # (one slash may be a hub id)
            raise RunError(f"policy {p.name}: model={p.model}: no such file or directory")
    if cfg.ratings and not Path(cfg.ratings).expanduser().is_file():
        raise DataError(cfg.ratings, problem="no such ratings file (`rlhflab label export --ratings --out FILE`)")
    need(cfg.ppo_run, "ppo_run")
    need(cfg.best_of_n_run, "best_of_n_run")
    for r in cfg.rm_eval_runs:
        need(r, "rm_eval_runs")



def evaluate(cfg: EvalConfig, out: str, stop_after: int | None = None) -> dict:
    """Run (or resume) an evaluation into `out`. `stop_after` (model policies sampled) simulates an interruption."""
    run = RunDir(out)
    if run.is_done():
        return run.read_done()
    preflight(cfg)
    posts = load_eval_posts(cfg.posts, cfg.format, cfg.limit, cfg.skip_bad)
    run.start("eval", cfg)
    seed_everything(cfg.seed)
    t_start = time.time()
    ev = Evaluator(cfg, run, stop_after=stop_after)
    log.info("eval: %d policies on %d posts from %s; judges %s", len(cfg.policies), len(posts), cfg.posts,
             ", ".join(j.name for j in cfg.judges))
    try:
        main = ev.evaluate_set("main", posts, cfg.policies, cfg.max_query_tokens, with_kl=True)
        transfer = None
        if cfg.transfer.posts:
            tc = cfg.transfer
            t_posts = load_eval_posts(tc.posts, tc.format, tc.limit, cfg.skip_bad)
            chosen = [p for p in cfg.policies if (p.name in tc.policies if tc.policies is not None
                                                  else p.kind == "model")]
            bad = [p.name for p in chosen if p.kind not in ("model", "lead3")]
            if bad:
                raise RunError(f"transfer.policies: {bad[0]} is a {next(p.kind for p in chosen if p.name == bad[0])}"
                               " policy; only model and lead3 policies can be run on other posts")
            if tc.lead3 and not any(p.kind == "lead3" for p in chosen):
                chosen.append(PolicySpec(name="lead3", builtin="lead3"))
            if not any(p.kind == "reference" for p in chosen):
                chosen.append(PolicySpec(name="reference", builtin="reference"))
            transfer = ev.evaluate_set("transfer", t_posts, chosen, tc.max_query_tokens, with_kl=tc.kl)
        curve = ev.kl_curve(posts)
        bon = ev.best_of_n_curve(posts)
    except _Stopped:
        return {"stopped_after": ev.sampled}
    rm_acc = ev.rm_accuracy()
    likert = read_likert(cfg.ratings, main["texts"], posts) if cfg.ratings else None
    if likert:
        for name, axes in likert["per_policy"].items():
            main["results"][name]["likert"] = axes

    report: dict[str, Any] = {
        "posts": {"file": cfg.posts, "n": len(posts), "source": posts[0].source},
        "primary_judge": cfg.judges[0].name,
        "judges": [{"name": j.name, "kind": j.kind, "spec": j.spec or j.base_url, "note": j.note,
                    **{k: v for k, v in main["judges"][j.name].items() if k not in ("kind", "spec", "note")}}
                   for j in cfg.judges],
        "definitions": {
            "win_rate": "fraction of posts where the judge prefers the policy's summary to the human reference; "
                        "a tie (identical summaries, equal scores) counts half",
            "win_rate_ci": f"{cfg.ci_level:.0%} Wilson score interval",
            "length_controlled_win_rate": "σ(a_policy) of the logistic regression P(policy preferred) = "
                                          "σ(a_policy + b·log(len policy / len reference)), fitted jointly over the "
                                          "policies (shared slope b), i.e. the predicted win rate at equal length",
            "length_controlled_win_rate_ci": f"{cfg.ci_level:.0%} percentile bootstrap over posts "
                                             f"({cfg.bootstrap} resamples)",
            "length_unit": ev.length_unit(),
            "kl": "KL(policy ‖ SFT) in nats per response, estimated from the policy's own samples",
            "rouge": "mean ROUGE-1/2/L F1 (0–1) against the reference, rouge-score with Porter stemming",
            "sampling": "greedy" if cfg.temperature == 0 else f"temperature {cfg.temperature}",
        },
        "settings": {"max_query_tokens": cfg.max_query_tokens, "max_new_tokens": cfg.max_new_tokens,
                     "temperature": cfg.temperature, "kl_reference": cfg.kl_reference,
                     "kl_samples": cfg.kl_samples, "kl_temperature": cfg.kl_temperature},
        **_public(main, with_fits=False),
        "likert": likert,
        "kl_curve": curve,
        "best_of_n": bon,
        "rm_accuracy_vs_confidence": rm_acc or None,
        "transfer": ({"posts": {"file": cfg.transfer.posts, "n": len(transfer["posts"]),
                                "max_query_tokens": cfg.transfer.max_query_tokens}, **_public(transfer)}
                     if transfer else None),
    }
    report["plots"] = write_plots(run.path, report, main["scores"]) if cfg.plot else {}
    atomic_write_json(run.path / "report.json", report)
    write_html(run.path / "report.html", report, run.path, main, transfer, cfg.n_examples)
    summary = {"stage": "eval", "wall_s": time.time() - t_start, "report": str(run.path / "report.json"),
               "html": str(run.path / "report.html"), "n_posts": len(posts), "judge": cfg.judges[0].name,
               "win_rate": {k: v["win_rate"] for k, v in main["results"].items()},
               "length_controlled_win_rate": {k: v["length_controlled_win_rate"] for k, v in main["results"].items()},
               "mean_tokens": {k: v["mean_tokens"] for k, v in main["results"].items()}}
    run.write_done(summary)
    for name, r in main["results"].items():
        log.info("eval: %-12s win %s  length-controlled %s  %5.1f tokens  KL %s", name,
                 _fmt(r["win_rate"]), _fmt(r["length_controlled_win_rate"]), r["mean_tokens"], _fmt(r["kl"]))
    return summary


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


__all__ = ["EvalConfig", "PolicySpec", "TransferConfig", "evaluate", "judge_pairs"]
