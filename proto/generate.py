"""Regenerate src/secrobust/transport/grpc/secrobust_pb2*.py from proto/secrobust.proto.

Run from the repository root with the project's venv: ``.venv/bin/python proto/generate.py``, with
grpcio-tools 1.76.0 (``pip install grpcio-tools==1.76.0``): its code loads on protobuf 6 and 7; a newer
grpcio-tools emits code that needs protobuf 7, which Flower 1.42 (the ``flower`` extra) refuses.
The generated gRPC module imports its sibling with a package-relative import.
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "secrobust" / "transport" / "grpc"


def main() -> int:
    rc = protoc.main(["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={OUT}", f"--pyi_out={OUT}",
                      f"--grpc_python_out={OUT}", str(ROOT / "proto" / "secrobust.proto")])
    if rc != 0:
        return rc
    stub = OUT / "secrobust_pb2_grpc.py"
    stub.write_text(re.sub(r"^import secrobust_pb2 as", "from . import secrobust_pb2 as", stub.read_text(), flags=re.M))
    return 0


if __name__ == "__main__":
    sys.exit(main())
