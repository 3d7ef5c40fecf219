"""Chaos on the real local cluster (issue 6 item 9): faults at random moments, then the invariants.

Each scenario runs its own supervisor as a subprocess (``chaos_tools.SupervisorProcess``: own supervisor id,
loopback port and journal; ``lease: {renew_interval: 1, ttl: 6}``) and talks to it through the SDK only.

(a) the supervisor SIGKILLed 2-3 times while 20 jobs run, restarted on the same config and journal (within the
    lease TTL, and once after it);
(b) a worker node killed mid-job (``cumulus local kill-node 1``), revived afterwards;
(c) a worker's network cut (its host-side veth down) for longer than the lease TTL while a job runs there;
(d) 50 cancels at random moments of 50 short jobs;
(e) 12 jobs that checkpoint every step, each paused at a random moment (running or queued), then resumed;
(f) three class instances taking calls through a supervisor SIGKILL (re-adopted, their state kept) and a crash of
    one (made again), then killed.

After each: exactly one terminal state per job (a paused one holds nothing while it is paused), every COMPLETED job's result retrievable through a new client and
correct, no job ran more often than its attempts, and nothing left (no labelled service, container, holder,
Chronos lock, job dir or lease dir of the jobs; every share back to zero). Each scenario prints
``chaos: N faults, M leaks``; the module prints the totals. ``CUMULUS_CHAOS_SEED`` replays a schedule.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time

import pytest

from chaos_tools import (TERMINAL, Counts, SupervisorProcess, container_starts, leftovers, link, link_is_up, local,
                         retry, terminal_events, wait_moved_off, wait_terminal)
from helpers import holder_processes, job_dirs

pytestmark = pytest.mark.chaos

SEED = int(os.environ.get("CUMULUS_CHAOS_SEED") or secrets.randbelow(2**32))
TTL = 6
TOTALS = {"faults": 0, "leaks": 0, "scenarios": []}
DEAD_WAIT = 25  # lease TTL + renewal + SSH probe, with margin: jobs on a dead node end within this
CANCEL_TIMEOUT = 30  # a cancel returns once the job is torn down: seconds, not minutes
INFRA_REASONS = ("lost", "node_lost", "partition_lost", "container_failed", "infrastructure")


def rng_for(scenario: str) -> random.Random:
    print(f"\n{scenario}: seed {SEED} (CUMULUS_CHAOS_SEED={SEED} replays it)", flush=True)
    return random.Random(f"{SEED}-{scenario}")


def CHAOS_SUMMARY() -> str:  # noqa: N802 - read by tests/conftest.py for the run's summary
    if not TOTALS["faults"]:
        return ""
    return (f"chaos (local cluster): {TOTALS['faults']} faults, {TOTALS['leaks']} leaks (seed {SEED}); "
            + "; ".join(TOTALS["scenarios"]))


def teardown_module():
    print("\n" + CHAOS_SUMMARY())


# ------------------------------------------------------------------------------------------ job functions
def nap(i, seconds):
    import time

    time.sleep(seconds)
    return {"i": i, "square": i * i}


def expected(i):
    return {"i": i, "square": i * i}


# ------------------------------------------------------------------------------------------------ shared
def _state(client, job_id: str) -> str:
    try:
        return client.status(job_id).state
    except Exception:  # noqa: BLE001 - the supervisor is restarting
        return "?"


@pytest.fixture
def two_workers(workers):
    assert len(workers) >= 2, "the chaos scenarios need a cluster with two workers (cumulus local up --workers 2)"
    return workers


def report(counts: Counts) -> None:
    """Print the scenario's ``chaos: N faults, M leaks`` line and add it to the module totals."""
    TOTALS["faults"] += counts.faults
    TOTALS["leaks"] += counts.leaks
    TOTALS["scenarios"].append(f"{counts.scenario}: {counts.faults} faults, {counts.leaks} leaks")
    print(counts.line(), flush=True)


