"""The eval report's pictures (matplotlib, PNG files in the run directory) and its self-contained HTML page.

`write_plots` draws whatever the report has data for: win rates with their intervals, score distributions, the
KL curve, best-of-N against N, RM accuracy against labeler confidence, and the transfer results. `write_html`
puts the tables, the plots (embedded as base64 data URIs, so the page is one file) and a table of posts with the
reference and every policy's summary into report.html. Every piece of text from data (posts, summaries, names,
paths) is HTML-escaped: posts are unmoderated Reddit text and may contain anything.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PLOTS = ("win_rate", "scores", "pareto", "kl_curve", "best_of_n", "rm_confidence", "transfer")


# ---------------------------------------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'rlhflab[train]'): the report has no plots")
        return None
    return plt


# the plots drawn from one report section, which they skip when the report has none
PLOT_SECTIONS = {"pareto": "pareto", "kl_curve": "kl_curve", "best_of_n": "best_of_n",
                 "rm_confidence": "rm_accuracy_vs_confidence", "transfer": "transfer"}


def write_plots(out: Path, report: dict[str, Any],
                score_values: dict[str, dict[str, list[float]]] | None = None) -> dict[str, str]:
    """Draw every plot the report has data for into `out/<name>.png`; returns {name: file name}.
    `score_values`: judge -> policy (or "(reference)") -> the RM scores of its summaries."""
    plt = _pyplot()
    if plt is None:
        return {}
    files: dict[str, str] = {}
    drawers = {"win_rate": _win_rate, "scores": _scores, "pareto": _pareto, "kl_curve": _kl_curve,
               "best_of_n": _best_of_n, "rm_confidence": _rm_confidence, "transfer": _transfer}
    for name in PLOTS:
        if name in PLOT_SECTIONS and not report.get(PLOT_SECTIONS[name]):
            continue
        fig = drawers[name](plt, report, score_values or {}) if name == "scores" else drawers[name](plt, report)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        files[name] = f"{name}.png"
    return files


def _err(rate: float | None, ci: list[float] | None) -> tuple[float, float]:
    if rate is None or ci is None:
        return 0.0, 0.0
    return max(rate - ci[0], 0.0), max(ci[1] - rate, 0.0)


def _rate_bars(ax, policies: dict[str, Any], judge: str, title: str) -> None:
    names = list(policies)
    xs = range(len(names))
    for off, key, label in ((-0.2, "win_rate", "win rate"), (0.2, "length_controlled_win_rate",
                                                              "length-controlled")):
        vals = [policies[n]["by_judge"][judge][key] or 0.0 for n in names]
        errs = list(zip(*[_err(policies[n]["by_judge"][judge][key], policies[n]["by_judge"][judge][key + "_ci"])
                          for n in names])) or [[], []]
        ax.bar([x + off for x in xs], vals, width=0.4, yerr=errs, capsize=3, label=label)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{n}\n{policies[n]['mean_tokens']:.0f} tok" for n in names], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("P(preferred to the reference)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=2)


def _win_rate_axes(ax, xlabel: str, title: str) -> None:
    """A win-rate-against-the-reference axis (0–1, chance at 0.5) for curves over KL or N."""
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("win rate vs reference")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _win_rate(plt, report: dict[str, Any]):
    judges = [j["name"] for j in report["judges"]]
    fig, axes = plt.subplots(1, len(judges), figsize=(1.2 + 1.4 * len(report["policies"]) * len(judges), 4),
                             squeeze=False)
    for ax, judge in zip(axes[0], judges):
        _rate_bars(ax, report["policies"], judge, f"judge: {judge} ({report['posts']['n']} posts)")
    return fig


def _scores(plt, report: dict[str, Any], dist: dict[str, dict[str, list[float]]]):
    rm_judges = [j["name"] for j in report["judges"] if j["kind"] == "rm"]
    if not rm_judges:
        return None
    fig, axes = plt.subplots(1, len(rm_judges), figsize=(1.5 + 1.3 * len(report["policies"]) * len(rm_judges), 4),
                             squeeze=False)
    for ax, judge in zip(axes[0], rm_judges):
        values = dist.get(judge, {})
        names = [n for n in report["policies"] if n in values and report["policies"][n]["kind"] != "reference"]
        data = [values[n] for n in names] + ([values["(reference)"]] if "(reference)" in values else [])
        labels = names + (["(reference)"] if "(reference)" in values else [])
        if not data:
            continue
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(labels, fontsize=8, rotation=20)
        ax.axhline(0.0, color="grey", ls="--", lw=1)
        ax.set_ylabel(f"{judge} score")
        ax.set_title(f"score distribution, judge {judge}", fontsize=9)
    return fig


def _pareto(plt, report: dict[str, Any]):
    """Each judge: every policy at (mean tokens, mean score ± CI), the Pareto front joined, the length-controlled
    win rate in each label. A policy below the front is beaten by one no longer than it."""
    views = report["pareto"]
    fig, axes = plt.subplots(1, len(views), figsize=(5.2 * len(views), 4.2), squeeze=False)
    for ax, (judge, view) in zip(axes[0], views.items()):
        pts = [p for p in view["points"] if p["y"] is not None]
        for p in pts:
            err = [[p["y"] - p["y_ci"][0]], [p["y_ci"][1] - p["y"]]] if p["y_ci"] else None
            ax.errorbar(p["mean_tokens"], p["y"], yerr=err, fmt="o" if p.get("on_front") else "s", capsize=3,
                        color="C0" if p.get("on_front") else "C7")
            lc = p["length_controlled_win_rate"]
            ax.annotate(p["policy"] + (f"\nLC {lc:.2f}" if lc is not None else ""), (p["mean_tokens"], p["y"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = sorted((p["mean_tokens"], p["y"]) for p in pts if p.get("on_front"))
        if len(front) > 1:
            ax.plot(*zip(*front), color="C0", lw=1, ls="--", label="Pareto front")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("mean summary length (tokens)")
        ax.set_ylabel(f"{view['y']} [{judge}]")
        ax.set_title(f"judge {judge}: better, or only longer?", fontsize=9)
    return fig


def _kl_curve(plt, report: dict[str, Any]):
    curve = report["kl_curve"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    train = [t for t in curve["training"] if t["kl"] is not None and t["score"] is not None]
    if train:
        a1.plot([t["kl"] for t in train], [t["score"] for t in train], ".", color="grey", alpha=0.5,
                label="PPO training rollouts (one dot an update)")
    pts = [p for p in curve["points"] if p["kl"] is not None]
    if pts and "reward_score" in pts[0]:
        a1.plot([p["kl"] for p in pts], [p["reward_score"] for p in pts], "o-", label="eval (greedy)")
        for p in pts:
            a1.annotate(str(p["update"]), (p["kl"], p["reward_score"]), textcoords="offset points", xytext=(3, 3),
                        fontsize=7)
    a1.set_xlabel("KL(policy ‖ SFT), nats")
    a1.set_ylabel(f"score of the optimised RM\n{curve.get('reward')}", fontsize=8)
    a1.set_title("reward-model score vs KL", fontsize=9)
    a1.legend(fontsize=7)
    for judge in [j["name"] for j in report["judges"]]:
        rows = [p for p in pts if p["by_judge"][judge]["win_rate"] is not None]
        if not rows:
            continue
        errs = list(zip(*[_err(p["by_judge"][judge]["win_rate"], p["by_judge"][judge]["win_rate_ci"])
                          for p in rows]))
        a2.errorbar([p["kl"] for p in rows], [p["by_judge"][judge]["win_rate"] for p in rows], yerr=errs,
                    fmt="o-", capsize=3, label=f"judge {judge}")
    _win_rate_axes(a2, "KL(policy ‖ SFT), nats", f"win rate vs KL ({curve['n_posts']} posts per point)")
    return fig


def _best_of_n(plt, report: dict[str, Any]):
    bon = report["best_of_n"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    for judge, r in bon["by_judge"].items():
        if all(v is not None for v in r["win_rate"]):
            a1.plot(bon["k"], r["win_rate"], "o-", label=f"judge {judge}")
    a1.set_xscale("log", base=2)
    _win_rate_axes(a1, "N (best of N)", f"best-of-N win rate ({bon['n_posts']} posts)")
    a2.plot(bon["k"], bon["mean_reward_score"], "o-")
    a2.set_xscale("log", base=2)
    a2.set_xlabel("N (best of N)")
    a2.set_ylabel("mean score of the ranking RM")
    a2.set_title("E[best-of-N score]", fontsize=9)
    return fig


def _rm_confidence(plt, report: dict[str, Any]):
    runs = report["rm_accuracy_vs_confidence"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in runs:
        ds = list(r["per_confidence"])
        xs = [int(d) for d in ds]
        acc = [r["per_confidence"][d]["accuracy"] for d in ds]
        errs = list(zip(*[_err(r["per_confidence"][d]["accuracy"], r["per_confidence"][d]["accuracy_ci"])
                          for d in ds]))
        line = ax.errorbar(xs, acc, yerr=errs, fmt="o-", capsize=3, label=f"{Path(str(r['run'])).name}")
        ax.plot(xs, [r["per_confidence"][d]["length_baseline_accuracy"] for d in ds], "--",
                color=line[0].get_color(), alpha=0.6, label="  longer wins (same pairs)")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xticks(sorted({int(d) for r in runs for d in r["per_confidence"]}))
    ax.set_xlabel("labeler confidence |c − 5| (1 = barely, 4 = certain)")
    ax.set_ylabel("RM accuracy")
    ax.set_title("reward-model accuracy vs labeler confidence", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _transfer(plt, report: dict[str, Any]):
    tr = report["transfer"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    judge = report["primary_judge"]
    _rate_bars(a1, tr["policies"], judge, f"CNN/DM transfer, judge {judge} ({tr['posts']['n']} articles)")
    names = [n for n, r in tr["policies"].items() if r["kind"] != "reference"]  # the reference scores 1 trivially
    for off, key in ((-0.27, "rouge1"), (0.0, "rouge2"), (0.27, "rougeL")):
        a2.bar([i + off for i in range(len(names))], [tr["policies"][n]["rouge"][key] for n in names], width=0.27,
               label=key)
    a2.set_xticks(range(len(names)))
    a2.set_xticklabels(names, fontsize=8)
    a2.set_ylabel("F1 against the highlights")
    a2.set_title("ROUGE on CNN/DM", fontsize=9)
    a2.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;white-space:nowrap}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#555;font-size:13px} details{font-size:12px;max-width:420px} .ref{background:#fafae8}
.scroll{overflow-x:auto;max-width:100%} .verdict{font-size:16px;background:#eef4fb;padding:.6em .9em}
"""


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return e(v)


