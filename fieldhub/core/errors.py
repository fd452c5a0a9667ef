"""One exception hierarchy for the hub; errors carry the fields an operator needs."""

from __future__ import annotations


class FieldhubError(Exception):
    """Base of every error the hub raises on purpose."""


class ConfigError(FieldhubError):
    """A setting is wrong: names the file, the key path and what was expected."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 expected: str | None = None) -> None:
        self.file, self.key, self.expected = file, key, expected
        where = ""
        if file:
            where += f"{file}: "
        if key:
            where += f"{key}: "
        text = f"{where}{message}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class ValidationError(FieldhubError):
    """A value (admin code, device id, record field) is invalid."""


class StorageError(FieldhubError):
    """The durable log or a store cannot do its job (disk, permissions, corruption)."""


class DiskFullError(StorageError):
    """The disk cap is reached and nothing more may be evicted."""


class TransportError(FieldhubError):
    """A transport (serial port, socket, broker) failed; callers reconnect with backoff."""


class ProtocolError(FieldhubError):
    """A frame could not be parsed; carries the device and offset where known."""

    def __init__(self, message: str, *, device: str | None = None, offset: int | None = None) -> None:
        self.device, self.offset = device, offset
        super().__init__(message)


class HubNotRunning(FieldhubError):
    """A command needs the live hub and none answers on the control socket."""
