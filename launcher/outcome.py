"""How a run on a SuperLink ended, in one line, and its run folder made to say the same.

The ServerApp writes history.json itself: 'completed', 'failed' when it raises, 'interrupted'
when a stop signal reaches it. A ServerApp that dies (killed, out of memory, or with the
SuperExec that runs it) writes nothing: the SuperLink marks the run 'finished:failed' ("No
heartbeat received from the task") once its heartbeat is overdue, and history.json would say
'running' for ever. :func:`conclude` marks such a history 'failed' ('interrupted' for a stopped
run) through :mod:`run_folder`, where the folder is reachable, and says how to resume.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.flwr_cli import RunStatus

if TYPE_CHECKING:  # run_folder imports torch: only once a run has ended
    from run_folder import RunFolder

DONE, ENDED, LOST = 0, 1, 3  # exit statuses: completed; failed or stopped; could not follow it to its end
NO_HEARTBEAT = "No heartbeat received from the task"  # Flower's details for a task that died
FOLLOW = "python -m launcher.follow"


def shell_arg(arg: str) -> str:
    """``arg`` as one types it in a shell: bare when safe, else in double quotes (it holds single
    quotes, as TOML strings do), else however shlex quotes it."""
    if re.fullmatch(r"[\w@%+=:,./-]+", arg):
        return arg
    return f'"{arg}"' if not re.search(r'["$`\\!]', arg) else shlex.quote(arg)


def resume_hint(connection: str, serverapp_folder: str, run_config_args: list[str], submitted: bool) -> str:
    """How to continue the run from its last checkpoint: the same run config plus resume-from, with
    the folder's path as the ServerApp sees it, and an empty run-name (a time-stamped new folder:
    the ServerApp never writes into an existing one, so the old run-name would be refused)."""
    resume = f"resume-from='{serverapp_folder}' run-name=''"
    toml = next((arg for arg in run_config_args if arg.endswith(".toml")), None)
    if toml is not None:  # flwr takes a TOML file alone, never beside key=value pairs
        return f"to resume it, set resume-from = '{serverapp_folder}' and run-name = '' in {toml} and submit it again"
    if not submitted:
        return f"to resume it, submit it again with the run config it had and --run-config {shell_arg(resume)}"
    words = [*FOLLOW.split(), connection, *(w for arg in run_config_args for w in ("--run-config", arg))]
    return "resume it with: " + " ".join(map(shell_arg, [*words, "--run-config", resume]))


def head_line(run_id: int, state: RunStatus) -> str:
    """What the SuperLink says of the run's end."""
    if state.unknown_run:
        return f"Run {run_id} is no longer known to the SuperLink ({state.error}; it restarted without its database?)"
    said = f" (Flower: {state.details})" if state.details else ""
    if state.status == "finished:stopped":
        return f"Run {run_id} was stopped{said}"
    died = ": its ServerApp, or the SuperExec running it, died" if NO_HEARTBEAT in state.details else ""
    return f"Run {run_id} ended as '{state.status}'{said}{died}"


def conclude(
    state: RunStatus,
    run_id: int,
    connection: str,
    outputs: Path,
    serverapp_folder: str | None,
    run_config_args: list[str],
    submitted: bool,
) -> tuple[int, str]:
    """The exit status and the one line for a run that has finished (or is gone); a history.json
    under ``outputs`` that still says 'running' is marked as the SuperLink ended the run."""
    from run_folder import CHECKPOINT, FAILED, INTERRUPTED, RunFolder  # imports torch: once, at the end

    folder = RunFolder.of_run(outputs, run_id) if outputs.is_dir() else None
    if state.status == "finished:completed":
        where = folder.path if folder is not None else serverapp_folder
        return DONE, f"Run {run_id} completed" + (f": its run folder is {where}." if where else ".")
    ended_as = INTERRUPTED if state.status == "finished:stopped" or state.unknown_run else FAILED
    if state.unknown_run:
        why = f"the SuperLink no longer knows the run ({state.error})"
    else:
        why = f"the SuperLink ended the run as '{state.status}'" + (f": {state.details}" if state.details else "")
    parts = [head_line(run_id, state), _record(folder, ended_as, why, outputs)]
    serverapp_folder = serverapp_folder or (_serverapp_path(folder) if folder is not None else None)
    if folder is not None and not folder.file(CHECKPOINT).is_file():
        parts.append("it completed no round, so there is nothing to resume: submit it again")
    elif serverapp_folder is not None:
        rounds = _rounds_done(folder)
        parts.append(f"{rounds}{resume_hint(connection, serverapp_folder, run_config_args, submitted)}")
    else:
        parts.append("it left no run folder that this command saw: fix the cause and submit it again")
    return ENDED, "; ".join(parts) + "."


def _record(folder: RunFolder | None, ended_as: str, why: str, outputs: Path) -> str:
    """Mark the history and say what it now says."""
    from run_folder import RunFolderError

    if folder is None:
        return f"its run folder is not under {outputs} here, so its history.json was left as it is"
    try:
        if folder.mark_ended(ended_as, why):
            return f"history.json in {folder.path} now says '{ended_as}'"
        return f"history.json in {folder.path} says '{folder.history().get('status')}'"
    except (RunFolderError, OSError) as exc:  # unwritable or damaged: said, and the line still comes
        return f"history.json in {folder.path} could not be marked ({exc})"


def _rounds_done(folder: RunFolder | None) -> str:
    """'after round N, ' where the history tells N."""
    from run_folder import RunFolderError

    try:
        rounds = folder.history().get("rounds") if folder is not None else None
    except (RunFolderError, OSError):
        return ""
    return f"after round {len(rounds) - 1}, " if isinstance(rounds, list) and len(rounds) > 1 else ""


def _serverapp_path(folder: RunFolder) -> str | None:
    """The folder's path as the ServerApp saw it, where its config says so (an absolute output-dir)."""
    from run_folder import RunFolderError

    try:
        output_dir = folder.config().get("output-dir")
    except (RunFolderError, OSError):
        return None
    return str(Path(output_dir) / folder.name) if output_dir and Path(output_dir).is_absolute() else None
