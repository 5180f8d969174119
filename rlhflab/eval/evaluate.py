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

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhflab.core.config import setting
from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir, RunError, atomic_write_json
from rlhflab.core.seed import seed_everything
from rlhflab.data.jsonl import DataError
from rlhflab.data.format import format_queries
from rlhflab.data.loaders import load_posts, load_samples
from rlhflab.data.preflight import check_files, labels_check, posts_check, samples_check
from rlhflab.data.records import Post, Sample
from rlhflab.eval import metrics
from rlhflab.eval.curves import best_of_n_curve, kl_curve, rm_accuracy
from rlhflab.eval.judges import JudgeSpec, Text, build_judge
from rlhflab.eval.judging import (REFERENCE_KIND, JudgeSummary, Verdicts, judge_pairs, judge_set, length_control,
                                  pareto_view, references, summarise_judge)
from rlhflab.eval.models import ModelCache, length_unit
from rlhflab.eval.report import write_html, write_plots
from rlhflab.eval.sampling import EvalRun, Interruption, KLEstimate, policy_kl, policy_samples
from rlhflab.models.device import Bf16, resolve_device
from rlhflab.models.loading import load_tokenizer

log = get_logger(__name__)

NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass
class PolicySpec:
    """One policy to evaluate: exactly one of `model`, `samples` or `builtin`."""

    name: str = setting("", "the policy's name in the report (unique)")
    model: str | None = setting(None, "run directory, model directory, snapshot, embedded name, hub id or tiny")
    samples: str | None = setting(None, "a samples JSONL (or a run directory holding samples.jsonl, e.g. best-of-n)")
    builtin: Literal["lead3", "reference"] | None = setting(
        None,
        "lead3: the post's first three sentences; reference: the human reference summary")

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

    posts: str | None = setting(None, "e.g. ../shared/data/cnndm/validation.jsonl.gz; None: no transfer section")
    format: str = setting("auto", "format of the articles file: auto | tldr | cnndm | posts")
    limit: int | None = setting(24, "articles to use (None: all)")
    max_query_tokens: int = setting(512, "token budget of a query (the article is cut to fit)")
    policies: list[str] | None = setting(None, "names of `policies` (model or lead3) to run; None: every model policy")
    lead3: bool = setting(True, "add the lead-3 baseline")
    kl: bool = setting(False, "also estimate KL on the articles")


@dataclass
class EvalConfig:
    policies: list[PolicySpec] = setting(
        default_factory=lambda: [PolicySpec(name="sft", model="runs/sft/cpu"),
                                 PolicySpec(name="ppo", model="runs/ppo/cpu"),
                                 PolicySpec(name="reference", builtin="reference")],
        help="the policies to evaluate (a model, a samples file, or lead3 / the reference)")
    posts: str = setting("../shared/data/tldr/eval.jsonl.gz", "TL;DR, CNN/DM or posts JSONL (with references)")
    format: str = setting("auto", "format of the posts file: auto | tldr | cnndm | posts")
    limit: int | None = setting(None, "use only the first N posts (None: all)")
    skip_bad: bool = setting(False, "skip malformed posts with a count instead of stopping at the first")
    max_query_tokens: int = setting(512, "token budget of a query (the post is cut at a newline to fit)")
    max_new_tokens: int = setting(48, "length limit of a summary, in tokens")
    temperature: float = setting(0.0, "0 = greedy (the paper's evaluation setting)")
    top_p: float = setting(1.0, "nucleus sampling when temperature > 0 (1: off)")
    batch_size: int = setting(8, "posts per generation batch")
    seed: int = setting(1, "random seed of sampling")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    allow_partial: bool = setting(False, "use unfinished runs' last checkpoints")
    judges: list[JudgeSpec] = setting(
        default_factory=lambda: [JudgeSpec(name="rm", kind="rm", spec="runs/rm/cpu")],
        help="who compares each summary with the reference (the first is the primary judge)")
    kl_reference: str | None = setting("runs/sft/cpu", "the SFT model KL is measured from; None: no KL")
    kl_samples: int = setting(1, "sampled responses per post for the KL estimate")
    kl_temperature: float = setting(
        0.7,
        "the KL is between the temperature-T distributions (PPO's sampling temperature)")
    length_tokenizer: str | None = setting(
        None,
        "tokens for lengths: a model spec, or \"words\"; default: kl_reference")
    bootstrap: int = setting(1000, "resamples of posts for the length-controlled CI (0: none)")
    ci_level: float = setting(0.95, "level of every confidence interval in the report")
    ratings: str | None = setting(None, "a ratings export (`rlhflab label export --ratings`): Likert means per policy")
    ppo_run: str | None = setting(None, "a PPO run: KL curve over its snapshots/ (and final model) + its metrics.jsonl")
    curve_limit: int | None = setting(None, "posts per curve point (the first ones of `posts`); None: all")
    curve_reward: str | None = setting(None, "the RM whose score the curve shows; default: the PPO run's reward")
    best_of_n_run: str | None = setting(None, "a best-of-n run with candidates.jsonl (write_all=true): win rate vs N")
    rm_eval_runs: list[str] = setting(default_factory=list, help="rm-eval runs: RM accuracy vs labeler confidence")
    transfer: TransferConfig = setting(default_factory=TransferConfig, help="zero-shot transfer to news articles")
    n_examples: int = setting(20, "posts in the report's table of summaries")
    plot: bool = setting(True, "write the PNG plots and their report.html sections")

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


