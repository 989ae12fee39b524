"""Regenerate the typed Python stubs in clients/sendinchat/v1 from protos/sendinchat/v1/*.proto.

Usage: python clients/regenerate_stubs.py [OUTPUT_ROOT]   (default: clients/)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
PACKAGE = Path("sendinchat") / "v1"
DESCRIPTOR_SET = "sendinchat.binpb"
INIT_HEADER = '"""Generated from protos/sendinchat/v1 by clients/regenerate_stubs.py. Do not edit."""\n'


def regenerate(output_root: Path) -> list[Path]:
    """Wipe and regenerate the stubs under output_root; return the files written."""
    package_dir = output_root / PACKAGE
    package_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*package_dir.glob("*_pb2*"), package_dir / DESCRIPTOR_SET]:
        stale.unlink(missing_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={output_root}",
            f"--grpc_python_out={output_root}",
            f"--mypy_out={output_root}",
            f"--mypy_grpc_out={output_root}",
            # With comments, so server reflection (grpcurl describe) can show them.
            "--include_source_info",
            f"--descriptor_set_out={package_dir / DESCRIPTOR_SET}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    if not (output_root / "sendinchat" / "__init__.py").exists():
        (output_root / "sendinchat" / "__init__.py").write_text(INIT_HEADER)
    (package_dir / "__init__.py").write_text(INIT_HEADER)
    (package_dir / "py.typed").write_text("")
    return sorted(package_dir.iterdir())


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "clients"
    for path in regenerate(root):
        print(path.relative_to(root))
