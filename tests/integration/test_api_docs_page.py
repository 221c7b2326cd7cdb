"""``/docs`` and ``/redoc`` render in a real browser that reaches nothing but the API.

Headless Chromium loads each page from a real ``conveyor api`` and resolves no host name, as
on a machine without internet access; only a Swagger UI or ReDoc whose scripts and styles the
API serves itself renders the operations checked below. A screenshot of each page is kept in
the test's temporary directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import missing_service
from tests.support.api_server import API_KEYS, ApiServer, running_api
from tests.support.browser import CHROMIUM, WINDOW, rendered_dom, screenshot
from tests.support.polling import wait_for
from tests.support.processes import free_port
from tests.support.workers import worker_environment

# Chromium takes a few seconds a page on a quiet machine, several times that on a busy one
pytestmark = pytest.mark.timeout(600)

RENDER_DEADLINE_SECONDS = 300
# a blank or error page has a handful of colours; a rendered one, anti-aliased text
MIN_SCREENSHOT_COLOURS = 200
ANY_URL = re.compile(r"https?://[^\s\"'<>()]+")
JAVASCRIPT = {"text/javascript", "application/javascript"}
ASSET_URL = re.compile(r"(?:src|href)=\"([^\"]+)\"")


@dataclass(frozen=True)
class DocsPage:
    """A documentation page and what only its working renderer puts into the DOM."""

    path: str
    rendered: tuple[str, ...]


PAGES = [
    DocsPage(
        "/docs",
        ('class="title">Conveyor', 'class="opblock opblock-post', 'data-path="/v1/jobs"'),
    ),
    DocsPage(
        "/redoc",
        (">Conveyor <", 'data-section-id="tag/jobs/operation/', ">Enqueue a job<", "/v1/jobs"),
    ),
]


@pytest.fixture(scope="module")
def docs_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real ``conveyor api``. The pages need no workers, ledger rows nor Redis: a fresh
    SQLite file and a Redis address that answers nothing keep it off the shared servers."""
    directory = tmp_path_factory.mktemp("docs-api")
    env = worker_environment(
        env="test",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=f"sqlite:///{directory / 'ledger.db'}",
        storage_dir=str(directory / "blobs"),
        api_keys=API_KEYS,
    )
    with running_api(env, directory / "api.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chromium's profile directory for this module; fails in CI where Chromium is missing."""
    if not CHROMIUM.exists():
        missing_service(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return tmp_path_factory.mktemp("chromium-profile")


@pytest.mark.parametrize("page", PAGES, ids=[page.path for page in PAGES])
def test_the_page_renders_the_operations_offline(
    docs_api: ApiServer, browser_profile: Path, page: DocsPage, tmp_path: Path
) -> None:
    url = f"{docs_api.base_url}{page.path}"

    def rendered() -> str | None:
        dom = rendered_dom(url, browser_profile)
        return dom if all(marker in dom for marker in page.rendered) else None

    wait_for(rendered, timeout=RENDER_DEADLINE_SECONDS, interval=1, what=f"{url} to render")

    def detailed_screenshot() -> Image.Image | None:
        image = Image.open(screenshot(url, browser_profile, tmp_path / "page.png"))
        colours = image.convert("RGB").getcolors(maxcolors=WINDOW[0] * WINDOW[1])
        return image if colours and len(colours) >= MIN_SCREENSHOT_COLOURS else None

    image = wait_for(
        detailed_screenshot, timeout=RENDER_DEADLINE_SECONDS, interval=1, what=f"{url} to show"
    )
    assert (image.format, image.size) == ("PNG", WINDOW)


@pytest.mark.parametrize("page", PAGES, ids=[page.path for page in PAGES])
def test_the_page_names_no_other_host(docs_api: ApiServer, page: DocsPage) -> None:
    with httpx.Client(base_url=docs_api.base_url, timeout=30) as client:
        html = client.get(page.path)
        elsewhere = [
            url for url in ANY_URL.findall(html.text) if not url.startswith(docs_api.base_url)
        ]
        # checked before any asset is fetched, so the test itself never leaves the host
        assert elsewhere == []
        assets = {url: client.get(url).status_code for url in ASSET_URL.findall(html.text)}
    assert html.status_code == 200
    assert assets, "the page loads its scripts from the API"
    assert assets == dict.fromkeys(assets, 200)


def test_the_assets_are_served_with_their_types(docs_api: ApiServer) -> None:
    with httpx.Client(base_url=f"{docs_api.base_url}/docs/assets", timeout=30) as client:
        types = {
            name: client.get(name).headers["content-type"].split(";")[0]
            for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
        }
        favicon = client.get("favicon.png")
        missing = client.get("nothing-here.js")
        folder = client.get("")
    # the type of .js comes from the system's MIME table: either name is a script to browsers
    assert types["swagger-ui-bundle.js"] in JAVASCRIPT
    assert types["redoc.standalone.js"] in JAVASCRIPT
    assert types["swagger-ui.css"] == "text/css"
    assert favicon.headers["content-type"] == "image/png"
    assert favicon.content.startswith(b"\x89PNG")
    for refused in (missing, folder):
        assert refused.status_code == 404
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["code"] == "not_found"
        assert refused.headers["x-request-id"]