def ci(rate: Any, interval: Any) -> str:
    if rate is None:
        return "—"
    return f"{rate:.3f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def image(out: Path, name: str) -> str:
    path = out / f"{name}.png"
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{e(name)}" src="data:image/png;base64,{data}">'


def policy_table(policies: dict[str, Any], judges: list[dict[str, Any]], with_kl: bool = True) -> str:
    rm_judges = [j["name"] for j in judges if j["kind"] == "rm"]
    head = ["policy", "kind"] + [f"win rate [{j['name']}]" for j in judges] + \
           [f"length-controlled [{j['name']}]" for j in judges] + ["mean tokens", "ROUGE-1", "ROUGE-2", "ROUGE-L"] + \
           (["KL (nats)"] if with_kl else []) + [f"mean score [{j}]" for j in rm_judges] + ["EOS rate"]
    rows = []
    for name, r in policies.items():
        cells = [f"<b>{e(name)}</b>", e(r["kind"])]
        cells += [ci(r["by_judge"][j["name"]]["win_rate"], r["by_judge"][j["name"]]["win_rate_ci"]) +
                  f" <span class=note>n={r['by_judge'][j['name']]['n']}</span>" for j in judges]
        cells += [ci(r["by_judge"][j["name"]]["length_controlled_win_rate"],
                     r["by_judge"][j["name"]]["length_controlled_win_rate_ci"]) for j in judges]
        cells += [num(r["mean_tokens"], 1)] + [num(r["rouge"][k]) for k in ("rouge1", "rouge2", "rougeL")]
        if with_kl:
            cells.append(num(r["kl"], 2) + (f" ± {r['kl_se']:.2f}" if r.get("kl_se") else ""))
        cells += [num((r["by_judge"][j].get("score") or {}).get("mean")) for j in rm_judges]
        cells.append(num(r["eos_rate"], 2))
        rows.append("<tr>" + "".join(f"<td class=num>{c}</td>" if i > 1 else f"<td>{c}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def examples_table(set_result: dict[str, Any], n: int, judges: list[dict[str, Any]]) -> str:
    posts, refs, texts = set_result["posts"], set_result["refs"], set_result["texts"]
    rm_judge = next((j["name"] for j in judges if j["kind"] == "rm"), None)
    scores = set_result["scores"].get(rm_judge, {}) if rm_judge else {}
    names = [k for k, pt in texts.items() if pt.spec.kind != "reference"]
    head = ["post", "reference"] + names
    rows = []
    for i, p in enumerate(posts[:n]):
        title = f"r/{p.subreddit} — {p.title}" if p.source == "tldr" else p.id
        cells = [f"<b>{e(title)}</b><details><summary>{e(p.id)}</summary>{e(p.text)}</details>",
                 f"<div class=ref>{e(refs[i].text)}</div>"
                 + (f"<div class=note>{e(rm_judge)}: {scores['(reference)'][i]:.2f}</div>" if scores else "")]
        for name in names:
            t = texts[name].texts[i]
            cell = e(t.text.strip()) + ("" if t.eos else " <span class=note>[cut]</span>")
            if name in scores:
                cell += f"<div class=note>{e(rm_judge)}: {scores[name][i]:.2f}</div>"
            cells.append(cell)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def write_html(path: Path, report: dict[str, Any], out: Path, main: dict[str, Any],
               transfer: dict[str, Any] | None, n_examples: int) -> None:
    """report.html: the settings, judges and policies, then a section for each result the report holds."""
    from rlhflab.core.rundir import atomic_write_text

    judges = report["judges"]
    parts = _heading(report) + _judges_table(report)
    parts.append("<h2>Policies against the reference</h2>" + policy_table(report["policies"], judges))
    parts.append(image(out, "win_rate") + image(out, "scores"))
    if report.get("pareto"):
        parts += _pareto_section(report, out)
    if report.get("likert"):
        parts += _likert_section(report["likert"])
    if report.get("kl_curve"):
        parts += _kl_curve_section(report["kl_curve"], judges, out)
    if report.get("best_of_n"):
        parts += _best_of_n_section(report["best_of_n"], out)
    if report.get("rm_accuracy_vs_confidence"):
        parts += _rm_confidence_section(report["rm_accuracy_vs_confidence"], out)
    if transfer is not None and report.get("transfer"):
        parts.append(_transfer_section(report["transfer"], judges, out))
    parts.append("<h2>Definitions</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>"
                                                      for k, v in report["definitions"].items()) + "</ul>")
    parts.append(f"<h2>Summaries</h2><p class=note>The first {min(n_examples, report['posts']['n'])} posts.</p>"
                 + examples_table(main, n_examples, judges))
    if transfer is not None:
        parts.append("<h3>CNN/DM</h3>" + examples_table(transfer, min(n_examples, 10), judges))
    parts.append("</body></html>\n")
    # every table scrolls inside its own box: a wide one (many judges) never cuts off columns or widens the page
    page = "\n".join(parts).replace("<table>", "<div class=scroll><table>").replace("</table>", "</table></div>")
    atomic_write_text(path, page)


# Each section below is a list of the page's parts, which write_html joins with newlines.

def _heading(report: dict[str, Any]) -> list[str]:
    return [f"<!doctype html><html><head><meta charset=utf-8><title>rlhflab eval report</title><style>{CSS}"
            "</style></head><body>",
            "<h1>Does the policy beat the humans' own TL;DRs?</h1>",
            f"<p class=verdict>{e(verdict(report))}</p>",
            f"<p class=note>{e(report['posts']['n'])} posts from {e(report['posts']['file'])}; summaries "
            f"{e(report['definitions']['sampling'])}, at most {e(report['settings']['max_new_tokens'])} new tokens; "
            f"lengths in {e(report['definitions']['length_unit'])}.</p>"]


def verdict(report: dict[str, Any]) -> str:
    """One sentence for the first screen: which policy the primary judge prefers to the reference most often,
    whether that rate is beyond its CI from 0.5, and whether it is beyond the runner-up's."""
    judge, level = report["primary_judge"], report["settings"].get("ci_level", 0.95)
    rated = sorted(((r["by_judge"][judge]["win_rate"], name, r["by_judge"][judge]) for name, r in
                    report["policies"].items() if r["by_judge"][judge]["win_rate"] is not None), reverse=True)
    if not rated:
        return f"No policy has a win rate on the primary judge ({judge})."
    rate, name, best = rated[0]
    lo, hi = best["win_rate_ci"]
    side = ("above 0.5 beyond its" if lo > 0.5 else "below 0.5 beyond its" if hi < 0.5 else "within its")
    text = (f"On the primary judge ({judge}), {name} is preferred to the reference most often: {rate:.3f} "
            f"[{lo:.2f}, {hi:.2f}] of {best['n']} posts, {side} {level:.0%} CI")
    if len(rated) == 1:
        return text + "."
    rate2, name2, second = rated[1]
    runner_up = (f"; ahead of {name2} ({rate2:.3f} [{second['win_rate_ci'][0]:.2f}, "
                 f"{second['win_rate_ci'][1]:.2f}])")
    d = pair_difference(report, judge, name, name2)
    if d is None or d["differ"] is None:
        return text + runner_up + "."
    gap = f"by {d['win_rate_difference']:+.3f} [{d['win_rate_difference_ci'][0]:+.2f}, " \
          f"{d['win_rate_difference_ci'][1]:+.2f}] on the same {d['n']} posts"
    return text + runner_up + (f" {gap}, beyond its CI." if d["differ"] else
                               f", but {gap}: the two are not shown to differ.")


def pair_difference(report: dict[str, Any], judge: str, a: str, b: str) -> dict[str, Any] | None:
    """The judge's paired difference of policies a and b (win rates and, for a scoring judge, scores), signed as
    a − b."""
    fit = next(j for j in report["judges"] if j["name"] == judge)
    for d in fit.get("differences") or []:
        if {d["a"], d["b"]} == {a, b}:
            if d["a"] == a:
                return d
            flipped = {**d, "a": a, "b": b}
            for key in ("win_rate_difference", "score_difference"):
                if d.get(key) is not None:
                    flipped[key] = -d[key]
                if d.get(key + "_ci") is not None:
                    flipped[key + "_ci"] = [-d[key + "_ci"][1], -d[key + "_ci"][0]]
            return flipped
    return None


def _judges_table(report: dict[str, Any]) -> list[str]:
    parts = ["<h2>Judges</h2><table><tr><th>judge</th><th>kind</th><th>spec</th><th>note</th></tr>"]
    for j in report["judges"]:
        primary = " (primary)" if j["name"] == report["primary_judge"] else ""
        parts.append(f"<tr><td>{e(j['name'])}{primary}</td><td>{e(j['kind'])}</td><td>{e(j['spec'])}</td>"
                     f"<td>{e(j['note'])}</td></tr>")
    return parts + ["</table>"]


def _pareto_section(report: dict[str, Any], out: Path) -> list[str]:
    """Score against length for every judge, then every two policies on the primary judge: do they differ?"""
    parts = ["<h2>More than length? Score against summary length</h2><p class=note>A policy off the Pareto front "
             "is beaten by one that is no longer: its gain is explained by length. The length-controlled win rate "
             "is the win rate predicted at the reference's length.</p>" + image(out, "pareto")]
    for judge, view in report["pareto"].items():
        parts.append(f"<h3>judge {e(judge)}</h3><table><tr><th>policy</th><th>mean tokens</th><th>{e(view['y'])}"
                     "</th><th>length-controlled win rate</th><th>on the front</th></tr>")
        for p in view["points"]:
            y = num(p["y"]) + (f" [{p['y_ci'][0]:.2f}, {p['y_ci'][1]:.2f}]" if p["y_ci"] else "")
            parts.append(f"<tr><td>{e(p['policy'])}</td><td class=num>{num(p['mean_tokens'], 1)}</td>"
                         f"<td class=num>{y}</td><td class=num>"
                         f"{ci(p['length_controlled_win_rate'], p['length_controlled_win_rate_ci'])}</td>"
                         f"<td>{'yes' if p.get('on_front') else 'no'}</td></tr>")
        parts.append("</table>")
    return parts + _differences_table(report)


def _differences_table(report: dict[str, Any]) -> list[str]:
    judge = report["primary_judge"]
    diffs = next(j for j in report["judges"] if j["name"] == judge).get("differences") or []
    if not diffs:
        return []
    scored = "score_difference" in diffs[0]
    parts = [f"<h3>Which policies differ (judge {e(judge)}, paired on the same posts)</h3><table><tr><th>a − b"
             "</th><th>posts</th><th>win-rate difference [CI]</th>" + ("<th>score difference [CI]</th>" if scored
                                                                        else "") + "<th>verdict</th></tr>"]
    for d in diffs:
        verdict_text = ("differ" if d["differ"] else "not shown to differ" if d["differ"] is False else "—")
        cells = [f"{e(d['a'])} − {e(d['b'])}", e(d["n"]), ci(d["win_rate_difference"], d["win_rate_difference_ci"])]
        if scored:
            cells.append(ci(d["score_difference"], d["score_difference_ci"]))
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{verdict_text}</td></tr>")
    return parts + ["</table>"]


def _likert_section(lk: dict[str, Any]) -> list[str]:
    axes = sorted({a for v in lk["per_policy"].values() for a in v})
    parts = [f"<h2>Likert ratings (1–7)</h2><p class=note>{e(lk['n_matched'])} of {e(lk['n_ratings'])} "
             f"ratings in {e(lk['file'])} matched a summary.</p><table><tr><th>policy</th>"
             + "".join(f"<th>{e(a)}</th>" for a in axes) + "</tr>"]
    for name, v in lk["per_policy"].items():
        parts.append(f"<tr><td>{e(name)}</td>" + "".join(
            f"<td class=num>{num(v[a]['mean'], 2)} (n={v[a]['n']})</td>" if a in v else "<td>—</td>"
            for a in axes) + "</tr>")
    return parts + ["</table>"]


def _kl_curve_section(c: dict[str, Any], judges: list[dict[str, Any]], out: Path) -> list[str]:
    parts = [f"<h2>Over-optimisation: reward and win rate against KL</h2><p class=note>{e(c['note'])}. "
             f"PPO run {e(c['ppo_run'])}, {e(c['n_snapshots'])} snapshots.</p>" + image(out, "kl_curve"),
             "<table><tr><th>update</th><th>KL</th><th>RM score</th><th>mean tokens</th>"
             + "".join(f"<th>win rate [{e(j['name'])}]</th>" for j in judges) + "</tr>"]
    for p in c["points"]:
        parts.append(f"<tr><td>{e(p['update'])}</td><td class=num>{num(p['kl'], 2)}</td>"
                     f"<td class=num>{num(p.get('reward_score'))}</td><td class=num>{num(p['mean_tokens'], 1)}</td>"
                     + "".join(f"<td class=num>{ci(p['by_judge'][j['name']]['win_rate'], p['by_judge'][j['name']]['win_rate_ci'])}</td>"
                               for j in judges) + "</tr>")
    return parts + ["</table>"]


def _best_of_n_section(b: dict[str, Any], out: Path) -> list[str]:
    parts = [f"<h2>Best-of-N: win rate against N</h2><p class=note>{e(b['note'])}. Run {e(b['run'])}, "
             f"{e(b['n_posts'])} posts.</p>" + image(out, "best_of_n"),
             "<table><tr><th>N</th><th>KL bound</th><th>mean score</th><th>mean tokens</th>"
             + "".join(f"<th>win rate [{e(j)}]</th>" for j in b["by_judge"]) + "</tr>"]
    for i, k in enumerate(b["k"]):
        parts.append(f"<tr><td>{k}</td><td class=num>{num(b['kl'][i], 2)}</td>"
                     f"<td class=num>{num(b['mean_reward_score'][i])}</td><td class=num>{num(b['mean_tokens'][i], 1)}</td>"
                     + "".join(f"<td class=num>{num(r['win_rate'][i])}</td>" for r in b["by_judge"].values())
                     + "</tr>")
    return parts + ["</table>"]


def _rm_confidence_section(runs: list[dict[str, Any]], out: Path) -> list[str]:
    parts = ["<h2>Reward-model accuracy against labeler confidence</h2>" + image(out, "rm_confidence"),
             "<table><tr><th>run</th><th>pairs</th><th>accuracy</th><th>longer wins</th>"
             "<th>per confidence |c − 5|: accuracy (n) / longer wins</th></tr>"]
    for r in runs:
        per = "; ".join(f"{d}: {num(v['accuracy'])} ({v['n']}) / {num(v['length_baseline_accuracy'])}"
                        for d, v in r["per_confidence"].items())
        parts.append(f"<tr><td>{e(r['run'])}</td><td class=num>{e(r['n_pairs'])}</td>"
                     f"<td class=num>{num(r['accuracy'])}</td><td class=num>{num(r['length_baseline_accuracy'])}</td>"
                     f"<td>{e(per)}</td></tr>")
    return parts + ["</table>"]


def _transfer_section(tr: dict[str, Any], judges: list[dict[str, Any]], out: Path) -> str:
    return (f"<h2>Zero-shot transfer to news (CNN/DM)</h2><p class=note>{e(tr['posts']['n'])} articles from "
            f"{e(tr['posts']['file'])}, query <code>{{article}}\\n\\nTL;DR:</code> cut to "
            f"{e(tr['posts']['max_query_tokens'])} tokens; the reference is the highlights; lead-3 is the "
            "first three sentences.</p>" + policy_table(tr["policies"], judges, with_kl=False)
            + image(out, "transfer"))
