"""The "package" stage: a serving bundle (model, pinned runtime, Dockerfile, entry script).

The bundle is a reproducible tar.gz (fixed timestamps and order, so the same inputs give the
same digest) stored on the artifact store. Where a container builder and a registry are
configured, the image is built and pushed and its reference recorded; otherwise the record
says the image step was skipped and why.
"""

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.core.errors import Conflict
from app.core.jobs import JobContext
from app.core.outbox import enqueue
from app.events import service as events
from app.events.types import EventType
from app.ml import model_files, serving_contract
from app.registry.models import ModelVersion, PackageStatus, RegisteredModel, VersionStatus

PACKAGE_JOB = "registry.package_version"
TEMPLATE = Path(__file__).resolve().parent / "bundle"
RUNTIME = ("numpy", "pandas", "scipy", "scikit-learn", "skops")
IMAGE_STEP_TIMEOUT = 1800


def request_package(
    session: Session, model: RegisteredModel, version: ModelVersion, *, rebuild: bool, actor: str
) -> bool:
    """Queue a build; False when a bundle already exists and no rebuild was asked for."""
    if version.status != VersionStatus.ready:
        raise Conflict(
            f"version {version.version} is {version.status.value}; package a ready version"
        )
    if version.package_status == PackageStatus.pending:
        return True
    if version.package_status == PackageStatus.ready and not rebuild:
        return False
    version.package_status = PackageStatus.pending
    version.package = None
    enqueue(session, PACKAGE_JOB, {"version_id": version.id})
    events.record(
        session,
        EventType.model_version_package_requested,
        f"model:{model.name}",
        {"model": model.name, "version": version.version},
        actor,
    )
    return True


def requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME]


def bundle_files(
    model: RegisteredModel, version: ModelVersion, model_path: Path
) -> dict[str, bytes]:
    manifest = {
        "model": model.name,
        "version": version.version,
        "flavor": version.flavor,
        "model_class": version.model_class,
        "artifact": "model.skops",
        "digest": version.artifact_digest,
        "types": version.artifact_types,
        "signature": version.signature,
    }
    return {
        "Dockerfile": (TEMPLATE / "Dockerfile").read_bytes(),
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True).encode(),
        "model.skops": model_path.read_bytes(),
        "model_files.py": Path(model_files.__file__).read_bytes(),
        "requirements.txt": ("\n".join(requirements()) + "\n").encode(),
        "serve.py": (TEMPLATE / "serve.py").read_bytes(),
        "serving_contract.py": Path(serving_contract.__file__).read_bytes(),
    }


def write_tar_gz(files: dict[str, bytes], target: io.BufferedIOBase, prefix: str) -> None:
    with (
        gzip.GzipFile(fileobj=target, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(files):
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))


def build(session: Session, ctx: JobContext, model: RegisteredModel, version: ModelVersion) -> None:
    files = bundle_files(model, version, ctx.artifacts.path_for_digest(version.artifact_digest))
    prefix = f"{model.name}-{version.version}"
    buffer = io.BytesIO()
    write_tar_gz(files, buffer, prefix)
    stored = ctx.artifacts.put_chunks([buffer.getvalue()], max_bytes=ctx.settings.max_upload_bytes)
    image = _image_step(ctx, files, f"{model.name}:{version.version}")
    version.package = {
        "bundle_digest": stored.digest,
        "bundle_uri": stored.uri,
        "size_bytes": stored.size_bytes,
        "files": sorted(files),
        "requirements": requirements(),
        "image": image,
        "built_at": utcnow().isoformat(),
    }
    version.package_status = (
        PackageStatus.failed if image["status"] == "failed" else PackageStatus.ready
    )
    events.record(
        session,
        EventType.model_version_packaged,
        f"model:{model.name}",
        {
            "model": model.name,
            "version": version.version,
            "status": version.package_status.value,
            "image": image,
        },
    )


def _image_step(ctx: JobContext, files: dict[str, bytes], name_tag: str) -> dict[str, Any]:
    builder, registry = ctx.settings.image_builder, ctx.settings.image_registry
    if not builder or not registry:
        missing = [
            n
            for n, v in (("FLYWHEEL_IMAGE_BUILDER", builder), ("FLYWHEEL_IMAGE_REGISTRY", registry))
            if not v
        ]
        return {
            "status": "skipped",
            "reason": f"no container builder/registry configured ({', '.join(missing)} unset)",
        }
    executable = shutil.which(builder)
    if executable is None:
        return {"status": "failed", "error": f"image builder {builder!r} is not on PATH"}
    reference = f"{registry.rstrip('/')}/{name_tag}"
    with tempfile.TemporaryDirectory(prefix="flywheel-image-") as context_dir:
        for name, content in files.items():
            (Path(context_dir) / name).write_bytes(content)
        for step in (
            [executable, "build", "-t", reference, context_dir],
            [executable, "push", reference],
        ):
            try:
                done = subprocess.run(  # noqa: S603 - argv list, builder from settings
                    step, capture_output=True, text=True, timeout=IMAGE_STEP_TIMEOUT, check=False
                )
            except subprocess.TimeoutExpired:
                return {"status": "failed", "reference": reference, "error": f"{step[1]} timed out"}
            if done.returncode != 0:
                tail = (done.stderr or done.stdout)[-2000:]
                return {
                    "status": "failed",
                    "reference": reference,
                    "error": f"{step[1]} failed: {tail}",
                }
    return {"status": "pushed", "reference": reference}
