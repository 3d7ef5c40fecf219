"""The names and limits of the job format (formats 1 and 2, docs/job-format.md): the one place they are written.

The SDK builds packages within these limits, the supervisor refuses packages beyond them, and the worker's runner
(``worker_image/image/runner.py``, standalone: it imports nothing from ``cumulus``) keeps a copy of them that
``tests/test_jobformat_runner_copy.py`` ties to this one. Stdlib only, no imports.
"""

from __future__ import annotations

FORMAT = 1
"""The format number of the result envelope, and of a manifest whose package has no files area."""
FILES_FORMAT = 2
"""The format number of a manifest whose package has a files area (``files/``): format 1 plus that area. The SDK
writes it only then, so a package without data files still runs on a format-1 supervisor and runner; one with them
is refused there by its number (saying that client and cluster do not match) instead of running without its files."""
MANIFEST_FORMATS = (FORMAT, FILES_FORMAT)
"""The manifest formats this Cumulus reads (the supervisor and the runner refuse any other)."""

# ---- members of the package (a zip) and the files of the job's directory on a worker -------------------------
MANIFEST = "cumulus-job.json"
CALL = "call.pkl"
REQUIREMENTS = "requirements.txt"
SRC = "src/"
FILES = "files/"
"""The files area: the job's data files (``files=``) and its ``working_dir``, extracted as the job's working
directory (the runner's cwd, also on ``sys.path`` after ``src/``) with their relative paths kept."""
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
"""Entries of a package. Checked first on the zip's end-of-central-directory record, before the directory is
parsed: a 50 MiB zip can declare a million entries, and parsing them all would take seconds."""
MAX_MANIFEST_BYTES = 1 * MiB
MAX_SOURCE_FILE_BYTES = 5 * MiB
"""A source file of the caller's project bigger than this is left out of the package (named in ``skipped``)."""

# ---- request fields --------------------------------------------------------------------------------------------
MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_LEN = 500
MAX_ENV_VARS = 256
MAX_ENV_VALUE_LEN = 32 * 1024
MAX_ENV_TOTAL_BYTES = 1 * MiB
"""The whole env of a job, names and values in UTF-8 (``NAME=VALUE`` each): the kernel refuses to start a process
whose environment is too big (E2BIG, from about 2 MiB with the usual 8 MiB stack limit), so it could never run."""
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
RESERVED_ENV_PREFIX = "CUMULUS_"
"""Names starting with this, in any case (``cumulus_x`` too), are Cumulus's own: refused in a job's env."""
MAX_WHOLE_GPUS = 8
MIN_GPU_SHARE = 0.01
"""The smallest share of one device a job may ask for: below it, shares round away in the scheduler's accounting
and a full device would seem to have room (the scheduler also caps the jobs per device: jobs.max_jobs_per_device)."""
MAX_SECRET_ENV_BYTES = 500 * 1024
"""A job's ``secret_env`` as the JSON the worker receives (a Docker Swarm secret, whose data Swarm caps at 500 KiB)."""
