"""Generate the Python stubs of the wire contract: ``python -m cumulus.rpc.codegen [--check]``.

The contract lives in ``proto/cumulus/v1/*.proto``; the stubs are written to ``cumulus/rpc/generated/v1/`` and are
never edited by hand. ``--check`` regenerates into a temporary directory and exits 1 (listing the files) when the
committed stubs differ, so CI fails on a stale contract. Needs ``grpcio-tools`` (the ``dev``/``test`` extras).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto" / "cumulus"
PACKAGE_DIR = ROOT / "cumulus" / "rpc" / "generated"
# protoc's virtual path "cumulus/rpc/generated" maps onto proto/cumulus, so the generated modules import each other
# as cumulus.rpc.generated.v1.* while the .proto files keep the layout proto/cumulus/v1/.
VIRTUAL_ROOT = "cumulus/rpc/generated"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Run protoc into ``out_root``; return the generated files (relative to ``out_root``)."""
    from grpc_tools import protoc  # imported here: only needed by developers, not at run time

    import grpc_tools

    protos = sorted(PROTO_DIR.glob("v1/*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{VIRTUAL_ROOT}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{VIRTUAL_ROOT}/{p.relative_to(PROTO_DIR)}" for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see its message above)")
    written = (out_root / VIRTUAL_ROOT).rglob("*")
    return sorted(p.relative_to(out_root) for p in written if p.name.endswith(GENERATED_SUFFIXES))


def stale_files() -> list[str]:
    """Generated files that differ from (or are missing in) the committed package; empty when up to date."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for rel in fresh:
            committed = ROOT / rel
            if not committed.exists() or not filecmp.cmp(Path(tmp) / rel, committed, shallow=False):
                stale.append(str(rel))
        expected = {str(rel) for rel in fresh}
        for existing in PACKAGE_DIR.rglob("*"):
            rel = str(existing.relative_to(ROOT))
            if existing.name.endswith(GENERATED_SUFFIXES) and rel not in expected:
                stale.append(f"{rel} (no longer generated)")
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cumulus.rpc.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("generated stubs are stale; run `python -m cumulus.rpc.codegen`:", *stale, sep="\n  ")
            return 1
        print("generated stubs are up to date")
        return 0
    for rel in generate(ROOT):
        print("wrote", rel)
    for init in (PACKAGE_DIR / "__init__.py", PACKAGE_DIR / "v1" / "__init__.py"):
        if not init.exists():
            init.write_text('"""Generated from proto/cumulus/v1 by `python -m cumulus.rpc.codegen`. Do not edit."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
