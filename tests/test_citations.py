"""The repository stands on its own: no file refers to a path outside it, every "algorithm.md N.M"
citation names a section of docs/algorithm.md (and every link to it a heading's anchor), and the
defaults table of algorithm.md 6.1 says what the option groups declare."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

import pytest

from diva_tf.config.config import GROUPS, Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHM = os.path.join(REPO, "docs", "algorithm.md")
# Paths of the machine the project is developed on, the out-of-repository DiVA notes, and citations
# of their sections ("spec 4.6", also wrapped over two lines).
OUTSIDE = re.compile(r"\.\./shared|/work/|diva_spec|stack_notes|\b[Ss]pec(?: \"\n\s*\"|\n\s*(?:# )?| )\d")
CITATION = re.compile(r"\balgorithm\.md (?:section )?(\d+(?:\.\d+)?)")
LINK = re.compile(r"\]\(([^)\s]*algorithm\.md)(?:#([^)\s]*))?\)")
HEADING = re.compile(r"#{2,3} ((\d+(?:\.\d+)?)\.? .*)")


def tracked_text_files() -> dict:
    """{path relative to the repository: text} of every file git tracks, binaries left out."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                               check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    out = {}
    for name in filter(None, names):
        path = os.path.join(REPO, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                out[name] = f.read()
        except UnicodeDecodeError:
            continue
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections() -> dict:
    """{section number: anchor} of the numbered headings of docs/algorithm.md."""
    with open(ALGORITHM) as f:
        return {m[2]: slug(m[1]) for m in map(HEADING.fullmatch, f.read().splitlines()) if m}


def test_no_file_refers_outside_the_repository():
    offending = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m[0]}"
                 for name, text in tracked_text_files().items()
                 if name != "tests/test_citations.py"
                 for m in OUTSIDE.finditer(text)]
    assert not offending, "\n".join(offending)


def test_every_citation_names_a_section_of_algorithm_md():
    numbered = sections()
    assert {"2", "2.4", "4.2", "4.5", "4.6", "5.1", "6.1", "7.2"} <= set(numbered)
    cited, wrong = set(), []
    for name, text in tracked_text_files().items():
        for m in CITATION.finditer(text):
            cited.add(m[1])
            if m[1] not in numbered:
                wrong.append(f"{name}: {m[0]}")
        for m in LINK.finditer(text):
            target = os.path.normpath(os.path.join(os.path.dirname(name), m[1]))
            if target != "docs/algorithm.md" or (m[2] and m[2] not in numbered.values()):
                wrong.append(f"{name}: link {m[0]}")
    assert len(cited) > 20 and not wrong, "\n".join(wrong)


def defaults_table() -> dict:
    """{flag: default as written} from the table of algorithm.md 6.1."""
    with open(ALGORITHM) as f:
        text = f.read()
    section = text.split("### 6.1 ", 1)[1].split("\n### ", 1)[0]
    return {m[1]: m[2] for m in re.finditer(r"^\| `--(\w+)` \| ([^|]*?) \|", section, re.M)}


def written(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(written(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    return str(value)


def test_the_defaults_table_matches_the_option_groups():
    table = defaults_table()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    group_of = {f.name: g.__name__ for g in reversed(GROUPS) for f in dataclasses.fields(g)}
    assert len(table) > 30 and set(table) <= set(fields), set(table) - set(fields)
    defaults = Config()
    for flag, text in table.items():
        if text.startswith("("):  # an empty default whose meaning the table spells out
            assert getattr(defaults, flag) in ([], ""), flag
        else:
            assert text == written(getattr(defaults, flag)), flag
    with open(ALGORITHM) as f:
        rows = re.findall(r"^\| `--(\w+)` \| [^|]* \| (\w+) \|", f.read(), re.M)
    assert rows and all(group_of[flag] == group for flag, group in rows), rows
