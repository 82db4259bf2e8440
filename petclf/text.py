"""Text from users (class, group and file names, titles, paths) shown as text on every surface, never markup.

    from petclf.text import shown, as_markdown, as_cell, as_terminal
    shown("a\\x1b[31mb")            # 'a\\\\x1b[31mb': control and bidi characters as visible escapes
    as_markdown("[x](http://e)")    # '&#91;x&#93;&#40;http:&#47;...': no Markdown or HTML syntax can form
    as_cell("=1+1")                 # "'=1+1": a spreadsheet reads it as text, not a formula (OWASP)
    as_terminal("x[/]y")            # a rich Text: shown as it is, no rich markup read

Class names come from folder names, CSV labels, groups files or a bundle someone downloaded: any of them can
hold HTML, Markdown, rich markup, mathtext, ANSI escapes or a formula. JSON keeps the true value; the report's
HTML is escaped by jinja2 (autoescape) after `shown`; plots draw `shown` text, mathtext off (`PLAIN_TEXT`).
"""

from __future__ import annotations

import unicodedata
from typing import Any

# bidi embeddings, overrides and isolates (and the marks) reorder what is shown (U+202E makes gpj.exe read
# exe.jpg); zero-width joiners stay, emoji and some scripts need them
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP "CSV injection": a cell starting so is a formula
# what Markdown (GFM) and HTML syntax is made of mid-line: escapes, code, emphasis, links, images, tags,
# entities, headings, table cells, autolinks (http://, www., a@b), math, templates; a name never starts a line
# (newlines are escaped), so list and setext markers (- + = 1.) need nothing, and , : % stay readable
MARKUP_CHARS = frozenset("\\`*_~[]()<>&#|!./@$\"'{}")
PLAIN_TEXT: dict[str, Any] = {"parse_math": False}  # matplotlib Text settings for user text: `$x$` as is


def _hidden(c: str) -> bool:
    """True for a character that moves the cursor, colours the terminal or reorders text, not one shown."""
    return c in BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp")


def shown(s: str) -> str:
    """`s` with control characters (ANSI escapes, newlines, tabs, NUL), line separators and bidi controls as
    visible Python-style escapes (`\\n`, `\\x1b`, `\\u202e`); everything else as it is."""
    if s.isprintable():  # the common case; surrogate-escaped bytes of non-UTF-8 file names pass untouched
        return s
    return "".join(c.encode("unicode_escape").decode("ascii") if _hidden(c) else c for c in s)


def as_markdown(s: str) -> str:
    """`shown(s)` for a Markdown (or HTML) page: each of `MARKUP_CHARS` as a numeric character reference, so
    no link, image, tag, emphasis, table cell or heading can form (CommonMark: references never act as
    syntax), and the browser shows the characters themselves."""
    return "".join(f"&#{ord(c)};" if c in MARKUP_CHARS else c for c in shown(s))


def as_cell(s: str) -> str:
    """A text cell for a CSV file: a leading `'` before a cell that starts with = + - @ tab or CR (OWASP),
    so a spreadsheet shows it as text instead of running it. Only for text cells: numbers keep their sign."""
    return "'" + s if s.startswith(FORMULA_START) else s


def as_terminal(s: str):
    """`shown(s)` as a rich `Text`: a table cell rich prints as it is (no `[bold]` markup, no emoji codes)."""
    from rich.text import Text

    return Text(shown(s))
