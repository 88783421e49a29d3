"""Hostile model replies and a checker that HTML made from them runs nothing (for display tests).

A reply is attacker-written: these payloads try every way HTML inside Markdown can run script in a notebook
page (event handlers, script elements, frames, SVG, ``javascript:`` and ``data:`` URLs, attribute breaks).
:func:`inert_text` parses HTML with the standard library's parser and fails on anything that could run or
load something; it returns the visible text, so a test can also check that the reply is still readable.
"""

from __future__ import annotations

from html.parser import HTMLParser

__all__ = ["FORMATTED", "FORMATTED_HTML", "PAYLOAD", "PAYLOADS", "LiveMarkup", "inert_text"]

#: One reply with each kind of attack and some Markdown formatting (short enough for a tiny test model).
#: Each script would set ``window.__pwned`` or open a dialog.
PAYLOAD = (
    'Hi <img src=x onerror="window.__pwned=1;alert(1)"> and **bold**\n\n'
    "<script>window.__pwned=2;alert(2)</script>\n\n"
    '<iframe srcdoc="<script>parent.__pwned=3;alert(3)</script>"></iframe>\n\n'
    '[click me](javascript:window.__pwned=4) <svg onload="window.__pwned=5;alert(5)"></svg>'
)

#: More replies, one attack each, placed where Markdown renderers have had bugs.
PAYLOADS = [
    PAYLOAD,
    '<a href="javascript:alert(1)">link</a> <javascript:alert(1)> [x](JaVaScRiPt:alert(1))',
    "[x](data:text/html,<script>alert(1)</script>) ![img](javascript:alert(1)) ![i](x onerror=alert(1))",
    "[x](  javascript:alert(1)) [y](java\tscript:alert(1)) [z](&#106;avascript:alert(1))",
    '[t](http://example.com "a\\" onmouseover=alert(1) x=\\"")  [<img src=x onerror=alert(1)>](http://x.org)',
    "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | <svg><script>alert(1)</script></svg> |",
    "- <details open ontoggle=alert(1)>\n  - > <math><mtext><style><img src=x onerror=alert(1)>",
    "```html\n<script>alert(1)</script>\n```\n\n`<img src=x onerror=alert(1)>`",
    "<style>body{display:none}</style><form action=javascript:alert(1)><button>go</button></form>",
    "<object data=javascript:alert(1)></object><embed src=javascript:alert(1)><base href=javascript:/>",
    "<!-- comment --><![CDATA[<img src=x onerror=alert(1)>]]>&lt;script&gt;alert(1)&lt;/script&gt;",
    "<a href=http://x.org onclick=alert(1)>x</a> <div style=background:url(javascript:alert(1))>y</div>",
]

#: Markdown a model writes, and pieces of the HTML every renderer of ours must make of it (formatting kept).
FORMATTED = (
    "# Title\n\nSome **bold**, *italic*, ~~gone~~ and `x < y`.\n\n```python\nif a < b:\n    print('<b>')\n```\n"
    "\n- one\n- two\n\n3. three\n4. four\n\n> quoted\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "[docs](https://example.com/a?b=1&c=2), http://example.org and ![chart](https://example.com/c.png)\n"
    "line one\nline two"
)
FORMATTED_HTML = (
    *("<h1>Title</h1>", "<strong>bold</strong>", "<em>italic</em>", "<s>gone</s>", "<code>x &lt; y</code>"),
    *("if a &lt; b:\n    print('&lt;b&gt;')\n</code></pre>", "<li>one</li>", '<ol start="3">', "<blockquote>"),
    *("<td>2</td>", "line one<br>\nline two", '<a href="https://example.com/a?b=1&amp;c=2"'),
    # An image is only a link to it: loading it could send the conversation to any server.
    '<a href="https://example.com/c.png"',
)

#: Elements that run script, load a document or resource, or take over the page.
_FORBIDDEN_TAGS = {
    *("script", "iframe", "frame", "frameset", "object", "embed", "applet", "img", "svg", "math", "video"),
    *("audio", "source", "track", "picture", "image", "style", "link", "meta", "base", "form", "input"),
    *("button", "textarea", "select", "details", "template", "noscript", "portal", "marquee", "canvas"),
}
#: Attributes holding a URL; the only schemes allowed in them.
_URL_ATTRIBUTES = {"href", "src", "action", "formaction", "data", "xlink:href", "poster", "background", "srcset"}
_SAFE_SCHEMES = ("http:", "https:", "mailto:")


class LiveMarkup(AssertionError):
    """HTML made from model text could run or load something."""


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _FORBIDDEN_TAGS:
            raise LiveMarkup(f"<{tag}> element in the output")
        for name, value in attrs:
            if name.startswith("on") or name == "srcdoc":
                raise LiveMarkup(f"<{tag} {name}={value!r}> in the output")
            # CSS that loads a URL or lifts an element over the page (a fake dialog over JupyterLab).
            if name == "style" and any(word in (value or "").lower() for word in ("url(", "expression(", "position")):
                raise LiveMarkup(f"<{tag} style={value!r}> in the output")
            if name in _URL_ATTRIBUTES and not (value or "").strip().lower().startswith(_SAFE_SCHEMES):
                raise LiveMarkup(f"<{tag} {name}={value!r}>: only http(s) and mailto URLs may appear")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        raise LiveMarkup("an HTML comment in the output (parsers disagree on where comments end)")


def inert_text(html: str) -> str:
    """The visible text of ``html``; raises :class:`LiveMarkup` if anything in it could run or load."""
    checker = _Checker()
    checker.feed(html)
    checker.close()
    return "".join(checker.text)