@dataclass
class PolicyTexts:
    spec: PolicySpec
    texts: list[Text]  # aligned with the posts
    kl: KLEstimate = KLEstimate(None, None, None)
    source: str = ""


@dataclass
class SetResult:
    """Every policy on one post set, judged by every judge."""

    posts: list[Post]
    refs: list[Text]
    texts: dict[str, PolicyTexts]  # policy -> its summaries
    verdicts: dict[str, Verdicts]  # judge -> its verdicts
    policies: dict[str, dict[str, Any]]  # policy -> the report's numbers
    judge_fits: dict[str, dict[str, Any]]  # judge -> its length slope, reference score, ...
    reference_mean_tokens: float

    def report_json(self, with_fits: bool = True) -> dict[str, Any]:
        """The set's part of report.json (no texts, no models)."""
        out = {"n_posts": len(self.posts), "reference_mean_tokens": self.reference_mean_tokens,
               "policies": self.policies}
        return {**out, "judge_fits": self.judge_fits} if with_fits else out

    def score_table(self) -> dict[str, dict[str, list[float]]]:
        """judge -> policy -> scores, the reference's under "(reference)": the form `rlhflab.eval.report` plots."""
        return {name: {"(reference)": v.reference_scores or [], **v.scores} if v.scores is not None else {}
                for name, v in self.verdicts.items()}

    def for_report(self) -> dict[str, Any]:
        """What `report.write_html` shows of the set: the posts, references, summaries and RM scores."""
        return {"posts": self.posts, "refs": self.refs, "texts": self.texts, "scores": self.score_table()}


def length_spec(cfg: EvalConfig) -> str:
    """The tokenizer lengths are counted in: `length_tokenizer`, else the KL reference's, else the first model
    policy's; "words" without any."""
    first_model = next((p.model for p in cfg.policies if p.model), None)
    return cfg.length_tokenizer or cfg.kl_reference or first_model or "words"


def open_eval(cfg: EvalConfig, run_path: Path, stop_after: int | None) -> EvalRun:
    models = ModelCache(resolve_device(cfg.device), cfg.allow_partial, length_spec(cfg))
    judges = [build_judge(j, run_path / "judges" / j.name, models.reward_model, bf16=cfg.bf16) for j in cfg.judges]
    return EvalRun(cfg, run_path, models, judges, Interruption(stop_after))


# ------------------------------------------------------------------------------------------------ one post set


def policy_texts(ev: EvalRun, pol: PolicySpec, posts: Sequence[Post], set_name: str, budget: int,
                 with_kl: bool) -> PolicyTexts | None:
    """The policy's summary of each post; None: the eval was interrupted while sampling them."""
    if pol.kind == "model":
        assert pol.model is not None
        rows = policy_samples(ev, pol.model, posts, set_name, budget, pol.name)
        if ev.interruption.reached:
            return None
        texts = [Text(rows[p.id]["text"], bool(rows[p.id]["eos"])) for p in posts]
        kl = policy_kl(ev, pol.model, posts, set_name, budget, pol.name) if with_kl else KLEstimate(None, None, None)
        return PolicyTexts(pol, texts, kl, source=pol.model)
    if pol.kind == "samples":
        return samples_policy(pol, posts)
    if pol.kind == "lead3":
        return PolicyTexts(pol, [Text(metrics.lead_k(p.text, 3)) for p in posts],
                           source="the first three sentences of the post")
    return PolicyTexts(pol, references(posts), source="the human reference")


