"""The runner's half of checkpoints and pause: /opt/cumulus/runner_checkpoint.py in the worker image, next to
runner.py (standalone like it: the stdlib only).

The in-job API (``cumulus.checkpoint.save``/``load``, ``cumulus.should_pause``) is /opt/cumulus/jobapi/cumulus, a
copy of the package's cumulus/checkpoint.py that the runner puts on the job's sys.path (:data:`JOBAPI_DIR`), so a
job needs nothing in its image. The supervisor tells it where to save, what to restore and where its pause request
appears through the container's env (``CUMULUS_CHECKPOINT_DIR``, ``CUMULUS_CHECKPOINT_RESTORE``,
``CUMULUS_CHECKPOINT_RESTORE_STEP``, ``CUMULUS_CHECKPOINT_MAX_BYTES``, ``CUMULUS_PAUSE_FILE``); the runner passes
those through untouched.

What the runner decides here: a job whose function returned normally after it acknowledged a pause request
(:func:`job_paused`) is paused, not finished: the runner writes no result envelope and exits with
:data:`EXIT_PAUSED`, and the supervisor resumes it later from its last checkpoint.
"""

from __future__ import annotations

import os
import sys

EXIT_PAUSED = 3
JOBAPI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jobapi")
IN_JOB_API = "cumulus.checkpoint"  # the module name the job imported the API under (from JOBAPI_DIR)


def job_paused() -> bool:
    """Whether the job acknowledged a pause request: it imported the in-job API and that says so (it answered True
    to ``should_pause()`` or saved a checkpoint after the pause was asked). Never raises: a module of that name
    that is not the API (no ``pause_acknowledged``), or one that fails to answer, means not paused."""
    api = sys.modules.get(IN_JOB_API)
    acknowledged = getattr(api, "pause_acknowledged", None)
    if not callable(acknowledged):
        return False
    try:
        return acknowledged() is True
    except Exception:  # noqa: BLE001 - the job's module, whatever it is: a finished job stays finished
        return False
