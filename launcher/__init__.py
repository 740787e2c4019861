"""Run the app on Flower's real runtime, isolated: simulation (Ray) or loopback deployment.

The modules, one job each:

- ``flower_home``: a throw-away Flower home per job (``FLWR_HOME``, environment, the processes
  started in it), and stopping them on the way out, SIGTERM included;
- ``processes``: process trees (psutil): what a process started, directly or not, and stopping it all;
- ``runtime``: ``flower-superlink`` and ``flower-supernode`` on free loopback ports, up once they answer;
- ``flwr_cli``: ``flwr run`` / ``log`` / ``list``: submitting the app, following its log, its status;
- ``log_stream``: a run's log read in this process over Flower's Control API (no ``flwr log`` beside it);
- ``staging``: the copy of the app that ``flwr run`` bundles, without what ``.gitignore`` leaves out;
- ``gpus``: the NVIDIA GPUs this machine shows, without importing torch;
- ``timings``: the ``[timing]`` lines the speed benchmark times the launcher's phases by;
- ``simulate`` (the command), ``console``, ``ending``, ``rerun``: the simulation launcher itself.
- ``follow`` (the command) and ``outcome``: a run on any SuperLink followed to its end, how it ended
  said in one line, and a history its dead ServerApp left 'running' marked.
- ``warm`` (the command), ``forkserver`` and ``warm_clientapp``: a node's ClientApp processes forked
  from a server that has Flower and PyTorch imported, instead of a fresh Python per message;
  ``prompt_supernode``: a SuperNode that waits less than Flower's 3 s after an empty pull.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class FlowerError(RuntimeError):
    """A Flower process failed to start, or a run did not complete."""
