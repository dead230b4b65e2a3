"""Starting replica processes: forked from a pre-imported template when it is up (cold start
= loading the model), or as a fresh interpreter when it is not (cold start = imports too)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Protocol

from app.core.processes import die_with_parent


class ReplicaProcess(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Forked:
    """A replica forked by the template: not our child, so it is watched by its pid (the
    template ignores SIGCHLD, so an exited replica leaves no zombie to mistake for alive)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return -1
        return None

    def _signal(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"replica {self.pid}", timeout or 0)
            time.sleep(0.02)
        return -1


class Launcher:
    """One template per gateway. `start` it from the thread that runs the gateway's event loop:
    children are killed when the thread that started them ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.template: subprocess.Popen[str] | None = None
        self.template_ready = False

    def start(self) -> None:
        try:
            self.template = subprocess.Popen(
                [sys.executable, "-m", "app.serving.template"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                preexec_fn=die_with_parent,
            )
        except OSError:
            self.template = None

    def fork(self, version_id: int, port: int) -> Forked | None:
        """A replica forked from the template, or None when there is none working. Blocks
        (the first call waits for the template's imports): call it in a worker thread."""
        with self.lock:
            template = self.template
            if template is None or template.poll() is not None:
                return None
            assert template.stdin is not None and template.stdout is not None
            try:
                if not self.template_ready:
                    json.loads(template.stdout.readline() or "{}")["ready"]
                    self.template_ready = True
                template.stdin.write(json.dumps({"version_id": version_id, "port": port}) + "\n")
                template.stdin.flush()
                return Forked(int(json.loads(template.stdout.readline())["pid"]))
            except (OSError, ValueError, KeyError):
                self._stop_template()  # a broken template: fresh interpreters from now on
                return None

    @staticmethod
    def spawn(version_id: int, port: int) -> ReplicaProcess:
        """A replica in a fresh interpreter (it imports everything itself)."""
        return subprocess.Popen(  # noqa: S603 - our own replica module
            [
                sys.executable,
                "-m",
                "app.serving.replica",
                "--version-id",
                str(version_id),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # replicas never outlive their gateway
        )

    def _stop_template(self) -> None:
        template, self.template = self.template, None
        if template is not None and template.poll() is None:
            template.kill()
            template.wait(timeout=5)

    def close(self) -> None:
        with self.lock:
            self._stop_template()
