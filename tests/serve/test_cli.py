"""`ctrlgan serve` as a command (ctrlgan/cli/serve.py): help, and every bad flag refused with one
line on stderr and exit status 2, before anything listens."""

import os
import stat

import pytest

from ctrlgan.cli import serve
from tests.test_cli import assert_one_line_error, run


def test_help(capsys):
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0
    for flag in ("--port", "--grpc-port", "--no-grpc", "--max-queue", "--api-key-file",
                 "--drain-timeout", "--request-timeout", "--max-body-mb", "MODEL"):  # fmt: skip
        assert flag in out


@pytest.mark.parametrize(
    "argv, words",
    [(["--port", "70000"], ["port"]), (["--port", "-1"], ["port"]),
     (["--grpc-port", "65536"], ["grpc-port"]), (["--port", "9000", "--grpc-port", "9000"],
                                                 ["grpc-port", "differ"]),
     (["--max-body-mb", "0"], ["max-body-mb"]), (["--drain-timeout", "-1"], ["drain-timeout"]),
     (["--api-key-file", "/nonexistent/key"], ["api-key-file", "cannot read"]),
     (["cats"], ["cats"]), (["--max-images", "0"], ["max-images"]),
     (["--request-timeout", "0"], ["request-timeout"]), (["--max-queue", "0"], ["max-queue"]),
     (["--max-batch-size", "0"], ["max-batch-size"]), (["--threads", "999"], ["threads"]),
     (["--max-delay-ms", "-1"], ["max-delay-ms"]), (["--max-body-mb", "0.0001"], ["max-body-mb"])],
)  # fmt: skip
def test_bad_flags(capsys, argv, words):
    code, out, err = run(capsys, "serve", *argv)
    assert_one_line_error(code, err, "ctrlgan serve: error:", *words)
    assert "listening" not in out and "HTTP" not in out


def test_port_is_an_int(capsys):
    code, _, err = run(capsys, "serve", "--port", "http")
    assert code == 2 and "--port" in err


def test_key_file_a_directory(capsys, tmp_path):
    code, _, err = run(capsys, "serve", "--api-key-file", str(tmp_path))
    assert_one_line_error(code, err, "api-key-file", "cannot read")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_file(capsys, tmp_path):
    key = tmp_path / "key"
    key.write_text("secret")
    key.chmod(0)
    code, _, err = run(capsys, "serve", "--api-key-file", str(key))
    key.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert_one_line_error(code, err, "api-key-file", "cannot read")


@pytest.mark.parametrize("content", ["", "   \n", "two words", "k\x01ey", "é"])
def test_bad_key_file(capsys, tmp_path, content):
    key = tmp_path / "key"
    key.write_text(content)
    code, _, err = run(capsys, "serve", "--api-key-file", str(key))
    assert_one_line_error(code, err, "api-key-file")


def test_key_from_file_or_environment(tmp_path, monkeypatch):
    key = tmp_path / "key"
    key.write_text("  abc123  \n")
    monkeypatch.setenv(serve.KEY_ENV, "from-env")
    assert serve.api_key(str(key)) == "abc123"  # the file wins
    assert serve.api_key(None) == "from-env"
    monkeypatch.setenv(serve.KEY_ENV, "")
    assert serve.api_key(None) is None


def test_play_serves_the_page_and_prints_its_url(tmp_path):
    """`ctrlgan play --port 0`: the page's real URL on stdout, the page and the API there (no
    gRPC), and SIGTERM stops it with status 0."""
    import re
    import signal
    import subprocess
    import sys
    import time

    import httpx

    log = tmp_path / "play.log"
    argv = [sys.executable, "-m", "ctrlgan", "play", "digits", "--backend", "onnxruntime",
            "--port", "0"]  # fmt: skip
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"page  (\S+)", log.read_text()) and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        out = log.read_text()
        url = re.search(r"page  (http://127\.0\.0\.1:\d+/)", out).group(1)
        assert "gRPC" not in out
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="image"' in page.text
        assert (
            httpx.get(f"{url}static/app.js").headers["content-type"].startswith("text/javascript")
        )
        assert httpx.get(f"{url}v1/models").json()["models"][0]["name"] == "digits"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_play_help(capsys):
    code, out, _ = run(capsys, "play", "--help")
    assert code == 0 and "--open" in out and "--port" in out
