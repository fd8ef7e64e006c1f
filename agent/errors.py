"""The agent's exception tree: every error the agent raises on purpose derives from AgentError.

Messages say what was wrong and where (config key, device id, topic, file); what to do, when
there is one thing to do, is the `fix` field (a command or a setting), never parsed out of the
text. `str(error)` shows both; `error.description` is the message alone.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose; `fix` says what to do, if known."""

    def __init__(self, *args: object, fix: str | None = None) -> None:
        super().__init__(*args)
        self.fix = fix

    @property
    def description(self) -> str:
        """What was wrong, without the fix."""
        return super().__str__()

    def __str__(self) -> str:
        text = self.description
        return f"{text}; fix: {self.fix}" if self.fix else text


class ConfigError(AgentError):
    """A configuration file is missing, unreadable or holds a value that is not allowed."""

    def __init__(self, file: str, key: str | None, problem: str, *, fix: str | None = None) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        # key None: the problem is the file as a whole (missing, unreadable, not TOML)
        super().__init__(
            f"{file}: {problem}" if key is None else f"{file}: [{key}] {problem}", fix=fix
        )


class KeyFileError(AgentError):
    """The gateway key file is missing, unreadable, too open, or cannot be decrypted."""


class FrameError(AgentError):
    """A device frame could not be parsed; `reason` is a short stable label used in counters."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class RejectedReading(AgentError):
    """A well-formed frame that the agent refuses (unknown device, replayed counter...)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class EnvelopeError(AgentError):
    """A signed observation envelope does not verify (bad JSON, digest or signature)."""


class JournalError(AgentError):
    """The journal cannot store or deliver observations (disk full, corrupt database)."""


class JournalFull(JournalError):
    """The journal is at its bound and its overflow policy is `reject-new`."""


class JournalBatchTooLarge(JournalError):
    """One batch is larger than journal.max_bytes: store it in smaller parts."""


class JournalHeld(JournalFull):
    """The journal is at its bound and its overflow policy is `pause`: nothing was stored,
    the caller holds the batch (and stops taking more) until the sinks have delivered."""


class ElectionError(AgentError):
    """A validator-election step failed: a malformed input, a proof or signature that does not
    verify, or a round that cannot be decided."""


class ChainError(AgentError):
    """Talking to the full node (or building what the agent deploys to it) failed."""


class NodeUnreachable(ChainError):
    """The full node did not accept a connection or dropped it (down, restarting, wrong URL)."""


class RpcTimeout(ChainError):
    """The full node accepted the request but did not answer in time."""


class RpcError(ChainError):
    """The full node answered a JSON-RPC error object; `code` and `data` are the node's."""

    def __init__(self, code: int, message: str, data: object = None, method: str = "") -> None:
        self.code = code
        self.message = message
        self.data = data
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}JSON-RPC error {code}: {message}")


class TransactionError(ChainError):
    """One of the agent's own transactions failed (reverted, could not be sent or replaced)."""


class BleUnavailable(AgentError):
    """The Bluetooth stack (BlueZ over D-Bus, or the adapter) cannot be used; `fix` says what to
    install or start."""
