"""prefgen's exceptions. Library code raises these; only the CLI turns them into messages."""


class PrefgenError(Exception):
    """Base class: a problem the user can act on. `hint` says how."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class InputError(PrefgenError):
    """The SFT data file or one of its records is unusable."""


class ConfigError(PrefgenError):
    """A flag or config value is invalid."""


class ModelError(PrefgenError):
    """The model or tokenizer could not be loaded or used."""


class OutputError(PrefgenError):
    """The output file cannot be written, or no longer matches the ledger."""


class LedgerError(PrefgenError):
    """The ledger is not a prefgen ledger, is too new, or is inconsistent."""


class SettingsMismatch(PrefgenError):
    """The run's settings differ from those the ledger was started with."""


class ChangedInput(PrefgenError):
    """A record already processed has changed in the data file."""


class Locked(PrefgenError):
    """Another prefgen process holds the ledger or the output."""


class CheckError(PrefgenError):
    """A process executing SQL for execution verdicts died."""


class OutOfMemory(PrefgenError):
    """The device ran out of memory while generating a batch."""


class Interrupted(PrefgenError):
    """The run stopped at a batch boundary after a signal."""

    def __init__(self, message: str, hint: str = "", exit_code: int = 130, immediate: bool = False):
        super().__init__(message, hint)
        self.exit_code = exit_code
        self.immediate = immediate  # a second signal: generation may still be running; exit now


def disk_full(exc: BaseException) -> bool:
    """Whether an error from the system or SQLite says the disk (or quota) is full."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return type(exc).__name__ == "OperationalError" and "disk is full" in str(exc)
