"""A theme is inlined into a page that must never fetch nor run anything: whatever could
make it do so is refused, naming the file and the line (reportgen/render/theme.py)."""
from __future__ import annotations

import pytest

from reportgen.errors import InputError
from reportgen.render.theme import builtin_css, sanitize_css


@pytest.mark.parametrize("css, what", [
    ("a { background: u\\72l(https://x.example/a.png); }", "backslash"),
    ("@\\69mport 'https://x.example/a.css';", "backslash"),
    ("a { background: \\75 rl(//x.example/a.png); }", "backslash"),
    ("@import 'https://x.example/a.css';", "@import"),
    ("@IMPORT url(x.css);", "@import"),
    ("a { background: url(https://x.example/a.png); }", "url()"),
    ("a { background: URL( '//x.example/a.png' ); }", "url()"),
    ("a { background: url(javascript:alert(1)); }", "url()"),
    ("a { background: image-set('https://x.example/a.png' 1x); }", "image-set"),
    ("a { background: -webkit-image-set(\"//x.example/a.png\" 1x); }", "image-set"),
    ("a { background: image('https://x.example/a.png'); }", "image()"),
    ("a { width: expression(alert(1)); }", "expression()"),
    ("a { behavior: url(#default#x); }", "behavior"),
    ("a { -moz-binding: url('#x'); }", "-moz-binding"),
    ("@font-face { font-family: x; src: url(https://x.example/f.woff2); }", "url()"),
])
def test_refused(css, what):
    with pytest.raises(InputError) as e:
        sanitize_css("body { color: #000; }\n" + css, "brand.css")
    assert str(e.value).startswith("brand.css: line 2: ") and what in str(e.value)


@pytest.mark.parametrize("css", [
    "a { background: url(data:image/png;base64,AAAA); }",
    "a { background: url( 'data:image/svg+xml,<svg/>' ); }",
    "a { fill: url(#grad); }",
    "@font-face { font-family: x; src: url(data:font/woff2;base64,AAAA), local(Arial); }",
    "a { background-image: none; image-rendering: pixelated; }",
    "a::after { content: '—'; }",
])
def test_allowed(css):
    assert sanitize_css(css, "brand.css") == css


def test_a_style_end_cannot_close_the_block():
    assert "</style>" not in sanitize_css("a {}\n</style><script>alert(1)</script>", "brand.css")


@pytest.mark.parametrize("name", ["base", "light", "dark"])
def test_builtin_themes_pass(name):
    css = builtin_css(name)
    assert sanitize_css(css, f"{name}.css") == css
