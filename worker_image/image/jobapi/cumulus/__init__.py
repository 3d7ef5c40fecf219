"""The in-job half of cumulus inside a job container; the SDK is not here.

/opt/cumulus/jobapi is on the job's sys.path (the runner puts it there), so a job function that calls
``cumulus.checkpoint.save(...)``, ``cumulus.checkpoint.load()`` or ``cumulus.should_pause()`` (pickled by reference
on the client) finds them in any image. ``checkpoint.py`` is a byte-identical copy of the package's
``cumulus/checkpoint.py`` (tests/test_checkpoint_copy.py). Relative imports only: nothing under worker_image/
imports ``cumulus`` absolutely.
"""

from . import checkpoint
from .checkpoint import should_pause

__all__ = ["checkpoint", "should_pause"]
