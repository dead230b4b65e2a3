"""Git access for training sources: mirror registered repositories, export one commit as files.

Repository URLs come from users, so every git call is an argv list (never a shell), passes
user values after `--`/`--end-of-options`, runs with a locked-down environment that only
allows https/ssh/file transports, and has a timeout. Training code gets a plain directory
(no .git), so it cannot reach the mirror or other commits.
"""

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

ALLOWED_SCHEMES = ("https", "ssh", "file")
STDERR_TAIL = 2000

_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
_COMMIT = re.compile(r"[0-9a-fA-F]{7,64}", re.ASCII)
_TRANSPORT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# scp-like "user@host:path": git treats a ':' before any '/' as this form.
_SCP = re.compile(r"(?:([^@/:]+)@)?([^@/:\[\]]+|\[[0-9A-Fa-f:.]+\]):(.+)")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", re.ASCII)


def split_credentials(url: str) -> tuple[str, str | None]:
    """An https URL's user info (user:password, or a token as the user) taken out of it, so the
    URL can be stored and shown as it is while the credentials are stored encrypted apart."""
    if not url.lower().startswith("https://"):
        return url, None
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=host)), userinfo


def redact(url: str) -> str:
    """A URL with any user info replaced by ***, for URLs stored before credentials were kept
    apart (and anything else that may hold them)."""
    return _CREDENTIALS.sub(r"\1***@", url)


class GitError(RuntimeError):
    """A git command failed or timed out; the message carries the tail of git's stderr."""


def validate_repo_url(url: str) -> str:
    """Allow only https, ssh (incl. scp-like) and file:/// URLs; refuse anything git could abuse."""
    if not url:
        raise ValueError("repository URL must not be empty")
    if url.startswith("-"):
        raise ValueError("repository URL must not start with '-' (option injection)")
    if _TRANSPORT.match(url):
        raise ValueError("'<transport>::' URLs (ext::, fd::, ...) are not allowed")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("repository URL must not contain whitespace or control characters")
    if m := _SCHEME.match(url):
        scheme = m.group(1).lower()
        if scheme not in ALLOWED_SCHEMES:
            raise ValueError(f"scheme {scheme!r} is not allowed; use one of {ALLOWED_SCHEMES}")
        parts = urlsplit(url)
        if scheme == "file":
            if parts.netloc or not parts.path.startswith("/"):
                raise ValueError("file URLs must be absolute: file:///abs/path")
        elif not parts.hostname or parts.hostname.startswith("-"):
            raise ValueError(f"{scheme} URL needs a host name that does not start with '-'")
        elif scheme == "ssh" and parts.password is not None:
            raise ValueError("git does not use passwords in ssh URLs; use a key (GIT_SSH_COMMAND)")
        return url
    if m := _SCP.fullmatch(url):
        user, host = m.group(1) or "", m.group(2)
        if user.startswith("-") or host.startswith("-"):
            raise ValueError("ssh user and host must not start with '-'")
        if not _HOST.fullmatch(host) or host.lower() in ("file", "http", "https", "ssh", "git"):
            raise ValueError(f"{host!r} is not a valid ssh host (scp-like URLs are host:path)")
        return url
    raise ValueError("local paths are not allowed; use https://, ssh://, git@host:path or file:///")


