"""rlhflab command line: `rlhflab <command> --config FILE --out RUN_DIR [key=value ...]`.

Each command runs one stage into its own run directory. Settings come from the stage's dataclass defaults,
then the YAML file, then key=value overrides (dotted keys for sections, e.g. optim.lr=1e-5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
import typing

from rlhflab.core.config import ConfigError, load_config, type_name
from rlhflab.core.log import LEVELS, setup_logging

STAGES = {
    # command: (module, config class, entry function, one-line help)
    "sft": ("rlhflab.train.sft", "SFTConfig", "train", "supervised fine-tuning on posts and reference summaries"),
    "sample": ("rlhflab.eval.sample", "SampleConfig", "sample", "write summaries of a post set as a samples JSONL"),
    "rm": ("rlhflab.train.reward", "RewardConfig", "train", "train a reward model on human comparisons"),
    "rm-eval": ("rlhflab.eval.rm_eval", "RMEvalConfig", "evaluate",
                "reward-model accuracy (per confidence, policy pair, split, batch), length baseline, calibration"),
    "score": ("rlhflab.eval.score", "ScoreConfig", "score", "add reward-model scores to a samples file"),
    "dpo": ("rlhflab.train.dpo", "DPOConfig", "train",
            "direct preference optimisation on the comparisons, reference = the SFT model (Rafailov et al. 2023)"),
    "ppo": ("rlhflab.train.ppo", "PPOConfig", "train",
            "optimise a policy against a reward model with PPO and a KL penalty to the SFT model"),
    "best-of-n": ("rlhflab.eval.best_of_n", "BestOfNConfig", "best_of_n",
                  "sample N summaries per post, keep the one the reward model scores highest"),
    "simulate-labels": ("rlhflab.eval.simulate", "SimulateConfig", "simulate",
                        "answer comparison tasks with a judge (e.g. a gold RM) and a noise model, like a labeler"),
    "eval": ("rlhflab.eval.evaluate", "EvalConfig", "evaluate",
             "policies vs the human references: win rates, length control, ROUGE, KL, curves, report.html"),
    "style-eval": ("rlhflab.eval.style_eval", "StyleEvalConfig", "style_eval",
                   "Ziegler's tasks: a style judge's score of each policy's continuations of held-out prompts, and KL"),
}

EPILOG = """examples:
  rlhflab run configs/pipeline/smoke.yaml --out runs/pipeline/smoke   # the whole loop, sft to report
  rlhflab sft --config configs/sft/smoke.yaml --out runs/sft/smoke
  rlhflab sft --config configs/sft/cpu.yaml --out runs/sft/cpu optim.lr=3e-5 max_steps=100
  rlhflab sample --config configs/sample/smoke.yaml --out runs/sample/sft model=runs/sft/smoke
  rlhflab rm --config configs/rm/cpu.yaml --out runs/rm/cpu model=runs/sft/cpu
  rlhflab rm-eval --config configs/rm-eval/cpu.yaml --out runs/rm-eval/cpu model=runs/rm/cpu split=dev
  rlhflab dpo --config configs/dpo/cpu.yaml --out runs/dpo/cpu model=runs/sft/cpu
  rlhflab ppo --config configs/ppo/cpu.yaml --out runs/ppo/cpu model=runs/sft/cpu reward=runs/rm/cpu
  rlhflab best-of-n --config configs/best-of-n/cpu.yaml --out runs/bo16/cpu model=runs/sft/cpu reward=runs/rm/cpu
  rlhflab eval --config configs/eval/cpu.yaml --out runs/eval/cpu
  rlhflab export-gguf runs/ppo/cpu --out runs/ppo/cpu/policy-q8_0.gguf --dtype q8_0   # for llama.cpp / ollama
  rlhflab sft --show-config            # every key with its default and meaning
