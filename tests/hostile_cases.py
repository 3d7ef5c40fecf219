"""The hostile-input table of tests/test_hostile_input.py: each case is one request sent over real gRPC (raw bytes,
or a message sent through a raw stub so that the SDK's own checks cannot stop it first), the status code it must
get, and words its message must hold (saying what to fix).

A case's request and credentials are functions of the :class:`World` (the supervisor's address, the tokens and jobs
made for the suite), so that nothing big is built before the case runs. Every env value and URL password of a case
contains :data:`SECRET_MARK`, and the runner checks that no answer echoes it nor any token. A case whose expected
behaviour is not in the product yet carries ``xfail`` (the reason): it runs as ``xfail(strict=True)`` and fails
the suite once it passes, so that the mark is removed when the behaviour lands.
"""

from __future__ import annotations

import math
import stat
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc

from cumulus.jobformat import MiB
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
from tests import hostile_zips as z

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
EXISTS = grpc.StatusCode.ALREADY_EXISTS
UNSATISFIABLE = grpc.StatusCode.FAILED_PRECONDITION

SECRET_MARK = "hunter2"
UNKNOWN_JOB = "unit-000000000000"
REUSED_KEY = "reused-key"
UNDECODABLE = "not a valid message of this method's type"


@dataclass
class World:
    """What the suite made on its supervisor: the tokens (name -> secret; ``gone`` is revoked) and jobs."""

    address: str
    secrets: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)


Auth = Callable[[World], tuple[tuple[str, str], ...]]


def as_user(name: str) -> Auth:
    return lambda w: (("authorization", f"Bearer {w.secrets[name]}"),)


def header(value: str | Callable[[World], str]) -> Auth:
    return lambda w: (("authorization", value(w) if callable(value) else value),)


def no_token(w: World) -> tuple[tuple[str, str], ...]:
    return ()


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    request: Callable[[World], Any]  # a message, or bytes sent as they are
    code: grpc.StatusCode
    words: tuple[str, ...]
    auth: Auth = as_user("alice")
    xfail: str = ""
    same_as_unknown: bool = False  # the answer must read as the answer for an unknown job id


def submission(**fields: Any) -> pb.JobSubmission:
    """A valid submission with ``fields`` replaced; a callable value is called (big payloads are built late)."""
    base: dict[str, Any] = {"code_package": z.package(), "gpu": 0.1, "duration_seconds": 60}
    base.update({k: v() if callable(v) else v for k, v in fields.items()})
    return pb.JobSubmission(**base)


def submit(case_name: str, code: grpc.StatusCode, words: tuple[str, ...], /, *, auth: Auth = as_user("alice"),
           xfail: str = "", **fields: Any) -> Case:
    return Case(case_name, "SubmitJob", lambda w: submission(**fields), code, words, auth, xfail)


def raw(name: str, method: str, data: bytes | Callable[[], bytes], code: grpc.StatusCode = INVALID,
        words: tuple[str, ...] = (UNDECODABLE,), auth: Auth = as_user("alice")) -> Case:
    return Case(name, method, lambda w: data() if callable(data) else data, code, words, auth)


def package_case(name: str, data: Callable[[], bytes] | bytes, words: tuple[str, ...],
                 code: grpc.StatusCode = INVALID) -> Case:
    return submit(f"package-{name}", code, words, code_package=data)


def manifest_case(name: str, words: tuple[str, ...], **fields: Any) -> Case:
    return package_case(f"manifest-{name}", lambda: z.manifest_with(**fields), ("cumulus-job.json", *words))


# ---- undecodable requests and wrong message types -----------------------------------------------------------------

