"""An empty stand-in for torchaudio, put on PYTHONPATH by tests/test_clients.py.

LLaMA-Factory's data/mm_plugin.py imports torchaudio unconditionally; the torchaudio wheel
does not import beside the CPU build of torch, and a text-only DPO run never uses it.
"""