re-running a command with the same --out resumes an interrupted run; a finished run (DONE.json) is left as is."""


def describe_config(cls, prefix: str = "", defaults: object | None = None) -> list[str]:
    """`key (type) = default  # meaning` for every field, nested sections flattened with dots. `defaults`: the section's
    default value when its parent sets one (e.g. a pipeline's per-stage config paths)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(tp):
            lines.append(with_help(f"  {prefix}{f.name}:", f))
            lines += describe_config(tp, f"{prefix}{f.name}.", default)
            continue
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
        if item is not None and dataclasses.is_dataclass(item):  # a list of sections: show the items' keys too
            lines.append(with_help(f"  {prefix}{f.name} (list of {item.__name__}) = "
                                   f"{[dataclasses.asdict(d) for d in default]!r}", f))
            lines += describe_config(item, f"{prefix}{f.name}[].")
            continue
        lines.append(with_help(f"  {prefix}{f.name} ({type_name(tp)}) = {default!r}", f))
    return lines


def with_help(line: str, f: dataclasses.Field) -> str:
    """`line  # meaning`: the field's one-line help (core.config.setting) after its key, type and default."""
    meaning = f.metadata.get("help", "")
    return f"{line}  # {meaning}" if meaning else line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhflab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS,
                        help="how much to log (default INFO: what each stage does and its progress; DEBUG adds "
                             "detail, and is the only level that may log post or summary text; WARNING: only "
                             "what goes wrong). Progress is a redrawn bar on a terminal and a line every 5%% or "
                             "30 s elsewhere (RLHFLAB_PROGRESS=bar|lines|off to choose)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, _, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="run `rlhflab %s --show-config` to list every key, its default and meaning" % name)
        p.add_argument("--config", help="YAML file with the settings that differ from the defaults")
        p.add_argument("--out", help="run directory to write (or to resume)")
        p.add_argument("--show-config", action="store_true",
                       help="print every config key with its default and meaning")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, applied after --config")
    p = sub.add_parser("run", help="the whole loop: sft, gold RM, rounds of sample/labels/rm/ppo, eval",
                       description="Run (or resume) a pipeline: every stage in its own run directory under --out; "
                                   "DONE stages are skipped, an interrupted one resumes.",
                       epilog="run `rlhflab run --show-config` to list every key, its default and meaning")
    p.add_argument("--config", help="the pipeline YAML (or give it as the first argument)")
    p.add_argument("--out", help="the pipeline's directory (to write, or to resume)")
    p.add_argument("--show-config", action="store_true",
                   help="print every config key with its default and meaning")
    p.add_argument("overrides", nargs="*", metavar="[PIPELINE.yaml] key=value",
                   help="e.g. configs/pipeline/smoke.yaml rounds=2 'ppo.overrides=[total_episodes=64]'")
    p = sub.add_parser("export-gguf", help="write a policy as a GGUF file for llama.cpp and ollama (Llama family)",
                       description="Write a trained policy (a run directory or model directory) as one GGUF file: "
                                   "weights, hyper-parameters and tokenizer, for llama.cpp, ollama and "
                                   "transformers' gguf_file= loader. Llama-family models with a byte-level BPE "
                                   "tokenizer (SmolLM2, Llama 3, Mistral).")
    p.add_argument("source", help="a finished run directory (its model/), a model directory, or any model spec")
    p.add_argument("--out", required=True, help="the .gguf file to write (replaced atomically)")
    p.add_argument("--dtype", default="f16", choices=["f32", "f16", "q8_0"],
                   help="the matrices' type (norms stay f32); default f16")
    p.add_argument("--check", action="store_true",
                   help="load the file back with transformers and print the largest logit difference")
    try:
        from rlhflab.label.cli import add_label_parser
    except ImportError:  # the labelling app's extra is not installed
        add_label_parser = None
    if add_label_parser is not None:
        add_label_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `rlhflab run PIPELINE.yaml --out DIR key=value`: argparse leaves positionals after --out over
        if args.command != "run" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    # under accelerate/torchrun only the main process logs progress (the others say only what goes wrong)
    setup_logging(args.log_level if os.environ.get("RANK", "0") == "0" else "WARNING")
    if args.command in ("label", "run", "export-gguf"):
        return not_a_stage(args)
    module_name, cls_name, fn_name, _ = STAGES[args.command]
    module = __import__(module_name, fromlist=[cls_name])
    cfg_cls = getattr(module, cls_name)
    if args.show_config:
        print("\n".join(describe_config(cfg_cls)))
        return 0
    if not args.out:
        print(f"rlhflab {args.command}: --out RUN_DIR is required", file=sys.stderr)
        return 2
    try:
        cfg = load_config(cfg_cls, args.config, args.overrides)
    except ConfigError as err:
        print(f"rlhflab {args.command}: config error: {err}", file=sys.stderr)
        return 2
    from rlhflab.core.rundir import RunError
    from rlhflab.data.jsonl import DataError
    from rlhflab.models.loading import ModelLoadError

    if (problem := unwritable(args.out)) is not None:
        print(f"rlhflab {args.command}: --out {args.out}: {problem}", file=sys.stderr)
        return 2

    from rlhflab.train.distributed import leave_process_group

    try:
        getattr(module, fn_name)(cfg, args.out)
    except (DataError, RunError, ModelLoadError) as err:  # bad input: say what and where, no traceback
        print(f"rlhflab {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        # the user's config or data (a budget no post fits, a missing file, ...): one message, exit 2
        print(f"rlhflab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrlhflab {args.command}: interrupted; the same command resumes from the last checkpoint",
              file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug: the traceback, and say so
        traceback.print_exc()
        print(f"rlhflab {args.command}: internal error — this is a bug in rlhflab, not in your config or data; "
              "please report it with the traceback above", file=sys.stderr)
        return 1
    finally:  # under `accelerate launch`: leave the process group before exit, not during interpreter shutdown
        leave_process_group()
    return 0


def not_a_stage(args: argparse.Namespace) -> int:
    """The commands that are not one stage in one run directory: the labelling app, the pipeline, GGUF export."""
    if args.command == "label":
        from rlhflab.label.cli import run_label

        return run_label(args) or 0
    return run_pipeline(args) if args.command == "run" else export_gguf(args)


def unwritable(out: str) -> str | None:
    """Why a run directory cannot be written at `out` (None: it can): checked before any work is done."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        return "exists and is not a directory"
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return None if os.access(path, os.W_OK) else f"{path} is not writable"


def export_gguf(args: argparse.Namespace) -> int:
    from rlhflab.core.rundir import RunError
    from rlhflab.models.gguf_export import export_gguf as export
    from rlhflab.models.gguf_export import roundtrip_logit_diff
    from rlhflab.models.loading import ModelLoadError

    try:
        result = export(args.source, args.out, args.dtype)
        if args.check:
            result["max_abs_logit_diff"] = roundtrip_logit_diff(args.source, args.out)
    except (RunError, ModelLoadError, ValueError, FileNotFoundError) as err:
        print(f"rlhflab export-gguf: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    from rlhflab import pipeline

    if args.show_config:
        print("\n".join(describe_config(pipeline.PipelineConfig)))
        return 0
    files = [a for a in args.overrides if "=" not in a]
    overrides = [a for a in args.overrides if "=" in a]
    if len(files) + bool(args.config) > 1:
        print(f"rlhflab run: one pipeline YAML, got {files + ([args.config] if args.config else [])}", file=sys.stderr)
        return 2
    path = args.config or (files[0] if files else None)
    if not args.out:
        print("rlhflab run: --out DIR is required", file=sys.stderr)
        return 2
    try:
        cfg = load_config(pipeline.PipelineConfig, path, overrides)
        pipeline.run(cfg, args.out)
    except (ConfigError, pipeline.PipelineError) as err:
        print(f"rlhflab run: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrlhflab run: interrupted; `rlhflab run ... --out {args.out}` again resumes", file=sys.stderr)
        return 130
    except pipeline.WaitingForLabels as wait:
        print(f"rlhflab run: waiting for labels: {wait}", file=sys.stderr)
        return pipeline.WAITING_FOR_LABELS
    return 0


if __name__ == "__main__":
    sys.exit(main())
