"""Hello, Cumulus: 2 + 2 computed as a job on the cluster.

    cumulus local up                  # or point CUMULUS_ADDRESS at a supervisor
    python examples/hello.py          # prints the job's output, then 4

The same function from the command line: ``cumulus submit examples/hello.py:add --arg 2 --arg 2``.
"""

import cumulus


@cumulus.remote(gpu=0.1, duration=120)
def add(a, b):
    print(f"adding {a} and {b} on the cluster")
    return a + b


if __name__ == "__main__":
    ref = add.remote(2, 2)
    print(cumulus.get(ref))
