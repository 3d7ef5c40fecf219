"""The supervisor's web dashboard, served on its HTTP port at ``/``: sign-in with the API's tokens, the cluster
(workers, devices and their shares, the queue), the jobs (filters, paging), a job (timeline, live log, Cancel) and
usage (GPU-hours per user and day). Server-rendered HTML (Jinja2, autoescaped) with a little JavaScript (a
vendored htmx and two small scripts under ``static/``); no build chain, no CDN.

Modules: :mod:`~cumulus.dashboard.app` (routes, security headers, errors), :mod:`~cumulus.dashboard.auth`
(sessions, CSRF, sign-in), :mod:`~cumulus.dashboard.render` (templates), one module per page
(:mod:`~cumulus.dashboard.cluster`, :mod:`~cumulus.dashboard.jobs`, :mod:`~cumulus.dashboard.job`,
:mod:`~cumulus.dashboard.usage`) and :mod:`~cumulus.dashboard.events` (a job's live events as SSE). Everything is
read through :class:`~cumulus.app.SupervisorApi` with the signed-in caller, as the RPC servicer does.
"""

from cumulus.dashboard.app import dashboard_app

__all__ = ["dashboard_app"]
