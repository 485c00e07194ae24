"""What ties the bench's server processes to the bench, and the test run's to the test run."""

from __future__ import annotations

import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL for this process when the thread that started it ends (Linux), even by SIGKILL or os._exit."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
