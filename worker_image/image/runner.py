#!/usr/bin/env python3
"""Cumulus job runner: /opt/cumulus/runner.py inside the worker image (self-contained: no cumulus package here;
its copy of the job format and the extraction of the package are runner_package.py, next to it).

    python3 /opt/cumulus/runner.py

Reads the job package ($CUMULUS_CODE_DIR/package.zip, default /cumulus/code), extracts it into a temporary work
directory (checking every path again), installs the requirements if any, sets the job's env (and its secret env,
from the Swarm secret file /run/secrets/cumulus-secret-env, never printed), runs the function with unbuffered
output in the package's files area (<work>/files: its data files and working_dir), and writes the result envelope
($CUMULUS_OUTPUT_DIR/result.msgpack, default /cumulus/output) atomically.
Formats: docs/job-format.md.

Exit status: 0 success; 1 the job's code raised (or its result could not be pickled); 2 infrastructure failure
(bad package, requirement install failed, output not writable) - the envelope's exc_type says which; 3 paused
(the job acknowledged the supervisor's pause request and returned: no envelope; runner_checkpoint.py).
A warm service's runner (``CUMULUS_WARM=1``) first waits for its one job: runner_warm.py. A class job (manifest
``"instance": true``) constructs the instance as a function is called, then serves its methods: runner_instance.py.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from runner_checkpoint import EXIT_PAUSED, JOBAPI_DIR, job_paused  # checkpoints and pause (the stdlib only)
# Warm services (wait for the job) and fast stops (the running lock): the stdlib only.
from runner_warm import RUNNING_LOCK, NoJob, hold_running_lock, is_warm, wait_for_job

T0 = time.monotonic()
# First the runner's own cloudpickle and msgpack (the client's versions: in a user image the only ones, and the
# image's own must not shadow them), then the in-job API (cumulus.checkpoint, cumulus.should_pause) for the job.
RUNNER_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")
sys.path[0:0] = [d for d in (RUNNER_LIB, JOBAPI_DIR) if os.path.isdir(d)]

import cloudpickle  # noqa: E402  - imported before the job's requirements can shadow them
import msgpack  # noqa: E402

from runner_package import (CALL, FORMAT, PACKAGE_NAME, RESULT_NAME, InfraFailure, extract,  # noqa: E402
                            files_area, job_env, read_secret_env)  # the job format: its copy of cumulus.jobformat, and extraction
from runner_instance import serve_instance  # noqa: E402 - a class job's instance (it imports cloudpickle, msgpack)

PIP_TIMEOUT_S = float(os.environ.get("CUMULUS_PIP_TIMEOUT", "900"))
DEPS_MOUNT = "/cumulus/deps"  # cumulus.resources.swarm_spec.DEPS_MOUNT: requirements installed by the supervisor

EXIT_OK, EXIT_USER, EXIT_INFRA = 0, 1, 2
STDOUT_END_MARKER = "[cumulus] end of stdout"  # cumulus.actors.log_relay.STDOUT_END_MARKER


def log(msg: str) -> None:
    print(f"[cumulus] {msg}", file=sys.stderr, flush=True)


def cloudpickle_version() -> str:
    """The module's own ``__version__`` first: asking importlib.metadata scans site-packages, which costs every
    job tens of milliseconds of CPU."""
    version = getattr(cloudpickle, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as installed

        return installed("cloudpickle")
    except Exception:  # noqa: BLE001
        return "unknown"


# ----------------------------------------------------------------------------------------------- requirements

_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@]*(?:@[^\s/?#@]*)*@")
_URL_SECRET_PARAM = re.compile(
    r"([?&;][^\s=&;#]*(?:token|key|secret|passw|pwd|sig|auth|credential)[^\s=&;#]*=)[^\s&;#]+", re.IGNORECASE)


def redact_credentials(text: str) -> str:
    """Copy of cumulus.redaction.redact_credentials (tests/test_redaction.py keeps them equal): URL user-info and
    secret query values become ``***``, so requirement URLs never put credentials into the job's log."""
    if "://" not in text and "=" not in text:
        return text
    text = _URL_USERINFO.sub(lambda m: m.group(1) + "***@", text)
    return _URL_SECRET_PARAM.sub(lambda m: m.group(1) + "***", text)


