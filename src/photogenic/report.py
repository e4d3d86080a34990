"""The evaluation's report: a self-contained HTML page (verdict, tables, side-by-side images inline)."""

from __future__ import annotations

import base64
import html
import io
import textwrap
from typing import TYPE_CHECKING, Any

from photogenic.config import Config
from photogenic.prompts import Prompt

if TYPE_CHECKING:
    from photogenic.evaluate import Judged

__all__ = ["side_by_side", "report_html", "grid_label", "png_base64", "HELD_OUT_MARK"]


def side_by_side(a: list[Any], b: list[Any], prompts: list[Prompt], seeds: list[int], rows: int = 12) -> Any:
    """A grid of `rows` prompts spread over the benchmark (first seed): A on the left, B on the right, each
    prompt whole beside its pair (wrapped), and prompts about held-out concepts marked."""
    from PIL import Image, ImageDraw, ImageFont

    rows = min(rows, len(prompts))
    size, scale, label = a[0].width, 4, 200
    cell = max(size * scale, 96)
    sheet = Image.new("RGB", (label + 2 * cell + 12, 16 + rows * (cell + 4)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    draw.text((label, 2), "A (candidate)", fill=(0, 0, 0), font=font)
    draw.text((label + cell + 8, 2), "B (reference)", fill=(0, 0, 0), font=font)
    for r in range(rows):
        i = (r * 13) % len(prompts)  # a stride coprime to the colour and shape counts: varied rows
        j = i * len(seeds)
        y = 16 + r * (cell + 4)
        sheet.paste(a[j].resize((cell, cell), Image.NEAREST), (label, y))
        sheet.paste(b[j].resize((cell, cell), Image.NEAREST), (label + cell + 8, y))
        lines = grid_label(prompts[i])
        top = y + max(0, (cell - 13 * len(lines)) // 2)
        for k, line in enumerate(lines):
            draw.text((4, top + 13 * k), line, fill=(170, 60, 0) if line == HELD_OUT_MARK else (20, 20, 20), font=font)
    return sheet


HELD_OUT_MARK = "[held out of QT]"


def grid_label(prompt: Prompt, width: int = 30) -> list[str]:
    """A prompt's label in the grid: the whole text, wrapped to `width` characters, and the held-out mark."""
    lines = textwrap.wrap(prompt.text, width, break_long_words=True) or [""]
    return [*lines, HELD_OUT_MARK] if prompt.held_out else lines


def png_base64(image: Any) -> str:
    """A PIL image as PNG bytes, base64-encoded (inline in a report, or in a JSON answer)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _png_tag(image: Any, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64(image)}">'


def _table_html(tables: dict[str, dict[str, float]], names: list[str]) -> str:
    head = "<tr><th>comparison</th><th>n</th><th>win</th><th>tie</th><th>loss</th><th>win - loss</th></tr>"
    body = []
    for name in names:
        t = tables.get(name)
        if not t or "win" not in t:
            continue
        keys = ("win", "tie", "loss", "net") if "net" in t else ("win", "tie", "loss")
        cells = "".join(f"<td>{t[k]:.1%} [{t[k + '_lo']:.1%}, {t[k + '_hi']:.1%}]</td>" for k in keys)
        body.append(f"<tr><td>{html.escape(name)}</td><td>{int(t['n'])}</td>{cells}</tr>")
    if not body:
        return "<p><i>none</i></p>"
    return f"<table>{head}{''.join(body)}</table>"


def report_html(
    a: str,
    b: str,
    record: Judged,
    judged: Judged | None,
    validity: dict[str, float],
    agreements: dict[str, dict[str, float]],
    metrics: dict[str, float],
    config: Config,
    grid: Any,
    funnel: list[tuple[str, int]],
    split: str,
) -> str:
    """The evaluation report: the rater of record's tables (the ground-truth panel for world models, the
    imported judges for real ones), the learned judges beside them with their agreement, the funnel and the
    side-by-side grid."""
    css = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px}#verdict{border:2px solid #999;padding:0 1em;margin:1em 0}"
        ".pass{color:#070}.fail{color:#b00}"
    )
    main = ["appeal", "faithfulness", "appeal/seen", "faithfulness/seen", "appeal/held_out", "faithfulness/held_out"]
    main += sorted(k for k in record.tables if k.split("/")[1:2] == ["category"])
    per = sorted(k for k in record.tables if k.count("/") == 2 and "/category/" not in k)
    if judged is not None:  # a world model: the panel rates, the judges are proxies
        p = config.panel
        rater = (
            f"<p>Rater of record: the ground-truth panel. Each image is explained as a scene of the world "
            f"(median fit error A {metrics['panel_fit_error_a']:.3f}, B {metrics['panel_fit_error_b']:.3f}; "
            f"explained A {metrics['panel_explained_a']:.0%}, B {metrics['panel_explained_b']:.0%}, bar "
            f"{p.max_fit_error}), scored by the oracle, and voted on by {p.appeal_raters} raters for appeal and "
            f"{p.faithfulness_raters} for faithfulness (majority; a split panel is a tie).</p>"
        )
        if not record.trustworthy:
            rater += (
                f"<p style='color:#b00'><b>NOT TRUSTWORTHY:</b> the panel explains fewer than "
                f"{p.min_explained:.0%} of one model's images.</p>"
            )
        bar = config.evaluate.min_panel_agreement
        agree_rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{v['appeal']:.3f}</td><td>{v['faithfulness']:.3f}</td></tr>"
            for name, v in agreements.items()
        )
        if "curation_vs_evaluation_judges_appeal_agreement" in metrics:
            agree_rows += (
                "<tr><td>curation judges vs evaluation judges</td>"
                f"<td>{metrics['curation_vs_evaluation_judges_appeal_agreement']:.3f}</td>"
                f"<td>{metrics['curation_vs_evaluation_judges_faithfulness_agreement']:.3f}</td></tr>"
            )
        proxies = (
            f"<h2>Learned judges (a proxy) on the same pairs</h2><p>Agreement with the panel on these pairs "
            f"(appeal: pairs the panel decides; faithfulness: per image). Valid proxies need {bar} on both: "
            f"<b>{'valid' if metrics.get('judges_valid') else 'NOT valid'}</b> here.</p>"
            f"<table><tr><th>judges</th><th>appeal</th><th>faithfulness</th></tr>{agree_rows}</table>"
            f"{_table_html(judged.tables, main[:6])}"
        )
    else:
        bar = config.evaluate.min_judge_agreement
        if not validity:
            rater = (
                "<p style='color:#b00'><b>NOT VALIDATED:</b> imported real-image judges have no oracle to agree "
                "with; export the pairs for human raters (`export_pairs`) and compare their votes.</p>"
            )
        elif record.trustworthy:
            rater = f"<p style='color:#070'>Judges agree with the oracle on held-out renders (bar {bar}).</p>"
        else:
            rater = (
                "<p style='color:#b00'><b>NOT TRUSTWORTHY:</b> the judges agree with the oracle less than "
                f"{bar} on held-out renders.</p>"
            )
        proxies = ""
    judge_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in sorted(validity.items()))
    funnel_html = (
        "<h2>Curation funnel</h2><table>"
        + "".join(f"<tr><td>{html.escape(n)}</td><td>{k}</td></tr>" for n, k in funnel)
        + "</table>"
        if funnel
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Photogenic evaluation</title>"
        f"<style>{css}</style></head><body><h1>A vs B ({html.escape(split)} split)</h1>"
        f"{_verdict_html(metrics, record.trustworthy)}"
        f"<p>A (candidate): <code>{html.escape(a)}</code><br>B (reference): <code>{html.escape(b)}</code></p>"
        f"<p>Same prompt and seed for both; appeal judged without the prompt; faithfulness against the prompt, "
        f"both right or both wrong is a tie. Intervals: bootstrap 95% over prompts.</p>"
        f"{_seen_html(config)}{_margin_html(record.tie_margin, judged is not None, config)}"
        f"{rater}<h2>Results (A's wins)</h2>{_table_html(record.tables, main)}{proxies}"
        "<h2>Side by side</h2><p>The first seed of a dozen prompts spread over the benchmark; prompts about a "
        f"held-out concept are marked.</p>{_png_tag(grid, 'side by side: A left, B right')}"
        f"<h2>Judge validity (held-out renders)</h2>{_rows_or_none(judge_rows)}{funnel_html}"
        f"<h2>Per concept</h2>{_table_html(record.tables, per)}</body></html>"
    )


def _verdict_html(metrics: dict[str, float], trustworthy: bool) -> str:
    """The registration gate's verdict on these results, its reasons and its rules."""
    from photogenic.registry import GATE_RULES, gate

    passed, reason = gate({"metrics": metrics, "trustworthy": trustworthy})
    rules = "".join(f"<li>{html.escape(r)}</li>" for r in GATE_RULES)
    if passed:
        head = "<p class='verdict pass'><b>Gate: PASSED.</b> A may become the registered champion.</p>"
    else:
        why = "".join(f"<li>{html.escape(r)}</li>" for r in reason.split("; "))
        head = (
            f"<p class='verdict fail'><b>Gate: FAILED.</b> A does not become the champion, because:</p><ul>{why}</ul>"
        )
    rules_html = f"<p>The gate's rules (on 95% interval bounds, never point estimates):</p><ul>{rules}</ul>"
    return f"<div id='verdict'>{head}{rules_html}</div>"


def _seen_html(config: Config) -> str:
    held = list(config.curate.holdout_concepts)
    if not held:
        return (
            "<p><b>Seen and held out:</b> no concept was held out of quality-tuning in this run, so every "
            'prompt is about concepts its training set contains ("seen").</p>'
        )
    return (
        f"<p><b>Seen and held out:</b> curation kept every image of the held-out concepts "
        f'({html.escape(", ".join(held))}) out of the quality-tuning set. "Held out" rows are prompts that name one '
        "of them: they test whether quality-tuning's gain generalises to what it never saw (the paper's claim); "
        '"seen" rows are all other prompts.</p>'
    )


def _margin_html(margin: float, panel: bool, config: Config) -> str:
    configured = config.evaluate.tie_margin
    if panel:
        why = (
            f"each panel rater votes tie when the two images' perceived appeal is within "
            f"<code>panel.rater_tie_margin</code> = {margin:g}; <code>evaluate.tie_margin</code> ({configured:g}) "
            "applies to the learned judges' scores"
        )
    elif margin > configured:
        why = (
            f"the judges' own 95% noise margin on held-out renders ({margin:g}) is larger than "
            f"<code>evaluate.tie_margin</code> ({configured:g}): a smaller gap than their noise is no verdict"
        )
    else:
        why = f"<code>evaluate.tie_margin</code> as configured ({configured:g})"
    return f"<p><b>Tie margin {margin:g}:</b> {why}.</p>"


def _rows_or_none(rows: str) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    return f"<table>{rows}</table>"
