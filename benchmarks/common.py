"""What every benchmark script shares (they run as scripts from this folder, which is then
on their path)."""

from typing import Any

import httpx


def expect(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of an answer with the expected status; anything else stops the run."""
    if response.status_code != status:
        req = response.request
        raise RuntimeError(f"{req.method} {req.url} -> {response.status_code}: {response.text}")
    return response.json()
