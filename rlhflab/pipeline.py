"""`rlhflab run PIPELINE.yaml --out DIR`: the whole loop, from posts to report, one stage at a time.

    sft → [gold RM] → round 1: sample → pairs → labels → rm → ppo → round 2 ... → eval

Every stage is the ordinary `rlhflab <stage>` command, run as a child process into its own run directory under
DIR, with a config file the pipeline writes to DIR/configs/ (the stage's YAML plus the paths that join it to the
others). Stages hand over only through files, so any of them can be re-run by hand with the command the pipeline
prints. A stage whose run directory has DONE.json is skipped; an interrupted one resumes (every stage resumes
from its own state/); so after a crash, the same command picks up where it stopped.

Rounds follow the paper's batches: round k samples pairs of summaries from the current policy (the SFT model in
round 1, round k−1's PPO policy after that), collects comparisons of them, trains the RM on every comparison so
far, and continues PPO from the last policy (the reference stays the SFT model, β carries over).

Ziegler et al. (2019)'s tasks (`configs/pipeline/sentiment.yaml`): no SFT (`sft.skip`, `base_model` is the
policy's start and the reference), best-of-N tasks (`tasks: best_of_n`: a labeler picks the best of
`samples_per_task` continuations), a style judge as the simulated labeler, and the final stage `rlhflab style-eval`
(`evaluation: continuations`). `collection: online` is the paper's online mode: every round's labels come from the
current policy and the RM continues from the previous round's weights on them alone (`rm init_from`), so
the RM is updated every round's PPO updates; offline (the default) retrains the RM from the start on every label
so far.

Labels come from an imported file (one per round; nothing is sampled then), the labelling app (the pipeline
creates the round's project, stops, and goes on once the tasks are labelled), or a simulated labeler (`rlhflab simulate-labels`) whose judge
is by default a "gold" RM trained on real human comparisons — which is then also the report's first judge, one
the PPO policy never trained against.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhflab.core.config import parse_override, read_yaml_mapping, setting
from rlhflab.core.log import get_logger
from rlhflab.core.rundir import atomic_write_text
from rlhflab.data.jsonl import DataError, is_gzip, write_jsonl
from rlhflab.data.loaders import load_posts, load_samples
from rlhflab.data.preflight import check_files, labels_check, posts_check
from rlhflab.data.pairs import best_of_n_tasks, pairs_in_order, samples_by_post
from rlhflab.data.records import Post, Sample

log = get_logger(__name__)

TRAINING = ("sft", "rm", "ppo")  # the stages that take report_to
WAITING_FOR_LABELS = 3  # exit code: the labelling app has not finished the round's tasks yet


@dataclass
class StageSpec:
    config: str | None = setting(None, "the stage's YAML (e.g. configs/rm/smoke.yaml); None: the stage's defaults")
    overrides: list[str] = setting(default_factory=list, help="key=value for the stage, applied after the pipeline's")


@dataclass
class FirstStageSpec(StageSpec):
    """sft and gold run once, before the rounds: they can be left out, or taken from a run that exists."""

    skip: bool = setting(
        False, "gold: no gold RM (labels.simulate must name a judge); sft: no SFT (base_model instead)")
    from_run: str | None = setting(
        None, "a finished run of this stage (e.g. runs/sft/cpu) to use instead of training one: its DONE.json and "
              "config.yaml must say it is that stage")


@dataclass
class LabelsSpec:
    source: Literal["simulated", "import", "app"] = setting(
        "simulated",
        "where each round's labels come from: simulate-labels, imported files, or the labelling app")
    simulate: StageSpec = setting(default_factory=StageSpec, help="simulated: `rlhflab simulate-labels` settings")
    files: list[str] = setting(default_factory=list, help="import: round k's comparisons file is files[k-1]")
    db: str = setting("sqlite:///label.db", "app: the labelling app's database URL")
    project: str = setting("rlhflab", "app: round k's tasks go to project <project>-round<k>")
    labels_per_task: int = setting(1, "app: labels collected per pair before the round goes on")


@dataclass
class PipelineConfig:
    rounds: int = setting(1, "rounds of sample -> labels -> rm -> ppo (the paper's batches)")
    launcher: list[str] = setting(default_factory=list, help="prefix for sft/rm/ppo, e.g. [accelerate, launch, ...]")
    sft: FirstStageSpec = setting(
        default_factory=lambda: FirstStageSpec("configs/sft/cpu.yaml"),
        help="the SFT stage (its YAML and overrides, or a finished run: from_run)")
    gold: FirstStageSpec = setting(
        default_factory=lambda: FirstStageSpec("configs/rm/cpu.yaml"),
        help="simulated labels only: an RM on real human comparisons, the labeler's judge and the report's first judge")
    sample: StageSpec = setting(default_factory=lambda: StageSpec("configs/sample/cpu.yaml"),
                                help="each round's sampling stage (new posts each round)")
    pairs_per_post: int = setting(1, "pairs formed from each post's samples (sample.n must be >= 2 × this)")
    tasks: Literal["pairs", "best_of_n"] = setting(
        "pairs",
        "what a labeler answers: pairs (which of two summaries, the paper's) or best_of_n (the best of "
        "samples_per_task continuations, Ziegler et al.'s)")
    samples_per_task: int = setting(4, "best_of_n: continuations per task (sample.n must be a multiple of it)")
    collection: Literal["offline", "online"] = setting(
        "offline",
        "offline: each round's RM trains from the start on every label so far; online: it continues from the last "
        "round's RM on the round's new labels (Ziegler et al.'s online data collection)")
    base_model: str | None = setting(None, "with sft.skip: the policy's start and the reference (Ziegler: no SFT)")
    evaluation: Literal["summaries", "continuations"] = setting(
        "summaries",
        "the final stage: `rlhflab eval` (summaries against references) or `rlhflab style-eval` (continuations "
        "scored by a style judge)")
    labels: LabelsSpec = setting(default_factory=LabelsSpec, help="where each round's comparison labels come from")
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = setting(
        "none", "every training stage's (sft, gold, rm, ppo) report_to; a stage's own overrides still win")
    rm: StageSpec = setting(
        default_factory=lambda: StageSpec("configs/rm/cpu.yaml"),
        help="each round's reward model stage")
    ppo: StageSpec = setting(default_factory=lambda: StageSpec("configs/ppo/cpu.yaml"), help="each round's PPO stage")
    eval: StageSpec = setting(
        default_factory=lambda: StageSpec("configs/eval/cpu.yaml"),
        help="the final evaluation stage")


class PipelineError(RuntimeError):
    """A stage failed or the pipeline's settings do not fit together; says which stage and what to do."""


