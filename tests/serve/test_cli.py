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