def finish(counts: Counts, sup: SupervisorProcess, ids: list[str], *, settle: float, args: dict[str, int]
           ) -> dict:
    """The common invariants; returns the final ``{job_id: JobInfo}``."""
    client = sup.client()  # a NEW client
    infos = {j: client.status(j) for j in ids}
    problems = leftovers(sup, ids, settle=settle)
    counts.leaks += len(problems)
    states = {}
    for info in infos.values():
        states[info.state] = states.get(info.state, 0) + 1
    counts.note(f"states {states}; leftovers {len(problems)}")
    report(counts)
    assert not problems, "left behind:\n  " + "\n  ".join(problems)

    other = sup.client()
    for job_id, info in infos.items():
        assert info.state in TERMINAL
        assert terminal_events(other, job_id) == [info.state], job_id  # exactly one terminal state
        assert other.status(job_id).state == info.state  # and it stays
        if info.state == "COMPLETED":
            assert other.job(job_id).result(timeout=30) == expected(args[job_id]), job_id
    return infos


def finish_node_fault(counts: Counts, sup: SupervisorProcess, client, ids: list[str], on_victim: list[str],
                      args: dict[str, int]) -> None:
    """After a node fault: every job terminal, the invariants, and each job that was on the victim completed
    (retried elsewhere, or after the node returned) or ended node_lost / partition_lost."""
    infos = wait_terminal(client, ids, timeout=90)
    for job_id, info in infos.items():
        counts.note(f"{job_id} on {info.worker}: {info.state} {info.reason[:70]} (attempt {info.attempt})")
    sup.wait_workers(2, timeout=60)
    finish(counts, sup, ids, settle=30, args=args)
    for job_id in on_victim:
        info = infos[job_id]
        assert info.state == "COMPLETED" or info.reason.split(":")[0] in ("node_lost", "partition_lost"), \
            (job_id, info.state, info.reason)


# ----------------------------------------------------------------------------- (a) supervisor SIGKILLs
def test_supervisor_sigkilled_while_jobs_run(tmp_path, two_workers):
    rng = rng_for("a")
    counts = Counts("a: supervisor SIGKILL")
    sup = SupervisorProcess(tmp_path / "a", f"chaos-a-{secrets.token_hex(3)}", ttl=TTL)
    t0 = time.time()
    kills = rng.choice([2, 3])
    long_one = rng.randrange(1, kills)  # the first restart is within the TTL (re-adoption), one later is not
    # (seconds after jobs run / after the previous restart, downtime)
    schedule = [(rng.uniform(0.0, 3.0), TTL + rng.uniform(1.5, 3.0) if n == long_one else rng.uniform(0.0, 2.5))
                for n in range(kills)]
    counts.note(f"schedule (after, down) {[(round(a, 2), round(d, 2)) for a, d in schedule]}")
    failure: list[BaseException] = []
    jobs_run = threading.Event()

    def killer() -> None:
        try:
            jobs_run.wait(60)
            for n, (after, down) in enumerate(schedule):
                time.sleep(after)
                sup.kill()
                counts.fault(f"SIGKILL supervisor (start {sup.starts}); down {down:.1f} s"
                             + (" > TTL" if down > TTL else ""))
                time.sleep(down)
                sup.start()
        except BaseException as error:  # noqa: BLE001
            failure.append(error)

    with sup:
        sup.wait_workers(2)
        client = sup.client()
        thread = threading.Thread(target=killer, name="chaos-killer", daemon=True)
        thread.start()
        ids, keys, args, calls = [], [], {}, []
        for i in range(20):
            if i == 10:  # the second half while the first runs (and the supervisor dies)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any(
                        _state(client, j) == "RUNNING" for j in ids):
                    time.sleep(0.2)
                jobs_run.set()
                time.sleep(rng.uniform(0, 2))
            key, seconds = f"chaos-a-{SEED}-{sup.supervisor_id}-{i}", rng.uniform(1, 4)
            ref = retry(lambda: client.submit_call(nap, (i, seconds), gpu=0.1, duration=120,
                                                   idempotency_key=key, log_to_driver=False),
                        timeout=90, what=f"submit {i}")
            ids.append(ref.job_id)
            keys.append(key)
            args[ref.job_id] = i
            calls.append((i, seconds))
        counts.note(f"20 jobs submitted: {ids[0]} .. {ids[-1]}")
        thread.join(120)
        assert not thread.is_alive(), "kill schedule did not finish"
        if failure:
            raise failure[0]
        assert len(set(ids)) == 20, "two submissions got the same job"
        infos = wait_terminal(client, ids, timeout=120)
        counts.note("all terminal: " + ", ".join(sorted({f"{i.state} {i.reason[:40]}" for i in infos.values()})))

        # Idempotency survived the restarts: the same request with the same key gives the same job, not a new one.
        fresh = sup.client()
        for key, job_id, call in zip(keys, ids, calls):
            again = fresh.submit_call(nap, call, gpu=0.1, duration=120, idempotency_key=key, log_to_driver=False)
            assert again.job_id == job_id, f"key {key}: {again.job_id} != {job_id}"

        infos = finish(counts, sup, ids, settle=30, args=args)
        starts = container_starts(sup.supervisor_id, t0)
        for job_id, info in infos.items():
            assert info.state != "CANCELLED", (job_id, info.reason)
            if info.state == "FAILED":
                assert info.reason.split(":")[0] in INFRA_REASONS, (job_id, info.reason)
            assert starts.get(job_id, 0) <= max(info.attempt, 1), \
                f"{job_id} ran {starts[job_id]} times in {info.attempt} attempts ({info.state} {info.reason})"
        assert sum(i.state == "COMPLETED" for i in infos.values()) >= 1, "nothing completed"
        assert sup.stop() == 0, sup.log_tail()


