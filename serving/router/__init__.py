"""The traffic router: one OpenAI-compatible endpoint in front of a stable and an optional canary model server.

Modules: `app` (create_router_app: admin, health, metrics), `proxy` (the hot path as plain ASGI), `context`
(one request's state), `split` (exact weights, sticky sessions), `shadow` (mirroring), `stream` (reading
answers and streams), `metrics` (Prometheus + the analysis window), `respond` (errors and headers), `state`.
"""

from serving.router.app import create_router_app
from serving.router.proxy import PROXY_ROUTES, Proxy
from serving.router.state import TOKEN_ENV, Backend, RouterConfig, RouterState, admin_token, check_url

__all__ = ["PROXY_ROUTES", "TOKEN_ENV", "Backend", "Proxy", "RouterConfig", "RouterState", "admin_token",
           "check_url", "create_router_app"]
