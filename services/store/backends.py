"""Where the store's objects live: the backend protocol, a local folder and S3 (MinIO).

:func:`open_store` picks the backend from :class:`StoreSettings`: S3 when an endpoint is
set, otherwise a folder with the same layout (:mod:`contracts.records`), so ``make dev``
needs no object store. The S3 backend talks to MinIO (moto's server in tests) through the
``minio`` SDK with short timeouts, so an outage shows within seconds and feedback can fall
back to its local spool. Importing this module does nothing: no folder is made and no
connection opened.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar
from xml.etree.ElementTree import ParseError

from pydantic import Field, SecretStr, field_validator

if TYPE_CHECKING:
    import pyarrow.fs as pafs

from contracts.errors import DigitloopError
from contracts.records import (
    FEEDBACK_IDS_PREFIX,
    FEEDBACK_PREFIX,
    LABELLED_PREFIX,
    PREDICTIONS_PREFIX,
    check_name,
)
from contracts.settings import DigitloopSettings

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "digitloop"
# S3's bucket naming rules; MinIO enforces them, so fail at configuration time instead.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

T = TypeVar("T")


class StoreError(DigitloopError):
    """Base class of the store's errors."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or an I/O operation on it failed; worth retrying."""


class ObjectNotFound(StoreError, KeyError):
    """No object under this key (only :meth:`ObjectStore.get` raises it)."""


def check_bucket_name(name: str) -> None:
    """ValueError unless S3, and MinIO, accept ``name`` as a bucket name."""
    if len(name) < 3:
        raise ValueError(f"bucket name {name!r} is too short: MinIO refuses names under 3 chars")
    if not _BUCKET_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"bucket name {name!r} is not a valid S3 bucket name: 3-63 characters, lower-case "
            "letters, digits, dots and hyphens, starting and ending with a letter or digit"
        )


class StoreSettings(DigitloopSettings):
    """Where predictions and feedback go, read from ``DIGITLOOP_*`` environment variables.

    With ``s3_endpoint`` set the S3 backend (MinIO) is used, otherwise a local folder with
    the same layout, so ``make dev`` needs no object store.
    """

    s3_endpoint: str | None = Field(
        default=None,
        description="S3 endpoint as host:port (no scheme); when set, the S3 backend is used.",
    )
    s3_access_key: str | None = Field(default=None, description="S3 access key.")
    s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    s3_bucket: str = Field(
        default=DEFAULT_BUCKET,
        description="Bucket holding predictions/, feedback/ and reports/; created if missing.",
    )
    s3_secure: bool = Field(default=False, description="Use HTTPS for the S3 endpoint.")
    s3_region: str | None = Field(
        default=None, description="S3 region; default: asked from the server once per bucket."
    )
    store_dir: Path | None = Field(
        default=None, description="Root of the local backend; default data_dir/store."
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Local spool for records the store could not take; default data_dir/spool.",
    )
    spool_max_records: int = Field(
        default=10_000,
        ge=1,
        description="Feedback records the spool holds before feedback is refused (SpoolFull).",
    )
    flush_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between two flushes of the predictions buffer."
    )
    pod_name: str = Field(
        default_factory=socket.gethostname,
        description="Name of this serving pod in predictions keys; default the host name.",
    )
    retention_predictions_days: int = Field(
        default=30,
        ge=8,
        description="Days the predictions log (images included) is kept, raw or compacted; "
        "more than the 7 days feedback may look back to its prediction.",
    )
    retention_feedback_days: int = Field(
        default=30,
        ge=1,
        description="Days feedback records and their per-id markers are kept; a repeat "
        "after that is stored again (the labelled dataset already holds the first).",
    )
    retention_labelled_days: int = Field(
        default=0,
        ge=0,
        description="Days the labelled dataset (the training data) is kept; 0: forever.",
    )
    compaction_lookback_days: float = Field(
        default=2.0,
        gt=0,
        description="Days back compaction looks for hours to merge: hours that got a late "
        "file (a spool replayed after an outage) since its last run.",
    )

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint_without_scheme(cls, value: str | None) -> str | None:
        if value and "://" in value:
            raise ValueError(
                f"s3_endpoint must be host:port without a scheme, got {value!r}; "
                "set s3_secure=true for HTTPS"
            )
        return value or None

    @field_validator("s3_bucket")
    @classmethod
    def _valid_bucket(cls, value: str) -> str:
        check_bucket_name(value)
        return value

    @field_validator("pod_name")
    @classmethod
    def _valid_pod(cls, value: str) -> str:
        check_name(value, "pod_name")
        return value

    def retention(self) -> dict[str, int]:
        """Days to keep each prefix of the bucket; prefixes kept forever are left out."""
        days = {
            PREDICTIONS_PREFIX: self.retention_predictions_days,
            FEEDBACK_PREFIX: self.retention_feedback_days,
            FEEDBACK_IDS_PREFIX: self.retention_feedback_days,
            LABELLED_PREFIX: self.retention_labelled_days,
        }
        return {prefix: n for prefix, n in days.items() if n > 0}

    @property
    def store_path(self) -> Path:
        return self.store_dir or self.data_dir / "store"

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"


