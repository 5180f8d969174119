"""Comparisons that lost their posts (issue 19): loading, the placeholder query, k-fold by post, training phases,
weighted losses — pure functions, hand-checked."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from rlhflab.data.format import POSTLESS_QUERY, TLDR_TEMPLATE  # noqa: E402
from rlhflab.data.loaders import load_postless_pairs  # noqa: E402
from rlhflab.data.records import Comparison, Post, Summary  # noqa: E402
from rlhflab.data.jsonl import DataError  # noqa: E402
from rlhflab.data.splits import fold_by_post, split_by_post  # noqa: E402
from rlhflab.ops.losses import preference_loss, preference_losses, weighted_mean  # noqa: E402
from rlhflab.train.common import epoch_batches, phased_batches, plan_phases  # noqa: E402

ROWS = [{"id": "train-00000", "chosen": " she is mad I booked it", "rejected": " mum is mad", "chosen_policy": "sup1",
         "rejected_policy": "ref", "batch": "batch3"},
        {"id": "train-00001", "chosen": " a second one", "rejected": " another"}]


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_a_postless_pair_loads_with_the_placeholder_query(tmp_path):
    [a, b] = load_postless_pairs(_write(tmp_path / "p.jsonl", ROWS))
    assert POSTLESS_QUERY == TLDR_TEMPLATE.format(subreddit="", title="", post="")
    assert POSTLESS_QUERY == "SUBREDDIT: r/\n\nTITLE: \n\nPOST: \n\nTL;DR:"
    assert a.post == Post(id="postless", text=POSTLESS_QUERY, source="query")  # preformatted: never wrapped again
    assert (a.chosen.text, a.rejected.text, a.choice) == (" she is mad I booked it", " mum is mad", 0)
    assert (a.summaries[0].policy, a.summaries[1].policy, a.batch, a.extra) == ("sup1", "ref", "batch3",
                                                                                {"id": "train-00000"})
    assert b.post.id == "postless" and b.batch == "" and b.summaries[0].policy == ""
    [empty] = load_postless_pairs(_write(tmp_path / "e.jsonl", [{"chosen": " x", "rejected": ""}]))
    assert empty.rejected.text == ""  # an empty summary is a response (EOS alone), not a malformed row


@pytest.mark.parametrize("bad, field", [({"rejected": " x"}, "chosen"), ({"chosen": " x", "rejected": 3}, "rejected"),
                                        ({"chosen": " x", "rejected": " y", "post": "a post"}, "post")])
def test_a_bad_postless_row_is_refused_naming_its_line_and_field(tmp_path, bad, field):
    path = _write(tmp_path / "p.jsonl", [ROWS[0], bad])
    with pytest.raises(DataError) as err:
        load_postless_pairs(path)
    assert "p.jsonl line 2" in str(err.value) and f"field '{field}'" in str(err.value)


def test_a_postless_pair_tokenises_as_the_documented_query_then_the_summary(tmp_path):
    from rlhflab.data.format import format_query

    class Words:  # a whitespace tokenizer: one id per word, enough to see what is encoded
        def encode(self, text, add_special_tokens=False):
            return [hash(w) % 1000 for w in text.split()]

    [a, _] = load_postless_pairs(_write(tmp_path / "p.jsonl", ROWS))
    assert format_query(a.post, Words(), 64) == POSTLESS_QUERY  # taken as is, the "TL;DR:" cue kept last


def _comparisons(n_posts: int) -> list[Comparison]:
    return [Comparison(post=Post(id=f"t3_{i}", text="p"), summaries=(Summary(f" a{i}{j}"), Summary(f" b{i}{j}")),
                       choice=0) for i in range(n_posts) for j in range(2)]


def test_k_folds_by_post_are_disjoint_cover_every_post_and_keep_a_posts_pairs_together():
    rows = _comparisons(200)
    devs = [fold_by_post(rows, 5, k)[1] for k in range(5)]
    ids = [{c.post.id for c in d} for d in devs]
    assert sum(map(len, ids)) == 200 and set().union(*ids) == {c.post.id for c in rows}
    assert all(30 <= len(i) <= 60 for i in ids)  # about 40 posts each
    for k in range(5):
        train, dev = fold_by_post(rows, 5, k)
        assert not {c.post.id for c in train} & {c.post.id for c in dev} and len(train) + len(dev) == 400
    # the folds cut the same hash as split_by_post: fold 0 of 5 is the 20% dev split
    assert fold_by_post(rows, 5, 0)[1] == split_by_post(rows, 0.2)[1]
    with pytest.raises(ValueError):
        fold_by_post(rows, 5, 5)


def test_one_phase_is_epoch_batches_and_a_first_phase_leaves_the_main_phase_unchanged():
    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10, 11, 12]  # 0..7 main, 8..11 post-less
    main, extra = range(8), range(8, 12)
    single = list(phased_batches(lengths[:8], [(main, 2)], 2, 5, 0, 8))
    assert [b for _, b in single] == [b for _, _, b in epoch_batches(lengths[:8], 2, 5, 4, 0, 8)]
    assert [e for e, _ in single] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    per_epoch, total = plan_phases([(extra, 1), (main, 2)], 2, None)
    assert (per_epoch, total) == ([2, 4], 10)
    first = list(phased_batches(lengths, [(extra, 1), (main, 2)], 2, 5, 0, total))
    assert all(i in extra for _, b in first[:2] for i in b) and sorted(i for _, b in first[:2] for i in b) == [8, 9, 10, 11]
    assert [b for _, b in first[2:]] == [b for _, b in single]  # the comparisons' batches as without post-less pairs
    assert [e for e, _ in first] == [0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]
    resumed = list(phased_batches(lengths, [(extra, 1), (main, 2)], 2, 5, 1, 7))  # a resume mid-phase-one
    assert resumed == first[1:7]


def test_weighted_mean_by_hand():
    r_c, r_r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    losses = preference_losses(r_c, r_r)
    assert losses.tolist() == pytest.approx([0.126928, 0.693147], abs=1e-5)  # -log σ(2), -log σ(0)
    assert float(weighted_mean(losses, torch.ones(2))) == pytest.approx(float(preference_loss(r_c, r_r)))
    assert float(weighted_mean(losses, torch.tensor([1.0, 0.5]))) == pytest.approx((0.126928 + 0.5 * 0.693147) / 2,
                                                                                 abs=1e-5)


def test_reward_data_refuses_folds_with_a_dev_file_and_a_fold_out_of_range():
    from rlhflab.core.config import ConfigError, load_config
    from rlhflab.train.reward import RewardConfig

    for bad in (["data.folds=5", "data.fold=5"], ["data.folds=1"], ["data.folds=5", "data.dev=x.jsonl"],
                ["data.postless_weight=0"], ["data.postless_epochs=0"]):
        with pytest.raises(ConfigError):
            load_config(RewardConfig, "configs/rm/tiny.yaml", bad)
