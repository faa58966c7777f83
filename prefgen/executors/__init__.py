"""How `prefgen generate` runs its pending units: `local` (prefgen/run.py's own loop) or `ray`
(ray.py: one run over a Ray cluster). flow.py is the one place the Ray executor calls the flow."""
