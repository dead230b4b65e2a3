"""Repository credentials: used to clone over HTTPS, never stored in the URL, never shown back,
never on a command line or in a mirror's config, never in a log line."""

import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.sources import gitops
from tests.conftest import InlineJobs
from tests.pipelines.helpers import ci_spec, create, make_repo, upload_churn
from tests.sources.https_git import GitServer, https_git_server, trust_for_git

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> "GitServer":
    repo, _ = make_repo(tmp_path)
    with https_git_server(repo, tmp_path, "alice", PASSWORD) as served:
        trust_for_git(tmp_path / "home", served.ca_file)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        yield served


def with_credentials(url: str) -> str:
    return url.replace("https://", f"https://alice:{PASSWORD}@")


def test_split_and_redact() -> None:
    url, creds = gitops.split_credentials("https://alice:p%40ss@example.com/r.git")
    assert (url, creds) == ("https://example.com/r.git", "alice:p%40ss")
    assert gitops.split_credentials("https://ghp_TOKEN@example.com/r.git")[1] == "ghp_TOKEN"
    assert gitops.split_credentials("git@example.com:r.git") == ("git@example.com:r.git", None)
    assert gitops.redact("https://alice:pw@example.com/r.git") == "https://***@example.com/r.git"
    with pytest.raises(ValueError, match="passwords in ssh URLs"):
        gitops.validate_repo_url("ssh://git:pw@example.com/r.git")


def test_a_clone_uses_credentials_kept_out_of_the_url(server: GitServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(gitops.GitError, match=r"401|Authentication|could not read Username"):
        gitops.ensure_mirror(server.url, cache, timeout=60)
    mirror = gitops.ensure_mirror(server.url, cache, credentials=f"alice:{PASSWORD}", timeout=60)
    again = gitops.ensure_mirror(server.url, cache, credentials=f"alice:{PASSWORD}", timeout=60)
    assert again == mirror  # the second call fetches, with the same credentials
    head = gitops.resolve_ref(mirror, "main")
    assert (gitops.checkout(mirror, head, tmp_path / "src") / "flywheel.yaml").exists()
    stored = "".join(p.read_text(errors="replace") for p in mirror.rglob("config"))
    assert PASSWORD not in stored and server.url in stored
    assert server.authorizations  # the server did get them


@pytest.fixture
def ci_pipeline(api: TestClient) -> None:
    upload_churn(api)
    create(api, "ci", ci_spec())


def run_from_source(api: TestClient, jobs: InlineJobs, source: str) -> tuple[dict, str]:
    """A pipeline run from the git source, run to its end: (the run as shown, its train log)."""
    run = api.post("/api/v1/pipelines/ci/runs", json={"source": source}).json()
    assert PASSWORD not in str(run)
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{run['id']}")
    assert done.json()["status"] == "succeeded", done.json()
    log = api.get(f"/api/v1/pipeline-runs/{run['id']}/tasks/train/logs").text
    assert PASSWORD not in done.text and PASSWORD not in log
    return done.json(), log


def test_credentials_in_a_git_source_are_stored_apart_and_never_shown(
    api: TestClient,
    jobs: InlineJobs,
    server: GitServer,
    session_factory: sessionmaker[Session],
    ci_pipeline: None,
) -> None:
    created = api.post(
        "/api/v1/sources/git",
        json={"name": "private", "repo_url": with_credentials(server.url), "pipeline": "ci"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["repo_url"] == server.url and created.json()["has_credentials"]
    listed = api.get("/api/v1/sources/git").text
    assert PASSWORD not in created.text and PASSWORD not in listed

    _, log = run_from_source(api, jobs, "private")
    assert f"checking out {server.url}" in log
    assert PASSWORD not in api.get("/api/v1/pipeline-runs").text
    with session_factory() as session:
        rows = session.execute(text("SELECT repo_url, credentials_encrypted FROM git_source"))
        ((repo_url, encrypted),) = rows.all()
        assert repo_url == server.url and PASSWORD not in encrypted
        assert PASSWORD not in str(session.execute(text("SELECT repo_url FROM pipeline_run")).all())


def test_a_url_stored_with_credentials_before_is_redacted_and_still_clones(
    api: TestClient,
    jobs: InlineJobs,
    server: GitServer,
    session_factory: sessionmaker[Session],
    ci_pipeline: None,
) -> None:
    assert (
        api.post(
            "/api/v1/sources/git", json={"name": "old", "repo_url": server.url, "pipeline": "ci"}
        ).status_code
        == 201
    )
    with session_factory.begin() as session:  # as an earlier version stored it
        session.execute(
            text("UPDATE git_source SET repo_url = :u"), {"u": with_credentials(server.url)}
        )
    assert PASSWORD not in api.get("/api/v1/sources/git").text
    run_from_source(api, jobs, "old")


def test_git_never_sees_the_password_on_its_command_line(
    server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argvs: list[list[str]] = []
    real = subprocess.Popen

    def spy(argv: list[str], *args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        argvs.append(list(argv))
        return real(argv, *args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(gitops.subprocess, "Popen", spy)
    gitops.ensure_mirror(server.url, tmp_path / "cache", credentials=f"alice:{PASSWORD}")
    assert argvs and not any(PASSWORD in " ".join(argv) for argv in argvs)
