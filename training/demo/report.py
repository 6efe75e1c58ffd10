"""The demo report: `report.json` (every figure) and `report.html` (charts as inline SVG).

All model and labeler text is untrusted: the HTML escapes every string it shows.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from html import escape
from pathlib import Path

from django.template.loader import render_to_string

from training import charts

TARGETS = {
    "win_rate": 0.60,
    "ci_low": 0.50,
    "rm_accuracy": 0.70,
    "total_seconds": 15 * 60,
}


def _curves(demo) -> dict:
    """Loss (and PPO score) per step for every run, from its metric points."""
    from training.models import MetricPoint

    out = {}
    for key, run in demo.runs.items():
        points = MetricPoint.objects.filter(run=run).order_by("step", "id")
        series: dict[str, list] = {}
        for p in points:
            for name in ("loss", "objective/scores", "objective/rlhf_reward", "objective/kl"):
                v = p.values.get(name)
                if isinstance(v, int | float) and math.isfinite(v):
                    series.setdefault(name, []).append([p.step, v])
        out[key] = series
    return out


def build(demo) -> dict:
    r = demo.results
    lineage = {}
    for key, art in demo.artifacts.items():
        lineage[key] = {
            "artifact": art.pk,
            "name": art.name,
            "stage": art.stage,
            "path": art.path,
            "run": art.run_id,
            "parent": art.parent_id,
            "lineage": [a.pk for a in art.lineage()],
            "snapshots": list(art.snapshots.values_list("pk", flat=True)),
        }
    data = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seed": demo.seed,
        "rounds": demo.rounds,
        "quick": demo.sizes.n_test < 200,
        "project": {"id": demo.project.pk, "slug": demo.project.slug},
        "sizes": asdict(demo.sizes),
        "ppo_vs_sft": r.get("ppo_vs_sft"),
        "dpo_vs_sft": r.get("dpo_vs_sft"),
        "ppo_vs_sft_best_temp": r.get("ppo_vs_sft_best_temp"),
        "dpo_vs_sft_best_temp": r.get("dpo_vs_sft_best_temp"),
        "sft_best_temperature": r.get("sft_best_temperature"),
        "sft_dev_scores": r.get("sft_dev_scores"),
        "policies": r.get("policies"),
        "families": r.get("families"),
        "reward_model": r.get("reward_model"),
        "labelers": r.get("labeling", {}).get("labelers", []),
        "labeler_agreement": r.get("labeling", {}).get("pairwise_agreement"),
        "careless_ranks_last": r.get("labeling", {}).get("careless_ranks_last"),
        "rounds_info": demo.rounds_info,
        "selection": r.get("selection"),
        "arena": r.get("arena"),
        "examples": r.get("examples", []),
        "runs": {
            k: {"id": v.pk, "stage": v.stage, "status": v.status, "worker": v.worker}
            for k, v in demo.runs.items()
        },
        "snapshots": {
            k: {"id": v.pk, "kind": v.kind, "rows": v.row_count, "sha256": v.sha256}
            for k, v in demo.snapshots.items()
        },
        "artifacts": lineage,
        "curves": _curves(demo),
        "stages": list(demo.stages),
        "test_prompts": r.get("test_prompts"),
    }
    data["total_seconds"] = round(time.monotonic() - demo.started, 2)
    data["checks"] = checks(data)
    return data


def checks(data: dict) -> dict:
    """The benchmarks of the issue, each True/False (printed, never asserted)."""
    out = {}
    for key in ("ppo_vs_sft", "dpo_vs_sft"):
        wr = data.get(key) or {}
        out[f"{key}_win_rate_ge_0.60"] = wr.get("win_rate", 0) >= TARGETS["win_rate"]
        out[f"{key}_ci_low_gt_0.50"] = (wr.get("ci95") or [0])[0] > TARGETS["ci_low"]
    out["reward_model_accuracy_ge_0.70"] = (data.get("reward_model") or {}).get(
        "accuracy", 0
    ) >= TARGETS["rm_accuracy"]
    out["careless_labeler_ranks_last"] = bool(data.get("careless_ranks_last"))
    out["total_under_15_min"] = data["total_seconds"] < TARGETS["total_seconds"]
    return out


def write(data: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(json_path)
    html_tmp = html_path.with_suffix(".html.tmp")
    html_tmp.write_text(render_html(data), encoding="utf-8")
    html_tmp.replace(html_path)
    return json_path, html_path


def _fmt_wr(wr: dict | None) -> str:
    if not wr:
        return "n/a"
    lo, hi = wr["ci95"]
    return f"{wr['win_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _fmt_scores(rm: dict) -> str:
    """Each policy's mean reward-model score on training prompts (reports before: none)."""
    scores = dict(rm.get("policy_scores") or {})
    n = scores.pop("prompts", None)
    if not scores:
        return "n/a"
    return ", ".join(f"{name} {value:.4f}" for name, value in scores.items()) + f" ({n} prompts)"


