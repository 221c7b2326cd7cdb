"""A Python client for the Conveyor HTTP API: enqueue jobs, wait for them, move blobs.

``ConveyorClient`` blocks, ``AsyncConveyorClient`` is its asyncio twin. Both share one
request builder (``_Calls``), one retry policy and one response interpreter; only the
transport call and the way they sleep differ. Only httpx, pydantic and the standard
library are imported, so a producer needs none of the worker code.

One module per concern:

- ``models``: the documents (``Job``, ``JobSpec``, ``Blob``, ...);
- ``errors``: the ``ConveyorError`` hierarchy and the error for a failed answer;
- ``responses``: successful answers read into documents;
- ``upload_body``: upload bodies, streamed and rewound for a retry;
- ``calls``: how each API call is asked;
- ``retrying``: when to ask again, and the polling backoff of ``wait``;
- ``blob_streams``: downloads, checked against the blob's sha256;
- ``client_base``, ``sync_client``, ``async_client``: the two clients.
"""

from api_shim.client.async_client import AsyncConveyorClient
from api_shim.client.blob_streams import AsyncBlobStream, BlobStream
from api_shim.client.client_base import USER_AGENT as USER_AGENT
from api_shim.client.client_base import __version__ as __version__
from api_shim.client.errors import (
    ConflictError,
    ConveyorConnectionError,
    ConveyorError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnknownTaskError,
    UnsupportedMediaTypeError,
    ValidationError,
    WaitTimeoutError,
)
from api_shim.client.models import FINISHED_STATUSES as FINISHED_STATUSES
from api_shim.client.models import (
    Attempt,
    Blob,
    Job,
    JobError,
    JobPage,
    JobSpec,
    Stats,
    TaskInfo,
)
from api_shim.client.models import JobStatus as JobStatus
from api_shim.client.models import Priority as Priority
from api_shim.client.models import UtcDatetime as UtcDatetime
from api_shim.client.retrying import BACKOFF_BASE as BACKOFF_BASE
from api_shim.client.retrying import MAX_RETRY_DELAY as MAX_RETRY_DELAY
from api_shim.client.sync_client import ConveyorClient
from api_shim.client.upload_body import CHUNK_SIZE as CHUNK_SIZE
from api_shim.client.upload_body import AsyncBlobData as AsyncBlobData
from api_shim.client.upload_body import BlobData as BlobData

# ``__all__`` is the list the single module had; the constants and type aliases imported
# ``as`` themselves above stay importable by name, as they were.
__all__ = [
    "AsyncBlobStream",
    "AsyncConveyorClient",
    "Attempt",
    "Blob",
    "BlobStream",
    "ConflictError",
    "ConveyorClient",
    "ConveyorConnectionError",
    "ConveyorError",
    "Job",
    "JobError",
    "JobPage",
    "JobSpec",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ServerError",
    "ServiceUnavailableError",
    "Stats",
    "TaskInfo",
    "UnauthorizedError",
    "UnknownTaskError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "WaitTimeoutError",
]
