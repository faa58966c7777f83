"""executors: how `prefgen generate` runs its pending units: `local` (local.py, the loop of
prefgen/flow/run.py) or `ray` (ray.py: one run over a Ray cluster; ray_flow.py is the one place
it calls the flow's steps)."""