def summary(data: dict) -> str:
    lines = ["", "RLHF demo — results (oracle-judged, held-out test prompts)"]
    n = data.get("test_prompts")
    lines.append(
        f"  test prompts: {n}; SFT best temperature on dev: {data['sft_best_temperature']}"
    )
    for key in ("ppo_vs_sft", "dpo_vs_sft", "ppo_vs_sft_best_temp", "dpo_vs_sft_best_temp"):
        lines.append(f"  {key:<22} win-rate {_fmt_wr(data.get(key))}")
    rm = data.get("reward_model") or {}
    lines.append(
        f"  reward model accuracy vs oracle: {rm.get('accuracy')} ({rm.get('pairs')} pairs)"
    )
    lines.append(f"  reward model score on training prompts: {_fmt_scores(rm)}")
    lines.extend(_selection_lines(data.get("selection")))
    lines.extend(_arena_lines(data.get("arena")))
    lines.append(f"  labeler pairwise agreement: {data.get('labeler_agreement')}")
    for lab in data.get("labelers", []):
        flag = "  (careless)" if lab["careless"] else ""
        lines.append(f"    {lab['name']:<20} quality {lab['quality']:.3f}{flag}")
    lines.append(
        "  stages: " + ", ".join(f"{s['name']} {s['seconds']:.0f}s" for s in data["stages"])
    )
    lines.append(f"  total: {data['total_seconds']:.0f} s")
    lines.append(
        "  benchmarks: "
        + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in data["checks"].items())
    )
    return "\n".join(lines)


def _selection_lines(sel: dict | None) -> list[str]:
    if not sel:
        return []
    lines = [f"  reward model accuracy vs oracle, {sel['budget']} prompts labeled per arm:"]
    for arm, a in sel["arms"].items():
        lo, hi = a["ci95"]
        diff = ""
        if "minus_random" in a:
            dlo, dhi = a["minus_random_ci95"]
            diff = f", minus random {a['minus_random']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        lines.append(
            f"    {arm:<7} {a['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {a['pairs']} held-out "
            f"pairs, trained on {a['pairs_trained']} pairs{diff}"
        )
    return lines


def _arena_lines(arena: dict | None) -> list[str]:
    if not arena:
        return []
    board = arena["leaderboard"]
    lines = [f"  arena leaderboard ({board['battles']} votes; oracle's Bradley-Terry beside):"]
    for row in board["rows"]:
        lines.append(
            f"    {row['key']:<8} {row['score']:7.1f} [{row['lower']}, {row['upper']}]  "
            f"W/T/L {row['wins']}/{row['ties']}/{row['losses']}  oracle {row['oracle_score']:.1f}"
        )
    return lines


