"""``refsav benchmark select`` and ``refsav review [serve|stats|export|add-user]``."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from refsav_pipeline.cli_common import fail, run_folder
from refsav_pipeline.errors import InputError

benchmark_app = typer.Typer(help="Choose the benchmark subset (whole videos, held out of "
                                 "training).", no_args_is_help=True)
review_app = typer.Typer(
    help="Human review of the benchmark: `refsav review --out DIR` starts the app.",
    invoke_without_command=True,
)

Out = Annotated[Path, typer.Option("--out", help="Output folder of a run.", file_okay=False)]
Host = Annotated[str, typer.Option("--host", help="Bind address (loopback by default).")]
Port = Annotated[int | None, typer.Option("--port", help="Port (default: Gradio's 7860+).")]
Users = Annotated[Path | None, typer.Option("--users", dir_okay=False,
                                            help="Users file: logins required when given.")]
Proxies = Annotated[str, typer.Option(
    "--forwarded-allow-ips",
    help="Proxies trusted to name the client in X-Forwarded-For (comma-separated addresses "
         "or networks, '*' for any; default none: a client is the address it connects "
         "from). Login throttling counts per client address.")]
GoldRate = Annotated[float, typer.Option(
    "--gold-rate", min=0.0, max=1.0,
    help="Chance that the next sample of a reviewer's queue is a gold sample (a known "
         "answer an adjudicator marked), unmarked in the page; accuracy in `review stats`. "
         "Default 0: none.")]


@benchmark_app.command("select")
def select_cmd(
    out: Out,
    count: Annotated[int, typer.Option(min=1, help="At most this many objects.")] = 2000,
    seed: Annotated[int, typer.Option(help="Same rows + seed = same selection.")] = 0,
    double_review: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Fraction of samples reviewed by two people.")] = 0.1,
    force: Annotated[bool, typer.Option(
        help="Replace a selection that already has decisions.")] = False,
    chunks: Annotated[str | None, typer.Option(
        help="Only videos of these SA-V chunks, e.g. sav_055-sav_056 (train export then "
             "leaves these chunks out).")] = None,
) -> None:
    """Pick whole videos of `ok` rows, stratified by masklet type and size bucket."""
    from refsav_pipeline.review.paths import benchmark_path
    from refsav_pipeline.review.select import SelectionExists, select_and_write
    from refsav_pipeline.review.store import count_decisions
    from refsav_pipeline.sav.chunks import parse_chunks

    out = run_folder(out)
    try:
        chunk_list = None if chunks is None else parse_chunks(chunks)
        samples = select_and_write(out, count, seed, double_review, force, chunk_list,
                                   decisions=count_decisions(out))
    except (SelectionExists, ValueError) as exc:
        raise fail(str(exc)) from exc
    videos = len({s.video_id for s in samples})
    typer.echo(f"{len(samples)} objects from {videos} videos -> {benchmark_path(out)}")
    for stratum, n in sorted(Counter(s.stratum for s in samples).items()):
        typer.echo(f"  {stratum:<20} {n}")
    if len(samples) < count:
        typer.echo(f"note: fewer than {count} eligible objects fit in whole videos", err=True)


def _selected_run(out: Path) -> Path:
    """``out`` if it is a run with a selected benchmark; else an ``InputError`` with the command
    to run first, before anything (the decisions database) is created there."""
    from refsav_pipeline.review.paths import benchmark_path

    out = run_folder(out)
    if not benchmark_path(out).is_file():
        raise InputError(f"{out} has no benchmark selected yet ({benchmark_path(out)} is "
                         f"missing): run `refsav benchmark select --out {out}` first")
    return out


def _serve(out: Path, host: str, port: int | None, users: Path | None, proxies: str,
           gold_rate: float) -> None:
    from refsav_pipeline.review.app import serve

    out = _selected_run(out)
    if users is not None and not users.is_file():
        raise fail(f"users file {users} not found (create it with "
                   "`refsav review add-user`)")
    serve(out, host, port, users, proxies, gold_rate)


@review_app.callback()
def review_main(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder of a run.",
                                             file_okay=False)] = None,
    host: Host = "127.0.0.1",
    port: Port = None,
    users: Users = None,
    forwarded_allow_ips: Proxies = "",
    gold_rate: GoldRate = 0.0,
) -> None:
    """Start the review app (without a sub-command)."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _serve(out, host, port, users, forwarded_allow_ips, gold_rate)


