"""Every relative link and #anchor in the README and the docs pages resolves.

Anchors follow GitHub's heading ids: the heading's text, lower-cased, without characters other
than letters, digits, marks, spaces, '-' and '_', spaces turned into '-'; a repeated id gets
'-1', '-2', ... Links inside code (fenced blocks, `spans`) are not links.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE_GLOBS = ("README.md", "docs/*.md", "results/*/README.md", "benchmarks/README.md")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    return sorted({path for pattern in PAGE_GLOBS for path in ROOT.glob(pattern)})


def slug(heading: str) -> str:
    """GitHub's id for a heading's Markdown text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # inline HTML has no text
    return "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM").replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    ids = set(HTML_ANCHOR.findall(markdown))
    for _, text in HEADING.findall(FENCE.sub("", markdown)):
        base = slug(text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def link_targets(markdown: str) -> list[str]:
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One line per link of `page` that does not resolve: a missing file or a missing anchor."""
    problems = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue  # web links are not checked offline
        path, _, fragment = target.partition("#")
        path = unquote(path)
        resolved = page if not path else (root / path.lstrip("/") if path.startswith("/") else page.parent / path)
        where = f"{page.relative_to(root).as_posix()}: link {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif fragment and resolved.suffix == ".md" and resolved.is_file():
            if unquote(fragment) not in anchors(resolved.read_text(encoding="utf-8")):
                problems.append(f"{where}: no heading with anchor #{fragment} in {resolved.name}")
        elif fragment and not re.fullmatch(r"L\d+(-L\d+)?", fragment):
            problems.append(f"{where}: #{fragment} in a file that has no headings")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_the_pages_checked_include_the_readme_and_docs():
    names = {p.relative_to(ROOT).as_posix() for p in pages()}
    assert {"README.md", "docs/protocol.md", "benchmarks/README.md"} <= names
    assert any(name.startswith("results/") for name in names)


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Set-up: the `make` way\n\n## Notes\n\n## Notes\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n"
        "[ok](docs/guide.md#set-up-the-make-way) [ok](docs/guide.md#notes-1) [ok](#top) [ok](docs/)\n"
        "[web](https://example.org/missing) `[code](missing.md)`\n\n"
        "```\n[fenced](missing.md)\n```\n\n"
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#setup) [bad here](#nowhere)\n"
        "[ref]: docs/also-missing.md\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "README.md: link docs/missing.md: no such file",
        "README.md: link docs/guide.md#setup: no heading with anchor #setup in guide.md",
        "README.md: link #nowhere: no heading with anchor #nowhere in README.md",
        "README.md: link docs/also-missing.md: no such file",
    ]


@pytest.mark.parametrize(
    "heading, expected",
    [
        ("The `layoutpeft` command", "the-layoutpeft-command"),
        ("Speed settings (`train:` in params.yaml)", "speed-settings-train-in-paramsyaml"),
        ("Training speed (2026-11-27)", "training-speed-2026-11-27"),
        ("1 worker or 2 on this machine (CPU)", "1-worker-or-2-on-this-machine-cpu"),
        ("What's new? A [link](x.md) & **bold**", "whats-new-a-link--bold"),
        ("ΔF1 vs full_ft", "δf1-vs-full_ft"),
    ],
)
def test_anchor_slugs_follow_github(heading, expected):
    assert slug(heading) == expected