def _selection_html(sel: dict | None) -> str:
    if not sel:
        return ""
    e = escape
    rows = "".join(
        f"<tr><td>{e(arm)}</td><td>{e(str(a.get('criterion', '')))}</td><td>{a['pool']}</td>"
        f"<td>{a['prompts']}</td><td>{a['tasks']}</td><td>{a.get('pairs_trained', '')}</td>"
        f"<td>{e(', '.join(f'{k} {v}' for k, v in a.get('families', {}).items()))}</td>"
        f"<td>{a['accuracy']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]</td>"
        + (
            f"<td>{a['minus_random']:+.3f} [{a['minus_random_ci95'][0]:+.3f}, "
            f"{a['minus_random_ci95'][1]:+.3f}]</td>"
            if "minus_random" in a
            else "<td></td>"
        )
        + "</tr>"
        for arm, a in sel["arms"].items()
    )
    return f"""<h2>Prompt selection: active versus random</h2>
<p>The next round started twice with "Start next round", each asking {sel["budget"]} prompts from
its own random half of the unused training prompts: once with active selection (an ensemble of
reward models #{", #".join(map(str, sel["ensemble"]))} scores a pool of candidates; the prompts it
is least sure about go first), once without. Each arm's preference pairs train a reward model
alike; both are judged by the oracle on the same held-out pairs
({sel["heldout_prompts"]} test prompts); 95% bootstrap intervals over prompts.</p>
<table><tr><th>arm</th><th>criterion</th><th>pool</th><th>prompts asked</th><th>tasks</th>
<th>pairs trained on</th><th>families asked</th><th>RM accuracy [95% CI]</th>
<th>minus random [95% CI]</th></tr>{rows}</table>"""


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _arena_html(arena: dict | None) -> str:
    if not arena:
        return ""
    e = escape
    board = arena["leaderboard"]
    rows = "".join(
        f"<tr><td>{e(row['key'])}</td><td>{row['score']:.1f} [{row['lower']}, {row['upper']}]</td>"
        f"<td>{row['battles']}</td><td>{row['wins']}/{row['ties']}/{row['losses']}</td>"
        f"<td>{row['oracle_score']:.1f}</td></tr>"
        for row in board["rows"]
    )
    pairs = "".join(
        f"<tr><td>{e(str(p['model']))}</td><td>{e(str(p['against']))}</td><td>{p['votes']}</td>"
        f"<td>{_rate(p['labelers_win_rate'])}</td><td>{_rate(p['oracle_win_rate'])}</td></tr>"
        for p in arena["pairs"]
    )
    return f"""<h2>Arena: the labelers' leaderboard beside the oracle</h2>
<p>Battle set #{arena["battle_set"]}: SFT, PPO and DPO each answered {arena["prompts"]} held-out
prompts once (temperature 1.0); every pair of answers is one blind battle, judged by one
simulated labeler (the oracle plus the labeler's noise). Bradley–Terry scores with 95% bootstrap
intervals, from the platform's leaderboard; beside them the oracle's Bradley–Terry score and
win-rates on the same battles (ties count half).</p>
<table><tr><th>model</th><th>score [95% CI]</th><th>votes</th><th>W/T/L</th>
<th>oracle's score</th></tr>{rows}</table>
<table><tr><th>model</th><th>against</th><th>votes</th><th>labelers' win-rate</th>
<th>oracle's win-rate</th></tr>{pairs}</table>"""


