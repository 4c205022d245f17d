"""The docker driver's images, built from docker/ through the Docker SDK when missing or changed.

The base image is a build argument (PITR_DOCKER_BASE_IMAGE): an official image where a registry is
reachable, or pitrsite-base:bookworm, which `scripts/pitr` makes from a Debian root filesystem
(debootstrap, then docker import) where none is. Each image carries the sha256 of what it was built
from (its Dockerfile directory, the build arguments) as a label, so a second `up` builds nothing.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from fleet import pg
from pitrsite.errors import FleetError

PROJECT = Path(__file__).resolve().parent.parent
DOCKER_DIR = PROJECT / "docker"
HASH_LABEL = "pitrsite.build-sha256"
# name -> (tag, directory under docker/, files copied from the project into the build context)
IMAGES = {
    "postgres": ("pitrsite-postgres:15", "postgres", ()),
    "capturer": ("pitrsite-capturer:15", "capturer", ()),
    "app": ("pitrsite-app:latest", "app", ("requirements.txt",)),
    "pgadmin": ("pitrsite-pgadmin:latest", "pgadmin", ()),
}


def tag(name: str) -> str:
    return IMAGES[name][0]


def build_args(name: str) -> dict[str, str]:
    account = pg.server_account() or pwd.getpwuid(os.getuid())
    args = {"BASE_IMAGE": settings.PITR_DOCKER_BASE_IMAGE, "PG_UID": str(account.pw_uid),
            "PG_GID": str(account.pw_gid)}
    if name == "capturer":
        args = {"POSTGRES_IMAGE": tag("postgres")}
    return args


def fingerprint(name: str, args: dict[str, str], base_id: str) -> str:
    _, directory, extra = IMAGES[name]
    digest = hashlib.sha256(repr(sorted(args.items())).encode() + base_id.encode())
    for path in sorted((DOCKER_DIR / directory).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    for relpath in extra:
        digest.update((PROJECT / relpath).read_bytes())
    return digest.hexdigest()


def ensure(client, names: tuple[str, ...] = tuple(IMAGES)) -> list[str]:
    """Build each image that is missing or out of date; returns what was built."""
    import docker.errors

    try:
        base = client.images.get(settings.PITR_DOCKER_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        raise FleetError(f"the base image {settings.PITR_DOCKER_BASE_IMAGE} is missing: `scripts/pitr up` builds "
                         "it (debootstrap, docker import), or set PITR_DOCKER_BASE_IMAGE to one you have") from None
    built = []
    # The capturer builds FROM the postgres image: postgres first, and its id goes into the capturer's hash.
    for name in ("postgres", "capturer", "app", "pgadmin"):
        if name not in names and not (name == "postgres" and "capturer" in names):
            continue
        args = build_args(name)
        parent = client.images.get(tag("postgres")).id if name == "capturer" else base.id
        want = fingerprint(name, args, parent)
        try:
            if client.images.get(tag(name)).labels.get(HASH_LABEL) == want:
                continue
        except docker.errors.ImageNotFound:
            pass
        _build(client, name, args, want)
        built.append(tag(name))
    return built


def _build(client, name: str, args: dict[str, str], want: str) -> None:
    import docker.errors

    _, directory, extra = IMAGES[name]
    with tempfile.TemporaryDirectory(prefix=f"pitr-build-{name}-") as context:
        shutil.copytree(DOCKER_DIR / directory, context, dirs_exist_ok=True)
        for relpath in extra:
            shutil.copy(PROJECT / relpath, Path(context) / Path(relpath).name)
        try:
            # network_mode host: the engine has no bridge network (dockerd --bridge=none).
            client.images.build(path=context, tag=tag(name), buildargs=args, labels={HASH_LABEL: want},
                                network_mode="host", rm=True, forcerm=True)
        except docker.errors.BuildError as exc:
            lines = [str(c.get("stream", c.get("error", ""))).strip() for c in exc.build_log]
            detail = next((line for line in reversed(lines) if line), str(exc))
            raise FleetError(f"building image {tag(name)} from docker/{directory} failed: {detail}") from None