class WaitingForLabels(Exception):
    pass


# ------------------------------------------------------------------------------------------------ pure helpers


def merge(base: dict[str, Any], wiring: dict[str, Any]) -> dict[str, Any]:
    """`base` with `wiring`'s values put in (nested mappings merged key by key; anything else replaced)."""
    out = dict(base)
    for key, value in wiring.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def pair_samples(samples: list[Sample], posts: dict[str, Post], pairs_per_post: int) -> list[dict[str, Any]]:
    """Pairs-file rows (the labelling app's format) by `data.pairs.pairs_in_order`: each post's samples, in index
    order, paired (0,1), (2,3), ..., leaving out pairs nobody can judge (identical texts, an empty one, a NUL
    character). Posts keep their order of first appearance."""
    rows = []
    for post_id, by_policy in samples_by_post(samples).items():
        for a, b in pairs_in_order(by_policy, pairs_per_post):
            rows.append({"post": posts[post_id].to_dict(), "summary_a": {"text": a.text, "policy": a.policy},
                         "summary_b": {"text": b.text, "policy": b.policy}, "split": "train"})
    return rows


def concat_files(path: Path, sources: list[Path]) -> int:
    """Every line of `sources` (gzip or plain JSONL) into `path`, atomically; returns the number of lines."""
    lines: list[str] = []
    for src in sources:
        text = gzip.open(src, "rt", encoding="utf-8").read() if is_gzip(src) else src.read_text(encoding="utf-8")
        lines += [line for line in text.splitlines() if line.strip()]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


