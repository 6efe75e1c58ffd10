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

from . import oracle

TARGETS = {
    "win_rate": 0.70,  # PPO and DPO over SFT, both at temperature 1.0
    "ci_low": 0.60,  # ... with the 95% interval's lower bound above this
    "best_temp_ci_low": 0.55,  # over SFT at its best dev temperature: the lower bound
    "rm_accuracy": 0.85,
    "total_seconds": 10 * 60,  # one seed's default run, on an idle 2-core machine
}

# The policies of the per-constraint compliance table, in the order the report shows them.
COMPLIANCE_POLICIES = ("sft@1.0", "sft@best", "ppo@1.0", "dpo@1.0")


def compliance(samples: dict | None) -> dict:
    """Per constraint type, each policy's share of test answers that follow the constraint,
    judged by the oracle on the report's own samples (`samples` as report.json stores them:
    policy -> [[prompt, text, ended], ...]; SFT at its best dev temperature is `sft@best`)."""
    if not samples:
        return {}
    return oracle.compliance_table(
        {name: samples[name] for name in COMPLIANCE_POLICIES if name in samples}
    )


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
        "samples": r.get("samples"),
    }
    data["compliance"] = compliance(data["samples"])
    data["total_seconds"] = round(time.monotonic() - demo.started, 2)
    data["checks"] = checks(data)
    return data


def checks(data: dict) -> dict:
    """The benchmarks of the issue, each True/False (printed, never asserted)."""
    out = {}
    for key in ("ppo_vs_sft", "dpo_vs_sft"):
        wr = data.get(key) or {}
        out[f"{key}_win_rate_ge_0.70"] = wr.get("win_rate", 0) >= TARGETS["win_rate"]
        out[f"{key}_ci_low_gt_0.60"] = (wr.get("ci95") or [0])[0] > TARGETS["ci_low"]
        best = data.get(f"{key}_best_temp") or {}
        out[f"{key}_best_temp_ci_low_gt_0.55"] = (best.get("ci95") or [0])[0] > TARGETS[
            "best_temp_ci_low"
        ]
    out["reward_model_accuracy_ge_0.85"] = (data.get("reward_model") or {}).get(
        "accuracy", 0
    ) >= TARGETS["rm_accuracy"]
    out["careless_labeler_ranks_last"] = bool(data.get("careless_ranks_last"))
    table = data.get("compliance") or {}
    out["compliance_rises_sft_to_ppo_on_every_type"] = bool(table) and all(
        row.get("ppo@1.0", 0) > row.get("sft@1.0", 0) for row in table.values()
    )
    out["total_under_10_min"] = data["total_seconds"] < TARGETS["total_seconds"]
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
    for info in data.get("rounds_info", []):
        lines.append(
            f"  round {info['round']}: {info.get('rank_tasks')} ranking tasks, "
            f"{info.get('annotations')} judgments; training pairs so far "
            f"{info.get('preference_pairs')} every labeler agreed on "
            f"({info.get('preference_pairs_dropped')} they disagreed on left out)"
        )
    table = data.get("compliance") or {}
    if table:
        lines.append("  compliance with the constraint, by type (oracle, test prompts):")
        lines.append(f"    {'type':<14}{'n':>4}" + "".join(f"{p:>10}" for p in COMPLIANCE_POLICIES))
        for kind, row in table.items():
            lines.append(
                f"    {kind:<14}{row['prompts']:>4}"
                + "".join(f"{row.get(p, 0):>10.2f}" for p in COMPLIANCE_POLICIES)
            )
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


# --- Several seeds ------------------------------------------------------------------------

# (label, report key, what of it): the figures the several-seed table gives per seed.
SEED_FIGURES = [
    ("PPO vs SFT, both T=1.0", "ppo_vs_sft", "win_rate"),
    ("DPO vs SFT, both T=1.0", "dpo_vs_sft", "win_rate"),
    ("PPO vs SFT at best dev T", "ppo_vs_sft_best_temp", "win_rate"),
    ("DPO vs SFT at best dev T", "dpo_vs_sft_best_temp", "win_rate"),
    ("SFT best dev temperature", "sft_best_temperature", None),
    ("RM accuracy vs oracle", "reward_model", "accuracy"),
    ("careless labeler last (1 = yes)", "careless_ranks_last", None),
    ("total seconds", "total_seconds", None),
]


