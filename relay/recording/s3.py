"""S3-compatible object storage for finished recordings (aiobotocore).

Credentials come from the standard environment (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``), as botocore reads them; nothing here logs them. Files above
``MULTIPART_THRESHOLD`` go up in ``PART_SIZE`` parts (an hour of Ogg/Opus is ~30 MB, of
WAV ~690 MB); file reads run off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from relay.config import RecordingConfig

MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0


class StorageError(Exception):
    """The object store refused or could not be reached (message says which)."""


@dataclass(frozen=True)
class ObjectRange:
    status: int
    content_range: str | None
    content_length: int
    content_type: str
    body: Any  # aiobotocore's streaming body


def _read_chunk(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


class S3Storage:
    def __init__(self, config: RecordingConfig) -> None:
        self.bucket = config.s3_bucket
        self.prefix = config.s3_prefix
        self._endpoint = config.s3_endpoint_url or None
        self._region = config.s3_region
        self._session = get_session()
        self._config = AioConfig(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": 2, "mode": "standard"},
            # Path-style keeps SeaweedFS/MinIO and virtual-host-less endpoints working.
            s3={"addressing_style": "path"},
        )
        self._shared: Any = None
        self._client_context: Any = None
        self._client_lock = asyncio.Lock()

    def key(self, session_id: str, recording_id: str, name: str) -> str:
        return f"{self.prefix}{session_id}/{recording_id}/{name}"

    def location(self, session_id: str, recording_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(session_id, recording_id, '')}"

    async def _get_client(self) -> Any:
        """One client for the life of the service. botocore reads its data files (service
        models, endpoints) from disk the first time; a throwaway client made in a worker
        thread fills the session's caches, so the loop never waits on that I/O."""
        if self._shared is None:
            async with self._client_lock:
                if self._shared is None:
                    await asyncio.to_thread(self._warm_up)
                    context = self._new_client()
                    self._shared = await context.__aenter__()
                    self._client_context = context
        return self._shared

    def _new_client(self) -> Any:
        return self._session.create_client(
            "s3", endpoint_url=self._endpoint, region_name=self._region, config=self._config
        )

    def _warm_up(self) -> None:
        # The files botocore reads while making an S3 client, read here (a worker thread,
        # no event loop) into the session's and its loader's caches.
        session = self._session
        session.get_scoped_config()
        loader = session.get_component("data_loader")
        # No "extras" overlays: botocore looks for optional files that do not exist on
        # every client creation (a miss is not cached), which would stat on the loop.
        loader.extras_types.clear()
        for name in ("endpoints", "partitions", "_retry", "sdk-default-configuration"):
            with contextlib.suppress(Exception):
                loader.load_data(name)
        for kind in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
            with contextlib.suppress(Exception):
                loader.load_service_model("s3", kind)

    async def close(self) -> None:
        if self._client_context is not None:
            context, self._client_context, self._shared = self._client_context, None, None
            await context.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        yield await self._get_client()

    async def upload(self, path: Path, key: str, content_type: str) -> None:
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            async with self._client() as client:
                if size <= MULTIPART_THRESHOLD:
                    body = await asyncio.to_thread(path.read_bytes)
                    await client.put_object(
                        Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
                    )
                    return
                await self._multipart(client, path, key, size, content_type)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"upload of {key} failed: {_describe(exc)}") from exc

    async def _multipart(
        self, client: Any, path: Path, key: str, size: int, content_type: str
    ) -> None:
        created = await client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type
        )
        upload_id = created["UploadId"]
        parts = []
        try:
            for number, offset in enumerate(range(0, size, PART_SIZE), start=1):
                chunk = await asyncio.to_thread(_read_chunk, path, offset, PART_SIZE)
                part = await client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def get(self, key: str, byte_range: str | None) -> tuple[ObjectRange, Any]:
        """Open ``key`` (optionally a ``bytes=`` range); the caller closes the returned
        client context (second item) after streaming the body."""
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(self._client())
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if byte_range:
                kwargs["Range"] = byte_range
            response = await client.get_object(**kwargs)
        except Exception as exc:
            await stack.aclose()
            raise StorageError(f"read of {key} failed: {_describe(exc)}") from exc
        meta = response.get("ResponseMetadata", {})
        return (
            ObjectRange(
                status=int(meta.get("HTTPStatusCode", 200)),
                content_range=response.get("ContentRange"),
                content_length=int(response.get("ContentLength", 0)),
                content_type=response.get("ContentType") or "application/octet-stream",
                body=response["Body"],
            ),
            stack,
        )

    async def read(self, key: str) -> bytes:
        """The whole object; ``StorageError`` when it cannot be read, also part-way
        through its body (a connection reset there is the store's failure like any other:
        callers catch ``StorageError`` only)."""
        obj, stack = await self.get(key, None)
        async with stack:
            try:
                data: bytes = await obj.body.read()
            except Exception as exc:
                raise StorageError(f"read of {key} failed: {_describe(exc)}") from exc
            return data

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many."""
        deleted = 0
        try:
            async with self._client() as client:
                paginator = client.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                    for item in page.get("Contents", []):
                        await client.delete_object(Bucket=self.bucket, Key=item["Key"])
                        deleted += 1
        except Exception as exc:
            raise StorageError(f"delete under {prefix} failed: {_describe(exc)}") from exc
        return deleted

    async def exists(self, key: str) -> bool:
        try:
            async with self._client() as client:
                await client.head_object(Bucket=self.bucket, Key=key)
                return True
        except Exception:
            return False


def _describe(exc: BaseException) -> str:
    # botocore's messages name the endpoint and the operation, never the credentials.
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
