"""The paper's query and reference formats, and truncation of long posts to a token budget.

A query is what the policy sees before it writes a summary:

    SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:      (Reddit TL;DR)
    {article}\\n\\nTL;DR:                                               (CNN/DM zero-shot transfer)
    {passage}                                                          (book continuation, Ziegler et al. 2019)

Only the post/article body is ever cut: the header and the trailing "TL;DR:" must stay, or the policy is asked a
different question.

BOS: `query_prefix(tokenizer)` is the token(s) a tokenizer puts before a text when asked to add its special
tokens (Llama-3's `<|begin_of_text|>`, Gemma's `<bos>`, Mistral's `<s>`; nothing for GPT-2, Pythia, Qwen2 or the
embedded SmolLM2). Every query — SFT, RM, PPO, sampling, evaluation — is encoded by `encode_query`, so it starts
with that prefix everywhere, and the query budget counts it; responses never get one.

The tokenizer is duck-typed (`encode(text, add_special_tokens=False) -> list[int]`), so this
module needs neither torch nor transformers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

from rlhflab.data.records import Post

TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM_TEMPLATE = "{article}\n\nTL;DR:"
# The query of a comparison whose post was lost (data.postless): the TL;DR template with every field empty, so the
# summary still follows the "TL;DR:" cue at the end of a query laid out like every other (an empty query would
# put it at position 0, where the RM never reads a summary when it scores).
POSTLESS_QUERY = TLDR_TEMPLATE.format(subreddit="", title="", post="")

_WHITESPACE = re.compile(r"\s")
# A sentence ends at . ! or ? (closing quotes or brackets after it belong to it) followed by whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?][\"”’')\]]*(?=\s|$)")


class Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def query_prefix(tokenizer: Encoder) -> list[int]:
    """The ids the tokenizer adds in front of a text with its special tokens on ([] when it adds none).

    Found by encoding a probe both ways, so it follows the tokenizer's own post-processor (whatever
    `add_bos_token` says) rather than guessing from `bos_token`. Cached on the tokenizer."""
    cached = getattr(tokenizer, "_rlhflab_query_prefix", None)
    if cached is not None:
        return list(cached)
    probe = "Hello"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe, add_special_tokens=True)
    n = len(full) - len(plain)
    prefix = []
    for start in range(n + 1):  # where the plain ids sit inside the full ones; the ids before them are the prefix
        if full[start : start + len(plain)] == plain:
            prefix = list(full[:start])
            break
    try:
        tokenizer._rlhflab_query_prefix = tuple(prefix)
    except AttributeError:  # a tokenizer that refuses new attributes: recomputed each time
        pass
    return prefix


def encode_query(tokenizer: Encoder, text: str) -> list[int]:
    """A formatted query's ids: the tokenizer's BOS (if it uses one), then the text without special tokens."""
    return query_prefix(tokenizer) + tokenizer.encode(text, add_special_tokens=False)


def render_query(post: Post, body: str | None = None) -> str:
    """The query for `post` with `body` (default: the whole post text) in place of the post or article.

    Posts with source "query" are already formatted (plain preference pairs that give a "query"): returned as is.
    """
    body = post.text if body is None else body
    if post.source == "cnndm":
        return CNNDM_TEMPLATE.format(article=body)
    if post.source in ("query", "books"):
        return body
    return TLDR_TEMPLATE.format(subreddit=post.subreddit, title=post.title, post=body)


def format_query(post: Post, tokenizer: Encoder, max_query_tokens: int) -> str:
    """The formatted query, with the body truncated so the query is at most `max_query_tokens` tokens.

    - If the whole query fits, it is returned unchanged.
    - Otherwise the body is cut at the last newline that lets the query fit (the paper's rule: whole
      paragraphs/lines survive), with trailing whitespace stripped from the kept text.
    - If not even the first line fits, it is cut at the last whitespace that fits (a cut inside a word would
      hand the policy a half word); if no word boundary fits, at the last character that fits; an empty body
      is the last resort.
    - A book passage (source "books") keeps its leading whole sentences that fit; if not even one does,
      ValueError.
    - If even an empty body does not fit (the title alone is too long), ValueError: the caller should drop the
      post or raise the budget, not get a query without its "TL;DR:".

    Cut points are found by binary search over candidate positions, so a 4000-token CNN/DM article costs about
    log2(#cuts) tokenisations rather than one per line. Every returned query has been measured, so the budget is
    never exceeded even where the tokenizer is not monotone in the cut (BPE merges across the cut).
    Preformatted queries (source "query") cannot be cut without losing their "TL;DR:" and raise ValueError.
    """
    if max_query_tokens < 1:
        raise ValueError(f"max_query_tokens must be >= 1, got {max_query_tokens}")

    def n_tokens(text: str) -> int:
        return len(encode_query(tokenizer, text))

    full = render_query(post)
    if n_tokens(full) <= max_query_tokens:
        return full
    if post.source == "query":
        raise ValueError(f"post {post.id}: the preformatted query is longer than {max_query_tokens} tokens")
    if post.source == "books":
        return _sentences_that_fit(post, n_tokens, max_query_tokens)

    def fits(cut: int) -> bool:
        return n_tokens(render_query(post, _kept(post.text, cut))) <= max_query_tokens

    text = post.text
    for cuts in (_newline_cuts(text), _whitespace_cuts(text), range(len(text))):
        cut = _last_fitting(cuts, fits)
        if cut is not None:
            return render_query(post, _kept(text, cut))
    raise ValueError(f"post {post.id}: the query does not fit in {max_query_tokens} tokens even with an empty "
                     f"{'article' if post.source == 'cnndm' else 'post'}")


query_for = format_query


def format_queries(posts: Sequence[Post], tokenizer: Encoder, max_query_tokens: int
                   ) -> tuple[list[Post], list[str], int]:
    """(the posts whose query fits, their queries, how many were dropped): a post that cannot fit the budget even
    cut (a title longer than it; a book passage whose first sentence is) is left out, not an error."""
    kept, queries = [], []
    for post in posts:
        try:
            queries.append(format_query(post, tokenizer, max_query_tokens))
        except ValueError:
            continue
        kept.append(post)
    return kept, queries, len(posts) - len(kept)


def _sentences_that_fit(post: Post, n_tokens: Callable[[str], int], max_query_tokens: int) -> str:
    """A book passage's leading whole sentences that fit the budget (Ziegler et al.'s queries start and end at a
    sentence); ValueError when not even the first sentence fits (the caller drops the passage)."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(post.text)]
    cut = _last_fitting(cuts, lambda c: n_tokens(post.text[:c]) <= max_query_tokens)
    if cut is None:
        raise ValueError(f"post {post.id}: not even the first sentence of the passage fits in {max_query_tokens} "
                         "tokens")
    return post.text[:cut]


