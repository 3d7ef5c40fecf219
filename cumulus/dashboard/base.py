"""What every dashboard page handler shares: the supervisor API it reads through (with the signed-in caller, never
around it), the sessions, the context every template gets, and the answer for a job that is not the caller's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from cumulus.dashboard.auth import Sessions, SignedIn
from cumulus.dashboard.render import error_page
from cumulus.errors import SupervisorUnavailable
from cumulus.rpc.servicer import MAX_JOB_ID_LEN

if TYPE_CHECKING:
    from cumulus.app import SupervisorApi


class View:
    def __init__(self, api: SupervisorApi | None, sessions: Sessions) -> None:
        self._api = api
        self.sessions = sessions

    @property
    def api(self) -> SupervisorApi:
        if self._api is None:
            raise SupervisorUnavailable("no supervisor serves this HTTP port")
        return self._api

    def context(self, signed: SignedIn, nav: str, **values: Any) -> dict[str, Any]:
        return {"signed": signed, "caller": signed.caller, "csrf": signed.csrf, "nav": nav, **values}


def job_id_of(request: Request) -> str:
    """The path's job id; an id no job can have is answered like an unknown one."""
    job_id = str(request.path_params.get("job_id", ""))
    if not job_id or len(job_id) > MAX_JOB_ID_LEN or not job_id.isprintable():
        return ""
    return job_id


def not_yours(job_id: str, signed: SignedIn | None) -> HTMLResponse:
    """The same 404 for another user's job as for an unknown id (existence is not leaked, as in the API)."""
    return error_page(404, "No such job", f"no job {job_id} (or it is not yours)", signed=signed,
                      element_id="not-found")


__all__ = ["View", "job_id_of", "not_yours"]
