"""The `refsav …` commands the README and docs/ show, and checks that each one is still a real
command with real options (the CLI's own command tree, no copy of it). Typer vendors click, so
commands are recognised by what they have (``commands``, option ``opts``), not by class."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`(refsav [^`]+)`(?!`)")
PROGRAM = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\S*/)?refsav\s")


@dataclass(frozen=True)
class DocCommand:
    source: str  # file:line
    text: str  # the command as written (continuations joined, comment dropped)
    fenced: bool  # from a code block (a full command line), or an inline span (a synopsis)

    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True) if self.fenced else _synopsis(self.text)

    @property
    def background(self) -> bool:
        """Started with a trailing `&` (a server the next lines use)."""
        return self.fenced and self.words()[-1:] == ["&"]

    def argv(self) -> list[str]:
        """The arguments after `refsav` (env assignments, the program path and a trailing `&`
        dropped)."""
        words = self.words()
        while words and "=" in words[0] and not words[0].startswith("-"):
            words.pop(0)
        return words[1:-1] if self.background else words[1:]


def _synopsis(text: str) -> list[str]:
    """A reference-table synopsis such as `refsav sav inspect --video ID [--json]`: its words
    with the brackets and alternatives of the notation taken out."""
    text = text.replace("\\|", "|")
    return [w for w in re.split(r"[\s\[\]|]+", text) if w and w not in ("…", "...")]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_commands(paths: list[Path] | None = None) -> list[DocCommand]:
    found: list[DocCommand] = []
    for path in paths or documents():
        text = path.read_text()
        for block in FENCE.finditer(text):
            first = text.count("\n", 0, block.start(1)) + 1
            joined = ""
            for i, line in enumerate(block.group(1).splitlines()):
                line = line.strip().removeprefix("$ ")
                if joined:
                    line = joined + " " + line
                    joined = ""
                if line.endswith("\\"):
                    joined = line[:-1].rstrip()
                    continue
                if PROGRAM.match(line + " "):
                    found.append(DocCommand(f"{path.name}:{first + i}", line, True))
        for m in INLINE.finditer(text):
            line_no = text.count("\n", 0, m.start()) + 1
            found.append(DocCommand(f"{path.name}:{line_no}", m.group(1), False))
    return found


def check_command(root: Any, argv: list[str]) -> str | None:
    """Why ``argv`` is not a command line of ``root`` (unknown sub-command or option), or None.
    Values are not checked: docs write placeholders such as DIR and RUN."""
    cmd = root
    words = list(argv)
    path = ["refsav"]
    while hasattr(cmd, "commands"):
        opts = _options(cmd)
        while words and words[0].startswith("-"):
            word = words.pop(0)
            flag = word.split("=", 1)[0]
            if flag not in opts:
                return f"`{' '.join(path)}` has no option {flag}"
            if opts[flag] and "=" not in word and words:
                words.pop(0)  # the option's value
        if not words or words[0].startswith("<"):
            return None  # the group itself (its help), or a placeholder for any sub-command
        name = words.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            return f"`{' '.join(path)}` has no sub-command {name!r}"
        cmd = sub
        path.append(name)
    opts = _options(cmd)
    for w in words:
        if w.startswith("--") or (w.startswith("-") and len(w) == 2):
            flag = w.split("=", 1)[0]
            if flag not in opts:
                return f"`{' '.join(path)}` has no option {flag}"
    return None


def _options(cmd: Any) -> dict[str, bool]:
    """Each option name of ``cmd``, and whether it takes a value."""
    names = {"--help": False}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "option":
            for name in (*p.opts, *p.secondary_opts):
                names[name] = not (p.is_flag or p.count)
    return names


def click_app() -> Any:
    from refsav_pipeline.cli import app

    return typer.main.get_command(app)