# ------------------------------------------------------------------------------------------------ the runner


class StageRunner:
    """Runs the pipeline's steps one at a time into its directory and keeps the bookkeeping of its progress
    (which step, how long, skipped or not). What the steps are is `run_pipeline`'s."""

    def __init__(self, cfg: PipelineConfig, out: str, python: str = sys.executable):
        self.cfg, self.dir, self.python = cfg, Path(out), python
        per_round = 4 if cfg.labels.source == "import" else 6  # [sample, pairs,] labels, comparisons so far, rm, ppo
        self.steps_total = (1 if cfg.sft.skip else 2) + (1 if uses_gold(cfg) else 0) + per_round * cfg.rounds
        self.step = 0
        self.record: list[dict[str, Any]] = []

    def header(self, label: str, where: Path) -> None:
        self.step += 1
        print(f"\n[{self.step}/{self.steps_total}] {label} -> {where}", flush=True)

    def reuse(self, label: str, command: str, run: Path) -> Path:
        """A finished run of `command` taken instead of training one (`from_run`); returns its directory."""
        self.header(label, run)
        found = reused_stage(run)
        if found != command:
            raise PipelineError(f"{label}: from_run={run} is {'not a finished run' if found is None else f'a {found} run'}"
                                f"; expected a finished `rlhflab {command}` run (with DONE.json)")
        print("    an existing run — reused, not retrained", flush=True)
        self.record.append({"stage": label, "run_dir": str(run), "skipped": True, "reused": True})
        return run

    def stage(self, label: str, command: str, spec: StageSpec, out: Path, wiring: dict[str, Any],
              distributed: bool = False) -> dict[str, Any]:
        """Run `rlhflab <command>` into `out` unless it is DONE; returns its DONE.json."""
        self.header(label, out)
        done = out / "DONE.json"
        if done.exists():
            print("    already done — skipped", flush=True)
            self.record.append({"stage": label, "run_dir": str(out), "skipped": True})
            return json.loads(done.read_text())
        base = read_yaml_mapping(Path(spec.config)) if spec.config else {}
        cfg_path = self.dir / "configs" / f"{out.relative_to(self.dir).as_posix().replace('/', '_')}.yaml"
        atomic_write_text(cfg_path, f"# written by `rlhflab run` from {spec.config or 'the defaults'} and the "
                                    "pipeline's wiring\n" + yaml.safe_dump(merge(base, wiring), sort_keys=False))
        launcher = list(self.cfg.launcher) if distributed and self.cfg.launcher else [self.python]
        tracking = [f"report_to={self.cfg.report_to}"] if command in TRAINING and self.cfg.report_to != "none" else []
        cmd = [*launcher, "-m", "rlhflab", command, "--config", str(cfg_path), "--out", str(out), *tracking,
               *spec.overrides]
        print("    " + shlex.join(cmd), flush=True)
        t0 = time.time()
        if (out / "config.yaml").exists():
            print("    resuming an interrupted run", flush=True)
        rc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        if rc != 0:
            raise PipelineError(f"stage {label} failed (exit {rc}); {out} keeps what it saved — fix the cause and "
                                f"re-run the same `rlhflab run` command to resume")
        if not done.exists():
            raise PipelineError(f"stage {label} exited without writing {done}")
        wall = time.time() - t0
        print(f"    done in {wall:.0f} s", flush=True)
        self.record.append({"stage": label, "run_dir": str(out), "skipped": False, "wall_s": wall})
        return json.loads(done.read_text())

    def file_step(self, label: str, path: Path, make) -> None:  # noqa: ANN001 - make() writes `path`
        """A step the pipeline does itself (pairs, merged comparisons): done when its output file exists."""
        self.header(label, path)
        if path.exists():
            print("    already done — skipped", flush=True)
            self.record.append({"stage": label, "file": str(path), "skipped": True})
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        note = make()
        print(f"    {note}", flush=True)
        self.record.append({"stage": label, "file": str(path), "skipped": False, "note": note})


