"""How every ``refsav`` sub-command reports a mistake, in one place.

- Usage and input mistakes (``InputError``, click's usage errors) print one ``error: …`` line
  that says how to fix it, and exit 2, before anything is written.
- Anything else that goes wrong during the work prints one ``error: …`` line and exits 1.
- No traceback reaches the user unless ``refsav --debug`` (or ``REFSAV_DEBUG=1``).

``ReportingGroup`` is the root command's class: every sub-command runs inside its ``invoke``,
so this holds for all of them without each command catching exceptions itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import InputError
from refsav_pipeline.pipeline.plan import PLAN_FILE


def debug_from_env() -> bool:
    return os.environ.get("REFSAV_DEBUG", "") not in ("", "0")


DEBUG = {"on": debug_from_env()}
"""Set by ``refsav --debug``: let tracebacks through."""


def error_line(message: str) -> None:
    """Print ``error: message`` as one line on stderr (plain text: no wrapping)."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print the error line; return the ``typer.Exit`` for the caller to raise."""
    error_line(message)
    return typer.Exit(code)


class ReportingGroup(TyperGroup):
    """The root ``refsav`` group: turns what sub-commands raise into one line and an exit code."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Click's main, with its usage errors (unknown option, missing value) as one
        ``error:`` line too, instead of a usage block."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as exc:
            if not _is_cli_signal(exc):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # type: ignore[attr-defined]  # the help text itself
            elif hasattr(exc, "format_message"):
                cmd = getattr(getattr(exc, "ctx", None), "command_path", "refsav")
                error_line(f"{exc.format_message()} (see `{cmd} --help`)")
            elif type(exc).__name__ == "Abort":
                typer.echo("Aborted!", err=True)
            sys.exit(getattr(exc, "exit_code", 1))
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: typer.Context):  # noqa: ANN201 (click's signature)
        try:
            return super().invoke(ctx)
        except InputError as exc:
            if DEBUG["on"]:
                raise
            raise fail(str(exc), 2) from exc
        except Exception as exc:
            if DEBUG["on"] or _is_cli_signal(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            what = first or "an unexpected failure, with no message"  # never a class name
            raise fail(f"{what} (run `refsav --debug …` for the traceback)", 1) from exc


def _is_cli_signal(exc: Exception) -> bool:
    """Exit, Abort and usage errors of click or typer (which vendors click in new versions):
    they carry their own exit code and message."""
    return type(exc).__module__.split(".")[0] in ("click", "typer")


def load_config(path: Path | None) -> PipelineConfig:
    """The pipeline config at ``path`` (defaults if ``None``); exit 2 saying what is wrong."""
    try:
        return PipelineConfig.load(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"config {path}: {exc}") from exc


def run_folder(out: Path) -> Path:
    """``out`` if it is the output folder of ``refsav run``; else an ``InputError`` naming the
    run folder inside it if there is one (the demo's ``annotations/demo`` holds ``run/``)."""
    if (out / PLAN_FILE).is_file():
        return out
    if not out.exists():
        raise InputError(f"{out} does not exist: pass the --out of a `refsav run`")
    if not out.is_dir():
        raise InputError(f"{out} is a file, not a run folder: pass the --out of a `refsav run`")
    inside = sorted(p.parent for p in out.glob(f"*/{PLAN_FILE}"))
    if inside:
        hint = " or ".join(f"--out {p}" for p in inside[:3])
        raise InputError(f"{out} is not a run folder (no {PLAN_FILE}), but holds one: "
                         f"pass {hint}")
    raise InputError(f"{out} is not a run folder (no {PLAN_FILE}): pass the --out of a "
                     "`refsav run`")
