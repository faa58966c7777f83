"""What keeps a run safe: one writer (lock), child processes that die with it, fault injection."""
