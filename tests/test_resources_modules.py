"""The resource modules' shape: each says in its docstring what it owns and stays small, and the split modules'
names are still found where the rest of the code imports them from (``swarm``, ``ssh``, ``partition``)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import cumulus.resources

RESOURCES = Path(cumulus.resources.__file__).parent
MODULES = sorted(p for p in RESOURCES.glob("*.py") if p.name != "__init__.py")
MAX_LINES = 400

#: What other modules import from the three split modules, or reach as ``module.name``.
FACADES = {
    "swarm": [
        "CODE_MOUNT", "DEFAULT_COMMAND", "LABEL_JOB", "LABEL_SUPERVISOR", "LEASE_MOUNT", "OUTPUT_MOUNT",
        "TERMINAL_STATES", "NodeInfo", "ServiceHandle", "ServiceInfo", "ServiceRequest", "SwarmClient", "SwarmError",
        "TaskState", "adopt_service", "build_service_spec", "follow_logs", "open_service",
    ],
    "ssh": [
        "CLOSE_TIMEOUT", "RemoteCommandFailed", "RemotePathNotFound", "RemoteProcess", "SshConnection", "SshError",
        "SshResult", "open_ssh_connection",
    ],
    "partition": [
        "CHRONOS_LOCK_DIR", "HOLDER", "HolderInfo", "LeaseLoss", "PartitionError", "PartitionLease",
        "adopt_partition_lease", "find_holders", "kill_holder", "open_detached_partition_lease",
        "open_partition_lease", "renew_leases", "stop_holders_of",
    ],
}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_each_module_says_what_it_owns_and_stays_small(path):
    source = path.read_text()
    assert ast.get_docstring(ast.parse(source)), f"{path.name} has no module docstring"
    assert len(source.splitlines()) <= MAX_LINES, f"{path.name} is over {MAX_LINES} lines"


@pytest.mark.parametrize("module", sorted(FACADES))
def test_the_split_modules_names_are_found_where_they_were(module):
    facade = importlib.import_module(f"cumulus.resources.{module}")
    missing = [name for name in FACADES[module] if not hasattr(facade, name)]
    assert not missing, missing
    assert set(FACADES[module]) <= set(facade.__all__)


def test_a_moved_name_is_one_object_wherever_it_is_imported_from():
    from cumulus.resources import partition, partition_holders, ssh, ssh_errors, ssh_process, swarm, swarm_client
    from cumulus.resources import swarm_logs, swarm_spec

    assert swarm.ServiceRequest is swarm_spec.ServiceRequest and swarm.SwarmError is swarm_client.SwarmError
    assert swarm.follow_logs is swarm_logs.follow_logs and swarm.NodeInfo is swarm_client.NodeInfo
    assert ssh.SshError is ssh_errors.SshError and ssh.RemoteProcess is ssh_process.RemoteProcess
    assert partition.PartitionLease is partition_holders.PartitionLease

