"""The committed descriptor set (ctrlgan/serve/proto/inference.desc) is what inference.proto
compiles to: regenerate it with grpc_tools' protoc and compare."""

import pytest
from google.protobuf import descriptor_pb2

from tests.serve.conftest import ROOT

PROTO = ROOT / "ctrlgan" / "serve" / "proto"


def test_descriptor_set_matches_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "inference.desc"
    code = protoc.main(["protoc", f"--proto_path={PROTO}", f"--descriptor_set_out={out}",
                        "inference.proto"])  # fmt: skip
    assert code == 0
    committed = (PROTO / "inference.desc").read_bytes()
    if out.read_bytes() != committed:  # name the difference, not just the bytes
        fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        old = descriptor_pb2.FileDescriptorSet.FromString(committed)
        assert fresh == old, "inference.desc is stale: regenerate it from inference.proto"
        pytest.fail("inference.desc encodes the same descriptors differently; regenerate it")


def test_service_is_the_oip_v2_one():
    from ctrlgan.serve.grpc import MESSAGES

    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelInfer"} <= set(MESSAGES)  # fmt: skip
