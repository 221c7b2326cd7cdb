"""``files.digest``: several digests of a blob from one streaming read."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from pydantic import JsonValue

from tasks.arguments import DigestArguments
from tasks.base import JobContext
from tasks.declaration import conveyor_task
from tasks.errors import PermanentError
from workers.blob_store import BlobNotFoundError

CHUNK_BYTES = 1 << 20


def digest_chunks(chunks: Iterable[bytes], algorithms: Sequence[str]) -> tuple[int, dict[str, str]]:
    """The total size and the hex digest per algorithm of ``chunks``, read once."""
    # md5 and sha1 are asked for to match legacy checksums, never for security
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    size = 0
    for chunk in chunks:
        size += len(chunk)
        for hasher in hashers.values():
            hasher.update(chunk)
    return size, {name: hasher.hexdigest() for name, hasher in hashers.items()}


@conveyor_task("files.digest")
def digest(context: JobContext, arguments: DigestArguments) -> dict[str, JsonValue]:
    """Hash the blob with every requested algorithm; memory stays at one chunk."""
    try:
        chunks = context.blobs.read_chunks(arguments.blob, CHUNK_BYTES)
    except BlobNotFoundError:
        raise PermanentError(f"no blob {arguments.blob}") from None
    size, digests = digest_chunks(chunks, arguments.algorithms)
    return {"size": size, "digests": dict(digests)}
