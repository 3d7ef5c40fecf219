"""The names and limits of the job format (format 1, docs/job-format.md): the one place they are written.

The SDK builds packages within these limits, the supervisor refuses packages beyond them, and the worker's runner
(``worker_image/image/runner.py``, standalone: it imports nothing from ``cumulus``) keeps a copy of them that
``tests/test_jobformat_runner_copy.py`` ties to this one. Stdlib only, no imports.
"""

from __future__ import annotations

FORMAT = 1
"""The format number of the manifest and of the result envelope (both sides refuse any other)."""

# ---- members of the package (a zip) and the files of the job's directory on a worker -------------------------
MANIFEST = "cumulus-job.json"
CALL = "call.pkl"
REQUIREMENTS = "requirements.txt"
SRC = "src/"
PACKAGE_NAME = "package.zip"  # the package in the job's code dir (CUMULUS_CODE_DIR)
RESULT_NAME = "result.msgpack"  # the result envelope in the job's output dir (CUMULUS_OUTPUT_DIR)

# ---- sizes -----------------------------------------------------------------------------------------------------
MiB = 1024 * 1024
MAX_PACKAGE_MB = 50
"""The default package limit (``jobs.max_package_mb``; the SDK reads ``CUMULUS_JOBS_MAX_PACKAGE_MB``)."""
MAX_PACKAGE_BYTES = MAX_PACKAGE_MB * MiB
UNCOMPRESSED_FACTOR = 8
"""Zip bombs: the uncompressed total may be at most this many times the package limit (no per-member ratio check:
a pickled array of zeros legitimately deflates 1000x). The runner enforces it again on the actual bytes."""
MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 1 * MiB
MAX_SOURCE_FILE_BYTES = 5 * MiB
"""A source file of the caller's project bigger than this is left out of the package (named in ``skipped``)."""

# ---- request fields --------------------------------------------------------------------------------------------
MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_LEN = 500
MAX_ENV_VARS = 256
MAX_ENV_VALUE_LEN = 32 * 1024
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
RESERVED_ENV_PREFIX = "CUMULUS_"
"""Names starting with this, in any case (``cumulus_x`` too), are Cumulus's own: refused in a job's env."""
MAX_WHOLE_GPUS = 8
