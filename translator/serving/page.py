"""The web page at `/`: try the served model in a browser.

Plain HTML, CSS and JavaScript shipped as package data in `translator/serving/static/` (no build
step, nothing fetched from other hosts: the page works offline). The script reads `/v1/info`
(languages, beam sizes, attention, limits) and calls `/v1/translate` and, for an attention model,
`/v1/attention`; it writes every text with `textContent`, never as markup. The files are read
once, when the app is created, and sent with a Content-Security-Policy that allows scripts,
styles, images and requests from this server only, no inline script, and (Trusted Types) no
string assigned to `innerHTML` or any other HTML sink.
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

# name under /static/ -> media type; the page is index.html at /
FILES = {
    "index.html": "text/html; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def files() -> dict[str, bytes]:
    """The page's files by name, read from the package once."""
    static = resources.files("translator.serving") / "static"
    return {name: (static / name).read_bytes() for name in FILES}


def _file(name: str) -> Response:
    return Response(files()[name], media_type=FILES[name], headers=HEADERS)


@router.get("/")
async def index() -> Response:
    """The page."""
    return _file("index.html")


@router.get("/static/page.js")
async def script() -> Response:
    return _file("page.js")


@router.get("/static/page.css")
async def style() -> Response:
    return _file("page.css")


@router.get("/static/icon.svg")
async def icon() -> Response:
    return _file("icon.svg")
