"""GX Data Docs that open offline.

GX's pages load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega
from CDNs, and its index draws the list of validation runs with
bootstrap-table: offline, the pages are unstyled and the index is an empty
table. No wheel on PyPI ships those exact assets, so the pages are rewritten
to need none: every remote <script>, <link> and <img> is removed (nothing is
requested), a small inline style takes Bootstrap's place, and the index gets
a static list of its validation and expectation pages. The validation pages
themselves are rendered by GX in plain HTML tables and stay complete.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

REMOTE_TAG = re.compile(
    r"""<script[^>]*\bsrc=["']https?://[^"']*["'][^>]*>\s*</script>"""
    r"""|<link[^>]*\bhref=["']https?://[^"']*["'][^>]*/?>"""
    r"""|<img[^>]*\bsrc=["']https?://[^"']*["'][^>]*/?>""",
    re.IGNORECASE,
)
STYLE = (
    "<style>body{font:14px/1.45 system-ui,sans-serif;margin:16px;color:#1d2330}"
    "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d8dce3;padding:3px 6px;vertical-align:top}"
    "th{background:#eef1f5}.offline-index li{margin:2px 0}</style>"
)
MARK = "<!-- distillery: offline -->"


def make_offline(docs_dir: Path) -> list[Path]:
    """Rewrite every page under `docs_dir` in place; the pages rewritten."""
    pages = sorted(docs_dir.rglob("*.html"))
    for page in pages:
        text = page.read_text(encoding="utf-8")
        if MARK in text:
            continue
        text = REMOTE_TAG.sub("", text).replace("</head>", f"{STYLE}{MARK}</head>", 1)
        if page == docs_dir / "index.html":
            text = text.replace("</body>", _index(docs_dir) + "</body>", 1)
        page.write_text(text, encoding="utf-8")
    return pages


def _index(docs_dir: Path) -> str:
    def links(folder: str) -> str:
        found = sorted((docs_dir / folder).rglob("*.html"), reverse=True)
        return (
            "".join(
                f'<li><a href="{html.escape(p.relative_to(docs_dir).as_posix())}">'
                f"{html.escape(p.relative_to(docs_dir / folder).with_suffix('').as_posix())}</a></li>"
                for p in found
            )
            or "<li>(none)</li>"
        )

    return (
        f"<section class=offline-index><h2>Validation results</h2><ul>{links('validations')}</ul>"
        f"<h2>Expectation suites</h2><ul>{links('expectations')}</ul></section>"
    )
