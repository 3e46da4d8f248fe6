"""One exception base for the whole package; causes are always chained with `raise ... from`."""


class RecorderError(Exception):
    """Base of every error recorder raises on purpose."""

    exit_code = 1


class ConfigError(RecorderError):
    """A setting is missing or invalid. The message names the setting."""

    exit_code = 2

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class DatabaseError(RecorderError):
    """The database could not be reached or used."""


class SchemaOutOfDateError(DatabaseError):
    """The database schema is not at the revision this code expects."""

    def __init__(self, current: str | None, expected: str) -> None:
        self.current = current
        self.expected = expected
        super().__init__(
            f"database schema is at revision {current or 'none'}, this recorder needs {expected}: "
            "run `recorder migrate`"
        )


class EmbeddedPostgresError(DatabaseError):
    """The embedded PostgreSQL server could not be started or stopped."""


class WriterStoppedError(RecorderError):
    """An event was offered to a writer that is not running."""


class ProjectionError(RecorderError):
    """The projection could not apply the log."""


class ProjectionConflictError(ProjectionError):
    """The saved projection position moved under us: another projector is applying the log."""

    def __init__(self, name: str, expected: int, found: int | None) -> None:
        self.name = name
        self.expected = expected
        self.found = found
        super().__init__(
            f"projection {name!r}: expected saved position {expected}, found {found}; "
            "another projector is applying the log (only one may run per database)"
        )


class FencedError(RecorderError):
    """A singleton's lease is no longer ours (taken over, or expired): its transaction was
    rolled back before it changed anything."""

    def __init__(self, resource: str, epoch: int) -> None:
        self.resource = resource
        self.epoch = epoch
        super().__init__(f"lease {resource!r} at epoch {epoch} is no longer ours")


class RebuildError(ProjectionError):
    """`recorder rebuild` could not finish."""
