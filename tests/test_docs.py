"""The documentation's links lead somewhere. Pure: no servers, no database.

Every relative link in README.md and docs/*.md must name a file (or folder) of the
repository, and a `#anchor` on a Markdown file must name one of its headings, slugged as
GitHub does. Links to other sites (`https:`, `mailto:`, ...) and links to an anchor of the
same page are left alone; so is anything inside code (fenced blocks and `inline code`).
Code and configuration that cite a section as `docs/<file>.md, "<Section>"` must name a
heading of that file exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXPECTED_DOCS = ["design", "architecture", "configuration", "api", "testing", "operations", "performance"]
# The sections code comments cite as `docs/design.md, "<Section>"`.
DESIGN_SECTIONS = [
    "What it does",
    "Layout",
    "Processes",
    "Management commands",
    "Configuration",
    "The signal message",
    "Dead letters",
    "Delivery promise",
    "Anomaly rules",
    "Synthetic traffic",
    "Query API",
    "Prometheus metrics",
    "Database extras",
]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of [brackets].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target, a reference definition.
DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, http:, mailto:, ...
CITATION = re.compile(r"docs/([\w.-]+\.md),? \"([^\"]+)\"")
CITING_SUFFIXES = {".py", ".yml", ".yaml", ".toml", ".txt", ".cfg", ".ini", ".json", ".sh"}
CITING_NAMES = {"Makefile", "Dockerfile", "Procfile"}


@dataclass(frozen=True)
class Link:
    line: int
    target: str


def prose_lines(text: str, *, drop_inline_code: bool = True) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, by default with inline code taken out."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            continue
        if opening:
            fence = opening.group(1)
            continue
        yield number, INLINE_CODE.sub("", line) if drop_inline_code else line


def links(text: str) -> list[Link]:
    found = []
    for number, line in prose_lines(text):
        targets = [match.group(1) for match in LINK.finditer(line)]
        definition = DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
        found += [Link(number, target.removeprefix("<").removesuffix(">")) for target in targets]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, without punctuation but
    hyphens, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    """The headings' text, as written but for the marks of inline code."""
    found = []
    for _, line in prose_lines(text, drop_inline_code=False):
        match = HEADING.match(line)
        if match:
            found.append(match.group(2).replace("`", ""))
    return found


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_problems(document: Path, repo: Path) -> list[str]:
    """What is wrong with the relative links of one Markdown file, one line per link."""
    problems = []
    for link in links(document.read_text(encoding="utf-8")):
        if EXTERNAL.match(link.target) or link.target.startswith("#"):
            continue
        path_part, _, anchor = link.target.partition("#")
        where = f"{document.relative_to(repo)}:{link.line}: ({link.target})"
        if path_part.startswith("/"):
            problems.append(f"{where} is absolute: write it relative to the document")
            continue
        target = (document.parent / unquote(path_part)).resolve()
        if not target.is_relative_to(repo.resolve()):
            problems.append(f"{where} leads out of the repository")
        elif not target.exists():
            problems.append(f"{where} names no file: {target.relative_to(repo.resolve())} does not exist")
        elif anchor and target.suffix == ".md" and unquote(anchor).lower() not in anchors(target.read_text("utf-8")):
            problems.append(f"{where} names no heading of {target.name}: #{anchor}")
    return problems


def citing_files(repo: Path) -> Iterator[Path]:
    """The repository's code and configuration, without local state (.venv, .data, .git)
    and without this file, whose examples are not citations."""
    for path in sorted(repo.iterdir()):
        if path.name.startswith(".") or path.name in {"__pycache__", "node_modules"} or path == Path(__file__):
            continue
        if path.is_dir():
            yield from citing_files(path)
        elif path.suffix in CITING_SUFFIXES or path.name in CITING_NAMES:
            yield path


def citation_problems(repo: Path) -> list[str]:
    """Citations `docs/<file>.md, "<Section>"` in code that name no heading of that file."""
    problems = []
    for path in citing_files(repo):
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            for match in CITATION.finditer(line):
                document, section = repo / "docs" / match.group(1), match.group(2)
                where = f"{path.relative_to(repo)}:{number}: docs/{match.group(1)}, {section!r}"
                if not document.exists():
                    problems.append(f"{where}: no such document")
                elif section not in headings(document.read_text(encoding="utf-8")):
                    problems.append(f"{where}: no such heading")
    return problems


def test_the_documents_are_there() -> None:
    names = {document.stem for document in DOCUMENTS if document.parent.name == "docs"}
    assert (REPO / "README.md").exists()
    assert set(EXPECTED_DOCS) <= names, f"missing from docs/: {sorted(set(EXPECTED_DOCS) - names)}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda document: str(document.relative_to(REPO)))
def test_every_relative_link_leads_somewhere(document: Path) -> None:
    problems = link_problems(document, REPO)
    assert not problems, "\n".join(problems)


def test_design_has_the_sections_code_cites() -> None:
    found = headings((REPO / "docs" / "design.md").read_text(encoding="utf-8"))
    missing = [section for section in DESIGN_SECTIONS if section not in found]
    assert not missing, f"docs/design.md lacks the sections {missing}"


def test_every_section_cited_in_code_exists() -> None:
    problems = citation_problems(REPO)
    assert not problems, "\n".join(problems)


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Delivery: how it works\n\n## Notes\n\n## Notes\n")
    (tmp_path / "code.py").write_text('# see docs/guide.md, "Notes" and docs/guide.md, "Speed"\n')
    readme = tmp_path / "README.md"
    readme.write_text(
        "Good: [guide](docs/guide.md), [a section](docs/guide.md#delivery-how-it-works),\n"
        "[the second Notes](docs/guide.md#notes-1), [code](code.py#L1), [site](https://example.com),\n"
        "[here](#top), `[in code](nowhere.md)`.\n"
        "\n"
        "```\n"
        "[in a fence](nowhere.md)\n"
        "```\n"
        "\n"
        "Bad: [missing](docs/nowhere.md) and [no heading](docs/guide.md#speed)\n"
        "[outside](../elsewhere.md) [absolute](/docs/guide.md)\n"
        "[label]: docs/gone.md\n"
    )
    problems = link_problems(readme, tmp_path)
    assert [problem.split(": (")[1].split(")")[0] for problem in problems] == [
        "docs/nowhere.md",
        "docs/guide.md#speed",
        "../elsewhere.md",
        "/docs/guide.md",
        "docs/gone.md",
    ], problems
    assert [problem.split(": ")[-1] for problem in citation_problems(tmp_path)] == ["no such heading"]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Delivery: how the promise is kept", "delivery-how-the-promise-is-kept"),
        ("/health answers 503", "health-answers-503"),
        ("The `BATCH_SIZE` knob", "the-batch_size-knob"),
        ("Before and after, side by side", "before-and-after-side-by-side"),
        ("Read [the docs](docs/api.md)", "read-the-docs"),
    ],
)
def test_anchors_are_slugged_as_github_does(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