def install_requirements(reqs: list, work: str) -> str | None:
    """The directory to put on sys.path for the job's requirements: /cumulus/deps when the supervisor mounted
    them there (installed by its trusted step on this node, read-only), else - the fallback, for a runner started
    without a supervisor (tests, by hand, the in-memory test cluster) - pip install into <work>/deps;
    InfraFailure when pip fails."""
    if not reqs:
        return None
    deps_mount = os.environ.get("CUMULUS_DEPS_DIR") or DEPS_MOUNT
    if os.path.isdir(deps_mount):
        log(f"requirements: installed by the supervisor, at {deps_mount} (read-only)")
        return deps_mount
    if not isinstance(reqs, list) or not all(isinstance(r, str) and r and not r.startswith("-") for r in reqs):
        raise InfraFailure("cumulus.InvalidPackage", "manifest 'requirements' must be requirement specifiers")
    target = os.path.join(work, "deps")
    req_file = os.path.join(work, "requirements.cumulus.txt")
    with open(req_file, "w") as f:
        f.write("".join(r + "\n" for r in reqs))
    cmd = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
           "--no-warn-script-location", "--progress-bar", "off", "--target", target, "-r", req_file]
    cache = os.environ.get("CUMULUS_PIP_CACHE", "/cumulus/pip-cache")
    if os.path.isdir(cache) and os.access(cache, os.W_OK):
        cmd += ["--cache-dir", cache]
    else:
        cmd += ["--no-cache-dir"]
    wheelhouse = os.environ.get("CUMULUS_WHEELHOUSE")
    if wheelhouse:
        path = wheelhouse if os.path.isabs(wheelhouse) else "/cumulus/wheelhouse"
        cmd += ["--no-index", "--find-links", path]
    log(redact_credentials(f"installing {len(reqs)} requirement(s): {' '.join(reqs)}"))
    t0 = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", env=env)
    except OSError as exc:
        raise InfraFailure("cumulus.RequirementsInstallFailed", f"cannot run pip: {exc}") from None
    assert proc.stdout is not None
    deadline = time.monotonic() + PIP_TIMEOUT_S
    for line in proc.stdout:
        line = redact_credentials(line.rstrip("\n"))
        tail.append(line)
        print(f"[pip] {line}", file=sys.stderr, flush=True)
        if time.monotonic() > deadline:
            proc.kill()
            break
    rc = proc.wait()
    if rc != 0:
        last = [ln for ln in tail if ln.strip()]
        errors = [ln for ln in last if "ERROR" in ln] or last[-3:]
        raise InfraFailure("cumulus.RequirementsInstallFailed",
                           redact_credentials(f"pip install of {' '.join(reqs)} failed (exit {rc}): ")
                           + " | ".join(errors)[-1500:],
                           "\n".join(tail))
    log(f"requirements installed in {time.monotonic() - t0:.1f} s")
    return target


# ----------------------------------------------------------------------------------------------- partition

