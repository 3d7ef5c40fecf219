"""The job format (docs/job-format.md): the one definition that the SDK and the supervisor share, so that neither
imports the other's modules (the supervisor never imports ``cumulus.client``).

* :mod:`cumulus.jobformat.limits` - member file names, sizes and request limits (one constant each; the
  50 MiB package limit is :data:`MAX_PACKAGE_MB`).
* :mod:`cumulus.jobformat.request` - the rules for request fields: gpu share, requirements, env.
* :mod:`cumulus.jobformat.package` - the member-name rule, the manifest (formats 1 and 2: 2 adds the files area)
  and :func:`validate_package`.
* :mod:`cumulus.jobformat.envelope` - the result envelope's bytes and keys (no unpickling).

The SDK checks a request with these before sending it, the supervisor checks it again on arrival: same
functions, same messages (:class:`~cumulus.errors.InvalidRequest` saying what to fix). The worker's runner is
standalone and keeps a copy of the member-name rule and the limits; ``tests/test_jobformat_runner_copy.py`` ties
the copies together. Nothing here needs grpc or cloudpickle (msgpack is imported by the envelope functions only).
"""

from __future__ import annotations

from cumulus.jobformat.envelope import ENVELOPE_KEYS, INVALID_RESULT, Envelope, decode_envelope, encode_result
from cumulus.jobformat.limits import (CALL, ENV_NAME_PATTERN, FILES, FILES_FORMAT, FORMAT, MANIFEST, MANIFEST_FORMATS,
                                      MAX_ENV_TOTAL_BYTES, MAX_ENV_VALUE_LEN, MAX_ENV_VARS, MAX_MANIFEST_BYTES,
                                      MAX_MEMBERS, MAX_PACKAGE_BYTES, MAX_PACKAGE_MB, MAX_REQUIREMENT_LEN,
                                      MAX_REQUIREMENTS, MAX_SOURCE_FILE_BYTES, MAX_WHOLE_GPUS, MIN_GPU_SHARE,
                                      PACKAGE_NAME, REQUIREMENTS, RESERVED_ENV_PREFIX, RESULT_NAME, SRC,
                                      UNCOMPRESSED_FACTOR, MiB)
from cumulus.jobformat.package import (PackageInfo, check_manifest, check_member_name, check_zip_directory, fmt_bytes,
                                      over_limit, validate_package)
from cumulus.jobformat.request import (check_env, check_gpu_share, check_requirement, check_requirements,
                                       env_name_problem, is_reserved_env_name)

__all__ = [
    "over_limit", "CALL", "ENVELOPE_KEYS", "ENV_NAME_PATTERN", "FILES", "FILES_FORMAT", "FORMAT", "INVALID_RESULT",
    "MANIFEST", "MANIFEST_FORMATS", "MAX_ENV_TOTAL_BYTES",
    "MAX_ENV_VALUE_LEN", "MAX_ENV_VARS", "MAX_MANIFEST_BYTES", "MAX_MEMBERS", "MAX_PACKAGE_BYTES", "MAX_PACKAGE_MB",
    "MAX_REQUIREMENT_LEN", "MAX_REQUIREMENTS", "MAX_SOURCE_FILE_BYTES", "MAX_WHOLE_GPUS", "MIN_GPU_SHARE", "MiB",
    "PACKAGE_NAME",
    "REQUIREMENTS", "RESERVED_ENV_PREFIX", "RESULT_NAME", "SRC", "UNCOMPRESSED_FACTOR",
    "Envelope", "PackageInfo",
    "check_env", "check_gpu_share", "check_manifest", "check_member_name", "check_requirement", "check_zip_directory",
    "check_requirements", "decode_envelope", "encode_result", "env_name_problem", "fmt_bytes",
    "is_reserved_env_name",
    "validate_package",
]