DECODING = [
    raw("truncated-varint", "SubmitJob", b"\x08\xff"),
    raw("all-ones", "SubmitJob", b"\xff" * 10),
    raw("field-number-zero", "SubmitJob", b"\x00"),
    raw("truncated-length-delimited", "GetJobStatus", b"\x0a\x05ab"),
    raw("length-beyond-message", "CreateToken", b"\x0a\xff\xff\xff\xff\x0f"),
    raw("bad-utf8-in-name", "SubmitJob", b"\x3a\x02\xff\xfe"),
    raw("bad-utf8-in-job-id", "CancelJob", b"\x0a\x02\xff\xfe"),
    raw("unterminated-groups", "SubmitJob", b"\x5b" * 5000),
    raw("wrong-type-package-as-job-id", "DescribeJob", z.zip_of()),
    raw("wrong-type-health-reply-as-status-request", "GetJobStatus",
        pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING).SerializeToString(),
        words=("job_id is empty",)),
    raw("wrong-type-token-as-submission", "SubmitJob",
        pb.CreateTokenRequest(token=pb.Token(name="x")).SerializeToString(), words=("gpu=0", "at least 0.01")),
    raw("empty-submission", "SubmitJob", b"", words=("gpu=0", "at least 0.01")),
    raw("ten-mib-unknown-field", "GetJobStatus", lambda: b"\xfa\x3e" + b"\x80\x80\x80\x05" + bytes(10 * MiB),
        words=("job_id is empty",)),
    raw("undecodable-without-token", "SubmitJob", b"\x08\xff", UNAUTHENTICATED, ("cumulus token create",), no_token),
    raw("unknown-method", "LaunchMissiles", b"", grpc.StatusCode.UNIMPLEMENTED, ("method not found",)),
]

# ---- request fields ------------------------------------------------------------------------------------------------

GPU = [submit(f"gpu-{label}", INVALID, (f"gpu={shown}", *words), gpu=value) for label, value, shown, words in [
    ("nan", math.nan, "nan", ("not a number",)),
    ("inf", math.inf, "inf", ("not a number",)),
    ("minus-inf", -math.inf, "-inf", ("not a number",)),
    ("minus-1", -1.0, "-1.0", ("not allowed", "whole number of devices 1..8")),
    ("zero", 0.0, "0.0", ("not allowed", "at least 0.01")),
    ("minus-zero", -0.0, "-0.0", ("not allowed", "at least 0.01")),
    ("1e-10", 1e-10, "1e-10", ("below the smallest share", "0.01")),
    ("5e-324", 5e-324, "5e-324", ("below the smallest share", "0.01")),
    ("0.001", 0.001, "0.001", ("below the smallest share", "0.01")),
    ("0.0099", 0.0099, "0.0099", ("below the smallest share", "0.01")),
    ("1.5", 1.5, "1.5", ("not allowed", "whole number of devices 1..8")),
    ("2.5", 2.5, "2.5", ("not allowed", "whole number of devices 1..8")),
    ("9", 9.0, "9.0", ("not allowed", "1..8")),
    ("1e308", 1e308, "1e+308", ("not allowed", "1..8")),
]] + [
    submit("gpu-8-whole-devices", UNSATISFIABLE, ("gpu=8", "no worker has enough"), gpu=8.0),
    submit("gpu-2-whole-devices", UNSATISFIABLE, ("gpu=2", "no worker has enough"), gpu=2.0),
]

RANGES = [
    submit("duration-over-max", INVALID, ("duration_seconds=86401", "1..86400"), duration_seconds=86401),
    submit("duration-uint32-max", INVALID, ("duration_seconds=4294967295", "1..86400"), duration_seconds=2**32 - 1),
    submit("priority-over", INVALID, ("priority=1001", "-1000..1000"), priority=1001),
    submit("priority-under", INVALID, ("priority=-1001", "-1000..1000"), priority=-1001),
    submit("priority-int32-max", INVALID, ("priority=2147483647", "-1000..1000"), priority=2**31 - 1),
    submit("priority-int32-min", INVALID, ("priority=-2147483648", "-1000..1000"), priority=-2**31),
    submit("retries-11", INVALID, ("retries=11", "0..10"), retries=11),
    submit("retries-uint32-max", INVALID, ("retries=4294967295", "0..10"), retries=2**32 - 1),
    submit("max-queue-seconds-over-a-week", INVALID, ("max_queue_seconds=604801", "0..604800"),
           max_queue_seconds=7 * 86400 + 1),
    submit("max-queue-seconds-uint32-max", INVALID, ("max_queue_seconds=4294967295",), max_queue_seconds=2**32 - 1),
]

