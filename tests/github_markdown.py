"""Markdown as GitHub renders it (cmark-gfm, through cmarkgfm) and what a summary may hold.

``render`` uses GitHub's extensions (table, autolink, strikethrough, tagfilter,
tasklist) with raw HTML let through (``CMARK_OPT_UNSAFE``), so any HTML a summary
let in shows in the output. ``assert_safe_on_github`` then checks SPEC.md ("Trust"):
only the tags our own Markdown makes, one HTML comment (the marker, first), no image,
no link but ``--link``'s (once at most) and no @mention outside code (GitHub mentions nobody in code).
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import List, Optional, Tuple

import cmarkgfm
from cmarkgfm.cmark import Options

OUR_TAGS = {"p", "h3", "strong", "em", "code", "table", "thead", "tbody", "tr", "th", "td", "a", "br"}
MARKER = re.compile(r"<!-- reportgen:([a-z0-9][a-z0-9._-]{0,99}) -->")
MENTION = re.compile(r"@[A-Za-z0-9]")      # a login starts with a letter or digit


def render(markdown: str) -> str:
    return cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE)


class _Parts(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: List[Tuple[str, dict]] = []
        self.comments: List[str] = []
        self.text: List[str] = []       # outside <code>
        self.other: List[str] = []      # declarations, processing instructions: none expected
        self._in_code = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_code += tag == "code"

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        self._in_code -= tag == "code"

    def handle_data(self, data):
        if not self._in_code:
            self.text.append(data)

    def handle_comment(self, data):
        self.comments.append(data)

    def handle_decl(self, decl):
        self.other.append(decl)

    def handle_pi(self, data):
        self.other.append(data)

    def unknown_decl(self, data):
        self.other.append(data)


def assert_safe_on_github(markdown: str, link: Optional[str] = None) -> str:
    """The checks above on ``markdown``'s rendering; returns the HTML."""
    first = markdown.split("\n", 1)[0]
    assert MARKER.fullmatch(first), first
    assert markdown.count("-->") == 1, "a field wrote the end of an HTML comment"
    html = render(markdown)
    assert "<img" not in html.lower()
    assert html.startswith(first + "\n"), "the marker is not the first thing GitHub sees"
    parts = _Parts()
    parts.feed(html)
    parts.close()
    assert parts.comments == [first[4:-3]], parts.comments
    assert not parts.other, parts.other
    tags = {tag for tag, _ in parts.tags}
    assert tags <= OUR_TAGS, f"raw HTML from a field: {sorted(tags - OUR_TAGS)}"
    anchors = [attrs for tag, attrs in parts.tags if tag == "a"]
    assert all(a == {"href": link} for a in anchors) and len(anchors) <= 1, anchors
    text = "".join(parts.text)
    assert not MENTION.search(text), f"an @mention: {MENTION.search(text).group()!r} in {text[:200]!r}"
    return html
