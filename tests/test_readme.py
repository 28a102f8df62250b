"""README.md renders as intended (issue 7 items 27, 28): every heading is a heading, every
code fence is closed where it should be, and the first commands leave the lab up for the
next steps."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _tokens(text: str):
    return MarkdownIt("commonmark").enable("table").parse(text)


def _headings(text: str) -> list[str]:
    tokens = _tokens(text)
    return [tokens[i + 1].content for i, token in enumerate(tokens)
            if token.type == "heading_open"]


def _unclosed_fences(text: str) -> list[str]:
    """Fences that do not end on a closing fence line, or that swallow an opening one."""
    lines = text.splitlines()
    bad = []
    for token in _tokens(text):
        if token.type != "fence":
            continue
        first, end = token.map
        last = lines[end - 1].strip() if end - 1 > first else ""
        closed = (last.startswith(token.markup) and set(last) == {token.markup[0]})
        swallowed = [line for line in token.content.splitlines()
                     if re.match(r"\s{0,3}(```|~~~)", line)]
        if not closed or swallowed:
            bad.append(f"line {first + 1}: {lines[first]}")
    return bad


def test_every_heading_line_renders_as_a_heading():
    text = README.read_text(encoding="utf-8")
    rendered = _headings(text)
    for wanted in ("What it is", "The inventory", "The CLI", "Leases", "Development"):
        assert wanted in rendered
    # Code blocks hold "# comment" lines, never "## ": every "## "-line is a section.
    written = [line.lstrip("#").strip() for line in text.splitlines()
               if re.match(r"#{2,6} ", line)]
    assert [h for h in rendered if h != "dstm-orch"] == written


def test_every_code_fence_is_closed():
    assert _unclosed_fences(README.read_text(encoding="utf-8")) == []


def test_the_checks_catch_a_fence_closed_by_a_line_with_text_after_it():
    broken = "# t\n\n```sh\nls\n``` `x` then text\n\n## What it is\n\n```yaml\na: 1\n```\n"
    assert "What it is" not in _headings(broken)
    assert _unclosed_fences(broken) == ["line 3: ```sh"]


def test_the_first_command_leaves_the_lab_up_for_the_next_steps():
    text = README.read_text(encoding="utf-8")
    first_fence = next(t for t in _tokens(text) if t.type == "fence")
    demo = next(line for line in first_fence.content.splitlines() if "scripts/demo" in line)
    # The "go on with" block runs `lab exec` and `plan` against the lab: it must be up.
    assert demo.split("#")[0].split() == ["bash", "scripts/demo", "--keep"]
    assert '"${1:-}" = "--keep" ] && keep=1' in (ROOT / "scripts" / "demo").read_text()


def test_nothing_cites_design_notes_outside_the_repository():
    # Issue 7 item 30: docstrings, help texts and comments cite the draft, RFCs or files of
    # the repository; the design notes the project started from are not part of it.
    outside = re.compile("|".join(("DESIGN" + r"(\.md| invariant)", "REAL" + "-STACK")))
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    cited = [f"{name}:{number}" for name in tracked if name and (ROOT / name).is_file()
             for number, line in enumerate(
                 (ROOT / name).read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if outside.search(line)]
    assert cited == []
