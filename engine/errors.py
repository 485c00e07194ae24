"""Engine failures in terms the server maps to HTTP statuses, so that no vLLM exception type leaves the engine."""


class EngineError(Exception):
    """Base class."""


class InvalidGenerationRequest(EngineError):
    """The request cannot be served as asked (too long for the context, bad token id, ...): the caller's fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class EngineUnavailable(EngineError):
    """The engine is dead or shutting down; nothing will be generated."""


class EngineFailure(EngineError):
    """The engine could not serve a valid request: its own fault (500), or it is full for now (503, `busy`)."""

    def __init__(self, message: str, busy: bool = False):
        super().__init__(message)
        self.message = message
        self.busy = busy