TEXT = [
    submit("name-129-chars", INVALID, ("name is 129 characters", "at most 128"), name="n" * 129),
    submit("name-nul", INVALID, ("name", "control character"), name="a\x00b"),
    submit("name-escape-sequence", INVALID, ("name", "control character"), name="\x1b[2Jowned"),
    submit("name-newline", INVALID, ("name", "control character"), name="line\nbreak"),
    submit("name-right-to-left-override", INVALID, ("name", "control character"), name="job\u202egpj.exe"),
    submit("key-129-chars", INVALID, ("idempotency_key is 129 characters", "at most 128"), idempotency_key="k" * 129),
    submit("key-bell", INVALID, ("idempotency_key", "control character"), idempotency_key="k\x07"),
    submit("key-zero-width-space", INVALID, ("idempotency_key", "control character"), idempotency_key="a\u200bb"),
    submit("key-nul", INVALID, ("idempotency_key", "control character"), idempotency_key="k\x00"),
]

VALID_NAME = "letters, digits and '_'"
ENV_NAMES = [
    ("newline", "FOO\n", (VALID_NAME,)),
    ("empty", "", (VALID_NAME,)),
    ("leading-digit", "1A", (VALID_NAME,)),
    ("equals", "A=B", (VALID_NAME,)),
    ("space", "A B", (VALID_NAME,)),
    ("non-ascii", "\u00c4RGER", (VALID_NAME,)),
    ("cumulus-prefix", "CUMULUS_X", ("reserved for cumulus",)),
    ("cumulus-prefix-lowercase", "cumulus_x", ("reserved for cumulus",)),
    ("pip-index-url", "PIP_INDEX_URL", ("not allowed in a job's env", "installer")),
    ("uv-index-url", "UV_INDEX_URL", ("not allowed in a job's env", "installer")),
    ("ld-preload", "LD_PRELOAD", ("not allowed in a job's env", "dynamic loader")),
    ("ld-library-path", "LD_LIBRARY_PATH", ("not allowed in a job's env", "dynamic loader")),
    ("pythonpath", "PYTHONPATH", ("not allowed in a job's env", "python interpreter")),
    ("pythonstartup", "PYTHONSTARTUP", ("not allowed in a job's env", "python interpreter")),
    ("path", "PATH", ("not allowed in a job's env",)),
    ("nvidia-visible-devices", "NVIDIA_VISIBLE_DEVICES", ("not allowed in a job's env", "container runtime")),
]


def big_env(first: int = 0, end: int = 256) -> dict[str, str]:
    """Variables ``first..end-1`` of 256 that are 32 KiB each (all of them: 8 MiB, under the per-variable limits)."""
    return {f"V{i:03}": SECRET_MARK + "x" * (32 * 1024 - len(SECRET_MARK)) for i in range(first, end)}


