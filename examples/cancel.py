"""Cancel a running job: submit a long loop, watch a few lines of its output, cancel it, see what was released.

    python examples/cancel.py
"""

import time

import cumulus


@cumulus.remote(gpu=0.1, duration=600)
def count_forever():
    i = 0
    while True:
        print(f"tick {i}", flush=True)
        i += 1
        time.sleep(0.5)


if __name__ == "__main__":
    ref = count_forever.remote()
    print(f"submitted job {ref.job_id}")
    deadline = time.monotonic() + 120
    while ref.status().state != "RUNNING" and time.monotonic() < deadline:  # wait until it really runs
        time.sleep(0.2)
    time.sleep(2)  # let it print a few ticks
    report = ref.cancel()  # returns once the job's resources are torn down
    print(f"cancelled (was running: {report.was_running}); released: {', '.join(report.released) or 'nothing'}"
          + (f"; LEAKED: {'; '.join(report.leaked)}" if report.leaked else ""))
    try:
        ref.result()
    except cumulus.JobCancelled as error:
        print(f"result() raised JobCancelled, as expected: {error}")
