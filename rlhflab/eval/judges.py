"""Judges for `rlhflab eval`: who decides whether a policy's summary beats the human reference.

Every judge is a `Judge`: it answers `prefer(posts, a, b) -> [P(a preferred) or None]` for pairs of summaries of
the same posts (None: this judge has no verdict for that pair, e.g. nobody labelled it), and `scores(posts,
summaries)` with a score per summary, or None when it does not score summaries one at a time. Kinds:

- `rm`: a reward model (an `rlhflab rm` run directory). P(a preferred) = σ(r_a − r_b); a wins when r_a > r_b.
  Scores are cached per (post, summary, EOS) in the run directory, so every text is scored once.
- `labels`: human comparisons in OpenAI's schema, as `rlhflab label export` writes them, matched on the post id
  and both summary texts (whitespace-normalised). Several labels of one pair are averaged; a confidence of 5
  ("no preference") counts as half.
- `python`: `python:module:function`, called as f(posts, summaries_a, summaries_b) -> P(a preferred) per pair.
  Answers are cached (`PreferenceCache`).
- `openai`: an OpenAI-compatible chat endpoint (`base_url`, `model`; the key from the environment variable
  `api_key_env`, if set). Off unless configured; the summaries are shown in a seeded random order (A/B) to cancel
  position bias. Answers are cached.
- `style`: a programmatic style score of the text alone (`rlhflab/models/style.py`, Ziegler et al.'s "mock"
  labeler): spec `sentiment` (VADER's compound score) or `descriptiveness` (Empath's physical/sensory words).
  P(a preferred) = σ((s_a − s_b)/τ) with τ = `STYLE_TAU` = 1.0, as for an RM (both scores have a std of ≈ 0.45
  on 20-word book windows); equal scores are a tie (0.5). A surer labeler is simulate-labels' `temperature` T < 1:
  σ(logit(p)/T) = σ((s_a − s_b)/T). Not cached: it is cheap.

Identical summaries are a tie (0.5) and never reach a judge (see `judging.judge_pairs`).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import random
import re
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from rlhflab.core.config import setting
from rlhflab.core.rundir import RunError
from rlhflab.data.jsonl import DataError
from rlhflab.data.loaders import is_hub_id, load_comparisons
from rlhflab.data.records import CONFIDENCE_NO_PREFERENCE, Post
from rlhflab.eval.cache import KeyedCache, text_key
from rlhflab.models.style import STYLE_SCORERS, style_scorer

log = logging.getLogger(__name__)


@dataclass
class JudgeSpec:
    name: str = setting("rm", "the judge's name in the report")
    kind: Literal["rm", "labels", "python", "openai", "style"] = setting(
        "rm",
        "rm (an RM run), labels (human labels), python (a callable), openai (a chat endpoint) or style (a score "
        "of the text: sentiment, descriptiveness)")
    spec: str | None = setting(
        None,
        "rm: an RM run directory; labels: a comparisons JSONL; python: python:module:function; "
        "style: sentiment or descriptiveness")
    note: str = setting("", "shown in the report next to the judge (e.g. \"the RM that PPO optimised against\")")
    batch_size: int = setting(16, "rm: sequences per forward")
    base_url: str | None = setting(None, "openai: e.g. http://localhost:8000/v1 (required for kind=openai)")
    model: str | None = setting(None, "openai: the chat model's name")
    api_key_env: str = setting("OPENAI_API_KEY", "openai: the environment variable holding the key (sent if set)")
    timeout_s: float = setting(60.0, "openai: seconds to wait for one answer")
    seed: int = setting(0, "openai: seed of the order (A/B) each pair is shown in")

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ValueError(f"judge name {self.name!r}: use letters, digits, '.', '_' or '-'")
        if self.kind in ("rm", "labels", "python", "style") and not self.spec:
            raise ValueError(f"judge {self.name}: kind={self.kind} needs spec= ("
                             + {"rm": "an `rlhflab rm` run directory", "labels": "a comparisons JSONL export",
                                "python": "python:module:function",
                                "style": " or ".join(STYLE_SCORERS)}[self.kind] + ")")
        if self.kind == "style":
            try:
                style_scorer(style_name(self.spec or ""))
            except ValueError as err:  # it lists the known names
                raise ValueError(f"judge {self.name}: spec={self.spec}: {err}") from None
        if self.kind == "openai" and (not self.base_url or not self.model):
            raise ValueError(f"judge {self.name}: kind=openai needs base_url= (an OpenAI-compatible endpoint, e.g. "
                             "http://localhost:8000/v1) and model= (the chat model's name); it is never on by "
                             "default")


@dataclass(frozen=True)
class Text:
    """A summary as a judge sees it: its text and whether the writer ended it itself (EOS)."""

    text: str
    eos: bool = True


def normalise_text(text: str) -> str:
    return " ".join(text.split())


class Judge(Protocol):
    name: str
    kind: str
    spec: str  # what the report shows: the RM run, the labels file, the function or the endpoint
    note: str

    def prefer(self, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
        """P(a preferred to b) per pair; None: no verdict on that pair."""
        ...

    def scores(self, posts: Sequence[Post], texts: Sequence[Text], progress: str | None = None) -> list[float] | None:
        """The judge's score of each summary; None: this judge compares, it does not score."""
        ...