def _figure(data: dict, key: str, part: str | None) -> tuple[float | None, list | None]:
    value = data.get(key)
    if part is not None:
        value = (value or {}).get(part)
    ci = (data.get(key) or {}).get("ci95") if part == "win_rate" else None
    return (float(value) if value is not None else None), ci


def _stats(values: list[float | None]) -> dict:
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "min": None, "max": None}
    return {
        "mean": round(sum(known) / len(known), 4),
        "min": round(min(known), 4),
        "max": round(max(known), 4),
    }


def seeds_summary(reports: list[dict]) -> dict:
    """Each figure of several seeds' reports, per seed, with its mean and range (min–max), and
    the per-constraint compliance table the same way."""
    rows = []
    for label, key, part in SEED_FIGURES:
        figures = [_figure(d, key, part) for d in reports]
        values = [v for v, _ in figures]
        rows.append(
            {"figure": label, "per_seed": values, "ci95": [ci for _, ci in figures],
             **_stats(values)}
        )  # fmt: skip
    compliance_rows: dict[str, dict] = {}
    for kind in dict.fromkeys(k for d in reports for k in (d.get("compliance") or {})):
        compliance_rows[kind] = {}
        for policy in COMPLIANCE_POLICIES:
            values = [((d.get("compliance") or {}).get(kind) or {}).get(policy) for d in reports]
            compliance_rows[kind][policy] = {"per_seed": values, **_stats(values)}
    return {
        "seeds": [d.get("seed") for d in reports],
        "quick": any(d.get("quick") for d in reports),
        "figures": rows,
        "compliance": compliance_rows,
        "checks": {str(d.get("seed")): d.get("checks", {}) for d in reports},
    }


def _num(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def seeds_table(summary: dict) -> str:
    """The several-seed figures as Markdown tables (printed, and kept in seeds.md)."""
    seeds = summary["seeds"]
    head = "| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |"
    lines = [head, "| --- |" + " ---: |" * (len(seeds) + 2)]
    for row in summary["figures"]:
        digits = 0 if row["figure"] == "total seconds" else 2
        cells = []
        for v, ci in zip(row["per_seed"], row["ci95"], strict=True):
            cell = _num(v, digits)
            if ci:
                cell += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
            cells.append(cell)
        lines.append(
            f"| {row['figure']} | " + " | ".join(cells)
            + f" | {_num(row['mean'], digits)} | {_num(row['min'], digits)}–"
            f"{_num(row['max'], digits)} |"
        )  # fmt: skip
    if summary["compliance"]:
        lines += ["", "| compliance (mean over seeds, min–max) | "
                  + " | ".join(COMPLIANCE_POLICIES) + " |",
                  "| --- |" + " ---: |" * len(COMPLIANCE_POLICIES)]  # fmt: skip
        for kind, row in summary["compliance"].items():
            lines.append(
                f"| {kind} | "
                + " | ".join(
                    f"{_num(row[p]['mean'])} ({_num(row[p]['min'])}–{_num(row[p]['max'])})"
                    for p in COMPLIANCE_POLICIES
                )
                + " |"
            )
    missed = [
        f"seed {seed}: {name}"
        for seed, checks in summary["checks"].items()
        for name, ok in checks.items()
        if not ok
    ]
    lines += ["", "benchmarks missed: " + ("; ".join(missed) if missed else "none")]
    return "\n".join(lines)


def write_seeds(summary: dict, out_dir: Path) -> tuple[Path, Path]:
    """`seeds.json` (every figure) and `seeds.md` (the tables) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "seeds.json", out_dir / "seeds.md"
    json_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    md_path.write_text(seeds_table(summary) + "\n", encoding="utf-8")
    return json_path, md_path


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
    compliance_rows = "".join(
        f"<tr><td>{e(kind)}</td><td>{row.get('prompts', 0)}</td>"
        + "".join(f"<td>{row.get(p, 0):.2f}</td>" for p in COMPLIANCE_POLICIES)
        + "</tr>"
        for kind, row in (data.get("compliance") or {}).items()
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
<h3>Compliance with the constraint, by type (test prompts)</h3>
<p class="note">Share of answers that follow the prompt's constraint, judged by the oracle on
the samples stored in report.json; <code>sft@best</code> is SFT at its best dev temperature.</p>
<table><tr><th>constraint</th><th>prompts</th>{"".join(f"<th>{e(p)}</th>" for p in COMPLIANCE_POLICIES)}</tr>{compliance_rows}</table>
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
