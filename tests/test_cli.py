"""The command line dispatches one way: every subcommand's parser names the function that runs it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tina import cli


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_subcommand_names_its_handler():
    commands = _subcommands(cli.build_parser())
    assert {"train", "demo", "recipes", "check", "doctor", "eval", "grade", "merge", "report"} <= set(commands)
    for name, parser in commands.items():
        handler = parser.get_default("handler")
        assert callable(handler), f"tina {name} has no handler"


def test_the_handler_runs_and_its_exit_code_is_returned(monkeypatch):
    seen = []
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    grade = _subcommands(parser)["grade"]
    grade.set_defaults(handler=lambda args: seen.append((args.command, str(args.file))) or 7)
    assert cli.main(["grade", "x.jsonl"]) == 7
    assert seen == [("grade", "x.jsonl")]


def test_a_closed_pipe_ends_quietly():
    """`tina recipes | head -1`: the reader is gone; no traceback, the usual 141 (SIGPIPE) exit code."""
    read, write = os.pipe()
    os.close(read)  # nobody will ever read what tina writes
    proc = subprocess.run(
        [sys.executable, "-m", "tina", "recipes"],
        stdout=write,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    os.close(write)
    err = proc.stderr.decode()
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