ENV = [submit(f"env-name-{label}", INVALID, (f"env name {name!r}", *words), env={name: SECRET_MARK})
       for label, name, words in ENV_NAMES] + [
    submit("env-value-nul", INVALID, ("env value of 'OK'", "nul"), env={"OK": SECRET_MARK + "\x00tail"}),
    submit("env-value-over-32-kib", INVALID, ("env value of 'BIG'", "at most 32768"),
           env={"BIG": SECRET_MARK * (32 * 1024 // len(SECRET_MARK) + 1)}),
    submit("env-257-variables", INVALID, ("257 variables", "at most 256"),
           env={f"V{i}": SECRET_MARK for i in range(257)}),
    submit("env-256-x-32-kib", INVALID, ("bytes in all", "1 mib"), env=big_env),
]
SECRET_ENV = [submit(f"secret-env-name-{label}", INVALID, ("secret_env", repr(name)), secret_env={name: SECRET_MARK})
              for label, name, _ in ENV_NAMES if label in ("newline", "empty", "cumulus-prefix", "pip-index-url",
                                                           "ld-preload", "pythonpath")] + [
    submit("secret-env-value-nul", INVALID, ("secret_env", "nul"), secret_env={"OK": SECRET_MARK + "\x00"}),
    submit("secret-env-256-x-32-kib", INVALID, ("secret_env", "bytes in all"), secret_env=big_env),
    submit("secret-env-name-also-in-env", INVALID, ("API_KEY given in both env and secret_env", "each variable once"),
           env={"API_KEY": SECRET_MARK}, secret_env={"API_KEY": SECRET_MARK}),
    submit("secret-env-and-env-together-over-1-mib", INVALID, ("env and secret_env together", "bytes in all"),
           env=lambda: big_env(0, 20), secret_env=lambda: big_env(20, 40)),
    submit("secret-env-over-500-kib-as-json", INVALID, ("secret_env is", "bytes as json", "at most"),
           secret_env=lambda: big_env(0, 16)),
]

PIP_OPTION = ("is a pip option", "pep 508")
NOT_A_REQUIREMENT = ("is a url or a path", "pep 508")
REQUIREMENTS = [submit(f"requirement-{label}", INVALID, words, requirements=items, xfail=xfail)
                for label, items, words, xfail in [
    ("editable", ["-e ."], PIP_OPTION, ""),
    ("index-url", ["--index-url https://evil.example/simple"], PIP_OPTION, ""),
    ("extra-index-url", ["--extra-index-url=https://evil.example/simple"], PIP_OPTION, ""),
    ("requirements-file", ["-r requirements.txt"], PIP_OPTION, ""),
    ("file-url", ["pkg @ file:///etc/passwd"], ("file:", "https://"), ""),
    ("bare-file-url", ["file:///etc/passwd"], NOT_A_REQUIREMENT, ""),
    ("ssh-url", ["pkg @ git+ssh://git@host.example/repo"], ("git+ssh:", "https://"), ""),
    ("relative-path", ["../pkg"], NOT_A_REQUIREMENT, ""),
    ("home-path", ["~/pkg"], NOT_A_REQUIREMENT, ""),
    ("newline", ["numpy\nrequests"], ("line break", "one requirement per item"), ""),
    ("carriage-return-option", ["numpy\r--index-url=https://evil.example"], ("line break",), ""),
    ("nul", ["numpy\x00"], ("nul",), ""),
    ("201-items", [f"pkg{i}" for i in range(201)], ("201 requirements", "at most 200"), ""),
    ("501-chars", ["p" * 501], ("longer than 500",), ""),
    ("empty", [""], ("empty requirement", "remove it"), ""),
    ("blank", ["numpy", "   "], ("empty requirement", "remove it"), ""),
    ("unparsable", ["numpy>="], ("not a valid requirement", "numpy>=1.26"), ""),
    ("bad-marker", ["numpy; os_name =="], ("not a valid requirement",), ""),
    ("differs-from-package", ["numpy>=1.26"], ("differ from the package", "requirements="), ""),
    ("option-with-password", [f"--index-url https://user:{SECRET_MARK}@evil.example/simple"], PIP_OPTION, ""),
    ("file-url-with-password", [f"pkg @ file://user:{SECRET_MARK}@host/pkg.whl"], ("file:",), ""),
]]

CONTAINER = [
    submit("memory-1-byte", INVALID, ("memory_bytes=1", "out of range", "16 mib"), memory_bytes=1),
    submit("memory-just-under-16-mib", INVALID, ("memory_bytes=16777215", "out of range"), memory_bytes=16 * MiB - 1),
    submit("memory-over-max", INVALID, ("memory_bytes=274877906945", "out of range"), memory_bytes=262144 * MiB + 1),
    submit("memory-uint64-max", INVALID, ("memory_bytes=18446744073709551615", "out of range"),
           memory_bytes=2**64 - 1),
] + [submit(f"cpus-{label}", INVALID, (f"cpus={shown}", "out of range", "0.01..256"), cpus=value)
     for label, value, shown in [("nan", math.nan, "nan"), ("inf", math.inf, "inf"), ("minus-inf", -math.inf, "-inf"),
                                 ("minus-1", -1.0, "-1.0"), ("0.001", 0.001, "0.001"), ("257", 257.0, "257.0"),
                                 ("1e308", 1e308, "1e+308")]] + [
    submit(f"network-{label}", INVALID, ("is not allowed", "'internet'", "'none'"), network=value)
    for label, value in [("host", "host"), ("bridge", "bridge"), ("uppercase", "NONE"), ("newline", "none\n"),
                         ("container", "container:supervisor"), ("1000-chars", "x" * 1000)]]

# ---- packages ------------------------------------------------------------------------------------------------------

NOT_A_ZIP = ("not a valid zip archive", "build_package")
PACKAGES = [
    package_case("not-a-zip", b"#!/bin/sh\nrm -rf /\n", NOT_A_ZIP),
    package_case("local-header-then-garbage", b"PK\x03\x04" + bytes(100), NOT_A_ZIP),
    package_case("empty", b"", ("empty", "build_package")),
    package_case("truncated", lambda: z.truncated(z.package()), NOT_A_ZIP),
    package_case("zip-bomb-deflated", z.real_zip_bomb, ("zip bomb", "400.0 mib")),
    package_case("zip-bomb-lying-sizes", lambda: z.with_claimed_sizes(z.package(), 2**32 - 1), ("zip bomb",)),
    package_case("end-record-declares-60000-entries", lambda: z.with_declared_entries(z.package(), 60000),
                 ("60000 entries", "at most 10000")),
    package_case("900k-entries-49-mib", z.many_entries, ("900000 entries", "at most 10000")),
    package_case("directory-holds-more-than-declared",
                 lambda: z.with_declared_entries(z.zip_of([("src/a.py", b""), ("src/b.py", b"")]), 2),
                 ("does not hold the 2 entries",)),
    package_case("zip64-announced-but-missing", z.zip64_announced_but_missing, ("zip64",)),
    package_case("10001-real-entries", lambda: z.too_many_real_entries(10001), ("at most 10000",)),
    package_case("entry-dotdot", lambda: z.zip_of([("../escape.py", b"")]), ("'../escape.py'", "'..'")),
    package_case("entry-nested-dotdot", lambda: z.zip_of([("src/../../escape.py", b"")]), ("'..'",)),
    package_case("entry-absolute", lambda: z.zip_of([("/etc/cron.d/evil", b"")]), ("absolute path",)),
    package_case("entry-drive-letter", lambda: z.zip_of([("C:/Windows/evil.dll", b"")]), ("absolute path",)),
    package_case("entry-backslashes", lambda: z.zip_of([("src\\..\\..\\evil.py", b"")]), ("backslash",)),
    package_case("entry-dot-component", lambda: z.zip_of([("src/./x.py", b"")]), ("'.' path component",)),
    package_case("entry-empty-component", lambda: z.zip_of([("src//x.py", b"")]), ("empty or '.'",)),
    package_case("entry-symlink", lambda: z.zip_of([z.symlink()]), ("symbolic link", "include the file itself")),
    package_case("entry-char-device", lambda: z.zip_of([(z.entry_of_kind("src/mem", stat.S_IFCHR), b"")]),
                 ("not a regular file",)),
    package_case("entry-fifo", lambda: z.zip_of([(z.entry_of_kind("src/fifo", stat.S_IFIFO), b"")]),
                 ("not a regular file",)),
    package_case("entry-encrypted", z.with_encrypted_entry, ("encrypted",)),
    package_case("entry-bzip2", lambda: z.zip_of([(z.compressed_entry("src/b", zipfile.ZIP_BZIP2), b"x")]),
                 ("compression method 12", "stored and deflate")),
    package_case("entry-twice", z.duplicate_entry, ("'call.pkl' twice",)),
    package_case("no-manifest", lambda: z.zip_of(manifest=False), ("no cumulus-job.json", "build_package")),
    package_case("no-call", lambda: z.zip_of(call=None), ("no call.pkl", "build_package")),
    package_case("manifest-not-json", lambda: z.zip_of(manifest=b"{format: 1"), ("cumulus-job.json", "not valid json")),
    package_case("manifest-not-utf8", lambda: z.zip_of(manifest=b"\xff\xfe{}"), ("cumulus-job.json", "not valid json")),
    package_case("manifest-over-1-mib", lambda: z.zip_of(manifest=b" " * (MiB + 1)),
                 ("cumulus-job.json", "at most 1.0 mib")),
    package_case("manifest-a-list", lambda: z.zip_of(manifest=[1, 2]), ("cumulus-job.json", "json object")),
    manifest_case("format-3", ("unsupported format 3", "formats 1, 2"), format=3),
    manifest_case("format-a-string", ("unsupported format '1'",), format="1"),
    manifest_case("function-a-number", ("'function' must be a non-empty string",), function=5),
    manifest_case("function-empty", ("'function' must be a non-empty string",), function=""),
    manifest_case("requirements-a-string", ("'requirements' must be a list of strings",), requirements="numpy"),
    manifest_case("requirements-numbers", ("'requirements' must be a list of strings",), requirements=[1]),
    manifest_case("requirement-option", ("requirements", "is a pip option"), requirements=["-e ."]),
    manifest_case("modules-a-string", ("'modules' must be a list of strings",), modules="src/x.py"),
    manifest_case("module-missing", ("'src/missing.py' is listed but not in the archive",),
                  modules=["src/missing.py"]),
    manifest_case("env-a-list", ("env must be a dict",), env=["A=1"]),
    manifest_case("env-ld-preload", ("env name 'LD_PRELOAD'", "dynamic loader"), env={"LD_PRELOAD": SECRET_MARK}),
    manifest_case("env-value-a-number", ("env value of 'N'", "must be a string"), env={"N": 1}),
    package_case("51-mib", lambda: bytes(51 * MiB), ("51.0 mib", "over the limit of 50.0 mib")),
    package_case("over-the-grpc-message-limit", lambda: bytes(65 * MiB), ("larger than max",), code=EXHAUSTED),
]

# ---- job ids -------------------------------------------------------------------------------------------------------

JOB_RPCS = {"GetJobStatus": pb.GetJobStatusRequest, "DescribeJob": pb.DescribeJobRequest,
            "CancelJob": pb.CancelJobRequest, "WatchJob": pb.WatchJobRequest}


def job_case(label: str, method: str, job_id: str | Callable[[World], str], code: grpc.StatusCode,
             words: tuple[str, ...], same_as_unknown: bool = False) -> Case:
    request = JOB_RPCS[method]
    return Case(f"job-id-{label}-{method}", method,
                lambda w: request(job_id=job_id(w) if callable(job_id) else job_id), code, words,
                same_as_unknown=same_as_unknown)


JOB_IDS = [job_case("empty", method, "", INVALID, ("job_id is empty", "the id printed when the job was submitted"))
           for method in JOB_RPCS] + [
    job_case("someone-elses", method, lambda w: w.jobs["bob"], NOT_FOUND, ("no job",), same_as_unknown=True)
    for method in JOB_RPCS] + [
    job_case("300-chars", "GetJobStatus", "j" * 300, INVALID, ("not a job id",)),
    job_case("300-chars", "WatchJob", "j" * 300, INVALID, ("not a job id",)),
    job_case("nul", "DescribeJob", "unit-\x00", INVALID, ("not a job id",)),
    job_case("newline", "CancelJob", "unit-1\nunit-2", INVALID, ("not a job id",)),
    job_case("escape-sequence", "GetJobStatus", "\x1b]0;owned\x07", INVALID, ("not a job id",)),
    job_case("path-traversal", "DescribeJob", "../../../etc/passwd", NOT_FOUND, ("no job '../../../etc/passwd'",)),
    job_case("sql", "GetJobStatus", "' OR '1'='1", NOT_FOUND, ("no job",)),
    job_case("glob", "CancelJob", "unit-*", NOT_FOUND, ("no job 'unit-*'",)),
]

# ---- tokens --------------------------------------------------------------------------------------------------------

NOT_VALID_TOKEN = ("not valid (unknown or revoked)", "cumulus token create")
BEARER = ("must be 'bearer <token>'",)
AUTH = [
    Case("auth-basic-scheme", "ListJobs", lambda w: pb.ListJobsRequest(), UNAUTHENTICATED, BEARER,
         header(lambda w: f"Basic {w.secrets['alice']}")),
    Case("auth-bearer-without-token", "GetJobStatus", lambda w: pb.GetJobStatusRequest(job_id="x"), UNAUTHENTICATED,
         BEARER, header("Bearer")),
    Case("auth-bearer-blank", "SubmitJob", lambda w: submission(), UNAUTHENTICATED, BEARER, header("Bearer    ")),
    Case("auth-token-without-scheme", "ListWorkers", lambda w: pb.ListWorkersRequest(), UNAUTHENTICATED, BEARER,
         header(lambda w: w.secrets["alice"])),
    Case("auth-unknown-token", "SubmitJob", lambda w: submission(), UNAUTHENTICATED, NOT_VALID_TOKEN,
         header(f"Bearer cumulus_{SECRET_MARK}" + "x" * 36)),
    Case("auth-revoked-token", "SubmitJob", lambda w: submission(), UNAUTHENTICATED, NOT_VALID_TOKEN, as_user("gone")),
    Case("auth-revoked-token-cancel", "CancelJob", lambda w: pb.CancelJobRequest(job_id=w.jobs["bob"]),
         UNAUTHENTICATED, NOT_VALID_TOKEN, as_user("gone")),
    Case("auth-truncated-admin-token", "ListTokens", lambda w: pb.ListTokensRequest(), UNAUTHENTICATED,
         NOT_VALID_TOKEN, header(lambda w: f"Bearer {w.secrets['admin'][:-1]}")),
    Case("auth-admin-token-with-suffix", "CreateToken", lambda w: pb.CreateTokenRequest(token=pb.Token(name="m")),
         UNAUTHENTICATED, NOT_VALID_TOKEN, header(lambda w: f"Bearer {w.secrets['admin']}x")),
    Case("auth-two-tokens", "ListJobs", lambda w: pb.ListJobsRequest(), UNAUTHENTICATED, NOT_VALID_TOKEN,
         header(lambda w: f"Bearer {w.secrets['alice']} {w.secrets['admin']}")),
    Case("auth-no-token-watch", "WatchJob", lambda w: pb.WatchJobRequest(job_id=w.jobs["bob"]), UNAUTHENTICATED,
         ("needs a token", "cumulus token create"), no_token),
] + [Case(f"non-admin-{label}", method, lambda w, r=request: r, DENIED, ("not an admin token",))
     for label, method, request in [
         ("create-admin-token", "CreateToken", pb.CreateTokenRequest(token=pb.Token(name="mallory", admin=True))),
         ("list-tokens", "ListTokens", pb.ListTokensRequest()),
         ("revoke-another-users-token", "RevokeToken", pb.RevokeTokenRequest(name="bob")),
         ("revoke-the-admin-token", "RevokeToken", pb.RevokeTokenRequest(name="admin")),
         ("rotate-another-users-token", "RotateToken", pb.RotateTokenRequest(name="bob")),
         ("rotate-the-admin-token", "RotateToken", pb.RotateTokenRequest(name="admin"))]]


def token_case(label: str, code: grpc.StatusCode, words: tuple[str, ...], **token: Any) -> Case:
    return Case(f"token-{label}", "CreateToken", lambda w: pb.CreateTokenRequest(token=pb.Token(**token)), code, words,
                as_user("admin"))


NAME_RULE = ("is not allowed", "1-63 of a-z, 0-9")
TOKENS = [token_case(f"name-{label}", INVALID, NAME_RULE, name=name) for label, name in [
    ("empty", ""), ("uppercase", "Alice"), ("space", "a b"), ("64-chars", "x" * 64), ("leading-dash", "-x"),
    ("leading-dot", ".x"), ("newline", "x\n"), ("path", "../x"), ("slash", "x/y"), ("non-ascii", "\u00fcser"),
    ("nul", "x\x00"),
]] + [token_case(f"limit-{label}", INVALID, (label.split("-")[0], "out of range", "0 (no limit)"), name=f"l{i}",
                 **{label.split("-")[0]: value})
      for i, (label, value) in enumerate([("max_gpu-nan", math.nan), ("max_gpu-inf", math.inf), ("max_gpu-minus", -1.0),
                                          ("rate-minus", -0.5), ("rate-inf", math.inf),
                                          ("max_running-uint32-max", 2**32 - 1)])] + [
    token_case("name-taken", EXISTS, ("'alice' exists already", "choose another name"), name="alice"),
    token_case("name-of-a-revoked-token", EXISTS, ("never reused",), name="gone"),
    Case("token-revoke-unknown", "RevokeToken", lambda w: pb.RevokeTokenRequest(name="nobody"), NOT_FOUND,
         ("no token named 'nobody'", "cumulus token list"), as_user("admin")),
    Case("token-revoke-empty-name", "RevokeToken", lambda w: pb.RevokeTokenRequest(name=""), NOT_FOUND,
         ("no token named ''",), as_user("admin")),
]

# ---- ownership of keys, quotas -------------------------------------------------------------------------------------

LIMITS = [
    Case("idempotency-key-reused-with-another-package", "SubmitJob",
         lambda w: submission(code_package=z.package("second"), idempotency_key=REUSED_KEY), EXISTS,
         (f"idempotency key '{REUSED_KEY}'", "different package", "use a new key")),
    Case("idempotency-key-reused-with-another-gpu", "SubmitJob",
         lambda w: submission(code_package=z.package("first"), idempotency_key=REUSED_KEY, gpu=0.2), EXISTS,
         ("different gpu", "use a new key")),
    submit("quota-max-gpu-ever", EXHAUSTED, ("max_gpu=0.5", "gpu=1", "ask for at most 0.5"), auth=as_user("gpuhalf"),
           gpu=1.0),
    submit("quota-rate", EXHAUSTED, ("rate=0.001 submissions per second", "retry in"), auth=as_user("slow")),
    submit("quota-max-queued", EXHAUSTED, ("max_queued=1", "retry when one of your jobs ends"),
           auth=as_user("queue1")),
]

CASES: list[Case] = [*DECODING, *GPU, *RANGES, *TEXT, *ENV, *SECRET_ENV, *REQUIREMENTS, *CONTAINER, *PACKAGES,
                     *JOB_IDS, *AUTH, *TOKENS, *LIMITS]