# --- HTML ------------------------------------------------------------------------------------

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def _winrate_chart(data: dict, width: int = 520) -> str:
    keys = ["ppo_vs_sft", "dpo_vs_sft", "ppo_vs_sft_best_temp", "dpo_vs_sft_best_temp"]
    rows = [(k, data.get(k)) for k in keys if data.get(k)]
    h = 30 * len(rows) + 40
    left, right = 170, width - 20

    def sx(v):
        return left + v * (right - left)

    parts = [
        f'<svg class="chart" width="{width}" height="{h}" role="img" aria-label="win-rates">',
        f'<line x1="{sx(0.5):.1f}" y1="10" x2="{sx(0.5):.1f}" y2="{h - 20}" class="half"/>',
        f'<text x="{sx(0.5) - 8:.1f}" y="{h - 5}" class="l">0.5</text>',
        f'<text x="{left - 4}" y="{h - 5}" class="l">0</text><text x="{right - 4}" y="{h - 5}" class="l">1</text>',
    ]
    for i, (k, wr) in enumerate(rows):
        y = 20 + 30 * i
        lo, hi = wr["ci95"]
        parts.append(f'<text x="4" y="{y + 5}" class="l">{escape(k)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y - 6}" width="{sx(wr["win_rate"]) - left:.1f}" height="12" '
            f'fill="{PALETTE[i % 2]}" opacity="0.6"/>'
        )
        parts.append(
            f'<line x1="{sx(lo):.1f}" y1="{y}" x2="{sx(hi):.1f}" y2="{y}" stroke="#000" stroke-width="2"/>'
        )
        parts.append(f'<text x="{sx(hi) + 4:.1f}" y="{y + 4}" class="l">{_fmt_wr(wr)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _bars(title: str, items: list[tuple[str, float, bool]], width: int = 520) -> str:
    h = 24 * len(items) + 30
    left, right = 170, width - 60
    parts = [
        f'<svg class="chart" width="{width}" height="{h}" role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="12" class="t">{escape(title)}</text>',
    ]
    for i, (name, value, warn) in enumerate(items):
        y = 28 + 24 * i
        parts.append(f'<text x="4" y="{y + 4}" class="l">{escape(name)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y - 7}" width="{max(0.0, value) * (right - left):.1f}" height="12" '
            f'fill="{"#d62728" if warn else "#2ca02c"}" opacity="0.7"/>'
        )
        parts.append(
            f'<text x="{left + max(0.0, value) * (right - left) + 4:.1f}" y="{y + 4}" class="l">{value:.3f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(data: dict) -> str:
    e = escape
    rm = data.get("reward_model") or {}
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{_fmt_wr(data.get(k))}</td>"
        f"<td>{(data.get(k) or {}).get('wins', '')}/{(data.get(k) or {}).get('ties', '')}/"
        f"{(data.get(k) or {}).get('losses', '')}</td></tr>"
        for k in ("ppo_vs_sft", "dpo_vs_sft", "ppo_vs_sft_best_temp", "dpo_vs_sft_best_temp")
    )
    policy_rows = "".join(
        f"<tr><td>{e(name)}</td>"
        + "".join(
            f"<td>{p.get(c, 0):.3f}</td>"
            for c in ("mean_oracle_score", "correct", "padded", "rude", "unfinished")
        )
        + "</tr>"
        for name, p in (data.get("policies") or {}).items()
    )

    def with_ci(f: dict, key: str) -> str:
        low, high = f.get(f"{key}_ci95") or (None, None)
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""  # older reports: none
        return f"{f.get(key, 0):.3f}{interval}"

    family_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{f.get('prompts', 0)}</td>"
        f"<td>{with_ci(f, 'ppo_vs_sft')}</td><td>{with_ci(f, 'dpo_vs_sft')}</td>"
        f"<td>{e(', '.join(f'{k} {v:.2f}' for k, v in (f.get('correct') or {}).items()))}</td></tr>"
        for name, f in (data.get("families") or {}).items()
    )
    dev_rows = "".join(
        f"<tr><td>{e(str(t))}</td><td>{v:.3f}</td></tr>"
        for t, v in (data.get("sft_dev_scores") or {}).items()
    )
    labeler_items = [
        (
            f"{lab['name']}{' (careless)' if lab['careless'] else ''}",
            lab["quality"],
            lab["careless"],
        )
        for lab in data.get("labelers", [])
    ]
    stage_items = data.get("stages", [])
    total = max(1e-9, sum(s["seconds"] for s in stage_items))
    stage_chart = _bars(
        "stage share of time", [(s["name"], s["seconds"] / total, False) for s in stage_items]
    )
    stage_rows = "".join(
        f"<tr><td>{e(s['name'])}</td><td>{s['seconds']:.1f}</td></tr>" for s in stage_items
    )
    # The run page's line charts, drawn by the same geometry and template.
    curves = "".join(
        render_to_string("training/_chart.html", {"chart": chart})
        for key, series in (data.get("curves") or {}).items()
        for name, pts in series.items()
        if name in ("loss", "objective/scores")
        and (chart := charts.line_chart(f"{key}: {name}", {name: pts})) is not None
    )
    examples = "".join(
        "<tr>"
        + "".join(
            f"<td>{e(str(x.get(c, '')))}</td>" for c in ("prompt", "sft", "sft_best", "ppo", "dpo")
        )
        + "</tr>"
        for x in data.get("examples", [])
    )
    lineage = "".join(
        f"<tr><td>{e(k)}</td><td>#{a['artifact']} {e(a['stage'])}</td><td>run #{a['run']}</td>"
        f"<td>{' → '.join('#' + str(x) for x in a['lineage'])}</td>"
        f"<td>{', '.join('#' + str(s) for s in a['snapshots'])}</td></tr>"
        for k, a in (data.get("artifacts") or {}).items()
    )
    checks_html = "".join(
        f"<li>{e(k)}: <b>{'yes' if v else 'no'}</b></li>" for k, v in data.get("checks", {}).items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RLHF demo report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
.chart {{ margin: 4px 10px 10px 0; }} .chart .t {{ font-weight: 600; font-size: 12px; }}
.chart .l {{ font-size: 11px; }} .axis {{ stroke: #888; }} .half {{ stroke: #888; stroke-dasharray: 4 3; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 12px; }} figure.chart text {{ font-size: 10px; fill: #555; }}
.note {{ color: #555; }}
</style></head><body>
<h1>RLHF demo report</h1>
<p class="note">Seed {e(str(data.get("seed")))}, {e(str(data.get("rounds")))} round(s),
{"quick sizes" if data.get("quick") else "full sizes"}, project <code>{e(data["project"]["slug"])}</code>,
generated {e(data.get("generated_at", ""))}, total {data.get("total_seconds", 0):.0f} s.
Every policy is judged by the hidden oracle on held-out test prompts
({e(str(data.get("test_prompts")))}), one sample per prompt each; ties count half; 95% bootstrap intervals.</p>
<h2>Win-rates over the SFT policy</h2>
{_winrate_chart(data)}
<table><tr><th>comparison</th><th>win-rate [95% CI]</th><th>wins/ties/losses</th></tr>{rows}</table>
<p>The <code>_best_temp</code> rows compare against the SFT policy sampled at its best
temperature ({e(str(data.get("sft_best_temperature")))}), chosen on a separate dev split: the
honest control for "feedback only sharpened the distribution".</p>
<h3>SFT mean oracle score on dev, by temperature</h3>
<table><tr><th>temperature</th><th>mean score</th></tr>{dev_rows}</table>
<h3>What the policies do (test prompts)</h3>
<table><tr><th>policy</th><th>mean oracle score</th><th>correct</th><th>padded</th><th>rude</th><th>unfinished</th></tr>{policy_rows}</table>
<h3>By prompt family (test prompts)</h3>
<table><tr><th>family</th><th>prompts</th><th>PPO vs SFT [95% CI]</th><th>DPO vs SFT [95% CI]</th><th>share fully correct</th></tr>{family_rows}</table>
<h2>Reward model</h2>
<p>Accuracy against the oracle on held-out prompts: <b>{rm.get("accuracy")}</b> over {rm.get("pairs")} strictly ordered pairs.</p>
<p>Mean score of each policy's samples on training prompts, the reward PPO maximised:
{e(_fmt_scores(rm))}.</p>
{_selection_html(data.get("selection"))}
{_arena_html(data.get("arena"))}
<h2>Labelers</h2>
<p>Pairwise agreement between labelers: {data.get("labeler_agreement")}. Quality = agreement
with the leave-one-out consensus of the other labelers (the platform never sees the oracle).</p>
{_bars("labeler quality", labeler_items)}
<table><tr><th>labeler</th><th>quality</th><th>agreement with oracle</th><th>annotations</th></tr>
{"".join(f"<tr><td>{e(lab['name'])}{' (careless)' if lab['careless'] else ''}</td><td>{lab['quality']:.3f}</td><td>{lab.get('oracle_agreement', 0):.3f}</td><td>{lab.get('annotations', '')}</td></tr>" for lab in data.get("labelers", []))}
</table>
<h2>Training curves</h2>
<div class="charts">{curves}</div>
<h2>Stages</h2>
{stage_chart}
<table><tr><th>stage</th><th>seconds</th></tr>{stage_rows}</table>
<h2>Lineage (browse the runs, snapshots and artifacts in the admin)</h2>
<table><tr><th>key</th><th>artifact</th><th>run</th><th>lineage</th><th>snapshots</th></tr>{lineage}</table>
<h2>Benchmarks</h2><ul>{checks_html}</ul>
<h2>Examples (test prompts)</h2>
<table><tr><th>prompt</th><th>SFT @1.0</th><th>SFT @best</th><th>PPO</th><th>DPO</th></tr>{examples}</table>
</body></html>
"""