def git_env() -> dict[str, str]:
    """The parent's environment minus its GIT_* settings (which could redirect or reconfigure
    git), restricted to our transports and never prompting for credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    if "GIT_SSH_COMMAND" in os.environ:
        env["GIT_SSH_COMMAND"] = os.environ["GIT_SSH_COMMAND"]
    env["GIT_ALLOW_PROTOCOL"] = "https:ssh:file"
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    if not env.get("HOME"):
        env["HOME"] = _private_home()
    return env


@functools.cache
def _private_home() -> str:
    """A 0700 directory of our own: a shared one like /tmp could hold a planted .gitconfig."""
    return tempfile.mkdtemp(prefix="flywheel-git-home-")


# Hands git the credentials from the environment: never on a command line (any local user can
# read argv) and never in the mirror's config. The script is ours; only the values come in.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    'printf "username=%s\\npassword=%s\\n" "$FLYWHEEL_GIT_USERNAME" "$FLYWHEEL_GIT_PASSWORD"; }; f'
)


def _credential_args(credentials: str | None) -> tuple[list[str], dict[str, str]]:
    if credentials is None:
        return [], {}
    user, _, password = credentials.partition(":")
    # an empty helper first drops any helper a global config may name
    args = ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"]
    return args, {
        "FLYWHEEL_GIT_USERNAME": unquote(user),
        "FLYWHEEL_GIT_PASSWORD": unquote(password),
    }


def _git(
    *args: str, timeout: int, git_dir: Path | None = None, credentials: str | None = None
) -> bytes:
    """Run git (in its own process group, so a timeout also kills ssh/remote helpers) and
    return stdout; a non-zero exit or a timeout becomes a GitError."""
    exe = shutil.which("git")
    if exe is None:
        raise GitError("git is not installed")
    helper_args, helper_env = _credential_args(credentials)
    argv = [exe, *helper_args, *([f"--git-dir={git_dir}"] if git_dir else []), *args]
    pipe, null = subprocess.PIPE, subprocess.DEVNULL
    # S603 is safe here: an argv list, user values after '--', a locked-down environment.
    with subprocess.Popen(  # noqa: S603
        argv,
        env={**git_env(), **helper_env},
        stdin=null,
        stdout=pipe,
        stderr=pipe,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise GitError(f"git {args[0]} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip()[-STDERR_TAIL:]
        tail = _CREDENTIALS.sub(r"\1***@", tail)  # errors end up in logs and API responses
        raise GitError(f"git {args[0]} failed (exit {proc.returncode}): {tail}")
    return out


def _mirror_path(url: str, cache_dir: Path) -> Path:
    return cache_dir / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]}.git"


@contextlib.contextmanager
def _locked(mirror: Path) -> Iterator[None]:
    """Exclusive flock on '<mirror>.lock': one clone/fetch per mirror at a time, across
    processes and threads (each call opens its own file description)."""
    with mirror.with_suffix(".lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fetch(mirror: Path, timeout: int, credentials: str | None) -> None:
    args = ("fetch", "--prune", "--quiet", "origin")
    _git(*args, git_dir=mirror, timeout=timeout, credentials=credentials)


def ensure_mirror(
    url: str, cache_dir: Path, *, credentials: str | None = None, timeout: int = 300
) -> Path:
    """Clone a bare mirror on first use, fetch it afterwards; returns its path.

    The clone goes to a temporary name and is renamed when complete, so a killed clone
    never leaves a half-made mirror that later calls would trust. Credentials still inside
    the URL (stored before they were kept apart) are taken out and handed over like others.
    """
    validate_repo_url(url)
    url, inline = split_credentials(url)
    credentials = credentials or inline
    cache_dir.mkdir(parents=True, exist_ok=True)
    mirror = _mirror_path(url, cache_dir)
    with _locked(mirror):
        if (mirror / "HEAD").is_file():
            _fetch(mirror, timeout, credentials)
            return mirror
        shutil.rmtree(mirror, ignore_errors=True)
        partial = mirror.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            clone = ("clone", "--mirror", "--quiet", "--", url, str(partial))
            _git(*clone, timeout=timeout, credentials=credentials)
            partial.rename(mirror)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return mirror


def _valid_commit(commit: str) -> str:
    if not _COMMIT.fullmatch(commit):
        raise ValueError("commit must be 7 to 64 hexadecimal characters")
    return commit.lower()


def _resolve(mirror: Path, commit: str) -> str | None:
    """Full sha of `commit` if the mirror has it as a commit, else None."""
    try:
        rev = f"{commit}^{{commit}}"
        args = ("rev-parse", "--verify", "--quiet", "--end-of-options", rev)
        out = _git(*args, git_dir=mirror, timeout=30)
    except GitError:
        return None
    return out.decode("ascii").strip() or None


def _require(mirror: Path, commit: str) -> str:
    sha = _resolve(mirror, _valid_commit(commit))
    if sha is None:
        raise GitError(f"commit {commit} is not in the mirror (unknown or ambiguous)")
    return sha


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar refusing absolute or '..' names; tarfile's 'data' filter also refuses
    links that escape `dest`, devices and setuid bits."""
    with tarfile.open(archive, mode="r:") as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise GitError(f"refusing archive member with unsafe path {member.name!r}")
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as exc:
            raise GitError(f"refusing archive member: {exc}") from exc


def checkout(
    mirror: Path, commit: str, target: Path, *, credentials: str | None = None, timeout: int = 120
) -> Path:
    """Export the tree of `commit` into `target` (must be absent or empty) as plain files.

    If the mirror lacks the commit it is fetched once: the push webhook can arrive before
    our last fetch saw that commit.
    """
    wanted = _valid_commit(commit)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"checkout target {target} exists and is not an empty directory")
    sha = _resolve(mirror, wanted)
    if sha is None:
        with _locked(mirror):
            _fetch(mirror, timeout, credentials)
        sha = _require(mirror, wanted)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        archive, staging = Path(tmp) / "tree.tar", Path(tmp) / "tree"
        output = f"--output={archive}"
        _git("archive", "--format=tar", output, "--", sha, git_dir=mirror, timeout=timeout)
        staging.mkdir()
        _safe_extract(archive, staging)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    return target


def commit_info(mirror: Path, commit: str) -> dict[str, str]:
    """Provenance for a training run: full sha, author, subject line, commit time (ISO)."""
    sha = _require(mirror, commit)
    fmt = "--format=%H%x00%an <%ae>%x00%cI%x00%B"
    out = _git("show", "-s", "--no-show-signature", fmt, sha, "--", git_dir=mirror, timeout=30)
    full, author, committed_at, message = out.decode("utf-8", "replace").split("\x00", 3)
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return {"commit": full, "author": author, "message": first, "committed_at": committed_at}


def branches_containing(mirror: Path, commit: str) -> list[str]:
    """Branch names (without refs/heads/) whose history contains `commit`, sorted."""
    sha = _require(mirror, commit)
    args = ("for-each-ref", "--format=%(refname)", f"--contains={sha}", "refs/heads/")
    refs = _git(*args, git_dir=mirror, timeout=30).decode("utf-8", "replace").splitlines()
    return sorted(r.removeprefix("refs/heads/") for r in refs if r.startswith("refs/heads/"))


def resolve_ref(mirror: Path, branch: str) -> str:
    """The commit a branch points at in the mirror (for runs started without a commit)."""
    if not branch or branch.startswith("-") or any(c in branch for c in "*?[ \t\n"):
        raise GitError(f"{branch!r} is not a branch name a run can start from; pass a commit")
    ref = "HEAD" if branch == "HEAD" else f"refs/heads/{branch}"
    args = ("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    return _git(*args, git_dir=mirror, timeout=30).decode().strip()
