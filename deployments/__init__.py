"""Ray Serve layer of Helios Serve: front door, session actors, shard groups, relay, app builder.

All Ray code lives here; `helios/` never imports ray.
"""
