"""The evaluation's report: a self-contained HTML page (verdict, tables, side-by-side images inline)."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

from photogenic.config import Config
from photogenic.prompts import Prompt

if TYPE_CHECKING:
    from photogenic.evaluate import Judged

__all__ = ["side_by_side", "report_html"]


def side_by_side(a: list[Any], b: list[Any], prompts: list[Prompt], seeds: list[int], rows: int = 12) -> Any:
    """A grid of `rows` prompts spread over the benchmark (first seed): A on the left, B on the right."""
    from PIL import Image, ImageDraw, ImageFont

    size, scale, label = a[0].width, 4, 190
    cell = size * scale
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
        draw.text((4, y + cell // 2 - 6), prompts[i].text[:34], fill=(20, 20, 20), font=font)
    return sheet


def _png_tag(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


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
        "td,th{border:1px solid #ccc;padding:3px 8px}"
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
        f"<p>A (candidate): <code>{html.escape(a)}</code><br>B (reference): <code>{html.escape(b)}</code></p>"
        f"<p>Same prompt and seed for both; appeal judged without the prompt; faithfulness against the prompt, "
        f"both right or both wrong is a tie. Intervals: bootstrap 95% over prompts.</p>"
        f"{rater}<h2>Results (A's wins)</h2>{_table_html(record.tables, main)}{proxies}"
        f"<h2>Side by side</h2>{_png_tag(grid)}"
        f"<h2>Judge validity (held-out renders)</h2><table>{judge_rows}</table>{funnel_html}"
        f"<h2>Per concept</h2>{_table_html(record.tables, per)}</body></html>"
    )