# --------------------------------------------------------------------------------------- (b) node death
def test_worker_node_killed_mid_job(tmp_path, two_workers):
    rng = rng_for("b")
    counts = Counts("b: kill-node 1")
    sup = SupervisorProcess(tmp_path / "b", f"chaos-b-{secrets.token_hex(3)}", ttl=TTL)
    victim = two_workers[0]["hostname"]
    with sup:
        sup.wait_workers(2)
        client = sup.client()
        ids, args = [], {}
        for i in range(6):  # 0.2 each: five pack onto one worker (the first), one goes to the other
            ref = client.submit_call(nap, (i, rng.uniform(15, 20)), gpu=0.2, duration=120, log_to_driver=False)
            ids.append(ref.job_id)
            args[ref.job_id] = i
        deadline = time.monotonic() + 60
        while True:
            infos = {j: client.status(j) for j in ids}
            if all(i.state == "RUNNING" for i in infos.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        on_victim = [j for j, i in infos.items() if i.worker == victim and i.state == "RUNNING"]
        counts.note(f"running on {victim}: {len(on_victim)}; elsewhere: "
                    f"{sum(i.worker != victim for i in infos.values())}")
        assert on_victim, f"no job running on {victim}: {[(i.state, i.worker) for i in infos.values()]}"
        time.sleep(rng.uniform(0.5, 3.0))
        try:
            local("kill-node", "1", "--no-wait", "-q")
            counts.fault(f"kill-node 1 ({victim}) with {len(on_victim)} jobs on it")
            # The jobs on the dead node must end while it is dead (lease lost, node lost), or be retried
            # elsewhere: nothing of them can come back.
            try:
                infos_dead = wait_moved_off(client, on_victim, victim, timeout=DEAD_WAIT)
                counts.note("ended or moved while the node was dead: " + ", ".join(
                    f"{i.state} {i.reason[:50]} on {i.worker} (attempt {i.attempt})" for i in infos_dead.values()))
                ended_while_dead = True
            except AssertionError as error:
                counts.note(f"NOT ended while the node was dead: {error}")
                ended_while_dead = False
        finally:
            local("revive-node", "1", "-q", timeout=150)
            counts.note(f"revived {victim}")
        finish_node_fault(counts, sup, client, ids, on_victim, args)
        assert ended_while_dead, "jobs on the dead node did not end while it was dead (see the notes)"
        assert sup.stop() == 0, sup.log_tail()


# ---------------------------------------------------------------------------------------- (c) SSH cut
def test_worker_network_cut_longer_than_ttl(tmp_path, two_workers):
    rng = rng_for("c")
    counts = Counts("c: network cut")
    sup = SupervisorProcess(tmp_path / "c", f"chaos-c-{secrets.token_hex(3)}", ttl=TTL)
    node = two_workers[1]
    victim, veth = node["hostname"], f"cuv{node['index']}"
    assert link_is_up(veth), f"{veth} is not up before the test"
    with sup:
        sup.wait_workers(2)
        client = sup.client()
        ids, args = [], {}
        for i in range(2):  # 0.6 each: one per worker
            ref = client.submit_call(nap, (i, 25), gpu=0.6, duration=120, log_to_driver=False)
            ids.append(ref.job_id)
            args[ref.job_id] = i
        deadline = time.monotonic() + 60
        while True:
            infos = {j: client.status(j) for j in ids}
            if all(i.state == "RUNNING" for i in infos.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        on_victim = [j for j, i in infos.items() if i.worker == victim and i.state == "RUNNING"]
        assert on_victim, f"no job running on {victim}: {[(i.state, i.worker) for i in infos.values()]}"
        cut = TTL + rng.uniform(3, 5)
        try:
            link(veth, up=False)
            counts.fault(f"{veth} ({victim}) down for {cut:.1f} s (ttl {TTL})")
            time.sleep(cut)
        finally:
            link(veth, up=True)
            counts.note(f"{veth} up")
        finish_node_fault(counts, sup, client, ids, on_victim, args)
        assert sup.stop() == 0, sup.log_tail()


# ---------------------------------------------------------------------------------------- (d) cancels
def test_fifty_cancels_at_random_moments(tmp_path, two_workers):
    rng = rng_for("d")
    counts = Counts("d: 50 cancels")
    sup = SupervisorProcess(tmp_path / "d", f"chaos-d-{secrets.token_hex(3)}", ttl=TTL)
    with sup:
        sup.wait_workers(2)
        client = sup.client()
        ids, args, results, broken = [], {}, {}, []
        lock = threading.Lock()

        def cancel_later(job_id: str, delay: float) -> None:
            time.sleep(delay)
            with lock:
                counts.fault(f"cancel {job_id} after {delay:.2f} s")
            try:
                result = client.cancel(job_id, timeout=CANCEL_TIMEOUT)
            except Exception as error:  # noqa: BLE001
                with lock:
                    broken.append(f"{job_id}: cancel raised {error!r}")
                return
            # The promise: when cancel returns, nothing of the job is left on the worker.
            # (A holder whose start was cancelled before its reply may appear after the cancel's cleanup: by
            # design it is never renewed and ends within the lease TTL - allowed, but no longer.)
            left = job_dirs([job_id], "/var/lib/cumulus/jobs")
            holder_gone_by = time.monotonic() + TTL + 2
            while (holders := holder_processes([job_id])) and time.monotonic() < holder_gone_by:
                time.sleep(0.2)
            left += holders
            with lock:
                results[job_id] = result
                counts.note(f"cancel {job_id} -> {result.state} (was running {result.was_running})")
                if result.leaked or left:
                    broken.append(f"{job_id}: cancel returned with leaked={list(result.leaked)}, left={left}")

        threads = []
        for i in range(50):
            ref = client.submit_call(nap, (i, rng.uniform(1, 3)), gpu=0.1, duration=120, log_to_driver=False)
            ids.append(ref.job_id)
            args[ref.job_id] = i
            thread = threading.Thread(target=cancel_later, args=(ref.job_id, rng.uniform(0, 3)), daemon=True)
            thread.start()
            threads.append(thread)
        join_by = time.monotonic() + CANCEL_TIMEOUT + 10
        for thread in threads:
            thread.join(max(0.0, join_by - time.monotonic()))
        hung = [j for j, t in zip(ids, threads) if t.is_alive()]
        if hung or broken:  # a cancel that does not return (or leaves something) is a leak of its job
            counts.leaks += len(hung) + len(broken)
            report(counts)
        assert not hung and not broken, (f"{len(hung)} cancels did not return within {CANCEL_TIMEOUT} s: "
                                         f"{[(j, client.status(j).state) for j in hung]}\n" + "\n".join(broken))
        infos = wait_terminal(client, ids, timeout=60)
        finish(counts, sup, ids, settle=15, args=args)
        for job_id, info in infos.items():
            assert info.state in ("CANCELLED", "COMPLETED"), (job_id, info.state, info.reason)
            if results[job_id].was_running and info.state == "CANCELLED":
                assert info.reason == "cancelled", (job_id, info.reason)
        assert sum(i.state == "CANCELLED" for i in infos.values()) >= 10
        assert sup.stop() == 0, sup.log_tail()


# ---------------------------------------------------------------------------------- (e) pauses and resumes
def stepper(i, steps):
    """``nap``'s result, reached in ``steps`` steps of 0.2 s that survive pauses (a checkpoint per step)."""
    import time

    import cumulus

    done = cumulus.checkpoint.load() or 0
    while done < steps:
        time.sleep(0.2)
        done += 1
        cumulus.checkpoint.save(done, step=done)
        if cumulus.should_pause():
            return None  # paused: the next attempt goes on from this step
    return {"i": i, "square": i * i}


def test_pauses_and_resumes_at_random_moments(tmp_path, two_workers):
    rng = rng_for("e")
    counts = Counts("e: pauses and resumes")
    sup = SupervisorProcess(tmp_path / "e", f"chaos-e-{secrets.token_hex(3)}", ttl=TTL)
    with sup:
        sup.wait_workers(2)
        client = sup.client()
        ids, args, broken = [], {}, []
        lock = threading.Lock()

        def pause_and_resume(job_id: str, delay: float, paused_for: float) -> None:
            time.sleep(delay)
            with lock:
                counts.fault(f"pause {job_id} after {delay:.2f} s")
            try:
                result = client.pause(job_id, grace=10, timeout=CANCEL_TIMEOUT)
            except Exception as error:  # noqa: BLE001 - it ended first: FAILED_PRECONDITION is the answer
                if "FAILED_PRECONDITION" not in repr(error) and "has ended" not in str(error):
                    with lock:
                        broken.append(f"{job_id}: pause raised {error!r}")
                return
            if result.state != "PAUSED":
                return  # it finished before it paused
            # The promise: a paused job holds nothing (no holder, no job dir, no share counted for it).
            left = job_dirs([job_id], "/var/lib/cumulus/jobs")
            holder_gone_by = time.monotonic() + TTL + 2
            while (holders := holder_processes([job_id])) and time.monotonic() < holder_gone_by:
                time.sleep(0.2)
            left += holders
            status = client.status(job_id)
            with lock:
                counts.note(f"paused {job_id} at step {status.checkpoint_step} (was running {result.was_running})")
                if left or status.state != "PAUSED":
                    broken.append(f"{job_id}: paused with {left} left, state {status.state}")
            time.sleep(paused_for)
            try:
                client.resume(job_id)
            except Exception as error:  # noqa: BLE001
                with lock:
                    broken.append(f"{job_id}: resume raised {error!r}")

        threads = []
        for i in range(12):  # 0.2 each: ten fit on the two workers, two queue
            ref = client.submit_call(stepper, (i, rng.randint(10, 25)), gpu=0.2, duration=120,
                                     log_to_driver=False)
            ids.append(ref.job_id)
            args[ref.job_id] = i
            thread = threading.Thread(target=pause_and_resume, args=(ref.job_id, rng.uniform(0, 5),
                                                                    rng.uniform(0, 2)), daemon=True)
            thread.start()
            threads.append(thread)
        join_by = time.monotonic() + CANCEL_TIMEOUT + 20
        for thread in threads:
            thread.join(max(0.0, join_by - time.monotonic()))
        hung = [j for j, t in zip(ids, threads) if t.is_alive()]
        if hung or broken:
            counts.leaks += len(hung) + len(broken)
            report(counts)
        assert not hung and not broken, (f"{len(hung)} pauses or resumes did not return: "
                                         f"{[(j, client.status(j).state) for j in hung]}\n" + "\n".join(broken))
        infos = wait_terminal(client, ids, timeout=120)
        finish(counts, sup, ids, settle=15, args=args)
        for job_id, info in infos.items():
            assert info.state == "COMPLETED", (job_id, info.state, info.reason)
        assert sup.stop() == 0, sup.log_tail()


# ------------------------------------------------------------------------------ (f) class instances
class Tally:
    """A class instance for (f): its count survives the supervisor (the instance keeps running), not its own
    death (a new instance starts from 0: it saves no checkpoint)."""

    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count

    def value(self) -> int:
        return self.count

    def crash(self) -> None:
        import os

        os._exit(1)


def test_class_instances_through_a_supervisor_sigkill_and_a_crash(tmp_path, two_workers):
    """Three instances take calls; the supervisor is SIGKILLed and restarted within the lease TTL (each instance
    is re-adopted and keeps its state: calls whose reply the kill lost may have run, never twice); one instance
    crashes and is made again (max_restarts=1); then every instance is killed: nothing is left."""
    import cumulus

    rng = rng_for("f")
    counts = Counts("f: class instances")
    sup = SupervisorProcess(tmp_path / "f", f"chaos-f-{secrets.token_hex(3)}", ttl=TTL)
    with sup:
        sup.wait_workers(2)
        remote_tally = cumulus.remote(Tally).options(address=sup.address, gpu=0.1, duration=300, max_restarts=1,
                                                     log_to_driver=False)
        handles = [remote_tally.remote() for _ in range(3)]
        ids = [h.job_id for h in handles]
        answered = {h.job_id: 0 for h in handles}
        for h in handles:
            values = cumulus.get([h.incr.remote() for _ in range(20)], timeout=120)
            assert values == list(range(1, 21)), values
            answered[h.job_id] = 20
        in_flight = [h.incr.remote() for h in handles for _ in range(rng.randint(0, 5))]
        time.sleep(rng.uniform(0, 0.3))
        sup.kill()
        counts.fault(f"SIGKILL supervisor with {len(in_flight)} calls sent")
        time.sleep(rng.uniform(0.5, 2.5))
        sup.start()
        lost = 0
        for ref in in_flight:  # each ended once: returned before the kill, or failed with the stream
            try:
                ref.result(60)
            except Exception as error:  # noqa: BLE001 - the supervisor went away mid-call
                assert not isinstance(error, cumulus.ActorDied), error
                lost += 1
        counts.note(f"{lost} of {len(in_flight)} calls in flight lost with the supervisor")
        sent = {h.job_id: 20 + sum(1 for r in in_flight if r.job_id == h.job_id) for h in handles}
        for h in handles:  # re-adopted: the same instance, its state kept
            value = retry(lambda h=h: h.value.remote().result(60), timeout=60, what="a call after the restart")
            assert 20 <= value <= sent[h.job_id], (h.job_id, value, sent[h.job_id])
            assert h.incr.remote().result(60) == value + 1
        victim = rng.choice(handles)
        with pytest.raises(cumulus.ActorDied):
            victim.crash.remote().result(120)
        counts.fault(f"crashed instance {victim.job_id}")
        assert retry(lambda: victim.incr.remote().result(120), timeout=90, what="the new instance") == 1
        client = sup.client()
        assert client.status(victim.job_id).attempt == 2
        for h in handles:
            cumulus.kill(h)
            with pytest.raises(cumulus.ActorDied):
                h.value.remote().result(60)
        infos = wait_terminal(client, ids, timeout=60)
        assert all(info.state == "CANCELLED" for info in infos.values()), infos
        problems = leftovers(sup, ids, settle=30)
        counts.leaks += len(problems)
        report(counts)
        assert not problems, "left behind:\n  " + "\n  ".join(problems)
        for job_id in ids:
            assert terminal_events(client, job_id) == ["CANCELLED"], job_id
        assert sup.stop() == 0, sup.log_tail()
