"""The replica template: `python -m app.serving.template`, started once by a gateway.

A replica's cold start was mostly Python importing pandas, scikit-learn and skops (about 4 s
on a small machine) before it read a byte of the model. This process pays that once, then
forks each replica from itself on request, so a replica starts with everything imported and
only loads its model. Single-threaded until it forks, so the children inherit no half-held
locks. Requests are JSON lines on stdin (`{"version_id": 3, "port": 41234}`), answers JSON
lines on stdout (`{"pid": 4567}`).
"""

import importlib
import json
import os
import signal
import sys

from app.core.processes import die_with_parent
from app.serving.server import freeze_heap

# What loading and serving a scikit-learn model needs; skops imports classes by name.
PRELOAD = (
    "app.serving.replica",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.preprocessing",
    "sklearn.impute",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.neighbors",
    "sklearn.naive_bayes",
    "sklearn.svm",
)


def _child(version_id: int, port: int) -> None:
    """In the forked replica: its own life from here, stdio away from the gateway's pipes."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    die_with_parent()  # the template dies with its gateway, so replicas die with both
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    from app.serving import replica

    try:
        replica.serve(version_id, port)
    finally:
        os._exit(0)


def main() -> None:
    for module in PRELOAD:
        importlib.import_module(module)
    # frozen once here, what every replica inherits is never walked by a replica's collector
    # (its own freeze before serving walks only its model), nor copied by it after the fork
    freeze_heap()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps replicas that exit
    answer = sys.stdout
    answer.write(json.dumps({"ready": True}) + "\n")
    answer.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(int(request["version_id"]), int(request["port"]))
        answer.write(json.dumps({"pid": pid}) + "\n")
        answer.flush()


if __name__ == "__main__":
    main()
