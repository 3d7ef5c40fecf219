"""A training loop that survives pauses and lost nodes: it saves a checkpoint every few steps and starts from the
last one when it runs again (after `cumulus pause` / `cumulus resume`, or a retry when its node is lost).

    python examples/checkpointed_training.py            # runs it, pauses it, resumes it, checks the result

Or by hand:

    cumulus submit examples/checkpointed_training.py:train --arg 60 --detach
    cumulus pause JOB       # it returns at its next step; its GPU share is released
    cumulus resume JOB      # queued again, on any worker: it goes on from its last checkpoint
"""

import time

import cumulus


def advance(value: int, step: int) -> int:
    """One step of "training": deterministic, so a resumed run must end with the same value as an unbroken one."""
    return (value * 31 + step * step + 7) % 1_000_003


@cumulus.remote(gpu=0.25, duration=900, retries=2)
def train(total_steps: int = 60, save_every: int = 5, step_seconds: float = 0.2) -> int:
    state = cumulus.checkpoint.load() or {"step": 0, "value": 1}  # None the first time: start from scratch
    if state["step"]:
        print(f"resuming at step {state['step']} (value {state['value']})", flush=True)
    while state["step"] < total_steps:
        step = state["step"]
        state = {"step": step + 1, "value": advance(state["value"], step)}
        print(f"step {step} value {state['value']}", flush=True)
        time.sleep(step_seconds)  # the real work would go here
        if state["step"] % save_every == 0:
            cumulus.checkpoint.save(state, step=state["step"])
        if cumulus.should_pause():  # asked to pause: save where we are and return; resume continues from here
            cumulus.checkpoint.save(state, step=state["step"])
            return state["value"]
    return state["value"]


if __name__ == "__main__":
    total = 60
    expected = train(total, step_seconds=0)  # an unbroken run, here (the checkpoint calls do nothing outside a job)
    ref = train.remote(total)
    print(f"submitted job {ref.job_id}")
    while ref.status().state != "RUNNING":
        time.sleep(0.2)
    time.sleep(3)  # a dozen steps or so
    paused = ref.pause()
    print(f"paused (was running: {paused.was_running}) at the checkpoint of step {paused.status.checkpoint_step}")
    ref.resume()
    value = ref.result()
    info = ref.status()
    print(f"finished after {info.attempt} attempts on {info.worker}: {value} (an unbroken run gives {expected})")
    assert value == expected
