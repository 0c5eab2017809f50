"""Rendering the board as markdown and as one static, sortable HTML page with a per-tier chart."""

from __future__ import annotations

import html
from typing import Any

from ..data.records import TIERS
from ..metrics.baselines import RANDOM_DIM
from ..metrics.catalogue import headline, label, main_score
from ..metrics.hierarchy import PROTOCOL
from ..rendering import baseline_label, markdown_table, metric_cell
from ..results import MAX_PARAMETERS, Metric, Result
from ..textsafe import markdown_cell
from .names import link_problem


def columns() -> tuple[tuple[str, str], ...]:
    """(metric, label) of every board column, from the metric catalogue."""
    return tuple((name, label(name)) for name in headline())
TIER_RECALLS = tuple(f"recall_tier{k}" for k in range(1, TIERS + 1))
"""The per-tier recall metrics (the catalogue's names), shown together in one cell."""


def rows(entries: list[Result], references: dict[str, dict[str, Metric]]) -> list[dict[str, Any]]:
    """Entries and reference baselines ranked together by the protocol's main score (references marked), so a
    reader sees at once which models beat caption length. An entry tied with a reference is listed after it
    and shares its place (:func:`places`): a tie is never shown as a win."""
    out = [{"name": e.model.name, "revision": e.model.revision or "", "parameters": e.model.parameters,
            "link": e.model.link or "", "metrics": e.metrics, "reference": False} for e in entries]
    out += [{"name": baseline_label(name, RANDOM_DIM), "revision": "", "parameters": None, "link": "",
             "metrics": metrics, "reference": True} for name, metrics in references.items()]
    sort = main_score(PROTOCOL)
    direction = -1 if sort.higher_is_better else 1
    missing = float("inf")              # rows without the main score go last
    return sorted(out, key=lambda r: (direction * main_value(r, direction * missing), not r["reference"], r["name"]))


def main_value(row: dict[str, Any], default: float = float("nan")) -> float:
    metric = row["metrics"].get(main_score(PROTOCOL).name)
    return default if metric is None else metric.value


def places(table: list[dict[str, Any]]) -> list[int]:
    """Each row's place on the board: rows with equal main scores share one (1, 2, 2, 4, ...)."""
    found: list[int] = []
    for position, row in enumerate(table):
        tied = position and main_value(row) == main_value(table[position - 1])
        found.append(found[-1] if tied else position + 1)
    return found


def _params(count: Any) -> str:
    return f"{count / 1e6:.1f}M" if _known_count(count) else "–"


def _known_count(count: Any) -> bool:
    return isinstance(count, int) and not isinstance(count, bool) and 0 < count <= MAX_PARAMETERS


def _safe_link(row: dict[str, Any]) -> str:
    """The entry's link if it is an http(s) URL; references and anything else get none."""
    link = row["link"]
    return link if not row["reference"] and isinstance(link, str) and link and link_problem(link) is None else ""


def markdown(table: list[dict[str, Any]]) -> str:
    placed = [{**row, "place": place} for place, row in zip(places(table), table)]
    lines = ["# HierarCaps leaderboard", "",
             "Scored by `hierarcaps` from submitted embeddings (protocol hierarcaps-v1, 1K test set). "
             "Values: mean [95% bootstrap CI]. Reference rows (marked) are computed by the same code and ranked "
             "with the entries: a model above caption length knows more than caption length; equal main scores "
             "share a place.", "",
             *board_table(placed, rank=True),
             "", "τ_d: Kendall's tau between distance to the root and tier; caption length alone reaches the "
             "reference values. A tie (two tiers of a row at one distance) counts half, never as the right "
             "order, for every row of the board: a model whose captions collapse onto one vector scores 0. "
             "Retrieval ties count as chance. TQ: the tier-4 caption as the query (text-only models).", ""]
    return "\n".join(lines)


def board_table(table: list[dict[str, Any]], *, rank: bool = False) -> list[str]:
    """The board's rows as markdown table lines (with each row's place when ``rank``); every cell escaped."""
    header = [*(["#"] if rank else []), "model", "revision", "params", *(text for _, text in columns())]
    cells = []
    for row in table:
        name, link = markdown_cell(row["name"]), _safe_link(row)
        name = f"*{name} (reference)*" if row["reference"] else (f"[{name}](<{link}>)" if link else name)
        cells.append([*([str(row["place"])] if rank else []), name, markdown_cell(row["revision"]),
                      _params(row["parameters"]), *(metric_cell(row["metrics"].get(m)) for m, _ in columns())])
    return markdown_table(header, cells)


