"""The front door, split by job: `errors` (every status a client can see), `middleware` (body
limit), `access` (auth and session lookup), `routes_sessions`, `routes_streams`, `routes_ops`,
and `ingress` (the FastAPI app and the `FrontDoor` deployment that serves it).

Kept import-free so `deployments.http.errors` loads without Serve or the registry.
"""
