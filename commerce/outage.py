"""Tell a database outage from every other error.

PostgreSQL restarting, refusing connections or shutting a session down is not a bug of
ours: the same request a moment later succeeds (the pool reconnects on its own). Every
boundary that turns errors into answers (the HTTP middleware, the realtime session,
background loops) asks `database_unavailable(exc)` and answers "unavailable, retry"
instead of reporting an internal error. What counts as an outage:

    asyncpg.PostgresConnectionError     08xxx: the connection failed, was refused or lost
    asyncpg.OperatorInterventionError   57xxx: admin/crash shutdown (57P01, 57P02),
                                        the server starting or stopping (57P03),
                                        statement canceled (57014)
    asyncpg.InsufficientResourcesError  53xxx: too many connections, out of memory, disk full
    asyncpg.InterfaceError              only those saying the connection or pool is closed
    asyncpg.InternalClientError         only "cannot switch to state": the server ended the
                                        session under a query (its FATAL left the protocol
                                        failed, consuming an error, cancelled or terminating)
    OSError (ConnectionRefusedError, TimeoutError, ...)
                                        only when raised inside asyncpg (connecting, a
                                        command timeout, a pool acquire timeout): an OSError
                                        from anywhere else is not the database's
"""

from __future__ import annotations

import re

import asyncpg

OUTAGE_CLASSES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)
# asyncpg's InterfaceError also reports our own misuse (a released connection, a nested
# transaction): only these messages say the connection or the pool went away.
CLOSED_MESSAGES = (
    "connection is closed", "connection was closed", "pool is closing", "pool is closed",
    "another operation is cancelling",
)
# asyncpg's protocol states FAILED (1), ERROR_CONSUME (2), CANCELLED (3), TERMINATING (4).
BROKEN_PROTOCOL = re.compile(
    r"cannot switch to state \d+; (protocol is in the \"failed\" state|another operation \([1-4]\))"
)
RETRY_AFTER_SECONDS = 1  # the pool reconnects within a fraction of a second of the server's return


def database_unavailable(exc: BaseException) -> bool:
    """Return True when `exc` (or what caused it) says the database is unreachable for now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_outage(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, OUTAGE_CLASSES):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        message = str(exc)
        return any(closed in message for closed in CLOSED_MESSAGES)
    if isinstance(exc, asyncpg.InternalClientError):
        return BROKEN_PROTOCOL.search(str(exc)) is not None
    if isinstance(exc, OSError):
        return _raised_in_asyncpg(exc)
    return False


def _raised_in_asyncpg(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "asyncpg" or module.startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False
