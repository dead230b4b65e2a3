"""Child processes that must not outlive the process that started them."""

import signal
import sys


def die_with_parent() -> None:
    """preexec_fn: if the parent is killed (even kill -9), the kernel kills this child too."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