def _tier_chart(table: list[dict[str, Any]]) -> str:
    """Grouped bars of per-tier recall, one group per row: image queries, or caption queries (marked *)
    for text-only models."""
    groups = []
    for row in table:
        text_only = "recall_tier1" not in row["metrics"]
        prefix = "text_query/" if text_only else ""
        values = [None if (m := row["metrics"].get(prefix + t)) is None else m.value for t in TIER_RECALLS]
        if all(v is not None for v in values):
            groups.append((row["name"] + (" *" if text_only else ""), values))
    bar, gap, height, left, top = 14, 24, 160, 40, 12
    width = max(left + len(groups) * (4 * bar + gap), left + 300) + 140
    colours = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 130}" role="img" '
             'aria-label="recall per tier">',
             f'<line x1="{left}" y1="{top + height}" x2="{width - 140}" y2="{top + height}" stroke="#333"/>']
    for tick in (0, 0.5, 1.0):
        y = top + height - tick * height
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{tick:g}</text>')
    for g, (name, values) in enumerate(groups):
        x0 = left + g * (4 * bar + gap) + gap / 2
        for t, value in enumerate(values):
            h = value * height
            parts.append(f'<rect x="{x0 + t * bar:.1f}" y="{top + height - h:.1f}" width="{bar - 2}" '
                         f'height="{h:.1f}" fill="{colours[t]}"><title>{html.escape(name)} tier {t + 1}: '
                         f'{value:.3f}</title></rect>')
        parts.append(f'<text transform="translate({x0 + 2 * bar:.1f},{top + height + 10}) rotate(35)" '
                     f'font-size="10">{html.escape(name[:30])}</text>')
    legend_y = top + height + 115
    parts += [f'<rect x="{left + i * 70}" y="{legend_y}" width="10" height="10" fill="{c}"/>'
              f'<text x="{left + i * 70 + 14}" y="{legend_y + 9}" font-size="10">tier {i + 1}</text>'
              for i, c in enumerate(colours)]
    return "".join(parts) + "</svg>"


SCRIPT = """
function sortBy(column, descending) {
  const body = document.querySelector('#board tbody');
  const rows = Array.from(body.querySelectorAll('tr'));
  const value = row => {
    const cell = row.children[column];
    const v = cell.dataset.value;
    return v === undefined ? cell.textContent.toLowerCase() : (v === '' ? -Infinity : parseFloat(v));
  };
  rows.sort((a, b) => {
    const x = value(a), y = value(b);
    const order = x < y ? -1 : x > y ? 1 : 0;
    return descending ? -order : order;
  });
  rows.forEach(row => body.appendChild(row));
  document.querySelectorAll('#board th').forEach((th, i) => {
    th.dataset.sorted = i === column ? (descending ? 'desc' : 'asc') : '';
  });
}
document.querySelectorAll('#board th').forEach((th, i) => th.addEventListener('click', () => {
  const descending = th.dataset.sorted !== 'desc';
  sortBy(i, descending);
  history.replaceState(null, '', '#sort=' + th.dataset.key + (descending ? '-desc' : '-asc'));
}));
const wanted = /#sort=(.+)-(asc|desc)$/.exec(location.hash);
if (wanted) {
  const headers = Array.from(document.querySelectorAll('#board th'));
  const index = headers.findIndex(th => th.dataset.key === decodeURIComponent(wanted[1]));
  if (index >= 0) sortBy(index, wanted[2] === 'desc');
}
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f4f4f4; user-select: none; }
th[data-sorted="desc"]::after { content: " ▼"; } th[data-sorted="asc"]::after { content: " ▲"; }
td:first-child, th:first-child { text-align: left; }
tr.reference td { color: #777; font-style: italic; background: #fafafa; }
.ci { color: #888; font-size: 0.75rem; display: block; white-space: nowrap; }
"""


def page(table: list[dict[str, Any]]) -> str:
    header = [("name", "model"), ("revision", "revision"), ("parameters", "params"), *columns()]
    head = "".join(f'<th data-key="{html.escape(key)}">{html.escape(label)}</th>' for key, label in header)
    body = []
    for row in table:
        name = html.escape(row["name"])
        if _safe_link(row):
            name = f'<a href="{html.escape(_safe_link(row))}" rel="nofollow noopener">{name}</a>'
        count = row["parameters"] if _known_count(row["parameters"]) else ""
        cells = [f"<td>{name}</td>", f"<td>{html.escape(row['revision'])}</td>",
                 f'<td data-value="{count}">{_params(row["parameters"])}</td>']
        for metric, _ in columns():
            m = row["metrics"].get(metric)
            if m is None:
                cells.append('<td data-value="">–</td>')
            else:
                low, high = m.ci95
                cells.append(f'<td data-value="{m.value:.6f}">{m.value:.4f}'
                             f'<span class="ci">[{low:.3f}, {high:.3f}]</span></td>')
        kind = "reference" if row["reference"] else "entry"
        body.append(f'<tr class="{kind}">' + "".join(cells) + "</tr>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>HierarCaps leaderboard</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>HierarCaps leaderboard</h1>\n"
        "<p>Scored from submitted embeddings with the hierarcaps metric code (protocol hierarcaps-v1, 1K test "
        "set). Mean and 95% bootstrap CI; click a column to sort. Grey rows are reference baselines, ranked with "
        "the entries: a model above caption length knows more than caption length. A tie counts half in τ_d and "
        "as chance in retrieval, never in a model's favour.</p>\n"
        f'<table id="board"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) + "\n</tbody></table>\n"
        "<h2>Recall per tier</h2>\n<p>Image queries; * marks text-only models, scored with caption queries "
        f"(their tier 4 is the query itself).</p>\n{_tier_chart(table)}\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