# ------------------------------------------------------------------------------------------------ the loop


def run_pipeline(runner: StageRunner) -> dict[str, Any]:
    """sft, [gold RM,] the rounds, eval; returns the summary it also writes to pipeline.jsonl."""
    cfg, d = runner.cfg, runner.dir
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if cfg.sft.skip:  # Ziegler et al.: PPO starts from the pretrained model itself
        sft = Path(str(cfg.base_model))
    elif cfg.sft.from_run:
        sft = runner.reuse("sft", "sft", Path(cfg.sft.from_run))
    else:
        sft = d / "sft"
        runner.stage("sft", "sft", cfg.sft, sft, {}, distributed=True)
    gold = None
    if uses_gold(cfg) and cfg.gold.from_run:
        gold = runner.reuse("gold RM (human comparisons)", "rm", Path(cfg.gold.from_run))
    elif uses_gold(cfg):
        gold = d / "gold"
        runner.stage("gold RM (human comparisons)", "rm", cfg.gold, gold, {"model": str(sft)}, distributed=True)
    policy, kl_coef, rounds = sft, None, []
    label_files: list[Path] = []
    for k in range(1, cfg.rounds + 1):
        rm_done, ppo_done = run_round(runner, k, sft, gold, policy, kl_coef, label_files)
        policy, kl_coef = d / f"round_{k}" / "ppo", ppo_done.get("kl_coef_last")
        rounds.append({"round": k, "rm_dev_accuracy": rm_done.get("dev_accuracy"),
                       "ppo_score_first": ppo_done.get("score_first"), "ppo_score_last": ppo_done.get("score_last"),
                       "ppo_kl_last": ppo_done.get("kl_last")})
    if cfg.evaluation == "continuations":
        report = runner.stage("style-eval", "style-eval", cfg.eval, d / "eval", style_eval_wiring(sft, policy))
    else:
        report = runner.stage("eval", "eval", cfg.eval, d / "eval", eval_wiring(cfg, sft, policy, gold))
    summary = {"out": str(d), "wall_s": time.time() - t0, "rounds": rounds,
               "report": report.get("html") or report.get("report"), "judge_score": report.get("judge_score"),
               "judge": report.get("judge"),
               **{k: report.get(k) for k in ("win_rate", "win_rate_ci", "length_controlled_win_rate",
                                             "length_controlled_win_rate_ci", "mean_tokens", "differences",
                                             "ci_level")},
               "stages": runner.record}
    write_jsonl(d / "pipeline.jsonl", [summary])
    return summary


