"""A real STAC archive on 127.0.0.1 for the stac source's tests: a STAC API (landing page, conformance, collection,
/search by GET and POST with paging, items as Earth Search serves them) and a static file server that honours HTTP
Range requests, in one ThreadingHTTPServer; faults (429, 503, a dropped connection) are injected per path. As
Planetary Computer does, it can hand out SAS tokens (GET /api/sas/v1/token/<collection>: {"msft:expiry", "token"}) and
refuse (403) file reads whose query string lacks a token that is still valid."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import secrets
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import shapely

CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


TOKEN_PATH = "/api/sas/v1/token/"  # Planetary Computer's per-collection SAS token endpoint


class Archive:
    """What the server serves: `items` (STAC item dicts of one collection), files under `root` at /files/, the
    faults still to inject per path (a list of 429, 503 or 'drop', used up in order) and the requests seen. With
    `require_token`, a file read needs `sig` of a token from TOKEN_PATH that has not expired (`token_lifetime_s`)."""

    def __init__(self, root: Path, collection: str = "sentinel-2-l2a") -> None:
        self.root, self.collection = root, collection
        self.items: list[dict] = []
        self.faults: dict[str, list] = defaultdict(list)
        self.requests: Counter[str] = Counter()
        self.range_requests: Counter[str] = Counter()
        self.bytes_sent = 0
        self.url = ""
        self.require_token = False
        self.token_lifetime_s = 3600.0
        self.tokens: dict[str, tuple[str, float]] = {}  # sig -> (the whole token, expiry in epoch seconds)
        self.signed_reads: Counter[str] = Counter()  # file reads per sig that was accepted
        self.refused: Counter[str] = Counter()  # file reads refused (403) per path
        self.collections: dict[str, dict] = {}  # served at /collections/<id> and its /items, besides `collection`

    @property
    def token_api(self) -> str:
        """The token endpoint's root (`source.stac_token_api`)."""
        return self.url + TOKEN_PATH.rstrip("/")

    def issue_token(self, collection: str) -> dict:
        """A new SAS token for `collection` as Planetary Computer serves it, expiring `token_lifetime_s` from now
        (rounded up to the second, the precision of `msft:expiry`)."""
        now = time.time()
        expiry = math.ceil(now + self.token_lifetime_s)
        sig = secrets.token_urlsafe(24)
        start, stamp = (dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (now, expiry))
        token = f"st={start}&se={stamp}&sp=rl&sv=2024-05-04&sr=c&skoid={collection}&sig={sig}"
        self.tokens[sig] = (token, expiry)
        return {"msft:expiry": stamp, "token": token}

    def token_valid(self, query: str) -> str | None:
        """The sig of `query` when it carries a token this server issued that has not expired, else None."""
        sig = parse_qs(query).get("sig", [""])[0]
        issued = self.tokens.get(sig)
        return sig if issued is not None and time.time() < issued[1] else None

    def match(self, params: dict) -> list[dict]:
        """The items that a search's `params` (collections, bbox, datetime, query eo:cloud_cover) select."""
        out = []
        box = shapely.box(*params["bbox"]) if params.get("bbox") else None
        start, end = _interval(params.get("datetime"))
        limit = (params.get("query") or {}).get("eo:cloud_cover", {})
        for item in self.items:
            props = item["properties"]
            when = dt.datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
            if params.get("collections") and item["collection"] not in params["collections"]:
                continue
            if box is not None and not shapely.geometry.shape(item["geometry"]).intersects(box):
                continue
            if not start <= when <= end:
                continue
            if "lte" in limit and props["eo:cloud_cover"] > limit["lte"]:
                continue
            out.append(item)
        return out


def _interval(value: str | None) -> tuple[dt.datetime, dt.datetime]:
    """A STAC datetime interval 'a/b' (an end of only dots is open) as aware datetimes."""
    lo, hi = dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC)
    if not value:
        return lo, hi
    a, _, b = value.partition("/")
    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(a) if a.strip(".") else lo), (parse(b) if b.strip(".") else hi)


AUTH_FAILED = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to '
    b"authenticate the request. Make sure the value of Authorization header is formed correctly including the "
    b"signature.</Message></Error>"
)  # Azure Blob Storage's answer to a read without a valid SAS token