@review_app.command("serve")
def serve_cmd(
    out: Out,
    host: Host = "127.0.0.1",
    port: Port = None,
    users: Users = None,
    forwarded_allow_ips: Proxies = "",
    gold_rate: GoldRate = 0.0,
) -> None:
    """Start the review app (same as `refsav review --out DIR`)."""
    _serve(out, host, port, users, forwarded_allow_ips, gold_rate)


@review_app.command("stats")
def stats_cmd(out: Out,
              as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False
              ) -> None:
    """Progress (as the export counts it), agreement over the double-review samples (Cohen's
    kappa for two raters, Krippendorff's alpha for more), per-reviewer accuracy on gold
    samples (95 % Wilson interval) and throughput over active time."""
    from refsav_pipeline.review.stats import IDLE_GAP_S, MIN_ACTIVE_S, review_stats

    stats = review_stats(_selected_run(out))
    if as_json:
        typer.echo(stats.model_dump_json(indent=1))
        return
    p, a = stats.progress, stats.agreement
    typer.echo(f"samples: {p.total}  decided: {p.done} (accepted {p.accepted}, rejected "
               f"{p.rejected}, awaiting adjudication {p.disputed})  reviews: "
               f"{p.reviews_done}/{p.reviews_needed}  conflicts: {p.conflicts}")
    value = "n/a" if a.value is None else f"{a.value:.3f}"
    observed = "n/a" if a.observed is None else f"{a.observed:.1%}"
    name = "Cohen's kappa" if a.measure == "kappa" else "Krippendorff's alpha"
    typer.echo(f"agreement: {name} {value} on {a.doubly_reviewed} of "
               f"{a.double_review_samples} double-review samples (observed {observed}, "
               f"up to {a.max_raters} raters)")
    typer.echo(f"{'reviewer':<20}{'decisions':>10}{'accept':>8}{'reject':>8}{'edited':>8}"
               f"{'skip':>6}{'active h':>10}{'per hour':>10}  gold correct (95% CI)")
    for r in stats.reviewers:
        rate = "-" if r.per_hour is None else f"{r.per_hour:.1f}"
        gold = "-" if not r.gold_checks else (
            f"{r.gold_correct}/{r.gold_checks} {r.gold_accuracy:.0%} "
            f"({r.gold_low:.0%}–{r.gold_high:.0%})")
        typer.echo(f"{r.reviewer:<20}{r.decisions:>10}{r.accepted:>8}{r.rejected:>8}"
                   f"{r.edited:>8}{r.skipped:>6}{r.active_hours:>10.2f}{rate:>10}  {gold}")
    typer.echo(f"active time: gaps over {IDLE_GAP_S / 60:.0f} min between a reviewer's "
               f"decisions are breaks; no per-hour figure under {MIN_ACTIVE_S / 60:.0f} min")


@review_app.command("export")
def export_cmd(out: Out) -> None:
    """Write the validated benchmark to <out>/review/validated.parquet. Samples with text
    over the limits are left out with the reason (exit 1); disputed double-review samples wait
    for adjudication."""
    from refsav_pipeline.review.export import export_report

    path, rows, refused, disputed = export_report(_selected_run(out))
    long_ok = sum(r.long_accepted for r in rows)
    shorts = sum(len(r.short_expressions) for r in rows)
    for r in refused:
        typer.echo(f"error: {r.video_id} {r.masklet_type} {r.masklet_id} left out: {r.reason}",
                   err=True)
    typer.echo(json.dumps({"path": str(path), "long_accepted": long_ok,
                           "short_expressions": shorts, "rows": len(rows),
                           "refused": len(refused), "awaiting_adjudication": disputed}))
    if refused:
        raise typer.Exit(1)


@review_app.command("add-user")
def add_user_cmd(
    users: Annotated[Path, typer.Option("--users", dir_okay=False,
                                        help="Users file (created if missing).")],
    name: Annotated[str, typer.Argument(help="Reviewer name (letters, digits, _ . @ -).")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin.")] = False,
    role: Annotated[str | None, typer.Option(
        "--role", help="reviewer or adjudicator (default: keep the user's role, or "
                       "reviewer for a new user).")] = None,
) -> None:
    """Add a reviewer or change their password or role; only a salted PBKDF2 hash is
    stored."""
    from refsav_pipeline.review.users import add_user

    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        existed = add_user(users, name, password, role=role)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"{'updated' if existed else 'added'} {name} in {users}")