# ---------------------------------------------------------------------------------------------- reward model


class RMJudge:
    kind = "rm"

    def __init__(self, spec: JudgeSpec, cache_dir: Path, load_rm: Callable[[str], Any],
                 bf16: bool | str = False):
        self.name, self.spec, self.note = spec.name, spec.spec or "", spec.note
        self.batch_size, self.bf16 = spec.batch_size, bf16
        self.cache = KeyedCache(cache_dir / "scores.jsonl")
        self._load_rm = load_rm

    def scores(self, posts: Sequence[Post], texts: Sequence[Text], progress: str | None = None) -> list[float]:
        """The RM's score of each (post, summary), from the cache or computed (and cached) in batches.

        Missing summaries are grouped by post and each post's query runs once for all of its summaries
        (`RewardModel.score_groups`: the query's KV cache is shared), so scoring a post's reference and all its
        policies' summaries together costs little more than one full sequence.
        """
        keys = [text_key(p.source, p.id, t.text, t.eos) for p, t in zip(posts, texts)]
        groups: dict[str, list[int]] = {}
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if k not in self.cache and k not in seen:
                seen.add(k)
                groups.setdefault(posts[i].id, []).append(i)
        if groups:
            rm = self._load_rm(self.spec)
            by_k: dict[int, list[list[int]]] = {}
            for idx in groups.values():
                by_k.setdefault(len(idx), []).append(idx)
            bar = _bar(len(seen), f"score {self.name}" + (f" {progress}" if progress else ""))
            for k, post_groups in sorted(by_k.items()):
                post_groups.sort(key=lambda g: len(posts[g[0]].text))
                per = max(1, 4 * self.batch_size // k)  # posts per cache write
                for start in range(0, len(post_groups), per):
                    chunk = post_groups[start : start + per]
                    q_ids = [rm.encode_query(posts[g[0]]) for g in chunk]
                    r_ids = [rm.encode_response(texts[i].text, texts[i].eos) for g in chunk for i in g]
                    s = rm.score_groups(q_ids, r_ids, k, batch_size=max(self.batch_size, k), bf16=self.bf16)
                    flat = [i for g in chunk for i in g]
                    self.cache.add({keys[i]: float(v) for i, v in zip(flat, s.reshape(-1).tolist())})
                    bar.update(len(flat))
            bar.close()
        return [float(self.cache[k]) for k in keys]

    def prefer(self, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
        sa, sb = self.scores(posts, a), self.scores(posts, b)
        return [1.0 / (1.0 + math.exp(-(x - y))) if x != y else 0.5 for x, y in zip(sa, sb)]


# ---------------------------------------------------------------------------------------------- style score


STYLE_TAU = 1.0  # P(a preferred) = σ((s_a − s_b) / STYLE_TAU), as an RM judge's σ(r_a − r_b)


def style_name(spec: str) -> str:
    """The scorer's name in a style judge's spec: `sentiment`, or `style:sentiment` as PPO's reward= spells it."""
    return spec.removeprefix("style:")


class StyleJudge:
    """A programmatic style score of each text (the post is not looked at): Ziegler et al.'s mock labeler."""

    kind = "style"

    def __init__(self, spec: JudgeSpec):
        self.name, self.spec, self.note = spec.name, style_name(spec.spec or ""), spec.note
        self.tau = STYLE_TAU
        self.score_texts = style_scorer(self.spec)

    def scores(self, posts: Sequence[Post], texts: Sequence[Text], progress: str | None = None) -> list[float]:
        return [float(s) for s in self.score_texts([t.text for t in texts])]

    def prefer(self, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
        sa, sb = self.scores(posts, a), self.scores(posts, b)
        return [sigmoid((x - y) / self.tau) if x != y else 0.5 for x, y in zip(sa, sb)]


def sigmoid(z: float) -> float:
    """σ(z), without overflow for a large |z| (a small tau)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# ---------------------------------------------------------------------------------------------- human labels


class LabelsJudge:
    kind = "labels"

    def __init__(self, spec: JudgeSpec):
        self.name, self.spec, self.note = spec.name, spec.spec or "", spec.note
        if not Path(self.spec).expanduser().is_file():
            raise DataError(self.spec, problem="no such file (judge kind=labels needs a comparisons export: "
                                               "`rlhflab label export --out FILE`)")
        self.votes: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for c in load_comparisons(self.spec):
            t0, t1 = (normalise_text(s.text) for s in c.summaries)
            if c.confidence == CONFIDENCE_NO_PREFERENCE:
                v0 = 0.5
            else:
                v0 = 1.0 if c.choice == 0 else 0.0
            self.votes[(c.post.id, t0, t1)].append(v0)
            self.votes[(c.post.id, t1, t0)].append(1.0 - v0)
        log.info("judge %s: %d labelled pairs from %s", self.name, len(self.votes) // 2, self.spec)

    def scores(self, posts: Sequence[Post], texts: Sequence[Text], progress: str | None = None) -> None:
        return None

    def prefer(self, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
        out: list[float | None] = []
        for p, x, y in zip(posts, a, b):
            votes = self.votes.get((p.id, normalise_text(x.text), normalise_text(y.text)))
            out.append(sum(votes) / len(votes) if votes else None)
        return out


# ---------------------------------------------------------------------------------------------- python callable


def import_callable(spec: str) -> Callable[..., Any]:
    """`python:module:function` or `module:function` -> the function."""
    target = spec[len("python:"):] if spec.startswith("python:") else spec
    module_name, _, fn_name = target.partition(":")
    if not module_name or not fn_name:
        raise RunError(f"judge {spec!r}: expected python:module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RunError(f"judge {spec!r}: cannot import {module_name} ({err})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise RunError(f"judge {spec!r}: {module_name} has no function {fn_name}")
    return fn


Ask = Callable[[Sequence[Post], Sequence[str], Sequence[str]], list[float | None]]


class PreferenceCache:
    """A judge's answers per (post, a, b) on disk: the python and openai judges ask only for pairs not in it."""

    def __init__(self, cache_dir: Path):
        self.cache = KeyedCache(cache_dir / "preferences.jsonl")

    def prefer(self, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text], ask: Ask) -> list[float | None]:
        keys = [text_key(p.source, p.id, x.text, y.text) for p, x, y in zip(posts, a, b)]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            answers = ask([posts[i] for i in todo], [a[i].text for i in todo], [b[i].text for i in todo])
            self.cache.add({keys[i]: v for i, v in zip(todo, answers)})
        return [self.cache[k] for k in keys]


class PythonJudge:
    kind = "python"

    def __init__(self, spec: JudgeSpec, cache_dir: Path):
        self.name, self.spec, self.note = spec.name, spec.spec or "", spec.note
        self.answers = PreferenceCache(cache_dir)
        self.fn = import_callable(self.spec)

    def prefer(self, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
        return self.answers.prefer(posts, a, b, self.ask)

    def scores(self, posts: Sequence[Post], texts: Sequence[Text], progress: str | None = None) -> None:
        return None

    def ask(self, posts: Sequence[Post], a: Sequence[str], b: Sequence[str]) -> list[float | None]:
        out = list(self.fn(list(posts), list(a), list(b)))
        if len(out) != len(posts):
            raise RunError(f"judge {self.name} ({self.spec}): returned {len(out)} values for {len(posts)} pairs")
        checked: list[float | None] = []
        for i, v in enumerate(out):
            if v is None:
                checked.append(None)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise RunError(f"judge {self.name} ({self.spec}): value {i} is not a number") from None
            if not 0.0 <= f <= 1.0:
                raise RunError(f"judge {self.name} ({self.spec}): value {i} = {f} is not a probability in [0, 1]")
            checked.append(f)
        return checked


# ---------------------------------------------------------------------------------------------- LLM judge

PROMPT_TLDR = (
    "Which of the following summaries does a better job of summarizing the most important points in the given "
    "{what}, without including unimportant or irrelevant details? A good summary is both precise and concise.\n\n"
    "{What}:\n{post}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\n"
    "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. SECOND, on "
    "a new line, state only \"A\" or \"B\" to indicate your choice. Your response should use the format:\n"
    "Comparison: <one-sentence comparison and explanation>\nPreferred: <\"A\" or \"B\">"
)
_ANSWER = re.compile(r"Preferred:\s*\**\s*\"?([AB])\b", re.IGNORECASE)


def parse_choice(answer: str) -> str | None:
    """"A" or "B" from a judge's answer ("Preferred: B"; or a bare last line "A"); None if it gave neither."""
    found = _ANSWER.findall(answer)
    if found:
        return found[-1].upper()
    lines = [line.strip().strip('"*. ') for line in answer.strip().splitlines() if line.strip()]
    if lines and lines[-1].upper() in ("A", "B"):
        return lines[-1].upper()
    return None


class OpenAIJudge:
    kind = "openai"

    def __init__(self, spec: JudgeSpec, cache_dir: Path, api_key: str | None = None):
        self.name, self.spec, self.note = spec.name, spec.spec or spec.base_url or "", spec.note
        self.answers = PreferenceCache(cache_dir)
        self.base_url = (spec.base_url or "").rstrip("/")
        self.model, self.timeout_s, self.seed = spec.model, spec.timeout_s, spec.seed
        self.api_key = api_key
        self.unparsed = 0

    def prefer(self, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
        return self.answers.prefer(posts, a, b, self.ask)

    def scores(self, posts: Sequence[Post], texts: Sequence[Text], progress: str | None = None) -> None:
        return None

    def a_first(self, post: Post, a: str, b: str) -> bool:
        """Whether summary a is shown as "A": a seeded coin per pair (the same pair always gets the same order)."""
        return random.Random(text_key(self.seed, post.id, a, b)).random() < 0.5

    def ask(self, posts: Sequence[Post], a: Sequence[str], b: Sequence[str]) -> list[float | None]:
        out: list[float | None] = []
        bar = _bar(len(posts), f"judge {self.name}")
        for post, x, y in zip(posts, a, b):
            first = self.a_first(post, x, y)
            shown_a, shown_b = (x, y) if first else (y, x)
            what = "news article" if post.source == "cnndm" else "forum post"
            body = post.text if post.source != "tldr" else f"TITLE: {post.title}\n\n{post.text}"
            prompt = PROMPT_TLDR.format(what=what, What=what.capitalize(), post=body, a=shown_a.strip(),
                                        b=shown_b.strip())
            choice = parse_choice(self.chat(prompt))
            if choice is None:
                self.unparsed += 1
                out.append(None)
            else:
                out.append(1.0 if (choice == "A") == first else 0.0)
            bar.update(1)
        bar.close()
        if self.unparsed:
            log.warning("judge %s: %d answers named neither A nor B (counted as no verdict)", self.name,
                        self.unparsed)
        return out

    def chat(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 256,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - a configured URL
                data = json.loads(resp.read().decode())
        except urllib.error.HTTPError as err:
            raise RunError(f"judge {self.name}: {self.base_url}/chat/completions answered HTTP {err.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise RunError(f"judge {self.name}: cannot reach {self.base_url} ({err})") from None
        except json.JSONDecodeError:
            raise RunError(f"judge {self.name}: {self.base_url} did not answer JSON") from None
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise RunError(f"judge {self.name}: the answer has no choices[0].message.content") from None


# ---------------------------------------------------------------------------------------------- construction


def build_judge(spec: JudgeSpec, cache_dir: Path, load_rm: Callable[[str], Any], bf16: bool | str = False
                ) -> Judge:
    """The judge object for a spec; its caches live in `cache_dir` (one directory per judge)."""
    import os

    if spec.kind == "rm":
        from rlhflab.models.ensemble import reward_members

        try:
            members = reward_members(spec.spec or "")
        except ValueError as err:
            raise RunError(f"judge {spec.name}: {err}") from None
        if not all(Path(m).expanduser().exists() or is_hub_id(m) for m in members):
            raise RunError(f"judge {spec.name}: spec={spec.spec}: not found — expected an `rlhflab rm` run "
                           "directory or a sequence-classification RM (directory or hub id)")
        return RMJudge(spec, cache_dir, load_rm, bf16=bf16)
    if spec.kind == "labels":
        return LabelsJudge(spec)
    if spec.kind == "python":
        return PythonJudge(spec, cache_dir)
    if spec.kind == "style":
        return StyleJudge(spec)
    return OpenAIJudge(spec, cache_dir, api_key=os.environ.get(spec.api_key_env) or None)


def _bar(total: int, desc: str):
    from rlhflab.core.progress import progress

    return progress(total, desc, "pair" if desc.startswith("judge") else "summary")