def make_handler(archive: Archive) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to `archive`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _fault(self) -> bool:
            """Answer an injected fault for this path, if one is left; True when answered."""
            path = urlparse(self.path).path
            archive.requests[path] += 1
            if not archive.faults.get(path):
                return False
            fault = archive.faults[path].pop(0)
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(2)  # the peer sees the connection reset mid-request
                return True
            self._send(fault, b'{"message": "injected"}', "application/json", {"Retry-After": "0"})
            return True

        def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
                archive.bytes_sent += len(body)

        def _json(self, obj: dict) -> None:
            self._send(200, json.dumps(obj).encode(), "application/geo+json")

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            if self._fault():
                return
            url = urlparse(self.path)
            if url.path.startswith("/files/"):
                return self._file(url.path, url.query)
            if url.path.startswith(TOKEN_PATH):
                return self._json(archive.issue_token(url.path.removeprefix(TOKEN_PATH)))
            if url.path == "/search":
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                params = {
                    "collections": query["collections"].split(",") if "collections" in query else None,
                    "bbox": [float(v) for v in query["bbox"].split(",")] if "bbox" in query else None,
                    "datetime": query.get("datetime"),
                    "query": json.loads(query["query"]) if "query" in query else None,
                    "limit": int(query.get("limit", 10)),
                    "token": query.get("token"),
                }
                return self._search(params, "GET")
            match = re.fullmatch(r"/collections/([^/]+)(/items)?", url.path)
            if match and match.group(1) in archive.collections:
                if not match.group(2):
                    return self._json(archive.collections[match.group(1)])
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                params = {"collections": [match.group(1)], "limit": int(query.get("limit", 10))}
                return self._search(params | {"token": query.get("token")}, "GET")
            return self._api(url.path)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self._fault():
                return
            if urlparse(self.path).path != "/search":
                return self._send(404, b"{}", "application/json")
            self._search(body, "POST")

        def _api(self, path: str) -> None:
            base = archive.url
            if path in ("/", ""):
                return self._json(
                    {
                        "type": "Catalog",
                        "stac_version": "1.0.0",
                        "id": "local-earth-search",
                        "description": "a local STAC API for srpipe's tests",
                        "conformsTo": CONFORMS,
                        "links": [
                            {"rel": "self", "href": f"{base}/", "type": "application/json"},
                            {"rel": "root", "href": f"{base}/", "type": "application/json"},
                            {"rel": "conformance", "href": f"{base}/conformance", "type": "application/json"},
                            {"rel": "data", "href": f"{base}/collections", "type": "application/json"},
                            {
                                "rel": "search",
                                "href": f"{base}/search",
                                "type": "application/geo+json",
                                "method": "GET",
                            },
                            {
                                "rel": "search",
                                "href": f"{base}/search",
                                "type": "application/geo+json",
                                "method": "POST",
                            },
                        ],
                    }
                )
            if path == "/conformance":
                return self._json({"conformsTo": CONFORMS})
            self._send(404, b'{"message": "not found"}', "application/json")

        def _search(self, params: dict, method: str) -> None:
            found = archive.match(params)
            limit = int(params.get("limit") or 10)
            start = int(params.get("token") or 0)
            page = found[start : start + limit]
            links = []
            if start + limit < len(found):
                if method == "POST":
                    body = {**params, "token": str(start + limit)}
                    links.append({"rel": "next", "href": f"{archive.url}/search", "method": "POST", "body": body})
                else:
                    q = f"token={start + limit}&limit={limit}&collections={','.join(params['collections'] or [])}"
                    links.append({"rel": "next", "href": f"{archive.url}/search?{q}", "method": "GET"})
            self._json({"type": "FeatureCollection", "features": page, "links": links, "numberReturned": len(page)})

        def _file(self, path: str, query: str) -> None:
            local = archive.root / path.removeprefix("/files/")
            if not local.is_file():
                return self._send(404, b"not found", "text/plain")
            if archive.require_token:
                sig = archive.token_valid(query)
                if sig is None:
                    archive.refused[path] += 1
                    return self._send(403, AUTH_FAILED, "application/xml")
                archive.signed_reads[sig] += 1
            data = local.read_bytes()
            match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if not match:
                return self._send(200, data, "image/tiff", {"Accept-Ranges": "bytes"})
            archive.range_requests[path] += 1
            first = int(match.group(1))
            last = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if first >= len(data):
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {first}-{last}/{len(data)}"}
            self._send(206, data[first : last + 1], "image/tiff", headers)

    return Handler


class StacServer:
    """The archive served on 127.0.0.1 at a free port, in a thread; a context manager."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(archive))
        archive.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Archive:
        self.thread.start()
        return self.archive

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