def policy_numbers(pt: PolicyTexts, refs: list[Text], lengths: list[int]) -> dict[str, Any]:
    """A policy's numbers that need no judge: lengths, EOS rate, ROUGE against the reference, KL."""
    n = len(refs)
    return {"kind": pt.spec.kind, "source": pt.source, "n_posts": n, "mean_tokens": sum(lengths) / n,
            "mean_chars": sum(len(t.text.strip()) for t in pt.texts) / n,
            "eos_rate": sum(t.eos for t in pt.texts) / n,
            "rouge": metrics.rouge([t.text for t in pt.texts], [r.text for r in refs]),
            "kl": pt.kl.kl, "kl_se": pt.kl.se, "kl_method": pt.kl.method}


def judge_policies(ev: EvalRun, set_name: str, posts: list[Post], refs: list[Text], texts: dict[str, PolicyTexts],
                   lengths: dict[str, list[int]], ref_len: list[int]) -> tuple[dict[str, Verdicts],
                                                                             dict[str, JudgeSummary]]:
    cfg = ev.cfg
    kinds = {name: pt.spec.kind for name, pt in texts.items()}
    verdicts = {j.name: judge_set(j, posts, refs, {n: pt.texts for n, pt in texts.items()}, progress=set_name)
                for j in ev.judges}
    summaries = {}
    for judge in ev.judges:
        lc = length_control(verdicts[judge.name], kinds, lengths, ref_len, posts, cfg.bootstrap, cfg.ci_level,
                            cfg.seed)
        summaries[judge.name] = summarise_judge(judge, verdicts[judge.name], kinds, lc, cfg.ci_level)
    return verdicts, summaries


def evaluate_set(ev: EvalRun, set_name: str, posts: list[Post], policies: list[PolicySpec], budget: int,
                 with_kl: bool) -> SetResult | None:
    """Sample (or read), measure and judge every policy on `posts`; None: interrupted while sampling."""
    refs = references(posts)
    ref_len = [ev.models.count_tokens(r.text) for r in refs]
    texts: dict[str, PolicyTexts] = {}
    for pol in policies:
        pt = policy_texts(ev, pol, posts, set_name, budget, with_kl)
        if pt is None:
            return None
        texts[pol.name] = pt
    lengths = {name: [ev.models.count_tokens(t.text) for t in pt.texts] for name, pt in texts.items()}
    verdicts, summaries = judge_policies(ev, set_name, posts, refs, texts, lengths, ref_len)
    results = {name: policy_numbers(pt, refs, lengths[name]) for name, pt in texts.items()}
    for name, r in results.items():
        r["by_judge"] = {j: s.per_policy[name] for j, s in summaries.items()}
        primary = r["by_judge"][ev.judges[0].name]
        r.update({"judge": ev.judges[0].name, "win_rate": primary["win_rate"], "win_rate_ci": primary["win_rate_ci"],
                  "length_controlled_win_rate": primary["length_controlled_win_rate"],
                  "length_controlled_win_rate_ci": primary["length_controlled_win_rate_ci"]})
    return SetResult(posts, refs, texts, verdicts, results, {j: s.fit for j, s in summaries.items()},
                     sum(ref_len) / len(posts))


def transfer_policies(cfg: EvalConfig) -> list[PolicySpec]:
    """The policies run on the transfer posts: the chosen model (and lead-3) policies, lead-3, the reference."""
    tc = cfg.transfer
    chosen = [p for p in cfg.policies if (p.name in tc.policies if tc.policies is not None else p.kind == "model")]
    bad = [p for p in chosen if p.kind not in ("model", "lead3")]
    if bad:
        raise RunError(f"transfer.policies: {bad[0].name} is a {bad[0].kind} policy; only model and lead3 policies "
                       "can be run on other posts")
    if tc.lead3 and not any(p.kind == "lead3" for p in chosen):
        chosen.append(PolicySpec(name="lead3", builtin="lead3"))
    if not any(p.kind == REFERENCE_KIND for p in chosen):
        chosen.append(PolicySpec(name="reference", builtin="reference"))
    return chosen


# ------------------------------------------------------------------------------------------------ inputs


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
    return PolicyTexts(pol, texts, KLEstimate(kl, None, how), source=str(path))


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


