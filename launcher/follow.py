"""Submit a run to a SuperLink, or attach to one, and follow it until it ends, saying how.

    python -m launcher.follow lab --run-config "num-server-rounds=20 min-available-nodes=3"
    python -m launcher.follow lab --run-id 4242 [--outputs outputs]

``flwr run --stream`` exits 0 once a run is submitted, whatever becomes of it, and exits 1
when the log stream breaks although the run goes on. This command follows the run's log
(``flwr log --stream``) and, each time the stream ends, asks the SuperLink how the run stands:

- completed: exit 0;
- failed or stopped (its ServerApp raised or was stopped, or it died with the SuperExec that ran
  it, which the SuperLink learns once the task's heartbeat is overdue): one line with Flower's
  details and how to resume, exit 1. Where the run folder is reachable (``--outputs``, default
  ``./outputs``, where the deployment's ServerApps write), a history.json that still says
  'running' is marked 'failed' or 'interrupted';
- still running (the SuperLink, or a proxy in front of it, restarted): one line saying that the
  run goes on and how to follow it yourself; this command attaches again, and gives up (exit 3)
  once following has not worked for ``--reattach-s`` seconds.

Ctrl-C stops following, not the run. The connection is one of your ``flwr`` connections
(``$FLWR_HOME/config.toml``, default ``~/.flwr``; ``deploy/connection.py`` writes one).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher import FlowerError
from launcher.flower_home import FlowerHome, flower_home, user_flwr_home
from launcher.flwr_cli import RunStatus, lines_until, run_status, submit_run
from launcher.outcome import LOST, conclude
from launcher.processes import stop
from task.errors import UserError, run_cli

REATTACH_S = 300.0  # how long following may fail before this command gives up (the run is not touched)
RETRY_S = 3.0  # between attempts to attach again
FOREVER_S = 365 * 24 * 3600.0  # no --timeout: a year (a finite wait, which queues and locks need)
FIRST_SENTENCE = re.compile(r".*?(?:\.(?=\s)|$)", re.S)  # of Flower's reason; its advice that follows fits no case here
# server_app/app.py logs where it writes the run folder, as the ServerApp sees it (resume-from needs that path)
SERVERAPP_FOLDER = re.compile(r"Writing results to (\S.*?)\s*$")


def flwr_error(stderr: str) -> str:
    """Flower's error out of what a ``flwr`` command printed on stderr: the text of its boxed
    'Error' panel as one line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("╭") and "Error" in line), None)
    if start is None:
        return lines[-1] if lines else ""
    panel = [line.strip("│ ") for line in lines[start + 1 :] if not line.startswith("╰")]
    return " ".join(part for part in panel if part)


def follow_again(run_id: int, connection: str) -> str:
    """The two ways to follow a run yourself."""
    return f"`flwr log {run_id} {connection} --stream` or `python -m launcher.follow {connection} --run-id {run_id}`"


def broken_line(run_id: int, connection: str, why: str, status: str | None) -> str:
    """The line for a log stream that broke off while the run had not finished."""
    why = f" ({FIRST_SENTENCE.match(why).group()})" if why else ""
    if status is not None:
        state = f"the run goes on (the SuperLink says '{status}')"
    else:
        state = "the SuperLink does not answer, but the run goes on without this command"
    return (
        f"The log stream of run {run_id} broke off{why}: {state}. Attaching again; "
        f"to follow it yourself: {follow_again(run_id, connection)}."
    )


def gave_up_line(run_id: int, connection: str, reattach_s: float) -> str:
    return (
        f"Gave up following run {run_id}: its log could not be followed for {reattach_s:g} s. The run itself "
        f"may go on: follow it again with {follow_again(run_id, connection)}, or see `flwr list {connection}`."
    )


