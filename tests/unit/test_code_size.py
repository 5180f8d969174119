"""The code stays readable: size limits on functions, classes and PPO's loop (issue 12), checked on the source.

Run as a script it prints the numbers: `python tests/unit/test_code_size.py`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rlhflab"
STAGE_LOOPS = {  # each stage's loop may be longer than a helper: it reads top to bottom in numbered steps
    "train/sft.py:train", "train/reward.py:train", "train/dpo.py:train", "train/ppo.py:train", "eval/evaluate.py:evaluate",
    "eval/rm_eval.py:evaluate", "eval/best_of_n.py:best_of_n", "eval/sample.py:sample", "eval/simulate.py:simulate",
}
DECLARATIVE = ("label/migrations/",)  # schema migrations: one statement per table, nothing to factor out
FUNCTION_LINES, STAGE_LOOP_LINES, CLASS_LINES = 60, 120, 150


def sizes() -> list[tuple[str, str, int]]:
    """(kind, 'path:name', lines) of every function and class in the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(DECLARATIVE):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                out.append((kind, f"{rel}:{node.name}", node.end_lineno - node.lineno + 1))
    return out


def ppo_loop_lines() -> tuple[int, int]:
    """(lines of the body of PPO's `while update < n_updates:` loop, lines of its steps (2)-(4))."""
    lines = (PACKAGE / "train/ppo.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "while update < n_updates:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = next(i for i in range(start + 1, len(lines))
               if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent)
    step = {n: next(i for i in range(start, end) if re.match(rf"\s*# \({n}\)", lines[i])) for n in (2, 5)}
    steps_2_to_4 = [line for line in lines[step[2] : step[5]] if line.strip()]
    return end - start - 1, len(steps_2_to_4)


def test_no_function_or_class_is_too_long():
    too_long = [(kind, name, n) for kind, name, n in sizes()
                if n > (CLASS_LINES if kind == "class" else STAGE_LOOP_LINES if name in STAGE_LOOPS
                        else FUNCTION_LINES)]
    assert not too_long, too_long


def test_ppo_loop_is_the_six_steps():
    body, steps_2_to_4 = ppo_loop_lines()
    assert body < 80 and steps_2_to_4 < 20, (body, steps_2_to_4)


if __name__ == "__main__":
    body, steps = ppo_loop_lines()
    print(f"train/ppo.py loop body: {body} lines; steps (2)-(4): {steps} lines (non-blank)")
    all_sizes = sizes()
    for kind in ("function", "class"):
        ranked = sorted((s for s in all_sizes if s[0] == kind), key=lambda s: -s[2])
        loops = [s for s in ranked if s[1] in STAGE_LOOPS]
        others = [s for s in ranked if s[1] not in STAGE_LOOPS]
        if kind == "function":
            print("stage loops:", ", ".join(f"{name} {n}" for _, name, n in loops))
        print(f"longest {kind}s:", ", ".join(f"{name} {n}" for _, name, n in others[:5]))