def fitting_posts(posts: list[Post], model_specs: Sequence[str | None], budget: int, source: str) -> list[Post]:
    """The posts whose query fits `budget` under every model policy's tokenizer, formatted once up front: one that
    cannot fit even cut is left out with a count, before any sampling (not an error halfway through)."""
    kept = posts
    for spec in dict.fromkeys(s for s in model_specs if s):
        kept, _, _ = format_queries(kept, load_tokenizer(str(spec), allow_partial=True), budget)
    if len(kept) < len(posts):
        log.warning("%s: %d posts do not fit max_query_tokens=%d even cut, left out", source, len(posts) - len(kept),
                    budget)
    if not kept:
        raise DataError(source, problem=f"no post fits max_query_tokens={budget}")
    return kept


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


def preflight(cfg: EvalConfig) -> None:
    """Every input path exists: a typo is reported before the run directory is made (a corrected command would
    otherwise be refused as "a different config") and before any sampling."""
    def need(path: str | None, what: str, error: type[Exception] = RunError) -> None:
        if path and not Path(path).expanduser().exists():
            raise error(f"{what}={path}: not found")

    checks = [posts_check("posts", cfg.posts, cfg.format),
              posts_check("transfer.posts", cfg.transfer.posts, cfg.transfer.format)]
    checks += [labels_check(f"judges[{i}].spec", j.spec) for i, j in enumerate(cfg.judges) if j.kind == "labels"]
    checks += [samples_check(f"policies[{i}].samples", p.samples) for i, p in enumerate(cfg.policies) if p.samples]
    check_files(checks)  # every data file parses (its first rows), before any model loads
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




# ------------------------------------------------------------------------------------------------ the report


def definitions(cfg: EvalConfig) -> dict[str, str]:
    return {
        "win_rate": "fraction of posts where the judge prefers the policy's summary to the human reference; "
                    "a tie (identical summaries, equal scores) counts half",
        "win_rate_ci": f"{cfg.ci_level:.0%} Wilson score interval",
        "length_controlled_win_rate": "σ(a_policy) of the logistic regression P(policy preferred) = "
                                      "σ(a_policy + b·log(len policy / len reference)), fitted jointly over the "
                                      "policies (shared slope b), i.e. the predicted win rate at equal length",
        "length_controlled_win_rate_ci": f"{cfg.ci_level:.0%} percentile bootstrap over posts "
                                         f"({cfg.bootstrap} resamples)",
        "length_unit": length_unit(length_spec(cfg)),
        "kl": "KL(policy ‖ SFT) in nats per response, estimated from the policy's own samples",
        "rouge": "mean ROUGE-1/2/L F1 (0–1) against the reference, rouge-score with Porter stemming",
        "sampling": "greedy" if cfg.temperature == 0 else f"temperature {cfg.temperature}",
    }


def build_report(cfg: EvalConfig, posts: list[Post], main: SetResult, transfer: SetResult | None,
                 sections: dict[str, Any]) -> dict[str, Any]:
    """report.json; `sections`: likert, kl_curve, best_of_n and rm_accuracy_vs_confidence."""
    return {
        "posts": {"file": cfg.posts, "n": len(posts), "source": posts[0].source},
        "primary_judge": cfg.judges[0].name,
        "judges": [{"name": j.name, "kind": j.kind, "spec": j.spec or j.base_url, "note": j.note,
                    **{k: v for k, v in main.judge_fits[j.name].items() if k not in ("kind", "spec", "note")}}
                   for j in cfg.judges],
        "definitions": definitions(cfg),
        "settings": {"max_query_tokens": cfg.max_query_tokens, "max_new_tokens": cfg.max_new_tokens,
                     "temperature": cfg.temperature, "kl_reference": cfg.kl_reference,
                     "kl_samples": cfg.kl_samples, "kl_temperature": cfg.kl_temperature, "ci_level": cfg.ci_level},
        **main.report_json(with_fits=False),
        "pareto": {j.name: pareto_view(main.policies, j.name) for j in cfg.judges},
        **sections,
        "transfer": ({"posts": {"file": cfg.transfer.posts, "n": len(transfer.posts),
                                "max_query_tokens": cfg.transfer.max_query_tokens}, **transfer.report_json()}
                     if transfer else None),
    }


