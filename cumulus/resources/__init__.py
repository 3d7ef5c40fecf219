"""Every external object the supervisor owns, each an async context manager whose exit releases it (shielded,
time-bounded, idempotent): ``ssh`` (worker connections, remote processes, SFTP), ``partition`` (Chronos leases),
``files`` (job directories), ``swarm`` (services, tasks, logs, nodes). Actors decide; these modules only do."""