class ObjectStore(Protocol):
    """The few object operations the serving component and the pipeline need."""

    description: str

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write ``data`` under ``key``, replacing what was there."""
        ...

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """Write ``data`` unless ``key`` exists (atomically); False when it already existed."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`ObjectNotFound` when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (a string prefix, as in S3), sorted."""
        ...

    def list_dirs(self, prefix: str) -> list[str]:
        """The names of the "folders" right under ``prefix`` (which ends with '/'), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; nothing happens when there is none."""
        ...

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        """The same objects as a pyarrow filesystem and the path of the store's root in it,
        for reading through :mod:`pyarrow.dataset`."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers and can be written."""
        ...


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or "\\" in key or any(not p or p.startswith(".") for p in parts):
        raise ValueError(
            f"invalid key {key!r}: use '/'-separated names, none empty or starting with '.'"
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``path`` all-or-nothing and fsynced, so a crash leaves the old file or the new.

    With ``exclusive`` an existing file is kept and False returned: a hard link either
    creates the name or fails, atomically, with the full content already in place.
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:  # a delete removed the emptied folder just now
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


class LocalStore(ObjectStore):
    """The store as a folder: keys are relative paths, writes are atomic and fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = self.root.resolve().as_uri()

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            write_durably(path, data)
        except OSError as exc:
            raise StoreUnavailable(f"{self.description}: cannot write {key}: {exc}") from exc

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        path = self._path(key)
        try:
            return write_durably(path, data, exclusive=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.description}: cannot write {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise StoreUnavailable(f"{self.description}: cannot read {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        # Walk only below the prefix's folder part; the rest is a string match, as in S3.
        base = self.root / prefix.rpartition("/")[0]
        keys = []
        try:
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in filenames:
                    key = name if rel == "." else f"{rel}/{name}"
                    if not name.startswith(".") and key.startswith(prefix):
                        keys.append(key)
        except OSError as exc:
            raise StoreUnavailable(f"{self.description}: cannot list {prefix}: {exc}") from exc
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        try:
            return sorted(
                p.name
                for p in (self.root / prefix).iterdir()
                if p.is_dir() and not p.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreUnavailable(f"{self.description}: cannot list {prefix}: {exc}") from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.description}: cannot delete {key}: {exc}") from exc
        # S3 has no empty folders: neither does this, so listings of partitions agree.
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or just written into): keep it
                break

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), self.root.resolve().as_posix()

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"{self.description}: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise StoreUnavailable(f"{self.description}: folder is not writable")


class S3Store(ObjectStore):
    """The store on MinIO (or any S3 API) through the ``minio`` SDK.

    The SDK's defaults (5-minute timeouts, 5 retries with back-off) would hold a feedback
    request for minutes during an outage; here a dead server shows within seconds, every
    failure is a :class:`StoreUnavailable`, and the bucket is (re)created when missing,
    including after the server came back empty.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | SecretStr | None,
        bucket: str = DEFAULT_BUCKET,
        secure: bool = False,
        region: str | None = None,
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 5.0,
        retries: int = 1,
        retention: dict[str, int] | None = None,
    ) -> None:
        import certifi
        import urllib3
        from minio import Minio

        check_bucket_name(bucket)
        if isinstance(secret_key, SecretStr):
            secret_key = secret_key.get_secret_value()
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self.bucket = bucket
        self.description = f"s3://{bucket}@{endpoint}"
        self._endpoint, self._secure, self._region = endpoint, secure, region
        self._access_key, self._secret_key = access_key, secret_key
        self._timeouts = (connect_timeout_s, read_timeout_s)
        self.retention = retention or {}
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def _ensure_bucket(self) -> None:
        from minio.error import S3Error

        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                    log.info("created bucket %s", self.description)
                except S3Error as exc:
                    # Another pod created it between our two calls.
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                else:
                    self._apply_lifecycle()
            self._bucket_ready = True

    def _apply_lifecycle(self) -> None:
        from services.store.retention import lifecycle_config

        if self.retention:
            self._client.set_bucket_lifecycle(self.bucket, lifecycle_config(self.retention))

    def apply_lifecycle(self) -> None:
        """(Re)write the bucket's expiry rules from :attr:`retention` (an older bucket)."""
        self._call("set lifecycle", "", self._apply_lifecycle)

    def lifecycle(self) -> dict[str, int]:
        """The bucket's expiry rules as ``{prefix: days}``."""
        from services.store.retention import lifecycle_days

        return self._call(
            "get lifecycle",
            "",
            lambda: lifecycle_days(self._client.get_bucket_lifecycle(self.bucket)),
        )

    def _call(self, op: str, key: str, action: Callable[[], T]) -> T:
        import urllib3
        from minio.error import MinioException, S3Error

        for attempt in (1, 2):
            try:
                self._ensure_bucket()
                return action()
            except S3Error as exc:
                if exc.code == "NoSuchBucket" and attempt == 1:
                    self._bucket_ready = False
                    continue
                raise StoreUnavailable(f"{self.description}: {op} {key}: {exc}") from exc
            except (MinioException, urllib3.exceptions.HTTPError, OSError, ParseError) as exc:
                raise StoreUnavailable(f"{self.description}: {op} {key}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        _check_key(key)
        self._call(
            "put",
            key,
            lambda: self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        from minio.error import S3Error

        _check_key(key)

        def action() -> bool:
            # A conditional PUT (If-None-Match: *) makes check-and-write one atomic step on
            # the server. The public put_object() would turn that header into user
            # metadata, hence the SDK's internal single-part PUT (minio is pinned).
            try:
                self._client._put_object(
                    self.bucket,
                    key,
                    data,
                    headers={"Content-Type": content_type, "If-None-Match": "*"},
                )
            except S3Error as exc:
                if exc.code == "PreconditionFailed":
                    return False
                raise
            return True

        return self._call("put_if_absent", key, action)

    def get(self, key: str) -> bytes:
        from minio.error import S3Error

        _check_key(key)

        def action() -> bytes:
            try:
                response = self._client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise ObjectNotFound(key) from exc
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("get", key, action)

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        _check_key(key)

        def action() -> bool:
            try:
                self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return False
                raise
            return True

        return self._call("exists", key, action)

    def list(self, prefix: str) -> list[str]:
        return self._call(
            "list",
            prefix,
            lambda: sorted(
                o.object_name
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name and not o.is_dir
            ),
        )

    def list_dirs(self, prefix: str) -> list[str]:
        def action() -> list[str]:
            objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=False)
            return sorted(
                o.object_name[len(prefix) :].rstrip("/")
                for o in objects
                if o.object_name and o.is_dir
            )

        return self._call("list", prefix, action)

    def delete(self, key: str) -> None:
        _check_key(key)
        self._call("delete", key, lambda: self._client.remove_object(self.bucket, key))

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        import pyarrow.fs as pafs

        secret = self._secret_key
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        filesystem = pafs.S3FileSystem(
            access_key=self._access_key,
            secret_key=secret,
            endpoint_override=self._endpoint,
            scheme="https" if self._secure else "http",
            region=self._region or "us-east-1",
            connect_timeout=self._timeouts[0],
            request_timeout=self._timeouts[1],
            allow_bucket_creation=False,
            allow_bucket_deletion=False,
        )
        return filesystem, self.bucket

    def ping(self) -> None:
        self._bucket_ready = False
        self._call("ping", "", lambda: None)


def open_store(settings: StoreSettings | None = None) -> ObjectStore:
    """The configured backend: S3 when ``s3_endpoint`` is set, else the local folder."""
    settings = settings or StoreSettings()
    if settings.s3_endpoint:
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            retention=settings.retention(),
        )
    return LocalStore(settings.store_path)