def run_round(runner: StageRunner, k: int, sft: Path, gold: Path | None, policy: Path, kl_coef: float | None,
              label_files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Round k: [sample the current policy, pair the samples,] labels, every comparison so far, rm, ppo. Adds
    the round's labels file to `label_files`; returns the rm and ppo stages' DONE.json."""
    cfg, r = runner.cfg, runner.dir / f"round_{k}"
    pairs = r / ("tasks.jsonl" if cfg.tasks == "best_of_n" else "pairs.jsonl")
    if cfg.labels.source != "import":  # imported labels need no new summaries
        samples = sample(runner, k, r, policy)
        runner.file_step(f"round {k}: {'tasks' if cfg.tasks == 'best_of_n' else 'pairs'}", pairs,
                         lambda: make_pairs(cfg, samples, pairs))
    label_files.append(labels(runner, k, r, pairs, gold))
    comparisons = r / "comparisons.jsonl"
    online = cfg.collection == "online" and k > 1
    used = label_files[-1:] if online else label_files  # online: the new labels only, on the last RM's weights
    runner.file_step(f"round {k}: {'the new labels' if online else 'labels so far'}", comparisons,
                     lambda: f"{concat_files(comparisons, used)} labels from round(s) {k if online else f'1-{k}'}")
    rm_wiring: dict[str, Any] = {"model": str(sft), "data": {"comparisons": str(comparisons)}}
    if online:
        rm_wiring["init_from"] = str(runner.dir / f"round_{k - 1}" / "rm")
    rm_done = runner.stage(f"round {k}: rm", "rm", cfg.rm, r / "rm", rm_wiring, distributed=True)
    wiring: dict[str, Any] = {"model": str(sft), "reward": str(r / "rm")}
    if k > 1:  # continue from the last policy, on a new shuffle of the posts, with the last β
        wiring["policy_init"] = str(policy)
        wiring["seed"] = int(stage_setting(cfg.ppo, "seed", 1)) + k - 1  # 1: PPOConfig's default
        if kl_coef is not None:
            wiring["kl"] = {"init_coef": kl_coef}
    ppo_done = runner.stage(f"round {k}: ppo", "ppo", cfg.ppo, r / "ppo", wiring, distributed=True)
    return rm_done, ppo_done


def sample(runner: StageRunner, k: int, r: Path, policy: Path) -> Path:
    limit = stage_setting(runner.cfg.sample, "limit", None)
    if not limit:
        raise PipelineError("sample: set `limit` (posts per round); round k samples the k-th block of them")
    wiring = {"model": str(policy), "offset": (k - 1) * limit, "policy_name": "sft" if k == 1 else f"ppo{k - 1}"}
    if runner.cfg.tasks == "best_of_n":
        wiring["write_query"] = True  # a best-of-N task carries the query its continuations answer
    start = "the base model" if runner.cfg.sft.skip else "the SFT model"  # sft skipped: Ziegler's tasks
    what = "best-of-N tasks" if runner.cfg.tasks == "best_of_n" else "pairs"
    runner.stage(f"round {k}: sample {what} from {start if k == 1 else f'round {k - 1} PPO'}", "sample",
                 runner.cfg.sample, r / "sample", wiring)
    return r / "sample"


def make_pairs(cfg: PipelineConfig, sample_dir: Path, pairs: Path) -> str:
    cfg_used = read_yaml_mapping(sample_dir / "config.yaml")["config"]  # what the stage really ran with
    samples = list(load_samples(sample_dir / "samples.jsonl"))
    if cfg.tasks == "best_of_n":
        rows = best_of_n_tasks(samples, cfg.samples_per_task)
        if not rows:
            raise PipelineError(f"{sample_dir}: no best-of-{cfg.samples_per_task} task (sample n must be a "
                                f"multiple of samples_per_task={cfg.samples_per_task})")
        write_jsonl(pairs, rows)
        return f"{len(rows)} best-of-{cfg.samples_per_task} tasks from {len(samples)} continuations"
    wanted = {s.post_id for s in samples}
    shuffled = cfg_used.get("shuffle_seed") is not None  # the posts came from anywhere in the file
    limit = None if cfg_used.get("limit") is None or shuffled else cfg_used.get("offset", 0) + cfg_used["limit"]
    posts = {p.id: p for p in load_posts(cfg_used["posts"], format=cfg_used.get("format", "auto"), limit=limit)
             if p.id in wanted}
    rows = pair_samples(samples, posts, cfg.pairs_per_post)
    if not rows:
        raise PipelineError(f"{sample_dir}: no pair of different summaries (sample with n >= 2 and "
                            "temperature > 0)")
    write_jsonl(pairs, rows)
    return f"{len(rows)} comparison tasks from {len(samples)} summaries of {len(wanted)} posts"


def labels(runner: StageRunner, k: int, r: Path, pairs: Path, gold: Path | None) -> Path:
    """Round k's comparisons file, from the configured source."""
    spec = runner.cfg.labels
    if spec.source == "simulated":
        wiring: dict[str, Any] = {"pairs": str(pairs), "batch": f"round_{k}", "seed": k}
        base = read_yaml_mapping(Path(spec.simulate.config)) if spec.simulate.config else {}
        if gold is not None and "judge" not in base:
            wiring["judge"] = {"name": "gold", "kind": "rm", "spec": str(gold)}
        runner.stage(f"round {k}: simulated labels", "simulate-labels", spec.simulate, r / "labels", wiring)
        return r / "labels" / ("best_of_n.jsonl" if runner.cfg.tasks == "best_of_n" else "comparisons.jsonl")
    out = r / "labels.jsonl"
    if spec.source == "import":
        files = spec.files
        runner.file_step(f"round {k}: import labels", out,
                         lambda: f"{concat_files(out, [Path(files[k - 1])])} comparisons from {files[k - 1]}")
        return out
    runner.file_step(f"round {k}: labels from the labelling app", out,
                     lambda: app_labels(spec, runner.python, k, pairs, out))
    return out


def app_labels(spec: LabelsSpec, python: str, k: int, pairs: Path, out: Path) -> str:
    """Create the round's project once; export its comparisons when every task has its labels, else stop."""
    project = f"{spec.project}-round{k}"
    label = [python, "-m", "rlhflab", "label"]
    stats = subprocess.run([*label, "stats", "--db", spec.db, "--project", project], capture_output=True,
                           text=True)
    if stats.returncode != 0:
        created = subprocess.run([*label, "create-project", "--db", spec.db, "--name", project, "--pairs",
                                  str(pairs), "--k", str(spec.labels_per_task), "--gold-rate", "0"],
                                 capture_output=True, text=True)
        if created.returncode != 0:
            raise PipelineError(f"round {k}: cannot create project {project}: {created.stderr.strip()}")
        stats = subprocess.run([*label, "stats", "--db", spec.db, "--project", project], capture_output=True,
                               text=True, check=True)
    board = json.loads(stats.stdout)
    todo, total = remaining_tasks(board)
    if todo:
        raise WaitingForLabels(f"round {k}: project {project!r} has {todo} of {total} tasks still to label — "
                               f"`rlhflab label serve --db {spec.db}`, then re-run this command")
    exported = subprocess.run([*label, "export", "--db", spec.db, "--project", project, "--out", str(out),
                               "--no-gold"], capture_output=True, text=True)
    if exported.returncode != 0:
        raise PipelineError(f"round {k}: export of {project} failed: {exported.stderr.strip()}")
    return exported.stdout.strip()


def eval_wiring(cfg: PipelineConfig, sft: Path, policy: Path, gold: Path | None) -> dict[str, Any]:
    base = read_yaml_mapping(Path(cfg.eval.config)) if cfg.eval.config else {}
    builtins = [p for p in base.get("policies", [{"name": "reference", "builtin": "reference"}]) if "builtin" in p]
    policies = [{"name": "sft", "model": str(sft)}, {"name": "ppo", "model": str(policy)}, *builtins]
    judges = [{"name": "gold", "kind": "rm", "spec": str(gold),
               "note": "the simulated labeler's judge (real human comparisons); PPO never trained on it"}] \
        if gold is not None else []
    judges.append({"name": "rm", "kind": "rm", "spec": str(policy.parent / "rm"),
                   "note": "the RM the last PPO round optimised against (biased in its favour)"})
    judges += [j for j in base.get("judges", []) if j.get("kind") != "rm"]
    wiring: dict[str, Any] = {"policies": policies, "judges": judges, "kl_reference": str(sft)}
    transfer = base.get("transfer")
    if isinstance(transfer, dict) and transfer.get("posts"):
        wiring["transfer"] = {"policies": ["sft", "ppo"]}
    if (policy / "snapshots").is_dir():
        wiring["ppo_run"] = str(policy)
    else:
        wiring["ppo_run"] = None
    wiring["best_of_n_run"] = None
    wiring["rm_eval_runs"] = []
    return wiring


def style_eval_wiring(base: Path, policy: Path) -> dict[str, Any]:
    """The base model and the last round's PPO policy; KL from the base model (the PPO runs' reference)."""
    return {"policies": [{"name": "base", "model": str(base)}, {"name": "ppo", "model": str(policy)}],
            "kl_reference": str(base)}


def reused_stage(run: Path) -> str | None:
    """The stage a finished run directory holds (its config.yaml's `stage`), or None when it is not finished."""
    if not (run / "DONE.json").is_file() or not (run / "config.yaml").is_file():
        return None
    return (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("stage")


def uses_gold(cfg: PipelineConfig) -> bool:
    """The gold RM is the simulated labeler's judge (and then the report's held-out judge); with people's labels
    (imported or from the app) it is not trained."""
    return cfg.labels.source == "simulated" and not cfg.gold.skip


def stage_setting(spec: StageSpec, key: str, default: Any) -> Any:
    """A top-level setting of a stage as configured: its YAML, then its overrides (the stage's default if neither)."""
    value = (read_yaml_mapping(Path(spec.config)) if spec.config else {}).get(key, default)
    for override in spec.overrides:
        k, v = parse_override(override)
        value = v if k == key else value
    return value


# the data files each stage's config names, checked before the pipeline's first stage runs: (stage, key, kind)
STAGE_FILES = [("sft", "data.train", "posts"), ("sft", "data.eval", "posts"), ("gold", "data.comparisons", "labels"),
               ("gold", "normalise_on", "posts"), ("sample", "posts", "posts"), ("rm", "normalise_on", "posts"),
               ("ppo", "data.posts", "posts"), ("eval", "posts", "posts"), ("eval", "transfer.posts", "posts")]


def stage_value(spec: StageSpec, key: str) -> Any:
    """A (dotted) setting of a stage as configured: its YAML, then its overrides; None if neither sets it."""
    value: Any = read_yaml_mapping(Path(spec.config)) if spec.config else {}
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    for override in spec.overrides:
        k, v = parse_override(override)
        value = v if k == key else value
    return value


def check_stage_files(cfg: PipelineConfig) -> None:
    """Every data file a stage's config or the labels section names opens and its first rows parse — before
    hours of SFT and PPO run ahead of the stage that would read it. Errors name the stage's key and the line."""
    checks = []
    for stage, key, kind in STAGE_FILES:
        spec: StageSpec = getattr(cfg, stage)
        value = stage_value(spec, key)
        unused = isinstance(spec, FirstStageSpec) and (spec.skip or spec.from_run)
        if unused or not isinstance(value, str) or value == "labels":
            continue
        fmt = stage_value(spec, key.rpartition(".")[0] + ".format" if "." in key else "format") or "auto"
        name = f"{stage}.{key}"
        checks.append(posts_check(name, value, fmt) if kind == "posts" else labels_check(name, value))
    if cfg.labels.source == "import":
        checks += [labels_check(f"labels.files[{i}]", f) for i, f in enumerate(cfg.labels.files)]
    check_files(checks)


def remaining_tasks(board: dict[str, Any]) -> tuple[int, int]:
    """(tasks still needing labels, all tasks) from `rlhflab label stats` output."""
    tasks = board.get("tasks") or {}
    labelled = int(tasks.get("comparison", 0)) + int(tasks.get("best_of_n", 0))  # the kinds a round collects
    total = labelled - int(tasks.get("gold", 0))  # gold tasks are the researchers'
    return total - int(tasks.get("complete", 0)), total


def run(cfg: PipelineConfig, out: str) -> dict[str, Any]:
    """Run (or resume) the pipeline into `out`; prints progress per stage and a closing summary."""
    validate(cfg)
    summary = run_pipeline(StageRunner(cfg, out))
    print(closing_summary(summary), flush=True)
    return summary


def validate(cfg: PipelineConfig) -> None:
    if cfg.rounds < 1:
        raise PipelineError(f"rounds={cfg.rounds}: at least one round")
    if cfg.sft.skip and not cfg.base_model:
        raise PipelineError("sft.skip: set base_model (the model PPO starts from and stays near)")
    if cfg.tasks == "best_of_n" and cfg.samples_per_task < 2:
        raise PipelineError(f"samples_per_task={cfg.samples_per_task}: a best-of-N task needs at least 2")
    for name in ("sample", "rm", "ppo", "eval"):
        spec: StageSpec = getattr(cfg, name)
        if spec.config and not Path(spec.config).exists():
            raise PipelineError(f"{name}.config: {spec.config} not found")
    for name in ("sft", "gold"):
        first: FirstStageSpec = getattr(cfg, name)
        if first.skip and first.from_run:
            raise PipelineError(f"{name}: skip and from_run exclude each other")
        command = "sft" if name == "sft" else "rm"
        if first.from_run and reused_stage(Path(first.from_run)) != command:
            raise PipelineError(f"{name}.from_run={first.from_run}: not a finished `rlhflab {command}` run "
                                "(DONE.json and config.yaml)")
    if cfg.labels.source == "import":
        files = cfg.labels.files
        if len(files) < cfg.rounds:
            raise PipelineError(f"labels.source=import: {cfg.rounds} rounds need {cfg.rounds} labels.files "
                                f"(one comparisons file a round), got {len(files)}")
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise PipelineError(f"labels.files: not found: {', '.join(missing)}")
    try:
        check_stage_files(cfg)
    except DataError as err:
        raise PipelineError(str(err)) from None
    if cfg.labels.source == "simulated" and cfg.gold.skip:
        sim = cfg.labels.simulate
        judge = (read_yaml_mapping(Path(sim.config)) if sim.config else {}).get("judge")
        if not judge and not any(o.startswith("judge.") for o in sim.overrides):
            raise PipelineError("labels.source=simulated with gold.skip: name the labeler's judge in "
                                "labels.simulate (judge.spec=RM_RUN or judge.kind=python ...)")


def closing_summary(summary: dict[str, Any]) -> str:
    lines = [f"\npipeline done in {summary['wall_s'] / 60:.1f} min: {summary['out']}"]
    for r in summary["rounds"]:
        acc = r["rm_dev_accuracy"]
        lines.append(f"  round {r['round']}: RM dev accuracy {acc:.3f}" if acc is not None else
                     f"  round {r['round']}: RM (no dev pairs)")
        lines[-1] += (f"; PPO score {r['ppo_score_first']:.3f} -> {r['ppo_score_last']:.3f}, "
                      f"KL {r['ppo_kl_last']:.2f}")
    if summary.get("win_rate"):
        lines += win_rate_lines(summary)
    lines.append(f"  report: {summary['report']}")
    return "\n".join(lines)


def _rate(v: float | None, ci: list[float] | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def win_rate_lines(summary: dict[str, Any]) -> list[str]:
    """Every policy's win rate against the references with its CI, length-controlled beside it, then every two
    policies: their paired difference and, plainly, whether it is beyond its CI."""
    get = lambda key, name: (summary.get(key) or {}).get(name)  # noqa: E731 - older DONE files lack keys
    level = summary.get("ci_level") or 0.95
    lines = [f"  win rate against the references (judge {summary['judge']}) [{level:.0%} CI], mean length in tokens:"]
    for name, w in summary["win_rate"].items():
        toks = get("mean_tokens", name)
        lines.append(f"    {name:<10} {_rate(w, get('win_rate_ci', name))}  (length-controlled "
                     f"{_rate(get('length_controlled_win_rate', name), get('length_controlled_win_rate_ci', name))}"
                     + (f", {toks:.1f} tokens)" if toks is not None else ")"))
    for d in summary.get("differences") or []:
        if d["win_rate_difference"] is None:
            continue
        verdict = ("differ beyond the CI" if d["differ"] else
                   "do not differ: the CI of the difference includes 0" if d["differ"] is False else "too few posts")
        lines.append(f"    {d['a']} − {d['b']}: {_rate(d['win_rate_difference'], d['win_rate_difference_ci'])} "
                     f"on {d['n']} posts: {verdict}")
    return lines

__all__ = ["PipelineConfig", "PipelineError", "WAITING_FOR_LABELS", "WaitingForLabels", "pair_samples", "run"]
