"""The ledger's meta keys, named once (docs/ledger.md lists them)."""

FINGERPRINT = "fingerprint"  # the settings a resumed run must share (resume/fingerprint.py)
GENERATION_IDENTITY = "generation_identity"  # the model's, adapter's and engine's identities (resume/identity.py)
OUTPUT_PATH = "output_path"  # the JSONL this ledger commits to
OUTPUT_BASE = "output_base"  # its length before this ledger's first line
OUTPUT_COMMITTED = "output_committed"  # its committed length
OUTPUT_SHA256 = "output_sha256"  # SHA-256 of its bytes [output_base, output_committed)
SAMPLES_TOTAL = "samples_total"  # records of the input (this rank's)
NUM_REJECTS = "num_rejects"
MAX_ATTEMPTS = "max_attempts"
VERDICT_RULE = "verdict_rule"  # with --db-root: the rule the verdicts follow (sql/variants.py VERDICT_RULE)
RAISED_FROM = "raised_from"  # a raised --max-new-tokens: the moved ledger answers are reused from
