"""Regenerate the typed Python stubs in clients/sendinchat/v1 from protos/sendinchat/v1/*.proto.

Usage: python clients/regenerate_stubs.py [OUTPUT_ROOT]   (default: clients/)

Everything is generated into a temporary directory first and moved into place only when protoc
succeeded, so a failure (a missing plugin, a proto error) leaves the committed stubs as they were.
The protoc plugins (mypy-protobuf) are taken from the running interpreter's own bin directory, so
`.venv/bin/python clients/regenerate_stubs.py` works without an activated venv.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
PACKAGE = Path("sendinchat") / "v1"
DESCRIPTOR_SET = "sendinchat.binpb"
INIT_HEADER = '"""Generated from protos/sendinchat/v1 by clients/regenerate_stubs.py. Do not edit."""\n'
_PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")


def _plugin_flags() -> list[str]:
    bin_dir = Path(sys.executable).parent
    flags = []
    for name in _PLUGINS:
        path = bin_dir / name
        if not path.exists():
            found = shutil.which(name)
            if found is None:
                raise SystemExit(
                    f"{name} not found next to {sys.executable} nor on PATH: pip install -e '.[dev]'"
                )
            path = Path(found)
        flags.append(f"--plugin={name}={path}")
    return flags


def _generate(into: Path) -> None:
    (into / PACKAGE).mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            *_plugin_flags(),
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={into}",
            f"--grpc_python_out={into}",
            f"--mypy_out={into}",
            f"--mypy_grpc_out={into}",
            # With comments, so server reflection (grpcurl describe) can show them.
            "--include_source_info",
            f"--descriptor_set_out={into / PACKAGE / DESCRIPTOR_SET}",
            *protos,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}; nothing was changed")
    (into / PACKAGE / "__init__.py").write_text(INIT_HEADER)
    (into / PACKAGE / "py.typed").write_text("")


def regenerate(output_root: Path) -> list[Path]:
    """Regenerate the stubs under output_root (replacing the old ones only on success)."""
    package_dir = output_root / PACKAGE
    package_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=package_dir.parent, prefix=".regenerate-") as scratch:
        fresh = Path(scratch) / "out"
        _generate(fresh)
        retired = Path(scratch) / "old"
        if package_dir.exists():
            package_dir.rename(retired)
        (fresh / PACKAGE).rename(package_dir)
    if not (output_root / "sendinchat" / "__init__.py").exists():
        (output_root / "sendinchat" / "__init__.py").write_text(INIT_HEADER)
    return sorted(package_dir.iterdir())


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "clients"
    for path in regenerate(root):
        print(path.relative_to(root))
