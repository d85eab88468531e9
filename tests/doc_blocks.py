"""The fenced code blocks of the project's Markdown documents, and how the doc tests run them.

A block is a fenced ```bash, ```sh or ```python block. The line right before its opening fence may
carry an annotation for the doc tests:

    <!-- doctest: skip (why) -->          never run (e.g. needs Docker, a GPU or many hours)
    <!-- doctest: slow -->                run only with `pytest -m slow` (CI runs it)
    <!-- doctest: fresh-clone -->         run verbatim in a fresh clone with a fresh venv, then
                                          the document's blocks after it, in that clone (slow)
    <!-- doctest: install -->             installs into the reader's venv: run only in the
                                          fresh clone (the test venv has every extra)
    <!-- doctest: background URL -->      start in the background, wait until URL answers;
                                          stopped when the document's last block has run
    <!-- doctest: expect REGEX -->        its output (stdout + stderr) must match REGEX

Options combine with `;`, e.g. `<!-- doctest: slow; expect R@1 -->`. Every other block runs, in
document order, in one workspace per document (see test_docs.py).
"""

from __future__ import annotations

import dataclasses
import re

RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w+-]*)[^\n]*$")
ANNOTATION = re.compile(r"^\s*<!--\s*doctest:\s*(?P<opts>.*?)\s*-->\s*$")
KNOWN = ("skip", "slow", "fresh-clone", "install", "background", "expect")


@dataclasses.dataclass
class Block:
    path: str
    line: int  # 1-based line of the opening fence
    kind: str  # "bash" | "python"
    code: str
    options: dict

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def parse_options(text: str) -> dict:
    """'slow; expect R@1' -> {"slow": True, "expect": "R@1"}; a `;` inside parentheses belongs to
    its option (a skip reason); unknown options raise."""
    options = {}
    for part in filter(None, (p.strip() for p in re.split(r";(?![^()]*\))", text))):
        name, _, value = part.partition(" ")
        if name not in KNOWN:
            raise ValueError(f"unknown doctest option {name!r} (known: {', '.join(KNOWN)})")
        options[name] = value.strip() or True
    return options


def blocks(path: str, text: str) -> list[Block]:
    """Every runnable block of a Markdown text, with the options annotated above it."""
    lines = text.split("\n")
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines))
                    if lines[j].strip() == m["fence"]), None)
        if end is None:
            raise ValueError(f"{path}:{i + 1}: unclosed code fence")
        kind = RUNNABLE.get(m["lang"].lower())
        if kind:
            previous = lines[i - 1] if i else ""
            note = ANNOTATION.match(previous)
            code = "\n".join(line[len(m["indent"]):] for line in lines[i + 1:end])
            found.append(Block(path, i + 1, kind, code + "\n",
                               parse_options(note["opts"]) if note else {}))
        i = end + 1
    return found
