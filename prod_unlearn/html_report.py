"""``report.html``: the report a reviewer opens in a browser or prints, from the same Markdown.

One self-contained file: charts inlined as data URIs, no network, no JavaScript (a
Content-Security-Policy forbids both), raw HTML in the Markdown (file names come from user
data) shown as text. Sections are reordered so the verdict comes first and the request, budget,
run key and versions close the page; a print stylesheet lays it out on A4.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import platform
import re
from pathlib import Path
from typing import Any

from prod_unlearn.io import atomic_write_text

CSS = """
:root { --ink: #1d2329; --muted: #5b6670; --rule: #d5dbe0; --band: #f3f5f7; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink);
       max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.7em; margin: 0 0 .2em; }
h2 { font-size: 1.3em; margin: 1.8em 0 .5em; padding-bottom: .2em; border-bottom: 2px solid var(--rule); }
h3 { font-size: 1.1em; margin: 1.4em 0 .4em; }
p, li { max-width: 80ch; }
code { font: .9em/1.3 ui-monospace, "DejaVu Sans Mono", Menlo, monospace; background: var(--band);
       padding: 0 .25em; border-radius: 3px; overflow-wrap: anywhere; }
.table { overflow-x: auto; margin: .6em 0 1em; }
table { border-collapse: collapse; font-size: .88em; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--rule); padding: .3em .6em; vertical-align: top; }
th { background: var(--band); text-align: left; }
td[style*="right"] { white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
img { max-width: 100%; height: auto; display: block; margin: .6em 0 1.2em; }
.meta { color: var(--muted); font-size: .9em; }
section.first h2 { color: var(--accent); }
.missing { color: #a33; font-style: italic; }
@media print {
  @page { size: A4; margin: 14mm 12mm; }
  body { font-size: 9.5pt; max-width: none; padding: 0; }
  h2 { break-after: avoid; page-break-after: avoid; }
  h1, h2, h3 { color: #000 !important; }
  table { font-size: 8pt; }
  .table { overflow: visible; }
  tr, img { break-inside: avoid; page-break-inside: avoid; }
  td, th { overflow-wrap: anywhere; }
}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def versions() -> dict[str, str]:
    """The software that produced the figures (a reader reproducing them needs the same)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for pkg in ("prod-unlearn", "torch", "transformers", "tokenizers", "accelerate", "peft", "sacrebleu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_key(settings: dict) -> str:
    """A short content hash of what was asked for (inputs and budget, not the date)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sections(md: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first '## ', [(heading, section text incl. heading)]), code fences respected."""
    head: list[str] = []
    sections: list[list[Any]] = []  # [heading, [lines]]
    cur: list[Any] | None = None
    fence = False
    for line in md.splitlines():
        if line.startswith("```"):
            fence = not fence
        if line.startswith("## ") and not fence:
            cur = [line[3:].strip(), [line]]
            sections.append(cur)
        elif cur is None:
            head.append(line)
        else:
            cur[1].append(line)
    return "\n".join(head), [(h, "\n".join(lines)) for h, lines in sections]


def _to_html(md_text: str) -> str:
    import markdown

    md = markdown.Markdown(extensions=["tables", "sane_lists"])
    md.preprocessors.deregister("html_block")  # raw HTML in the text is shown, never interpreted
    md.inlinePatterns.deregister("html")
    body = md.convert(md_text)
    return re.sub(r"<table>(.*?)</table>", r'<div class="table"><table>\1</table></div>', body, flags=re.S)


def _inline_images(body: str, folder: Path) -> str:
    """Every <img src="x.png"> becomes a data URI; a chart that is not there is said, not broken."""

    def sub(m: re.Match) -> str:
        attrs, src = m.group(0), html.unescape(m.group("src"))
        path = (folder / src).resolve()
        if src.startswith("data:"):
            return attrs
        if folder.resolve() not in path.parents or not path.is_file() or path.suffix.lower() != ".png":
            return f'<p class="missing">(chart {html.escape(src)} is missing from the report folder)</p>'
        data = base64.b64encode(path.read_bytes()).decode()
        return attrs.replace(m.group("src"), f"data:image/png;base64,{data}")

    return re.sub(r'<img [^>]*src="(?P<src>[^"]+)"[^>]*>', sub, body)


def write_html(
    folder: str | Path,
    md_text: str,
    title: str,
    first: tuple[str, ...] = (),
    last: tuple[str, ...] = (),
    settings: dict | None = None,
) -> Path:
    """``folder/report.html`` from a report's Markdown: sections named in ``first`` lead, those in
    ``last`` close, then a "Run" section with the run key of ``settings`` and the versions."""
    folder = Path(folder)
    head, sections = _sections(md_text)
    rank = {h: i for i, h in enumerate(first)}
    tail = {h: i for i, h in enumerate(last)}
    ordered = sorted(
        sections, key=lambda s: (0, rank[s[0]]) if s[0] in rank else ((2, tail[s[0]]) if s[0] in tail else (1, 0))
    )  # sorted() is stable: the rest keep their order
    run = ["## Run", "", "| | |", "|---|---|"]
    if settings is not None:
        run.append(f"| run key | `{run_key(settings)}` (sha256 of the request and budget) |")
    run += [f"| {k} | `{v}` |" for k, v in versions().items()]
    parts = [f"<header>{_to_html(head)}</header>"]
    for h, text in ordered + [("Run", "\n".join(run))]:
        cls = ' class="first"' if h in rank else ""
        parts.append(f"<section{cls}>{_to_html(text)}</section>")
    body = _inline_images("\n".join(parts), folder)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
    path = folder / "report.html"
    atomic_write_text(path, page)
    return path
