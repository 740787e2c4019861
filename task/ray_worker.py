"""The program the workers of a Ray that the simulation starts run: Ray's own worker
(``ray/_private/workers/default_worker.py``, piece ``ray_default_worker`` of
:mod:`task.flower_compat`) with Ray's Arrow serializers left out.

Ray registers serializers for Ray Data's Arrow types in every process that deserializes an object,
and imports ``pyarrow`` to do so whenever it is installed (the ``test`` extra's ``mlflow`` brings
it). No message of this simulation holds an Arrow object, and the import keeps about 28 MB resident
in each worker. :mod:`task.ray_lean` names this file as the workers' program (Ray's ``worker_path``);
Ray's ``setup_worker.py`` starts it with the arguments it gives its own worker, which runs unchanged.
"""

from __future__ import annotations

import os
import runpy
import sys

if __name__ == "__main__":
    # Python puts this file's folder (task/) first on the path: its modules (config, data, ...) must
    # not stand in for top-level modules of the same name in Ray's worker.
    if sys.path and os.path.realpath(sys.path[0] or ".") == os.path.dirname(os.path.realpath(__file__)):
        del sys.path[0]
    from task.ray_lean import default_worker_path, without_arrow_serializers

    without_arrow_serializers()
    worker = default_worker_path()
    sys.argv[0] = worker
    runpy.run_path(worker, run_name="__main__")