@dataclass
class Follower:
    """Follows one run's log, attaching again when the stream breaks off while the run goes on."""

    cli: FlowerHome
    connection: str
    run_id: int
    reattach_s: float = REATTACH_S
    retry_s: float = RETRY_S
    deadline: float = 0.0  # time.monotonic(); 0: no deadline
    echo: Callable[[str], object] = lambda line: print(line, end="", flush=True)
    say: Callable[[str], object] = lambda line: print(line, file=sys.stderr, flush=True)
    shown: int = 0  # log lines echoed so far: Flower replays the whole log on every attach
    serverapp_folder: str | None = None

    def stream(self) -> str:
        """Follow ``flwr log --stream`` until it ends, echoing the lines not shown yet; Flower's
        reason when it broke off, '' when it ended cleanly (the run finished)."""
        deadline = self.deadline or time.monotonic() + FOREVER_S
        with tempfile.TemporaryFile("w+") as errors:
            proc = subprocess.Popen(
                ["flwr", "log", str(self.run_id), self.connection, "--stream"],
                env=self.cli.env,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=True,
            )
            assert proc.stdout is not None
            seen = 0
            try:
                for line in lines_until(proc.stdout, deadline):
                    seen += 1
                    if found := SERVERAPP_FOLDER.search(line):
                        self.serverapp_folder = found.group(1)
                    if seen > self.shown:
                        self.echo(line)
                        self.shown = seen
                proc.wait()
            finally:
                stop(proc)
            errors.seek(0)
            return "" if proc.returncode == 0 else flwr_error(errors.read()) or f"flwr log exited {proc.returncode}"

    def until_end(self) -> RunStatus | None:
        """The run's status once the SuperLink says it finished (or no longer knows it); None
        once following has not worked for ``reattach_s`` seconds (said in one line)."""
        trouble_since: float | None = None
        while True:
            shown = self.shown
            why = self.stream()
            state = run_status(self.cli, self.connection, self.run_id)
            if state.finished or state.unknown_run:
                return state
            now = time.monotonic()
            if trouble_since is None or self.shown > shown:  # a new break, after some log got through
                trouble_since = now
                self.say(broken_line(self.run_id, self.connection, why or state.error, state.status))
            elif now - trouble_since >= self.reattach_s:
                self.say(gave_up_line(self.run_id, self.connection, self.reattach_s))
                return None
            time.sleep(self.retry_s)


def follow(args: argparse.Namespace, cli: FlowerHome) -> int:
    """Submit (or check) the run, follow it, say how it ended; the exit status."""
    if args.run_id is None:
        try:
            run_id = submit_run(cli, args.connection, args.run_config)
        except FlowerError as exc:
            raise UserError(f"{exc}".replace("\n", " ")) from None
        print(f"Run {run_id} submitted to '{args.connection}'.", file=sys.stderr, flush=True)
    else:
        run_id = args.run_id
        state = run_status(cli, args.connection, run_id)
        if state.status is None:
            raise UserError(f"run {run_id} on '{args.connection}': {state.error} (`flwr list {args.connection}`)")
    deadline = time.monotonic() + args.timeout if args.timeout else 0.0
    follower = Follower(cli, args.connection, run_id, args.reattach_s, RETRY_S, deadline)
    try:
        state = follower.until_end()
    except KeyboardInterrupt:
        follower.say(f"Stopped following run {run_id}; the run goes on. {_stop_or_follow(run_id, args.connection)}")
        return 130
    except TimeoutError:
        follower.say(f"Run {run_id} did not end within {args.timeout:g} s. {_stop_or_follow(run_id, args.connection)}")
        return LOST
    if state is None:
        return LOST
    code, line = conclude(
        state, run_id, args.connection, args.outputs, follower.serverapp_folder, args.run_config, args.run_id is None
    )
    print(line, file=sys.stderr if code else sys.stdout, flush=True)
    return code


def _stop_or_follow(run_id: int, connection: str) -> str:
    return f"Follow it again with {follow_again(run_id, connection)}; stop it with `flwr stop {run_id} {connection}`."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("connection", help="a SuperLink connection of your flwr CLI (e.g. lab, docker)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="VALUES",
        help='submit this app with these values, as flwr run takes them ("k=v k2=v2" or a .toml file); repeatable',
    )
    what.add_argument("--run-id", type=int, help="follow a run already submitted, instead of submitting one")
    parser.add_argument(
        "--outputs",
        type=Path,
        default=Path("outputs"),
        help="where the ServerApps' run folders land on this machine (default: ./outputs)",
    )
    parser.add_argument(
        "--reattach-s",
        type=float,
        default=REATTACH_S,
        help=f"seconds unable to follow before giving up (default {REATTACH_S:g})",
    )
    parser.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a scratch folder (for the app copy flwr run bundles) where SIGTERM ends the wait as Ctrl-C does
    with flower_home() as scratch:
        return run_cli(lambda: follow(args, FlowerHome(scratch.path, flwr_home=user_flwr_home())))


if __name__ == "__main__":
    sys.exit(main())
