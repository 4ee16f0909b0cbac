"""The documentation holds together: the configuration table in docs/operations.md names every setting
and nothing else, every relative link between README.md and docs/ resolves (to a heading too, when it
names one), and nothing points at files outside the repository."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from ledger.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
OUTSIDE = ("../shared", "DESIGN.md", "TANSU.md")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets and ``#`` are not markdown."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case, punctuation dropped, spaces to
    hyphens, a repeated one numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M),
                              re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def settings_env() -> set[str]:
    return {f.metadata["env"] for f in fields(Settings)}


def configuration_rows() -> list[str]:
    """The variables the rows of docs/operations.md's configuration table name."""
    section = (ROOT / "docs" / "operations.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(LEDGER_\w+)` \|", section, re.M)


def test_the_configuration_table_names_every_setting() -> None:
    missing = settings_env() - set(configuration_rows())
    assert not missing, f"docs/operations.md's configuration table lacks {sorted(missing)}"


def test_every_row_of_the_configuration_table_is_a_setting() -> None:
    rows = configuration_rows()
    assert rows, "no LEDGER_* rows found under '## Configuration' in docs/operations.md"
    unknown = [env for env in rows if env not in settings_env()]
    assert not unknown, f"docs/operations.md's configuration table names what is no setting: {unknown}"
    assert len(rows) == len(set(rows)), "a setting has two rows"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading in {file.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def test_the_docs_link_every_page_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(prose((ROOT / "README.md").read_text()))}
    unlinked = [path.name for path in DOCS if path.parent.name == "docs" and path.resolve() not in linked]
    assert not unlinked, f"README.md links no {unlinked}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    found = [name for name in OUTSIDE if name in text]
    assert not found, f"{doc.relative_to(ROOT)} mentions {found}: say it in the project's own words instead"
