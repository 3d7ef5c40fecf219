"""The wire contract: generated stubs match proto/ (regenerate with `python -m cumulus.rpc.codegen`)."""

from cumulus.rpc import codegen
from cumulus.rpc.generated.v1 import cumulus_pb2 as pb


def test_generated_stubs_are_up_to_date():
    assert codegen.stale_files() == [], "run `python -m cumulus.rpc.codegen` and commit the result"


def test_contract_has_the_promised_rpcs_and_states():
    service = pb.DESCRIPTOR.services_by_name["OrchestratorService"]
    assert set(service.methods_by_name) == {
        "SubmitJob", "WatchJob", "GetJobStatus", "DescribeJob", "CancelJob", "ListWorkers", "ListJobs",
        "HealthCheck", "CreateToken", "ListTokens", "RevokeToken", "RotateToken", "GetUsage", "PauseJob", "ResumeJob",
        "CallInstance",
    }
    assert service.methods_by_name["SubmitJob"].server_streaming
    assert service.methods_by_name["WatchJob"].server_streaming
    states = set(pb.JobState.keys())
    assert {"QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING", "COMPLETED", "FAILED", "CANCELLED",
            "PAUSED"} <= states
