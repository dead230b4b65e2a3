import io
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from app.sources import gitops
from app.sources.gitops import (
    GitError,
    branches_containing,
    checkout,
    commit_info,
    ensure_mirror,
    git_env,
    validate_repo_url,
)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


class Repo:
    """A real working repository in tmp_path, with its own identity and no signing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, timeout=30)
        git(path, "config", "user.name", "Ada Lovelace")
        git(path, "config", "user.email", "ada@example.com")
        git(path, "config", "commit.gpgsign", "false")

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def commit(self, files: dict[str, str], message: str) -> str:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "origin")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def files_in(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- URL validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/models.git",
        "https://user:token@gitlab.example.com/group/sub/repo.git",
        "ssh://git@github.com/acme/models.git",
        "ssh://git@[::1]:2222/repo.git",
        "git@github.com:acme/models.git",
        "gitlab.example.com:acme/models.git",
        "file:///ok",
        "file:///srv/git/models.git",
    ],
)
def test_validate_repo_url_accepts(url: str) -> None:
    assert validate_repo_url(url) == url


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ext::sh -c touch% /tmp/pwned", "transport"),
        ("fd::17", "transport"),
        ("-oProxyCommand=x", "start with '-'"),
        ("--upload-pack=touch /tmp/pwned", "start with '-'"),
        ("http://x", "'http' is not allowed"),
        ("git://github.com/acme/models.git", "'git' is not allowed"),
        ("ftp://host/repo", "'ftp' is not allowed"),
        ("/abs/path", "local paths"),
        ("relative/path", "local paths"),
        ("./repo", "local paths"),
        ("file://host/srv/repo", "file:///"),
        ("file:relative", "not a valid ssh host"),
        ("https:github.com/x", "not a valid ssh host"),
        ("ho$t:path", "not a valid ssh host"),
        ("https://github.com/acme/models.git\n--upload-pack=x", "whitespace or control"),
        ("https://github.com/a b", "whitespace or control"),
        ("https://github.com/a\tb", "whitespace or control"),
        ("https://github.com/a\x00b", "whitespace or control"),
        ("ssh://-oProxyCommand=x/repo", "host"),
        ("-oProxyCommand=x@host:path", "start with '-'"),
        ("user@-oProxyCommand=x:path", "must not start with '-'"),
        ("https:///no-host", "host"),
        ("", "empty"),
    ],
)
def test_validate_repo_url_refuses(url: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        validate_repo_url(url)


# --- environment -------------------------------------------------------------------------------


def test_git_env_drops_inherited_git_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_DIR", "/elsewhere")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.sshCommand=evil'")
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "ext")
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -i /keys/deploy")
    monkeypatch.setenv("PATH_LIKE_OTHER", "kept")
    env = git_env()
    assert "GIT_DIR" not in env
    assert "GIT_CONFIG_PARAMETERS" not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -i /keys/deploy"
    assert env["GIT_ALLOW_PROTOCOL"] == "https:ssh:file"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["PATH_LIKE_OTHER"] == "kept"
    assert {k for k in env if k.startswith("GIT_")} == {
        "GIT_SSH_COMMAND",
        "GIT_ALLOW_PROTOCOL",
        "GIT_TERMINAL_PROMPT",
        "GIT_CONFIG_NOSYSTEM",
    }


def test_git_env_sets_home_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    env = git_env()
    home = Path(env["HOME"])
    assert home.is_dir()
    assert home.stat().st_mode & 0o077 == 0  # private, not a shared /tmp
    assert "GIT_SSH_COMMAND" not in env


# --- mirror and checkout -----------------------------------------------------------------------


def test_mirror_checkout_a_specific_commit(repo: Repo, cache: Path, tmp_path: Path) -> None:
    first = repo.commit({"train.py": "print('v1')\n", "conf/params.yaml": "lr: 0.1\n"}, "v1")
    repo.commit({"train.py": "print('v2')\n", "later.txt": "not yet\n"}, "v2")

    mirror = ensure_mirror(repo.url, cache)
    assert mirror.parent == cache
    assert mirror.name.endswith(".git")
    assert (mirror / "HEAD").is_file()

    target = checkout(mirror, first[:12], tmp_path / "work" / "run-1")
    assert files_in(target) == {"train.py": "print('v1')\n", "conf/params.yaml": "lr: 0.1\n"}
    assert not (target / ".git").exists()
    # Nothing but the export is left next to the target.
    assert sorted(p.name for p in target.parent.iterdir()) == ["run-1"]


def test_fetch_picks_up_new_commits(repo: Repo, cache: Path, tmp_path: Path) -> None:
    repo.commit({"a.txt": "1"}, "one")
    mirror = ensure_mirror(repo.url, cache)
    newer = repo.commit({"a.txt": "2"}, "two")
    assert ensure_mirror(repo.url, cache) == mirror
    assert files_in(checkout(mirror, newer, tmp_path / "t")) == {"a.txt": "2"}


def test_checkout_fetches_once_when_the_push_raced_the_mirror(
    repo: Repo, cache: Path, tmp_path: Path
) -> None:
    repo.commit({"a.txt": "1"}, "one")
    mirror = ensure_mirror(repo.url, cache)
    raced = repo.commit({"a.txt": "raced"}, "pushed after our fetch")
    assert files_in(checkout(mirror, raced, tmp_path / "t")) == {"a.txt": "raced"}


def test_checkout_unknown_or_invalid_commit(repo: Repo, cache: Path, tmp_path: Path) -> None:
    repo.commit({"a.txt": "1"}, "one")
    mirror = ensure_mirror(repo.url, cache)
    with pytest.raises(GitError, match="not in the mirror"):
        checkout(mirror, "deadbeef" * 5, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    for bad in ("abc", "HEAD", "main", "--output=/tmp/x", "g" * 40, "a" * 65):
        with pytest.raises(ValueError, match="hexadecimal"):
            checkout(mirror, bad, tmp_path / "t")


def test_checkout_refuses_a_non_empty_target(repo: Repo, cache: Path, tmp_path: Path) -> None:
    sha = repo.commit({"a.txt": "1"}, "one")
    mirror = ensure_mirror(repo.url, cache)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        checkout(mirror, sha, tmp_path / "busy")
    (tmp_path / "empty").mkdir()
    assert files_in(checkout(mirror, sha, tmp_path / "empty")) == {"a.txt": "1"}


def test_commit_info_and_branches(repo: Repo, cache: Path) -> None:
    first = repo.commit({"a.txt": "1"}, "Add the first model\n\nLonger body text.")
    git(repo.path, "checkout", "-q", "-b", "release/1")
    second = repo.commit({"b.txt": "2"}, "Second")
    mirror = ensure_mirror(repo.url, cache)

    info = commit_info(mirror, first[:8])
    assert info["commit"] == first
    assert info["author"] == "Ada Lovelace <ada@example.com>"
    assert info["message"] == "Add the first model"
    assert info["committed_at"] == git(repo.path, "show", "-s", "--format=%cI", first)
    assert "T" in info["committed_at"]

    assert branches_containing(mirror, first) == ["main", "release/1"]
    assert branches_containing(mirror, second) == ["release/1"]
    with pytest.raises(GitError):
        commit_info(mirror, "0" * 40)


def test_ensure_mirror_refuses_bad_urls_before_running_git(cache: Path) -> None:
    with pytest.raises(ValueError):
        ensure_mirror("ext::sh -c touch% /tmp/pwned", cache)
    assert not cache.exists() or not any(cache.glob("*.git"))


def test_ensure_mirror_reports_git_stderr(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(GitError, match="clone failed") as info:
        ensure_mirror((tmp_path / "missing").as_uri(), cache)
    assert "does not appear to be a git repository" in str(info.value) or "fatal" in str(info.value)
    # A failed clone leaves no half-made mirror behind to be trusted later.
    assert not list(cache.glob("*.git")) and not list(cache.glob("*.partial"))


def test_git_errors_hide_credentials_in_urls(tmp_path: Path) -> None:
    url = "https://user:hunter2@127.0.0.1:9/nothing.git"
    with pytest.raises(GitError) as info:
        ensure_mirror(url, tmp_path / "cache", timeout=30)
    assert "hunter2" not in str(info.value)
    # Git redacts most messages itself; our scrub covers the ones it does not.
    scrubbed = gitops._CREDENTIALS.sub(r"\1***@", "fatal: 'https://u:hunter2@h/r' failed")
    assert scrubbed == "fatal: 'https://***@h/r' failed"


def test_concurrent_ensure_mirror_from_two_threads(repo: Repo, cache: Path) -> None:
    sha = repo.commit({"a.txt": "1"}, "one")
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(ensure_mirror(repo.url, cache))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(results) == 2
    assert results[0] == results[1]
    assert commit_info(results[0], sha)["commit"] == sha


def test_timeout_becomes_git_error(
    repo: Repo, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.commit({"a.txt": "1"}, "one")
    mirror = ensure_mirror(repo.url, cache)
    # A git that hangs: run a sleeping alias through the same runner.
    with pytest.raises(GitError, match="timed out"):
        gitops._git("-c", "alias.hang=!sleep 30", "hang", git_dir=mirror, timeout=1)


# --- tar extraction --------------------------------------------------------------------------


def make_tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """(name, content, symlink target) triples; content None with a target means a symlink."""
    with tarfile.open(path, "w") as tar:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                data = content or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "members",
    [
        [("../escape.txt", b"x", None)],
        [("ok/../../escape.txt", b"x", None)],
        [("/etc/evil", b"x", None)],
        [("link", None, "/etc/passwd")],
        [("link", None, "../../outside")],
    ],
)
def test_safe_extract_refuses_escaping_members(
    tmp_path: Path, members: list[tuple[str, bytes | None, str | None]]
) -> None:
    archive = make_tar(tmp_path / "a.tar", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(GitError, match="refusing"):
        gitops._safe_extract(archive, dest)
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_allows_links_inside_the_tree(tmp_path: Path) -> None:
    members = [("docs/readme.md", b"hi", None), ("readme", None, "docs/readme.md")]
    archive = make_tar(tmp_path / "a.tar", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    gitops._safe_extract(archive, dest)
    assert (dest / "readme").read_text() == "hi"
