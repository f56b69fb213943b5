"""Hypothesis against the running server: corrupted infer bodies, random PNG queries, random
paths and methods. Never a 5xx, every answer JSON (an error naming something, or a success),
and the server healthy afterwards (its log holds no traceback: checked when it stops)."""

import copy
import json
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.wire import infer_body

FUZZ = settings(max_examples=70, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck))  # fmt: skip

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["INT64", "UINT64", "FP32", "FP16", "BOOL", "UINT8", "classes", "seeds",
                     "steer", "truncation", "image", "image_uint8"]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)  # fmt: skip

FIELDS = [
    ("id",), ("parameters",), ("parameters", "binary_data_output"), ("parameters", "timeout"),
    ("inputs",), ("outputs",), ("outputs", 0, "name"), ("outputs", 0, "parameters"),
    *[("inputs", i, key) for i in range(4) for key in ("name", "datatype", "shape", "data",
                                                        "parameters")],
]  # fmt: skip


def base() -> dict:
    return infer_body([1, 2], [3, 4], truncation=[0.5, 0.5], steer=[[1, 0, 0], [0, 1, 0]],
                      outputs=[{"name": "image_uint8"}])  # fmt: skip


def at(http, target: str) -> httpx.URL:
    """The URL of a raw request target (a path like //v2 stays a path)."""
    return http.base_url.copy_with(raw_path=target.encode("ascii"))


def assert_answer(r, *ok_types):
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])
    assert "Traceback" not in r.text
    kind = r.headers.get("content-type", "")
    if r.status_code >= 400:
        assert kind == "application/json"
        assert isinstance(r.json()["error"], str), r.text
    elif r.status_code != 304:
        assert kind.startswith(("application/json", *ok_types)), kind
        if kind == "application/json":
            r.json()


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), values, st.booleans()), min_size=1,
                      max_size=4))  # fmt: skip
def test_infer_bodies(http, edits):
    doc = base()
    for path, value, delete in edits:
        target = doc
        for key in path[:-1]:
            if (isinstance(target, dict) and key in target) or (
                isinstance(target, list) and isinstance(key, int) and key < len(target)
            ):
                target = target[key]
            else:
                target = None
                break
        if isinstance(target, dict):
            if delete:
                target.pop(path[-1], None)
            else:
                target[path[-1]] = copy.deepcopy(value)
        elif isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target):
            target[path[-1]] = copy.deepcopy(value)
    body = json.dumps(doc, allow_nan=True).encode()
    r = http.post("/v2/models/digits/infer", content=body)
    assert_answer(r, "application/octet-stream")


query_values = st.one_of(
    st.sampled_from(["0", "1", "9", "10", "-1", "all", "0-3", "3-1", "1,2", "nan", "inf", "0.5",
                     "2", "4", "slerp", "lerp", "both", "noise", "class", "5:3", "9:7", "x:y",
                     "thickness:1.5", "slant:-1,size:2", "size:nan", "18446744073709551615",
                     "18446744073709551616", ""]),
    st.text(max_size=10), st.integers(-10, 300).map(str),
)  # fmt: skip
query_keys = st.sampled_from(
    [
        "class",
        "classes",
        "seed",
        "seeds",
        "truncation",
        "steer",
        "scale",
        "padding",
        "from",
        "to",
        "steps",
        "method",
        "vary",
        "colour",
        "",
    ]
)


@FUZZ
@given(route=st.sampled_from(["image.png", "grid.png", "interpolate.png"]),
       params=st.lists(st.tuples(query_keys, query_values), max_size=5),
       raw=st.one_of(st.none(), st.text(max_size=20)))  # fmt: skip
def test_png_queries(http, route, params, raw):
    if raw is not None:
        target = quote(f"/v1/models/digits/{route}?{raw}", safe="/?=&%+,:;")
        r = http.get(at(http, target))
    else:
        r = http.get(f"/v1/models/digits/{route}", params=params)
    assert_answer(r, "image/png")


segments = st.one_of(
    st.sampled_from(["v2", "v1", "models", "digits", "cats", "versions", "1", "2", "ready",
                     "infer", "health", "live", "image.png", "grid.png", "sample", "metrics",
                     "openapi.json", "", "..", "%00", "%2F"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8),
)  # fmt: skip


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       parts=st.lists(segments, max_size=6),
       body=st.one_of(st.none(), st.binary(max_size=64)))  # fmt: skip
def test_paths_and_methods(http, method, parts, body):
    path = "/" + "/".join(quote(p, safe="%") for p in parts)
    r = http.request(method, at(http, path), content=body)
    if method == "HEAD":
        assert r.status_code < 500 and r.content == b""
    else:
        assert_answer(r, "image/png", "text/plain", "text/html", "text/javascript", "text/css")


def test_healthy_after(http):
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.post("/v2/models/digits/infer", json=base()).status_code == 200
