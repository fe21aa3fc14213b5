"""The spec's description as Markdown, with nothing in it that could run or fetch.

Markdown passes raw HTML through, so its output is cleaned by nh3 (Rust's
ammonia) with a short allow-list. Images are dropped (they would be requests),
and links keep their text but lose any href that leaves the page.
"""
from __future__ import annotations

from typing import Optional

import markdown as md
import nh3

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "del", "sup",
    "sub", "span",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "th": {"align"}, "td": {"align"}}


def _filter(tag: str, attribute: str, value: str) -> Optional[str]:
    if tag == "a" and attribute == "href":
        return value if value.startswith("#") else None
    return value


def render_markdown(text: str) -> str:
    """Sanitized HTML for ``text``; safe to insert with |safe."""
    if not text or not text.strip():
        return ""
    raw = md.markdown(text, extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    return nh3.clean(raw, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                     attribute_filter=_filter, url_schemes={"http", "https", "mailto"},
                     link_rel=None, strip_comments=True)
