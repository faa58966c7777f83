"""Whether, and how, a run may continue what its ledger recorded: the fingerprint and its
parts (fingerprint.py), the settings resolved against the ledger (settings.py), what is at the
model and adapter paths (identity.py), an earlier run's answers taken (reuse.py) and a larger
--max-new-tokens on a run so far (raise_cap.py)."""
