"""Commands that read and write whole files: export, verify, pair, merge, repair."""