def format_reference(summary: str, eos_token: str) -> str:
    """A reference summary as the SFT target: a leading space (the query ends in "TL;DR:") and the EOS token,
    so the policy learns to start with a space and to stop by itself. An empty summary is the EOS token alone;
    an empty one that did not end (no EOS: a policy's sample of whitespace cut at the token limit) is the space
    alone, so every response has at least one token to be scored at."""
    body = summary.strip()
    return (" " + body if body or not eos_token else "") + eos_token


def _kept(text: str, cut: int) -> str:
    return text[:cut].rstrip()


def _newline_cuts(text: str) -> list[int]:
    return [m.start() for m in re.finditer("\n", text)]


def _whitespace_cuts(text: str) -> list[int]:
    return [m.start() for m in _WHITESPACE.finditer(text)]


def _last_fitting(cuts: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The largest cut with fits(cut), assuming fits is (nearly) monotone decreasing; None if the smallest fails.

    Only cuts that were actually measured are returned, so a non-monotone tokenizer can cost a shorter cut but
    never an over-budget query.
    """
    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(cuts[mid]):
            best, lo = cuts[mid], mid + 1
        else:
            hi = mid - 1
    return best


__all__ = ["CNNDM_TEMPLATE", "TLDR_TEMPLATE", "format_queries", "format_query", "format_reference", "query_for", "render_query"]
