"""ODIN (Chen et al. 2024): the Pearson term by hand, and on synthetic pairs where a planted feature and length both
decide the labels, two linear heads trained with ODIN's objective leave length to the length head and the planted
feature to the quality head — where one head learns length as much as the feature."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlhflab.ops.losses import odin_length_terms, pearson, preference_losses  # noqa: E402


def test_pearson_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(pearson(x, 2 * x + 1)) == pytest.approx(1.0, abs=1e-6)
    assert float(pearson(x, -x)) == pytest.approx(-1.0, abs=1e-6)
    # x̄ = 2.5, y = [1, 0, 0, 1]: Σ(x-x̄)(y-ȳ) = (-1.5)(.5)+(-.5)(-.5)+(.5)(-.5)+(1.5)(.5) = 0
    assert float(pearson(x, torch.tensor([1.0, 0.0, 0.0, 1.0]))) == pytest.approx(0.0, abs=1e-6)
    # y = [1, 2, 2, 4]: ȳ = 2.25; Σxy-terms = 4.5, Σ(x-x̄)² = 5, Σ(y-ȳ)² = 4.75 -> 4.5 / sqrt(23.75)
    assert float(pearson(x, torch.tensor([1.0, 2.0, 2.0, 4.0]))) == pytest.approx(4.5 / math.sqrt(23.75), abs=1e-6)
    assert float(pearson(x, torch.ones(4))) == 0.0  # a constant has no correlation (no NaN)


def test_odin_terms_are_the_quality_heads_abs_correlation_and_minus_the_length_heads():
    lengths = torch.tensor([10, 20, 30, 40])
    quality = torch.tensor([4.0, 3.0, 2.0, 1.0])  # perfectly anti-correlated with length
    length_scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    decorrelation, keep = odin_length_terms(quality, length_scores, lengths)
    assert float(decorrelation) == pytest.approx(1.0, abs=1e-6) and float(keep) == pytest.approx(-1.0, abs=1e-6)
    partly = torch.tensor([1.0, 3.0, 2.0, 4.0], requires_grad=True)  # Σ dev products 40 / sqrt(5 · 500): ρ = 0.8
    decorrelation, _ = odin_length_terms(partly, length_scores, lengths)
    assert float(decorrelation) == pytest.approx(0.8, abs=1e-6)
    decorrelation.backward()
    with torch.no_grad():  # one small step against the gradient lowers |ρ|
        assert float(odin_length_terms(partly - 0.1 * partly.grad, length_scores, lengths)[0]) < 0.8


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs of responses with features [planted, length, 6 noise]; the chosen one has the higher
    planted + length/10 (both drive the labels, length as strongly as the feature)."""
    g = torch.Generator().manual_seed(seed)
    planted = torch.randn(n, 2, generator=g)
    length = torch.randint(5, 40, (n, 2), generator=g).float()
    utility = planted + (length - 22) / 10
    first_wins = utility[:, 0] > utility[:, 1]
    feats = torch.cat([planted[..., None], (length[..., None] - 22) / 10, torch.randn(n, 2, 6, generator=g)], -1)
    chosen = torch.where(first_wins[:, None], feats[:, 0], feats[:, 1])
    rejected = torch.where(first_wins[:, None], feats[:, 1], feats[:, 0])
    len_c = torch.where(first_wins, length[:, 0], length[:, 1])
    len_r = torch.where(first_wins, length[:, 1], length[:, 0])
    return chosen, rejected, len_c, len_r


def _train(odin: bool, steps: int = 400) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)
    quality, length_head = torch.nn.Linear(8, 1), torch.nn.Linear(8, 1)
    params = list(quality.parameters()) + (list(length_head.parameters()) if odin else [])
    opt = torch.optim.Adam(params, lr=0.05)
    for step in range(steps):
        c, r, lc, lr_ = _synthetic(64, seed=step)
        qc, qr = quality(c).squeeze(-1), quality(r).squeeze(-1)
        if odin:
            sc, sr = qc + length_head(c).squeeze(-1), qr + length_head(r).squeeze(-1)
            decorrelation, keep = odin_length_terms(torch.cat([qc, qr]), torch.cat([length_head(c), length_head(r)])
                                                    .squeeze(-1), torch.cat([lc, lr_]))
            loss = preference_losses(sc, sr).mean() + decorrelation + keep
        else:
            loss = preference_losses(qc, qr).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return quality, length_head


def test_odins_quality_head_keeps_the_planted_feature_and_drops_length():
    c, r, lc, lr_ = _synthetic(4000, seed=10_000)  # held out
    feats, lengths = torch.cat([c, r]), torch.cat([lc, lr_])
    planted = feats[:, 0]
    single, _ = _train(odin=False)
    quality, length_head = _train(odin=True)
    with torch.no_grad():
        s_single, s_quality, s_length = (h(feats).squeeze(-1) for h in (single, quality, length_head))
        assert float(pearson(s_single, lengths)) > 0.4  # one head learns length as much as the feature
        assert abs(float(pearson(s_quality, lengths))) < 0.1  # ODIN's quality head does not
        assert float(pearson(s_quality, planted)) > 0.9  # ...and carries the planted feature
        assert float(pearson(s_length, lengths)) > 0.9  # the length head carries length
        # the quality head still orders pairs by the planted feature
        planted_wins = (c[:, 0] > r[:, 0]).float()
        assert float(((quality(c) > quality(r)).squeeze(-1).float() == planted_wins).float().mean()) > 0.95


def test_the_ensemble_rules_by_hand():
    from rlhflab.ops.losses import combine_ensemble

    scores = torch.tensor([[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]])  # 3 members x 2 responses
    assert combine_ensemble(scores, "mean").tolist() == [3.0, 1.0]
    assert combine_ensemble(scores, "min").tolist() == [1.0, 0.0]
    # population std: response 0 sqrt(((1-3)² + (2-3)² + (6-3)²) / 3) = sqrt(14/3); response 1 sqrt(2)
    assert combine_ensemble(scores, "uwo", 0.5).tolist() == pytest.approx([3 - 0.5 * math.sqrt(14 / 3),
                                                                           1 - 0.5 * math.sqrt(2)])
    with pytest.raises(ValueError, match="mean, min or uwo"):
        combine_ensemble(scores, "max")


def test_ensemble_specs_parse_or_say_what_is_wrong():
    from rlhflab.models.ensemble import parse_ensemble_spec

    assert parse_ensemble_spec("ensemble:uwo=0.5:a,b,c") == ("uwo", 0.5, ["a", "b", "c"])
    assert parse_ensemble_spec("ensemble:min:a,b") == ("min", 0.0, ["a", "b"])
    for bad, why in (("ensemble:mean:a", "at least two"), ("ensemble:max:a,b", "the rule is"),
                     ("ensemble:uwo:a,b", "the rule is"), ("ensemble:uwo=x:a,b", "must be a number")):
        with pytest.raises(ValueError, match=why):
            parse_ensemble_spec(bad)
