"""The study's files in Optuna's artifact store: verification checkpoints and the trained student.

A verification run uploads its checkpoint at the end of its rung (``optuna.artifacts.upload_artifact``, on its
trial of the companion study) and records ``{"artifact_id", "sha256", "bytes", "step"}`` as the trial's user
attr ``checkpoint``; the run that continues it on the next rung, on any machine that reaches the same store,
downloads it and checks its content hash before ``torch.load(..., weights_only=True)`` reads it.

Where the store is (:func:`open_store`): a folder (or ``file://`` URL; a shared folder across machines) or
``s3://bucket[/prefix]`` (Optuna's ``Boto3ArtifactStore``; needs ``boto3``). By default
(:func:`default_location`) it is a folder beside the SQLite file (``kdzero.db`` -> ``kdzero.db.artifacts/``),
or under the cache folder for other storages. ``optuna-dashboard --artifact-dir <folder> <storage>`` shows the
files on the companion study's trials.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

CHECKPOINT_ATTR = "checkpoint"


class ArtifactError(ValueError):
    """An artifact that is missing, unreadable or fails its content-hash check."""


class _Prefixed:
    """An artifact store whose keys live under ``prefix/`` of another store (``s3://bucket/prefix``)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """Open the artifact for reading."""
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Write the artifact."""
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        """Remove the artifact."""
        self.store.remove(self._key(artifact_id))


def default_location(storage_url: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The default artifact folder of a study storage.

    ``sqlite:///path/kdzero.db`` -> ``path/kdzero.db.artifacts``; any other URL (PostgreSQL, MySQL) ->
    ``<cache>/artifacts/<hash of the URL>`` (the cache folder given, else the user's default cache folder),
    which is machine-local: a study shared across machines names a shared folder or bucket instead.
    """
    if storage_url.startswith("sqlite:///") and not storage_url.startswith("sqlite:///:memory:"):
        db = storage_url[len("sqlite:///") :].split("?", 1)[0]
        return str(Path(db).expanduser()) + ".artifacts"
    from trainers.teacher import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    digest = hashlib.sha256(storage_url.encode()).hexdigest()[:16]
    return str(root / "artifacts" / digest)


def location(storage_url: str, artifacts: str | None = None, cache_dir: str | None = None) -> str:
    """The artifact store of a study: the one named (``--artifacts``, ``[run] artifacts``) or the default."""
    return artifacts or default_location(storage_url, cache_dir)


def open_store(location: str, *, s3_client: Any = None) -> Any:
    """The artifact store at ``location``: a folder, ``file://`` URL or ``s3://bucket[/prefix]``.

    Args:
        location: Where the study's files are kept.
        s3_client: A boto3 S3 client to use (default: ``boto3.client("s3")``).

    Raises:
        ValueError: An unknown URL scheme, an S3 URL without a bucket, or ``boto3`` missing for S3.
    """
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"artifact store {location!r}: an S3 URL needs a bucket (s3://bucket/prefix)")
        try:
            store = Boto3ArtifactStore(bucket, client=s3_client)
        except ImportError as err:
            raise ValueError(f"artifact store {location!r} needs boto3: pip install boto3") from err
        return _Prefixed(store, prefix) if prefix else store
    if "://" in location and not location.startswith("file://"):
        scheme = location.split("://", 1)[0]
        raise ValueError(
            f"artifact store {location!r}: unknown scheme {scheme!r}; give a folder, file:// or s3://bucket"
        )
    folder = Path(location[len("file://") :] if location.startswith("file://") else location).expanduser()
    return FileSystemArtifactStore(folder)


def prepare_store(location: str, *, s3_client: Any = None) -> Any:
    """:func:`open_store`, with the folder created and a probe file written and removed.

    Raises:
        ValueError: One line naming the store when it cannot be written (before anything runs).
    """
    store = open_store(location, s3_client=s3_client)
    try:
        if isinstance(store, FileSystemArtifactStore):
            Path(store._base_path).mkdir(parents=True, exist_ok=True)  # noqa: SLF001 - Optuna keeps no getter
        probe = f"kdzero-probe-{uuid.uuid4().hex}"
        store.write(probe, io.BytesIO(b"kdzero"))
        store.remove(probe)
    except Exception as err:  # noqa: BLE001 - any failure to write is the same answer
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"artifact store {location!r} cannot be written ({detail})") from err
    return store


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def upload(store: Any, trial: optuna.Trial, path: str | os.PathLike[str], **extra: Any) -> dict[str, Any]:
    """Upload ``path`` as an artifact of ``trial``; returns its record (id, content hash, size, ``extra``)."""
    record = {"sha256": sha256_file(path), "bytes": os.path.getsize(path), **extra}
    record["artifact_id"] = upload_artifact(
        artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="application/octet-stream"
    )
    return record


def fetch(store: Any, record: Mapping[str, Any], dest: str | os.PathLike[str]) -> Path:
    """Download the artifact of ``record`` to ``dest`` and check its content hash.

    Raises:
        ArtifactError: Missing from the store, unreadable, or its bytes do not match the recorded hash
            (``dest`` is then removed).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    artifact_id = str(record.get("artifact_id"))
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    try:
        download_artifact(artifact_store=store, file_path=str(tmp), artifact_id=artifact_id)
    except ArtifactNotFound:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"artifact {artifact_id} is not in the study's artifact store") from None
    except (OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(
            f"artifact {artifact_id} could not be read ({type(err).__name__}: {err})"
        ) from None
    got = sha256_file(tmp)
    if got != record.get("sha256"):
        tmp.unlink(missing_ok=True)
        raise ArtifactError(
            f"artifact {artifact_id} fails its content-hash check (sha256 {got[:12]}..., recorded "
            f"{str(record.get('sha256'))[:12]}...)"
        )
    os.replace(tmp, dest)
    return dest


def remove(store: Any, record: Mapping[str, Any]) -> bool:
    """Remove the artifact of ``record`` from the store; ``False`` when it was not there."""
    try:
        store.remove(str(record.get("artifact_id")))
    except ArtifactNotFound:
        return False
    return True