def setup_partition() -> None:
    """Export the partition to the job; cap torch's CUDA memory to the fraction when torch is there (guarded)."""
    frac_s = os.environ.get("CUMULUS_GPU_FRACTION")
    part = os.environ.get("CUMULUS_PARTITION_ID")
    dev_s = os.environ.get("CUMULUS_DEVICE_INDEX")
    if part or frac_s:
        log(f"partition {part or '-'} device {dev_s or '-'} fraction {frac_s or '-'}")
    if not frac_s:
        return
    try:
        frac = float(frac_s)
    except ValueError:
        log(f"ignoring CUMULUS_GPU_FRACTION={frac_s!r} (not a number)")
        return
    if not 0.0 < frac < 1.0:
        return
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return
        import torch  # type: ignore

        if not torch.cuda.is_available():
            return
        dev = int(dev_s or 0)
        if dev >= torch.cuda.device_count():  # the container sees only its own GPU (as device 0)
            dev = 0
        torch.cuda.set_per_process_memory_fraction(frac, dev)
        log(f"torch: CUDA memory fraction {frac} on cuda:{dev}")
    except Exception as exc:  # noqa: BLE001 - never required
        log(f"torch memory fraction not set: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------- lease watchdog

LEASE_POLL_S = 0.05  # also how fast a cancel stops the job (the supervisor writes the mark); a stat() each


def start_lease_watchdog() -> threading.Thread | None:
    """The job's half of the partition lease (dead-man switch): the worker's partition holder writes
    ``<lease dir>/expired`` when the supervisor stopped renewing the lease, releases the partition and exits; the
    job must not go on using a GPU share that is no longer reserved for it. Every 0.05 s: if that file exists,
    SIGKILL the runner's whole process group (the runner and the job's subprocesses; the container then exits,
    137). The lease dir is ``$CUMULUS_LEASE_DIR`` (default ``/cumulus/lease``); none mounted = no watchdog."""
    lease_dir = os.environ.get("CUMULUS_LEASE_DIR") or "/cumulus/lease"
    if not os.path.isdir(lease_dir):
        return None
    marker = os.path.join(lease_dir, "expired")
    # The group to kill is the runner's own (under the container's init it already is: tini starts its child in a
    # new process group); never a caller's group when the runner is started by hand.
    if os.getpgid(0) != os.getpid():
        try:
            os.setpgid(0, 0)
        except OSError:
            pass

    def watch() -> None:
        while True:
            try:
                expired = os.path.exists(marker)
            except Exception:  # noqa: BLE001 - never let the watchdog die of a transient error
                expired = False
            if expired:
                try:
                    os.write(2, b"[cumulus] partition lease expired: stopping the job\n")
                except OSError:
                    pass
                try:
                    os.killpg(os.getpgid(0), signal.SIGKILL)
                except OSError:
                    pass
                # Still here: we are PID 1 of the container (no init), which SIGKILL from inside cannot end.
                os._exit(128 + signal.SIGKILL)
            time.sleep(LEASE_POLL_S)

    t = threading.Thread(target=watch, name="cumulus-lease-watchdog", daemon=True)
    t.start()
    log(f"lease watchdog on {lease_dir}")
    return t


# ----------------------------------------------------------------------------------------------- envelope

def type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def failure(exc_type: str, message: str, tb: str = "", exc_pickle: bytes | None = None) -> dict:
    return {"format": FORMAT, "ok": False, "exc_type": exc_type, "exc_message": message, "traceback": tb,
            "exc_pickle": exc_pickle}


def pickle_exception(exc: BaseException) -> bytes | None:
    """cloudpickle of the exception, only if it also loads back (custom __init__ signatures often do not)."""
    try:
        data = cloudpickle.dumps(exc, protocol=5)
        cloudpickle.loads(data)
        return data
    except Exception:  # noqa: BLE001
        return None


def write_envelope(out_dir: str, envelope: dict) -> None:
    envelope["duration_s"] = round(time.monotonic() - T0, 6)
    data = msgpack.packb(envelope, use_bin_type=True)
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(out_dir, RESULT_NAME))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------------------------------- main