def done_summary(cfg: EvalConfig, run: RunDir, main: SetResult, wall_s: float) -> dict[str, Any]:
    """DONE.json: the primary judge's numbers per policy, each with its interval, and which policies differ."""
    pol, judge = main.policies, cfg.judges[0].name
    by_judge = {k: v["by_judge"][judge] for k, v in pol.items()}
    return {"stage": "eval", "wall_s": wall_s, "report": str(run.path / "report.json"),
            "html": str(run.path / "report.html"), "n_posts": len(main.posts), "judge": judge,
            "ci_level": cfg.ci_level,
            "win_rate": {k: v["win_rate"] for k, v in pol.items()},
            "win_rate_ci": {k: v["win_rate_ci"] for k, v in pol.items()},
            "length_controlled_win_rate": {k: v["length_controlled_win_rate"] for k, v in pol.items()},
            "length_controlled_win_rate_ci": {k: v["length_controlled_win_rate_ci"] for k, v in pol.items()},
            "mean_score": {k: (j.get("score") or {}).get("mean") for k, j in by_judge.items()},
            "mean_score_ci": {k: j.get("mean_score_ci") for k, j in by_judge.items()},
            "mean_tokens": {k: v["mean_tokens"] for k, v in pol.items()},
            "differences": main.judge_fits[judge]["differences"]}


# ------------------------------------------------------------------------------------------------ the stage


def evaluate(cfg: EvalConfig, out: str, stop_after: int | None = None) -> dict:
    """Run (or resume) an evaluation into `out`. `stop_after` (model policies sampled) simulates an interruption."""
    run = RunDir(out)
    if run.is_done():
        return run.read_done()
    preflight(cfg)
    model_specs = [p.model for p in cfg.policies if p.model] + [cfg.kl_reference]
    posts = fitting_posts(load_eval_posts(cfg.posts, cfg.format, cfg.limit, cfg.skip_bad), model_specs,
                          cfg.max_query_tokens, cfg.posts)
    run.start("eval", cfg)
    seed_everything(cfg.seed)
    t_start = time.time()
    ev = open_eval(cfg, run.path, stop_after)
    log.info("eval: %d policies on %d posts from %s; judges %s", len(cfg.policies), len(posts), cfg.posts,
             ", ".join(j.name for j in cfg.judges))

    # (1)-(3) every policy's summaries (sampled or cached), KL from the SFT model, every judge's verdicts
    main = evaluate_set(ev, "main", posts, cfg.policies, cfg.max_query_tokens, with_kl=True)
    if main is None:
        return stopped(ev)
    # (4) zero-shot transfer to other posts (news), with lead-3
    transfer = None
    if cfg.transfer.posts:
        tc = cfg.transfer
        t_posts = fitting_posts(load_eval_posts(tc.posts, tc.format, tc.limit, cfg.skip_bad), model_specs,
                                tc.max_query_tokens, tc.posts)
        transfer = evaluate_set(ev, "transfer", t_posts, transfer_policies(cfg), tc.max_query_tokens, with_kl=tc.kl)
        if transfer is None:
            return stopped(ev)
    # (5) the curves: over-optimisation, best-of-N, RM accuracy; Likert ratings
    curve = kl_curve(ev, posts)
    if ev.interruption.reached:
        return stopped(ev)
    bon = best_of_n_curve(ev, posts)
    rm_acc = rm_accuracy(cfg.rm_eval_runs, cfg.ci_level)
    likert = read_likert(cfg.ratings, main.texts, posts) if cfg.ratings else None
    for name, axes in (likert or {}).get("per_policy", {}).items():
        main.policies[name]["likert"] = axes

    # (6) report.json, the plots, report.html, DONE.json
    report = build_report(cfg, posts, main, transfer, {"likert": likert, "kl_curve": curve, "best_of_n": bon,
                                                       "rm_accuracy_vs_confidence": rm_acc or None})
    report["plots"] = write_plots(run.path, report, main.score_table()) if cfg.plot else {}
    atomic_write_json(run.path / "report.json", report)
    write_html(run.path / "report.html", report, run.path, main.for_report(),
               transfer.for_report() if transfer else None, cfg.n_examples)
    summary = done_summary(cfg, run, main, time.time() - t_start)
    run.write_done(summary)
    for name, r in main.policies.items():
        log.info("eval: %-12s win %s  length-controlled %s  %5.1f tokens  KL %s", name,
                 _fmt(r["win_rate"]), _fmt(r["length_controlled_win_rate"]), r["mean_tokens"], _fmt(r["kl"]))
    return summary


def stopped(ev: EvalRun) -> dict[str, int]:
    """What an interrupted eval returns (`stop_after`): how many model policies it sampled."""
    return {"stopped_after": ev.interruption.sampled}


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


__all__ = ["EvalConfig", "PolicySpec", "TransferConfig", "evaluate", "judge_pairs"]
