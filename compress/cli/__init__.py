"""The `compress` command line: click commands that parse options, call the API, print results.

Every command: inputs positional, output folder `-o/--output`, shared option names (`--device`,
`--dtype`, `--seed`, `--force`, `--data`, `--seq-len`, `--samples`), `--json` for one JSON object
on stdout. User errors (bad options included) print one `error:` line on stderr and exit 1; Ctrl-C exits 130 with nothing written.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import signal
import sys
import threading

import click

from compress.errors import CompressError

# command name -> module under compress.cli defining a click command called `command`
COMMANDS = {
    "convert": "convert",
    "inspect": "inspect_cmd",
    "eval": "eval_cmd",
    "prune": "prune",
    "merge": "merge",
    "distill": "distill",
    "fuse": "fuse",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [n for n, mod in COMMANDS.items() if importlib.util.find_spec(f"compress.cli.{mod}") is not None]

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None or importlib.util.find_spec(f"compress.cli.{mod}") is None:
            return None
        return importlib.import_module(f"compress.cli.{mod}").command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="compress")
def cli():
    """Make large language models smaller and better, offline, on their checkpoints."""


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Read by transformers when it is first imported: commands that never need it (merge) do not pay
    # for importing it here (about 2 s).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()


def _terminate(signum, frame):  # noqa: ARG001
    # SIGTERM behaves like Ctrl-C: unwinding removes any half-written output folder.
    raise KeyboardInterrupt


# File-system conditions a user causes or meets (full or read-only disk, permissions): one line, not a traceback.
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EBUSY,
               errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG}


def _run(argv: list[str] | None) -> int:
    """Run one command; every user error, Ctrl-C and SIGTERM ends here as one line and an exit code.

    Everything that imports torch or the commands happens inside the `try`, so a Ctrl-C during
    those imports is handled like any other."""
    try:
        _quiet_libraries()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        rv = cli.main(args=argv, prog_name="compress", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except CompressError as e:
        click.echo(f"error: {e}", err=True)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        # A bad option is bad input like any other: one line, exit 1 (not click's usage block and 2).
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        click.echo(f"error: {e.format_message()}{where}", err=True)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted: nothing was written", err=True)
        return 130
    except OSError as e:
        if e.errno not in _ENV_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"error: {e.strerror}{where}", err=True)
    finally:
        lock = sys.modules.get("compress.checkpoint.lock")
        if lock is not None:  # locks of outputs this command checked but did not write
            lock.release_all()
    return 1


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one was being reported
        code = 130
    if argv is None:
        sys.exit(code)
    return code