def run_job(code_dir: str, work: str, out_dir: str) -> tuple[int, dict | None]:
    manifest = extract(os.path.join(code_dir, PACKAGE_NAME), work)
    fn = manifest.get("function", "?")
    want_cp, have_cp = str(manifest.get("cloudpickle", "")), cloudpickle_version()
    want_py = str(manifest.get("python", ""))
    have_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    log(f"job {fn}: python {have_py}, cloudpickle {have_cp}")
    if want_py and want_py != have_py:
        log(f"WARNING: the job was packaged with python {want_py}; this image has {have_py}")
    deps = install_requirements(manifest.get("requirements") or [], work)
    src = os.path.join(work, "src")
    job_cwd = files_area(work)
    # The files area (data files, working_dir) is the job's cwd and importable after src/, as the current
    # directory is for `python -c` and notebooks: a working_dir's own modules import as they do on the client.
    sys.path[0:0] = ([deps] if deps else []) + [src, job_cwd]
    os.environ.update(job_env(manifest.get("env")))
    # After pip (it must not see them), for the job's function and what it starts; never printed.
    os.environ.update(read_secret_env())
    setup_partition()
    os.chdir(job_cwd)

    try:
        with open(os.path.join(work, CALL), "rb") as f:
            func, args, kwargs = cloudpickle.load(f)
    except Exception as exc:  # noqa: BLE001
        if want_cp and want_cp != have_cp:
            raise InfraFailure("cumulus.CloudpickleMismatch",
                               f"cannot load the job (packaged with cloudpickle {want_cp}, this image has "
                               f"{have_cp}; pin cloudpickle=={have_cp} on the client): "
                               f"{type(exc).__name__}: {exc}", traceback.format_exc()) from None
        tb = traceback.format_exc()
        return EXIT_USER, failure(type_name(type(exc)), f"while loading the job function {fn}: {exc}", tb,
                                  pickle_exception(exc))

    try:
        value = func(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from the job is a job failure too
        tb_obj = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # drop this frame
        tb = "".join(traceback.format_exception(type(exc), exc, tb_obj))
        sys.stderr.write(tb)
        return EXIT_USER, failure(type_name(type(exc)), str(exc), tb, pickle_exception(exc))
    if manifest.get("instance") is True:  # func was a class and value its instance: serve it until stopped
        return serve_instance(value, out_dir, started=T0, failure=failure, pickle_exception=pickle_exception,
                              type_name=type_name)
    if job_paused():  # no envelope: the supervisor resumes the job from its last checkpoint
        return EXIT_PAUSED, None
    try:
        data = cloudpickle.dumps(value, protocol=5)
    except BaseException as exc:  # noqa: BLE001
        msg = (f"the job's return value (a {type_name(type(value))}) cannot be pickled: "
               f"{type(exc).__name__}: {exc}; return plain data instead")
        log(msg)
        return EXIT_USER, failure("cumulus.UnpicklableResult", msg, traceback.format_exc())
    return EXIT_OK, {"format": FORMAT, "ok": True, "value": data}


def main() -> int:
    try:  # unbuffered: user prints become log lines at once (PYTHONUNBUFFERED=1 in the image does the same)
        sys.stdout.reconfigure(line_buffering=True, write_through=True)
        sys.stderr.reconfigure(line_buffering=True, write_through=True)
    except (AttributeError, ValueError):  # pragma: no cover
        pass
    code_dir = os.path.abspath(os.environ.get("CUMULUS_CODE_DIR", "/cumulus/code"))
    out_dir = os.path.abspath(os.environ.get("CUMULUS_OUTPUT_DIR", "/cumulus/output"))
    running_lock = hold_running_lock(out_dir)  # noqa: F841 - held until the runner's end
    start_lease_watchdog()  # before anything of the job runs (extraction and pip included); a warm one's too
    if is_warm():  # a warm service's container: started before its job, it waits for it here
        try:
            os.environ.update(wait_for_job(code_dir))
        except (NoJob, OSError) as exc:
            log(f"warm container: no job to run ({type(exc).__name__}: {exc})")
            return EXIT_INFRA
        global T0
        T0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="cumulus-job-", dir=os.environ.get("CUMULUS_WORK_DIR") or None)
    cwd = os.getcwd()
    try:
        try:
            code, envelope = run_job(code_dir, work, out_dir)
        except InfraFailure as exc:
            log(f"{exc.exc_type}: {exc.message}")
            code, envelope = EXIT_INFRA, failure(exc.exc_type, exc.message, exc.detail)
        except Exception as exc:  # noqa: BLE001 - a runner bug: still leave an envelope
            tb = traceback.format_exc()
            sys.stderr.write(tb)
            code, envelope = EXIT_INFRA, failure("cumulus.RunnerError", f"{type(exc).__name__}: {exc}", tb)
        try:
            if envelope is not None:
                write_envelope(out_dir, envelope)
        except Exception as exc:  # noqa: BLE001
            log(f"cannot write the result to {out_dir}: {type(exc).__name__}: {exc}")
            code = EXIT_INFRA
        status = {EXIT_OK: "finished", EXIT_USER: "failed", EXIT_PAUSED: "paused"}.get(code, "failed (infrastructure)")
        # The end of each stream, stdout first: Docker keeps each stream's order but not the two streams' relative
        # order, so the supervisor knows that every line was relayed once it has both (and the result is written).
        try:
            print(STDOUT_END_MARKER, flush=True)
        except Exception:  # noqa: BLE001 - stdout closed by the job: the supervisor falls back to waiting
            pass
        log(f"job {status} in {time.monotonic() - T0:.2f} s")
        return code
    finally:
        try:
            os.chdir(cwd)
            os.unlink(os.path.join(out_dir, RUNNING_LOCK))  # its lock stays held until the runner's exit
        except OSError:
            pass
        if os.environ.get("CUMULUS_KEEP_WORK_DIR") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
