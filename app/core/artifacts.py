"""The artifact store: a local directory of content-addressed files, identical bytes stored once."""

import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.core.errors import PayloadTooLarge, Unprocessable

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    digest: str
    size_bytes: int
    uri: str


@dataclass(frozen=True)
class StagedObject:
    """Bytes written and hashed in staging but not yet in the store: check them, then
    `publish` or `discard`, so a refused upload leaves nothing behind."""

    path: Path
    digest: str
    size_bytes: int


def validate_relative_path(path: str, *, what: str = "path") -> str:
    """Refuse anything that could name a place outside its folder: '..', absolute, backslashes."""
    if not path or len(path) > 1000:
        raise Unprocessable(f"{what} must be 1 to 1000 characters")
    if "\x00" in path or "\\" in path:
        raise Unprocessable(f"{what} must not contain NUL or backslash characters")
    pure = PurePosixPath(path)
    if pure.is_absolute() or path.startswith("/"):
        raise Unprocessable(f"{what} must be relative, not start with '/'")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise Unprocessable(f"{what} must not contain empty, '.' or '..' segments: {path!r}")
    return path


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects" / "sha256"
        self.staging = root / "staging"

    def ensure(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def uri_for(self, digest: str) -> str:
        return f"objects/sha256/{digest[:2]}/{digest}"

    def path_for_digest(self, digest: str) -> Path:
        return self.root / self.uri_for(digest)

    def resolve(self, uri: str) -> Path:
        """A store-relative uri as a path, refusing anything that escapes the store."""
        relative = uri.removeprefix("artifacts://")
        validate_relative_path(relative, what="uri")
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise Unprocessable("uri must point inside the artifact store")
        return path

    def begin_write(self, *, max_bytes: int) -> "StagedWrite":
        self.ensure()
        fd, name = tempfile.mkstemp(dir=self.staging, prefix="upload-")
        return StagedWrite(self, fd, Path(name), max_bytes)

    def commit_staged(self, staged: Path, digest: str) -> StoredObject:
        """Move a fully written file into place under its digest; a duplicate is dropped."""
        target = self.path_for_digest(digest)
        size = staged.stat().st_size
        if target.exists():
            staged.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.chmod(0o444)
            staged.replace(target)
        return StoredObject(digest=digest, size_bytes=size, uri=self.uri_for(digest))

    def publish(self, staged: StagedObject) -> StoredObject:
        return self.commit_staged(staged.path, staged.digest)

    def discard(self, staged: StagedObject) -> None:
        """Drop staged bytes; nothing to do once they were published."""
        staged.path.unlink(missing_ok=True)

    def stage_chunks(self, chunks: Iterable[bytes], *, max_bytes: int) -> StagedObject:
        write = self.begin_write(max_bytes=max_bytes)
        try:
            for chunk in chunks:
                write.write(chunk)
        except BaseException:
            write.abort()
            raise
        return write.finish_staged()

    async def stage_stream(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StagedObject:
        write = self.begin_write(max_bytes=max_bytes)
        try:
            async for chunk in chunks:
                write.write(chunk)
        except BaseException:
            write.abort()
            raise
        return write.finish_staged()

    def stage_file(self, source: Path, *, max_bytes: int) -> StagedObject:
        with source.open("rb") as handle:
            return self.stage_chunks(iter(lambda: handle.read(CHUNK), b""), max_bytes=max_bytes)

    def put_chunks(self, chunks: Iterable[bytes], *, max_bytes: int) -> StoredObject:
        return self.publish(self.stage_chunks(chunks, max_bytes=max_bytes))

    async def put_stream(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StoredObject:
        return self.publish(await self.stage_stream(chunks, max_bytes=max_bytes))

    def put_file(self, source: Path, *, max_bytes: int) -> StoredObject:
        return self.publish(self.stage_file(source, max_bytes=max_bytes))


class StagedWrite:
    """A file being written into staging while its sha256 is computed; the store publishes it."""

    def __init__(self, store: ArtifactStore, fd: int, path: Path, max_bytes: int) -> None:
        self.store = store
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self.hasher = hashlib.sha256()
        self.out = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"upload is larger than the limit of {self.max_bytes} bytes")
        self.hasher.update(chunk)
        self.out.write(chunk)

    def abort(self) -> None:
        self.out.close()
        self.path.unlink(missing_ok=True)

    def finish_staged(self) -> StagedObject:
        self.out.close()
        return StagedObject(self.path, self.hasher.hexdigest(), self.size)
