"""The commands README.md gives, read out of it, so tests and .ci/run run what a reader pastes.

`python -m tests.contract.readme server-command` prints the quick start's server command (.ci/run
runs it from there rather than keeping a copy).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

# Not tests.harness's REPO: .ci/run runs this module, and the harness imports the whole server.
README = Path(__file__).resolve().parents[2] / "README.md"
_HEADING = re.compile(r"^(#{1,6}) (.+)$", re.MULTILINE)
_FENCED = re.compile(r"^```.*?^```$", re.MULTILINE | re.DOTALL)  # a shell comment is no heading
_SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class QuickStart:
    """The two commands of the quick start."""

    server: str
    tests: str


def section(title: str, text: str | None = None) -> str:
    """The text under the heading `title`, up to the next heading of the same or a higher level."""
    text = README.read_text() if text is None else text
    fences = [(m.start(), m.end()) for m in _FENCED.finditer(text)]
    headings = [h for h in _HEADING.finditer(text) if not any(a <= h.start() < b for a, b in fences)]
    for index, heading in enumerate(headings):
        if heading[2].strip() == title:
            level = len(heading[1])
            end = next((h.start() for h in headings[index + 1 :] if len(h[1]) <= level), len(text))
            return text[heading.end() : end]
    raise AssertionError(f"README.md has no section {title!r}")


def sh_blocks(text: str) -> list[str]:
    """The ```sh fenced blocks of `text`, in order."""
    return [match[1] for match in _SH_BLOCK.finditer(text)]


def quick_start() -> QuickStart:
    """The server command and the test command, the quick start's two blocks of one line each."""
    blocks = sh_blocks(section("Quick start"))
    assert len(blocks) == 2, f"the quick start should hold two sh blocks, found {len(blocks)}"
    server, tests = (block.strip() for block in blocks)
    assert "\n" not in server and "\n" not in tests, "each quick-start block is one command"
    return QuickStart(server=server, tests=tests)


def inline_command(title: str, starts_with: str) -> str:
    """The one inline `code` span of a section that starts with (or whose command starts with) a prefix."""
    spans: list[str] = [
        span
        for span in _INLINE_CODE.findall(section(title))
        if span.startswith(starts_with) or re.match(rf"([A-Z_]+=\S+ )+{re.escape(starts_with)}", span)
    ]
    assert len(spans) == 1, f"expected one `{starts_with}…` command under {title!r}, found {spans}"
    return spans[0]


def grpcurl_walkthrough() -> str:
    """The shell block of the grpcurl section."""
    [block] = sh_blocks(section("Talking to it with grpcurl"))
    return block


def regenerate_commands() -> str:
    """The shell block of the stub regeneration section."""
    [block] = sh_blocks(section("Regenerating the stubs"))
    return block


if __name__ == "__main__":
    if sys.argv[1:] != ["server-command"]:
        raise SystemExit("usage: python -m tests.contract.readme server-command")
    print(quick_start().server)
