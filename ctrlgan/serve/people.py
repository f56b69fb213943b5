"""The /v1 endpoints, for people and pages: PNGs from a URL, and a JSON sample call.

    GET /v1/models/{m}/image.png?class=3&seed=7&truncation=0.7&steer=thickness:1.5,slant:-1&scale=4
        (&class2=8&mix=0.3: the class mix (1 - mix) e(3) + mix e(8))
    GET /v1/models/{m}/grid.png?classes=0-9&seeds=0-7        one row per class, one column per seed
    GET /v1/models/{m}/interpolate.png?from=5:3&to=9:7&steps=8&method=slerp&vary=both
    POST /v1/models/{m}/sample   {"classes": [3, 5], "seeds": [7, 8], "steer": {...},
                                  "truncation": 0.7, "format": "png" | "uint8", "scale": 1}

An image is a function of its request, so a PNG's ETag is a hash of the model's checksum and
the canonical form of its query, sent with a year-long ``Cache-Control``; ``If-None-Match``
with that tag is answered 304 without computing anything. Samples go through the model's
batcher (so they share batches with OIP requests and give the same bytes); interpolation and
PNG encoding run on the app's worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from urllib.parse import parse_qsl

import numpy as np

from ctrlgan import validate
from ctrlgan.errors import InvalidRequest, Overloaded
from ctrlgan.images import make_grid, to_uint8
from ctrlgan.runtime import request as req
from ctrlgan.serve.protocol import ProtocolError, bad

PNG_ROUTES = ("image.png", "grid.png", "interpolate.png")
QUERY = {
    "image.png": ("class", "seed", "class2", "mix", "truncation", "steer", "scale"),
    "grid.png": ("classes", "seeds", "truncation", "steer", "scale", "padding"),
    "interpolate.png": ("from", "to", "steps", "method", "vary", "truncation", "scale",
                        "padding"),
}  # fmt: skip
MAX_SCALE = 32
MAX_PNG_PIXELS = 1 << 24  # 4096 x 4096: a page's image, encoded in well under a second
# an image is a function of its URL: cache it for a year; behind an API key only privately (a
# shared cache must not hand an authenticated answer to anyone)
CACHE = [(b"cache-control", b"public, max-age=31536000, immutable")]
PRIVATE = [(b"cache-control", b"private, max-age=31536000, immutable")]
SAMPLE_FIELDS = ("classes", "seeds", "n", "seed", "steer", "truncation", "format", "scale")


def query(scope, route: str) -> dict[str, str]:
    text = scope.get("query_string", b"").decode("latin-1")
    if len(text) > 8192:
        raise bad("query: longer than 8192 characters")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          max_num_fields=32)  # fmt: skip
    except ValueError as e:
        raise bad(f"query: {str(e)[:80]}") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in QUERY[route]:
            raise bad(f"{key[:40]}: unknown parameter; {route} takes {', '.join(QUERY[route])}")
        if key in out:
            raise bad(f"{key}: given twice")
        out[key] = value
    return out


def number(params: dict, key: str, default, lo: int, hi: int) -> int:
    text = params.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(key, f"expected an integer, got {text[:40]!r}") from None
    return validate.integer(value, key, lo, hi)


def real(params: dict, key: str):
    text = params.get(key)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(key, f"expected a number, got {text[:40]!r}") from None


def steering(text: str | None) -> dict[str, float] | None:
    """'thickness:1.5,slant:-1' -> {'thickness': 1.5, 'slant': -1.0} (ranges: the runtime's)."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition(":")
        try:
            alpha = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InvalidRequest("steer", f"expected name:alpha[,name:alpha], got {item[:40]!r}")
        out[name] = alpha
    return out


def etag(model, route: str, params: dict) -> bytes:
    canonical = json.dumps([model.checksum, route, sorted(params.items())])
    return b'"' + hashlib.sha256(canonical.encode()).hexdigest()[:32].encode() + b'"'


async def png(app, model, route: str, scope, headers) -> tuple[int, bytes, list]:
    params = query(scope, route)
    tag = etag(model, route, params)
    cache = CACHE if app.key is None else PRIVATE
    if not_modified(headers.get(b"if-none-match"), tag):
        return 304, b"", [(b"etag", tag), *cache]
    scale = number(params, "scale", 1, 1, MAX_SCALE)
    padding = number(params, "padding", 2, 0, 64)
    tau = real(params, "truncation")
    steer = steering(params.get("steer"))
    if route == "image.png":
        cls = req.class_spec(params.get("class", "0"), model.classes, "class")
        if len(cls) != 1:
            raise InvalidRequest("class", "one class per image; use grid.png for several")
        seed = number(params, "seed", 0, 0, validate.MAX_SEED - 1)
        classes = cls
        if params.get("class2"):  # a class mix: (1 - mix) e(class) + mix e(class2)
            other = _one_class(params["class2"], model, "class2")
            mix = real(params, "mix")
            mix = 0.5 if mix is None else validate.real(mix, "mix", 0.0, 1.0)
            classes = [(cls[0], other, mix)]
        elif "mix" in params:
            raise InvalidRequest("mix", "needs class2, the class to mix with")
        nrow, padding = 1, 0
        check_size(model, 1, nrow, scale, padding)
        images = await model.batcher.asample(
            classes=classes, seeds=[seed], steer=steer, truncation=tau,
            timeout=app.request_timeout,
        )  # fmt: skip
    elif route == "grid.png":
        classes = req.class_spec(params.get("classes", "all"), model.classes, "classes")
        seeds = req.parse_seed_string(params.get("seeds", "0-7"), limit=model.max_images)
        count = len(classes) * len(seeds)
        if count > model.max_images:
            raise InvalidRequest(
                "seeds", f"{len(classes)} classes x {len(seeds)} seeds = {count} images exceed "
                f"this server's limit {model.max_images}",
            )  # fmt: skip
        nrow = len(seeds)
        check_size(model, count, nrow, scale, padding)
        images = await model.batcher.asample(
            classes=np.repeat(classes, len(seeds)).tolist(), seeds=seeds * len(classes),
            steer=steer, truncation=tau, timeout=app.request_timeout,
        )  # fmt: skip
    else:
        start = req.seed_class(params.get("from", "0:0"), "from")
        end = req.seed_class(params.get("to", "1:0"), "to")
        steps = number(params, "steps", 8, 2, min(256, model.max_images))
        method = params.get("method", "slerp")
        vary = params.get("vary", "both")
        points = [(seed, _one_class(cls, model, key)) for (seed, cls), key in
                  ((start, "from"), (end, "to"))]  # fmt: skip
        nrow = steps
        check_size(model, steps, nrow, scale, padding)
        images = await run(app, lambda: model.generator.interpolate(
            points[0], points[1], steps, method=method, vary=vary, truncation=tau))  # fmt: skip
    body = await run(app, lambda: encode_png(images, nrow, scale, padding))
    return 200, body, [(b"content-type", b"image/png"), (b"etag", tag), *cache]


def not_modified(header: bytes | None, tag: bytes) -> bool:
    """If-None-Match (RFC 9110): "*", or a list of tags compared weakly (W/ ignored)."""
    if header is None:
        return False
    tags = [t.strip().removeprefix(b"W/") for t in header.split(b",")]
    return b"*" in tags or tag in tags


def _one_class(text: str, model, field: str) -> int:
    classes = req.class_spec(text, model.classes, field)
    if len(classes) != 1:
        raise InvalidRequest(field, "one class per end point")
    return classes[0]


async def run(app, work):
    """``work()`` on the app's worker threads; 429 when they are all taken and a queue waits."""
    if app.pool_busy >= app.pool_limit:
        raise Overloaded("every worker is busy; retry later")
    app.pool_busy += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(app.pool, work)
    finally:
        app.pool_busy -= 1


def check_size(model, count: int, nrow: int, scale: int, padding: int) -> None:
    """The PNG of ``count`` images, ``nrow`` per row, fits MAX_PNG_PIXELS: checked before
    anything is computed (a short URL could otherwise ask for gigapixels)."""
    _, h, w = model.image_shape
    cols = min(nrow, count)
    rows = -(-count // cols)
    height = (rows * (h + padding) + padding) * scale
    width = (cols * (w + padding) + padding) * scale
    if height * width > MAX_PNG_PIXELS:
        raise InvalidRequest(
            "scale", f"a {width}x{height} PNG exceeds this server's {MAX_PNG_PIXELS:,} pixels; "
            "lower the scale, the padding or the number of images",
        )  # fmt: skip


def encode_png(images: np.ndarray, nrow: int, scale: int, padding: int) -> bytes:
    from PIL import Image

    grid = make_grid(images, nrow=nrow, padding=padding)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    out = io.BytesIO()
    Image.fromarray(grid).save(out, format="PNG")
    return out.getvalue()


async def sample_json(app, model, body: bytes) -> tuple[int, bytes, list]:
    """POST /v1/models/{m}/sample: the fields of Generator.sample in, images out."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise bad(f"body: not valid JSON ({str(e)[:120]})") from None
    if not isinstance(doc, dict):
        raise bad("body: a JSON object with the fields of Generator.sample")
    unknown = sorted(set(doc) - set(SAMPLE_FIELDS))
    if unknown:
        raise bad(f"{unknown[0][:40]}: unknown field; known: {', '.join(SAMPLE_FIELDS)}")
    kind = doc.get("format", "png")
    if kind not in ("png", "uint8"):
        raise InvalidRequest("format", f"must be png or uint8, got {validate.show(kind)}")
    scale = validate.integer(doc.get("scale", 1), "scale", 1, MAX_SCALE)
    seeds, n = doc.get("seeds"), doc.get("n")
    rows = model.generator.prepare(
        doc.get("classes"), seeds, n=n, seed=doc.get("seed", 0), steer=doc.get("steer"),
        truncation=doc.get("truncation"),
    )  # fmt: skip
    if len(rows) > model.max_images:
        raise InvalidRequest(
            "seeds", f"{len(rows)} images exceed this server's limit {model.max_images}"
        )
    images = await model.batcher.asample(
        doc.get("classes"), seeds, n=n, seed=doc.get("seed", 0), steer=doc.get("steer"),
        truncation=doc.get("truncation"), timeout=app.request_timeout,
    )  # fmt: skip
    if kind == "png":
        check_size(model, 1, 1, scale, 0)

    def encode() -> bytes:  # on a worker thread: a thousand images are ~100 ms of Python
        if kind == "png":
            pngs = [encode_png(im[None], 1, scale, 0) for im in images]
            out = {"model": model.name, "format": "png",
                   "images": [base64.b64encode(p).decode() for p in pngs]}  # fmt: skip
        else:
            u8 = to_uint8(images)
            out = {"model": model.name, "format": "uint8", "shape": list(u8.shape),
                   "images": u8.tolist()}  # fmt: skip
        return json.dumps(out, separators=(",", ":")).encode()

    body = await run(app, encode)
    return 200, body, [(b"content-type", b"application/json")]


__all__ = ["PNG_ROUTES", "ProtocolError", "png", "sample_json"]
