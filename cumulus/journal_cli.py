"""``cumulus journal backup FILE`` and ``cumulus journal restore FILE``: the journal file on the supervisor's machine.

Not RPCs: they work on the SQLite file named by the supervisor's settings (``--config FILE``: ``journal.path`` and
``security.secret_key_file``, with the same ``CUMULUS_*`` environment variables the supervisor reads) or by
``--journal PATH``. They need the server install (:func:`cumulus.cli.require_server`); building the parser imports
only the standard library. The work itself is :mod:`cumulus.journal_backup`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

RESTORED_NOTE = ("the next supervisor start recovers its unfinished jobs as after a crash (re-adopted if their "
                 "services still run, otherwise ended or run again by their retry policy)")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cumulus.client.cli import FILE_COMPLETION
    from cumulus.client.cli_flags import global_flags

    journal = commands.add_parser(
        "journal", help="back up or restore the supervisor's journal (on the supervisor's machine)",
        description="Back up or restore the supervisor's journal file (jobs, results, history, tokens, usage). "
                    "Run on the supervisor's machine (or in its container): these read and write the SQLite file "
                    "itself, not the supervisor's API.")
    actions = journal.add_subparsers(dest="journal_command", metavar="ACTION")
    flags = global_flags(address=False)
    for name, help_text, description in (
        ("backup", "copy the journal to FILE, consistently, while the supervisor runs",
         "Copy the journal to FILE with SQLite's online backup API: consistent while the supervisor runs and "
         "writes, checked (integrity_check), written to a temporary file and renamed, mode 0600. The backup does "
         "not hold the key that seals the jobs' secret env values (--with-key copies it next to FILE)."),
        ("restore", "replace the journal with the backup FILE (the supervisor must be stopped)",
         "Replace the journal with the backup FILE: refused while a supervisor uses the journal; the backup is "
         "checked first, the journal replaced atomically, the previous one kept as <journal>.before-restore-<time> "
         "(unless --no-keep). " + RESTORED_NOTE[0].upper() + RESTORED_NOTE[1:] + "."),
    ):
        action = actions.add_parser(name, help=help_text, description=description, parents=[flags])
        action.add_argument("file", metavar="FILE", help="the backup file").complete = (  # type: ignore[attr-defined]
            FILE_COMPLETION)
        where = action.add_mutually_exclusive_group()
        where.add_argument("--config", metavar="FILE", help="the supervisor's settings file: its journal.path "
                           "and security.secret_key_file").complete = FILE_COMPLETION  # type: ignore[attr-defined]
        where.add_argument("--journal", metavar="PATH", help="the journal file (default: journal.path's default, "
                           "~/.local/state/cumulus/journal.sqlite3, or $CUMULUS_JOURNAL_PATH)")
        if name == "backup":
            action.add_argument("--with-key", action="store_true", help="also copy the secret env key next to "
                                "FILE (FILE's name with .key, mode 0600); keep it as safe as the key itself")
        else:
            action.add_argument("--with-key", action="store_true", help="also install the key next to FILE "
                                "(from backup --with-key) as the journal's key; the previous key is kept")
            action.add_argument("--no-keep", action="store_true", help="do not keep the previous journal")
        action.set_defaults(func=_run)
    journal.set_defaults(func=lambda args: _usage(journal))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print("cumulus journal: give an action: backup or restore", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from cumulus.cli import SERVER_INSTALL_HINT, require_server

    command = f"journal {args.journal_command}"
    if not require_server(command):
        return 1
    try:
        from cumulus import journal_backup
        from cumulus.config import load_settings
        from cumulus.errors import ConfigError
    except ModuleNotFoundError as error:
        print(f"cumulus {command}: needs the server install (cannot import {error.name}); run "
              f"`{SERVER_INSTALL_HINT}`", file=sys.stderr)
        return 1
    try:
        settings = load_settings(args.config, overrides={"journal.path": args.journal} if args.journal else {})
    except ConfigError as error:
        print(f"cumulus {command}: invalid settings: {error}", file=sys.stderr)
        return 2
    journal = settings.journal.path
    key_file = journal_backup.key_file_for(journal, settings.security.secret_key_file)
    try:
        if args.journal_command == "backup":
            report: Any = journal_backup.backup(journal, args.file, with_key=args.with_key, key_file=key_file)
        else:
            report = journal_backup.restore(args.file, journal, keep=not args.no_keep, with_key=args.with_key,
                                            key_file=key_file)
    except (journal_backup.JournalBackupError, OSError) as error:
        print(f"cumulus {command}: {error}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(_jsonable(report), sort_keys=True, indent=2))
    elif args.journal_command == "backup":
        print(_backup_text(report))
    else:
        print(_restore_text(report))
    return 0


def _jsonable(report: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(report)
    summary = data["summary"]
    summary["jobs_by_state"] = dict(summary["jobs_by_state"])
    summary["tables"] = dict(summary["tables"])
    return data


def _summary_lines(summary: Any) -> list[str]:
    states = ", ".join(f"{count} {state}" for state, count in summary.jobs_by_state) or "none"
    tables = ", ".join(f"{name} {count}" for name, count in summary.tables)
    usage = dict(summary.tables).get("usage", 0)
    return [f"  jobs:   {summary.jobs} ({states})",
            f"  tokens: {summary.tokens_active} active ({dict(summary.tables).get('tokens', 0)} in all)",
            f"  usage:  {usage} rows",
            f"  size:   {_size(summary.size_bytes)} (rows by table: {tables})"]


def _backup_text(report: Any) -> str:
    summary = report.summary
    lines = [f"backed up {report.source} to {summary.path} in {report.seconds:.2f} s (integrity_check ok, "
             "mode 0600)", *_summary_lines(summary)]
    if report.key_copy:
        lines.append(f"  key:    copied to {report.key_copy} (0600): it opens the sealed secret env values; keep it "
                     "as safe as the backup, and apart from it if you can")
    else:
        lines.append(f"  key:    NOT in the backup: the secret env values of jobs ({summary.sealed_secret_jobs} now) "
                     f"are sealed with {report.key_file}; keep a copy of that key, or use --with-key")
    return "\n".join(lines)


def _restore_text(report: Any) -> str:
    summary = report.summary
    lines = [f"restored {summary.path} (integrity_check ok)", *_summary_lines(summary)]
    lines.append(f"  before: kept as {report.kept_as}" if report.kept_as else "  before: no previous journal kept")
    if report.key_installed:
        kept = f" (the previous key kept as {report.key_kept_as})" if report.key_kept_as else ""
        lines.append(f"  key:    installed {report.key_installed} from the backup{kept}")
    if summary.sealed_secret_jobs and not report.key_file:
        lines.append(f"  key:    none readable here to check the sealed secret env values of "
                     f"{summary.sealed_secret_jobs} jobs with: the supervisor needs the key they were sealed with "
                     "(security.secret_key_file)")
    if report.unreadable_secret_jobs:
        lines.append(f"  WARNING: the secret env values of {report.unreadable_secret_jobs} jobs were sealed with "
                     "another key than the journal's: those jobs cannot run again; restore with --with-key, or put the "
                     "original key in place (security.secret_key_file) before starting the supervisor")
    if summary.unfinished:
        lines.append(f"  unfinished jobs: {summary.unfinished}; {RESTORED_NOTE}")
    return "\n".join(lines)


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


__all__ = ["register"]
