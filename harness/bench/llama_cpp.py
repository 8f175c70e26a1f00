"""llama.cpp as a benchmark peer: `llama-batched-bench` in its shared-prompt mode (`-pps`).

What it measures. For each n, one process of `llama-batched-bench` computes a prompt of P random
tokens once (sequence 0), copies that KV to sequences 1..n-1 (`llama_memory_seq_cp`), then decodes
M tokens for all n sequences together, one batch of n tokens per step. This is the shape of our
self-consistency fork (prefill once, n samples from it), on llama.cpp's CPU backend with the same
weights in two forms: the Q4_1 GGUF the preset ships, and an F32 GGUF of exactly those weights
(dequantised by `llama-quantize --allow-requantize ... F32`, checked tensor by tensor against the
`gguf` package's own dequantisation). Reported per n: the prompt and decode seconds as the tool
times them, and tokens/s = n*M generated tokens / (prompt s + decode s).

Trade-offs and what the numbers leave out.
- The tokens are random ids and no sampling happens (llama-batched-bench computes logits and drops
  them): this is engine throughput, not a generation; there is no EOS, every sequence runs M tokens.
- Without `-kvu` (the default here) every sequence has its own KV stream, so the prompt's KV is
  physically copied n-1 times; the copy, and the one dummy token it decodes to apply it, fall between
  the tool's two timers and are in neither prompt_s nor decode_s. With `kv_unified=True` the prompt's
  cells are shared (no copy), but each token then attends over the whole unified cache (masked).
- Model load, the tool's 16-token warm-up and process start are outside the timings.
- llama.cpp's own "S t/s" column counts the shared prompt once plus the generated tokens; it is kept
  in each row as `llama_speed` but the headline tokens/s counts generated tokens only.
- The binaries are built from the llama-cpp-python sdist's vendored llama.cpp (a pinned version,
  sha256-checked), once per machine, with -march=native (GGML_NATIVE): a cache copied to a different
  CPU is rebuilt.

Layout under $HARNESS_CACHE/llama.cpp/<llama-cpp-python version>/:
    bin/            llama-batched-bench, llama-quantize (statically linked against llama/ggml)
    build.json      version, sdist sha256, cmake flags, compiler, build seconds (written last)
    build.log       the last build's cmake/compiler output
    gguf/           converted GGUFs (<name>.F32.gguf and a .json sidecar naming its source)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from harness import HarnessError
from harness.models.cache import file_lock

SCHEMA = "reasoning-harness/bench-llama-cpp/1"
BUILD_FORMAT = 1

# The sdist whose vendor/llama.cpp is built: pinned, so that a cached build and a report name one source.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

TARGETS = ("llama-batched-bench", "llama-quantize")
# Read off the vendored tree's CMakeLists (llama.cpp 0.5.0-dev): LLAMA_CURL is deprecated there and
# ignored (HTTP goes through cpp-httplib, whose only outside dependency is OpenSSL, switched off here);
# the server, examples, tests and the unified app are not configured at all, so nothing fetches web-UI
# assets; static libraries make bin/ self-contained.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)
BATCH, UBATCH = 2048, 512  # llama.cpp's own defaults for -b / -ub, passed explicitly so the report names them
QUANT_NAME = re.compile(r"^(F32|F16|BF16|I?Q\d[A-Z0-9_]*)$")

Log = Callable[[str], None]


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def llama_cpp_root() -> Path:
    from harness.models.cache import cache_root

    return cache_root() / "llama.cpp"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cpu_model() -> str:
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------------
# Build


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def read_build(final: Path, version: str = LLAMA_CPP_PYTHON_VERSION) -> dict[str, Any] | None:
    """build.json of a complete build that matches this module's source pin, flags and this CPU, else None."""
    try:
        b = json.loads((final / "build.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(b, dict) or b.get("format") != BUILD_FORMAT or b.get("llama_cpp_python") != version:
        return None
    if b.get("cmake_flags") != list(CMAKE_FLAGS) or b.get("targets") != list(TARGETS) or b.get("cpu") != _cpu_model():
        return None
    for name, size in (b.get("binaries") or {}).items():
        f = final / "bin" / name
        if not f.is_file() or f.stat().st_size != size or not os.access(f, os.X_OK):
            return None
    return b if set(b.get("binaries") or ()) == set(TARGETS) else None


def _tail(log_path: Path, n: int = 1) -> str:
    """The last meaningful line(s) of a log: an error line if there is one near the end."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    recent = lines[-60:]
    errs = [ln for ln in recent if re.search(r"\berror\b|Error|FAILED|fatal", ln)]
    pick = (errs or recent)[-n:]
    return " | ".join(ln[:200] for ln in pick)


def _run_step(step: str, cmd: list[str], log_path: Path, log: Log, cwd: Path | None = None) -> float:
    """Run one build step, its output appended to log_path; its seconds, or a one-line HarnessError."""
    with open(log_path, "a") as lf:
        lf.write(f"\n$ {' '.join(cmd)}\n")
        lf.flush()
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=cwd, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise HarnessError(f"llama.cpp build failed at step {step!r}: cannot run {cmd[0]}: {e}") from None
        dt = time.perf_counter() - t0
        lf.write(f"[{step}: exit {r.returncode} after {dt:.1f} s]\n")
    if r.returncode != 0:
        raise HarnessError(f"llama.cpp build failed at step {step!r} (exit {r.returncode}); log: {log_path}; "
                           f"last: {_tail(log_path) or '(no output)'}")
    log(f"[llama.cpp] {step}: {dt:.1f} s")
    return dt


def _first_line(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (r.stdout or r.stderr).strip().splitlines()
    return out[0].strip() if out else None


def _check_tools() -> dict[str, str]:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise HarnessError("llama.cpp build failed at step 'check tools': cmake not found on PATH "
                           "(install cmake >= 3.14, e.g. apt-get install cmake or pip install cmake)")
    ver = _first_line([cmake, "--version"]) or ""
    m = re.search(r"(\d+)\.(\d+)", ver)
    if not m or (int(m.group(1)), int(m.group(2))) < (3, 14):
        raise HarnessError(f"llama.cpp build failed at step 'check tools': llama.cpp needs cmake >= 3.14, {cmake} says {ver!r}")
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    cxx = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")
    if cc is None or cxx is None:
        missing = " and ".join(n for n, p in (("a C compiler (cc/gcc)", cc), ("a C++ compiler (c++/g++)", cxx)) if p is None)
        raise HarnessError(f"llama.cpp build failed at step 'check tools': {missing} not found on PATH "
                           "(install gcc/g++ >= 9, e.g. apt-get install build-essential)")
    ninja = shutil.which("ninja")
    return {"cmake": cmake, "cmake_version": ver, "cc": cc, "cxx": cxx,
            "compiler": _first_line([cxx, "--version"]) or cxx, "generator": "Ninja" if ninja else "Unix Makefiles"}


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


def _extract_llama_cpp(sdist: Path, dest: Path, version: str) -> Path:
    """Extract only vendor/llama.cpp from the sdist into dest; its path. Members that would leave dest
    (absolute paths, '..', links pointing out) are refused."""
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    dest = dest.resolve()
    with tarfile.open(sdist, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
        names = {m.name for m in members}
        for need in ("CMakeLists.txt", "tools/batched-bench/batched-bench.cpp", "tools/quantize/quantize.cpp"):
            if prefix + need not in names:
                raise HarnessError(f"llama.cpp build failed at step 'verify': {sdist.name} has no {prefix}{need}")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            for m in members:
                target = (dest / m.name).resolve()
                if not str(target).startswith(str(dest) + os.sep) or m.issym() or m.islnk() or m.isdev():
                    raise HarnessError(f"llama.cpp build failed at step 'extract': unsafe member {m.name!r}")
            tf.extractall(dest, members=members)
    return dest / prefix.rstrip("/")


def _llama_version(src: Path) -> str | None:
    try:
        text = (src / "CMakeLists.txt").read_text()
    except OSError:
        return None
    parts = [re.search(rf"set\(LLAMA_VERSION_{k}\s+(\d+)\)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(p.group(1) for p in parts) if all(parts) else None  # type: ignore[union-attr]


def build_llama_cpp(log: Log = _stderr_log, version: str = LLAMA_CPP_PYTHON_VERSION,
                    sha256: str | None = LLAMA_CPP_PYTHON_SHA256, jobs: int | None = None) -> Path:
    """The bin directory of llama.cpp built from the llama-cpp-python `version` sdist, building it once.

    Steps (each named in its error): check tools, download (`pip download --no-binary :all:` into a
    temp dir), verify (sha256 against the pin, the tree's files), extract (vendor/llama.cpp only),
    configure (cmake), build (only TARGETS), install (copy into the cache, write build.json last)."""
    root = llama_cpp_root()
    final = root / version
    if read_build(final, version) is not None:
        return final / "bin"
    with file_lock(root / f".{version}.lock"):
        if read_build(final, version) is not None:
            return final / "bin"  # another process built it while we waited
        tools = _check_tools()
        jobs = jobs or _usable_cores()
        final.mkdir(parents=True, exist_ok=True)
        log_path = final / "build.log"
        log_path.write_text(f"llama.cpp build from llama-cpp-python {version} sdist, {_now()}\n")
        log(f"[llama.cpp] building llama.cpp from the llama-cpp-python {version} sdist into {final} "
            f"(one time, {jobs} jobs; log: {log_path})")
        t_start = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=f".build-{version}-", dir=root))
        try:
            dl = work / "sdist"
            dl.mkdir()
            download_s = _run_step("download", [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                                                ":all:", "--disable-pip-version-check", "-d", str(dl),
                                                f"llama-cpp-python=={version}"], log_path, log)
            sdists = sorted(dl.glob("*.tar.gz"))
            if len(sdists) != 1:
                raise HarnessError(f"llama.cpp build failed at step 'download': expected one .tar.gz in {dl}, "
                                   f"found {[p.name for p in dl.iterdir()]}; log: {log_path}")
            sdist = sdists[0]
            digest = _sha256(sdist)
            if sha256 and digest != sha256:
                raise HarnessError(f"llama.cpp build failed at step 'verify': {sdist.name} sha256 {digest[:16]}… is not "
                                   f"the pinned {sha256[:16]}…")
            src = _extract_llama_cpp(sdist, work / "src", version)
            build_dir = work / "build"
            configure = [tools["cmake"], "-S", str(src), "-B", str(build_dir), "-G", tools["generator"], *CMAKE_FLAGS]
            configure_s = _run_step("configure", configure, log_path, log)
            build_s = _run_step("build", [tools["cmake"], "--build", str(build_dir), "--target", *TARGETS,
                                          "--parallel", str(jobs)], log_path, log)
            staged = work / "bin"
            staged.mkdir()
            binaries = {}
            for t in TARGETS:
                b = build_dir / "bin" / t
                if not b.is_file():
                    raise HarnessError(f"llama.cpp build failed at step 'install': {b} was not built; log: {log_path}")
                shutil.copy2(b, staged / t)
                binaries[t] = (staged / t).stat().st_size
            version_line = _first_line([str(staged / "llama-batched-bench"), "--version"])
            if (final / "bin").exists():
                shutil.rmtree(final / "bin")
            os.replace(staged, final / "bin")
            info = {
                "format": BUILD_FORMAT, "llama_cpp_python": version, "sdist": sdist.name, "sdist_sha256": digest,
                "sdist_size": sdist.stat().st_size, "llama_cpp_version": _llama_version(src),
                "llama_cpp_version_line": version_line,
                "targets": list(TARGETS), "cmake_flags": list(CMAKE_FLAGS), "generator": tools["generator"],
                "cmake": tools["cmake_version"], "compiler": tools["compiler"], "jobs": jobs, "cpu": _cpu_model(),
                "binaries": binaries, "download_s": round(download_s, 1), "configure_s": round(configure_s, 1),
                "build_s": round(build_s, 1), "total_s": round(time.perf_counter() - t_start, 1), "created": _now(),
            }
            tmp = final / ".build.json.tmp"
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, final / "build.json")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"[llama.cpp] built {', '.join(TARGETS)} in {info['total_s']:.0f} s -> {final / 'bin'}")
        return final / "bin"


# --------------------------------------------------------------------------------------------------
# GGUFs


def gguf_summary(path: Path) -> dict[str, Any]:
    """File type and tensor type counts of a GGUF (via the `gguf` package)."""
    from gguf import GGUFReader, LlamaFileType

    r = GGUFReader(str(path))
    ftype = None
    field = r.fields.get("general.file_type")
    if field is not None:
        with contextlib.suppress(ValueError, IndexError):
            ftype = LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    counts: dict[str, int] = {}
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return {"file_type": ftype, "tensors": len(r.tensors), "tensor_types": dict(sorted(counts.items())),
            "size": Path(path).stat().st_size}


def _check_dequantized(q_gguf: Path, f_gguf: Path) -> dict[str, Any]:
    """Every tensor of f_gguf is F32, the same name and shape as in q_gguf, and equal to the `gguf`
    package's dequantisation of it (to within float rounding: llama.cpp's build may fuse the scale
    multiply and the offset add). The check's facts, or a HarnessError."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    q = {t.name: t for t in GGUFReader(str(q_gguf)).tensors}
    f = {t.name: t for t in GGUFReader(str(f_gguf)).tensors}
    if set(q) != set(f):
        raise HarnessError(f"F32 GGUF {f_gguf.name}: tensor names differ from {q_gguf.name} "
                           f"({len(set(q) ^ set(f))} differ)")
    exact, max_diff, max_rel = 0, 0.0, 0.0
    for name, qt in q.items():
        ft = f[name]
        if ft.tensor_type != GGMLQuantizationType.F32:
            raise HarnessError(f"F32 GGUF {f_gguf.name}: tensor {name} is {ft.tensor_type.name}, not F32")
        if list(qt.shape) != list(ft.shape):
            raise HarnessError(f"F32 GGUF {f_gguf.name}: tensor {name} has shape {list(ft.shape)}, source {list(qt.shape)}")
        want = np.asarray(dequantize(qt.data, qt.tensor_type), dtype=np.float32).reshape(-1)
        got = np.asarray(ft.data, dtype=np.float32).reshape(-1)
        if want.shape != got.shape:
            raise HarnessError(f"F32 GGUF {f_gguf.name}: tensor {name} has {got.size} values, the source {want.size}")
        diff = np.abs(want - got)
        d = float(diff.max()) if diff.size else 0.0
        rel = d / max(float(np.abs(want).max()), 1e-30) if diff.size else 0.0
        if rel > 1e-6:
            raise HarnessError(f"F32 GGUF {f_gguf.name}: tensor {name} is not the dequantised {qt.tensor_type.name} "
                               f"weights (max |diff| {d:g})")
        exact += int(d == 0.0)
        max_diff, max_rel = max(max_diff, d), max(max_rel, rel)
    return {"tensors_compared": len(q), "tensors_bit_exact": exact, "max_abs_diff": max_diff,
            "max_rel_diff_of_tensor_max": max_rel}


def f32_gguf(bin_dir: Path, q_gguf: Path, log: Log = _stderr_log) -> Path:
    """An F32 GGUF of the same weights as q_gguf (llama-quantize --allow-requantize ... F32), cached in
    <build>/gguf/ with a sidecar naming its source's sha256; checked against gguf's dequantisation."""
    from harness.models.cache import file_sha256

    q_gguf = Path(q_gguf).resolve()
    out_dir = Path(bin_dir).parent / "gguf"
    base = re.sub(r"\.(F16|BF16|I?Q\d[A-Za-z0-9_]*)$", "", q_gguf.stem, flags=re.I)
    out = out_dir / f"{base}.F32.gguf"
    side = out_dir / f"{base}.F32.json"
    sha = file_sha256(q_gguf)
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads(side.read_text())
        if meta.get("source_sha256") == sha and out.is_file() and out.stat().st_size == meta.get("size"):
            return out
    out_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir / f".{base}.F32.lock"):
        tmp = out_dir / f".{base}.F32.{os.getpid()}.gguf"
        log_path = out_dir / f"{base}.F32.log"
        cmd = [str(Path(bin_dir) / "llama-quantize"), "--allow-requantize", str(q_gguf), str(tmp), "F32"]
        log(f"[llama.cpp] dequantising {q_gguf.name} to F32 (llama-quantize --allow-requantize … F32)")
        t0 = time.perf_counter()
        try:
            with open(log_path, "w") as lf:
                lf.write(f"$ {' '.join(cmd)}\n")
                lf.flush()
                r = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if r.returncode != 0 or not tmp.is_file():
                raise HarnessError(f"llama-quantize … F32 failed (exit {r.returncode}); log: {log_path}; "
                                   f"last: {_tail(log_path) or '(no output)'}")
            seconds = time.perf_counter() - t0
            check = _check_dequantized(q_gguf, tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        side.write_text(json.dumps({"source": str(q_gguf), "source_sha256": sha, "size": out.stat().st_size,
                                    "command": ["llama-quantize", "--allow-requantize", q_gguf.name, out.name, "F32"],
                                    "seconds": round(seconds, 2), "check": check, "created": _now()}, indent=2) + "\n")
    return out


def resolve_gguf(model: str) -> tuple[Path, dict[str, Any]]:
    """The GGUF file of a preset (installing its wheel if needed, sha256-checked against the preset) or
    a .gguf path, and facts about where it came from."""
    from harness.models import cache
    from harness.models.presets import list_presets, load_preset

    p = Path(model).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise HarnessError(f"no such file: {model}")
        return p.resolve(), {"model": p.stem, "source": "file"}
    preset = load_preset(model)
    if preset is None:
        raise HarnessError(f"unknown model preset {model!r}; presets: {', '.join(list_presets()) or '(none)'}")
    if preset["source"].get("hub"):
        raise HarnessError(f"model preset {preset['name']} comes from the hub, not a GGUF; llama.cpp needs a GGUF")
    files = cache._source_files(preset)
    if len(files) != 1:
        raise HarnessError(f"model preset {preset['name']} is a GGUF in {len(files)} parts; pass the assembled .gguf file")
    sha = cache.file_sha256(files[0])
    want = preset["source"].get("sha256")
    if want and sha != want:
        raise HarnessError(f"model preset {preset['name']}: {files[0].name} sha256 {sha[:16]}… is not the preset's {want[:16]}…")
    return files[0].resolve(), {"model": preset["name"], "source": "preset", "file": preset["source"].get("file"),
                                "sha256": sha}


def parse_quants(text: str | Sequence[str]) -> tuple[str, ...]:
    """'Q4_1,F32' -> ('Q4_1', 'F32'); a one-line HarnessError for an empty list, a repeat or a name
    that is no llama.cpp type."""
    items = text.split(",") if isinstance(text, str) else [s for t in text for s in str(t).split(",")]
    quants = tuple(s.strip().upper() for s in items if s.strip())
    if not quants:
        raise HarnessError("--quants: empty; give a comma-separated list such as Q4_1,F32")
    bad = [q for q in quants if not QUANT_NAME.match(q)]
    if bad:
        raise HarnessError(f"--quants: {', '.join(bad)} is not a llama.cpp weight type (e.g. Q4_1, F32)")
    if len(set(quants)) != len(quants):
        raise HarnessError(f"--quants: {','.join(quants)} names a type twice")
    return quants


def check_quants(quants: Sequence[str], source_type: str | None) -> None:
    """Only the source's own type (the file as shipped) and F32 (its weights dequantised) are the same weights."""
    allowed = ["F32"] + ([source_type] if source_type and source_type != "F32" else [])
    bad = [q for q in quants if q not in allowed]
    if bad:
        raise HarnessError(f"--quants: {', '.join(bad)} is not available: the source GGUF is {source_type or 'of unknown type'}; "
                           f"choose from {','.join(allowed)} (the file as shipped, and its weights dequantised to F32)")


# --------------------------------------------------------------------------------------------------
# llama-batched-bench


_MD_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|" + r"\s*([\d.]+|inf|nan)\s*\|" * 6 + r"\s*$")


def parse_batched_bench(text: str) -> list[dict[str, Any]]:
    """The result rows of llama-batched-bench's output: its --output-format jsonl lines, else the rows
    of its markdown table. Each row: pp, tg, pl, n_kv, t_pp, speed_pp, t_tg, speed_tg, t, speed, raw
    (and for jsonl the run's settings: n_kv_max, n_batch, n_ubatch, flash_attn, is_pp_shared, n_threads...)."""
    rows = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{") and '"pl"' in s:
            try:
                obj = json.loads(s)
            except ValueError:
                continue
            if isinstance(obj, dict) and {"pp", "tg", "pl", "t_pp", "t_tg", "t"} <= set(obj):
                rows.append({**obj, "raw": s})
    if rows:
        return rows
    for line in text.splitlines():
        m = _MD_ROW.match(line.strip())
        if m:
            pp, tg, pl, n_kv = (int(m.group(i)) for i in range(1, 5))
            t_pp, speed_pp, t_tg, speed_tg, t, speed = (float(m.group(i)) for i in range(5, 11))
            rows.append({"pp": pp, "tg": tg, "pl": pl, "n_kv": n_kv, "t_pp": t_pp, "speed_pp": speed_pp, "t_tg": t_tg,
                         "speed_tg": speed_tg, "t": t, "speed": speed, "raw": line.strip()})
    return rows


def row_result(row: dict[str, Any]) -> dict[str, Any]:
    """One n's figures from a parsed row: generated tokens = n x new tokens; tokens/s counts only those."""
    n, tg = int(row["pl"]), int(row["tg"])
    gen = n * tg
    total = float(row["t"])
    decode = float(row["t_tg"])
    return {
        "n": n, "prompt_tokens": int(row["pp"]), "new_tokens": tg, "prompt_s": float(row["t_pp"]), "decode_s": decode,
        "total_s": total, "generated_tokens": gen, "tokens_per_s": gen / total if total > 0 else None,
        "decode_tokens_per_s": gen / decode if decode > 0 else None, "n_kv": row.get("n_kv"),
        "llama_speed": row.get("speed"), "raw": row["raw"],
    }


def context_size(prompt_tokens: int, new_tokens: int, n: int, kv_unified: bool = False) -> int:
    """-c for one n with -pps. llama-batched-bench silently skips a configuration whose n_kv exceeds the
    context (unified: P + n*M; per-sequence streams: n*(P+M), each stream n_ctx/n long); one spare cell
    per stream for the dummy token that applies the prompt copy."""
    return prompt_tokens + n * new_tokens + 1 if kv_unified else n * (prompt_tokens + new_tokens + 1)


def batched_bench_command(bin_dir: Path, gguf: Path, prompt_tokens: int, new_tokens: int, ns: Sequence[int],
                          threads: int, kv_unified: bool = False) -> list[str]:
    ctx = max(context_size(prompt_tokens, new_tokens, n, kv_unified) for n in ns)
    cmd = [str(Path(bin_dir) / "llama-batched-bench"), "-m", str(gguf), "-npp", str(prompt_tokens),
           "-ntg", str(new_tokens), "-npl", ",".join(str(n) for n in ns), "-pps", "-t", str(threads),
           "-tb", str(threads), "-c", str(ctx), "-b", str(BATCH), "-ub", str(UBATCH),
           "--output-format", "jsonl"]
    return cmd + (["-kvu"] if kv_unified else [])


def run_batched_bench(bin_dir: Path, gguf: Path, prompt_tokens: int, new_tokens: int, ns: Sequence[int],
                      threads: int, log: Log = _stderr_log, kv_unified: bool = False,
                      timeout: float | None = None) -> list[dict[str, Any]]:
    """One llama-batched-bench process for these ns (prompt shared, -pps); one dict per n, in ns order."""
    cmd = batched_bench_command(bin_dir, gguf, prompt_tokens, new_tokens, ns, threads, kv_unified)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise HarnessError(f"cannot run {cmd[0]}: {e}") from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"llama-batched-bench ran past {timeout:.0f} s ({' '.join(cmd[2:])})") from None
    wall = time.perf_counter() - t0
    text = (r.stdout or "") + "\n" + (r.stderr or "")
    if r.returncode != 0:
        last = [ln for ln in text.splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise HarnessError(f"llama-batched-bench failed (exit {r.returncode}) on {Path(gguf).name}: {last[0].strip()[:200]}")
    rows = {int(row["pl"]): row for row in parse_batched_bench(text)}
    missing = [n for n in ns if n not in rows]
    if missing:
        raise HarnessError(f"llama-batched-bench gave no row for n={','.join(map(str, missing))} "
                           f"(context -c {cmd[cmd.index('-c') + 1]} too small?)")
    out = []
    for n in ns:
        res = row_result(rows[n])
        res["process_wall_s"] = round(wall, 3)
        for k in ("flash_attn", "n_kv_max", "n_batch", "n_ubatch", "is_pp_shared", "n_threads", "n_threads_batch"):
            if k in rows[n]:
                res[k] = rows[n][k]
        out.append(res)
    return out


# --------------------------------------------------------------------------------------------------
# The benchmark


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def run_llama_cpp_bench(model: str, prompt_tokens: int, new_tokens: int, ns: Sequence[int], threads: int, reps: int,
                        quants: Sequence[str] = ("Q4_1", "F32"), log: Log = _stderr_log,
                        kv_unified: bool = False) -> dict[str, Any]:
    """llama-batched-bench -pps for every quant and n, `reps` times, interleaved (for rep: for quant: for n,
    one process each), so that drift on the machine hits every configuration alike."""
    ns = [int(n) for n in ns]
    quants = parse_quants(list(quants))
    t_start = time.perf_counter()
    src, src_facts = resolve_gguf(model)
    src_summary = gguf_summary(src)
    check_quants(quants, src_summary["file_type"])
    bin_dir = build_llama_cpp(log)
    build = read_build(bin_dir.parent) or {}
    ggufs: dict[str, Path] = {}
    for q in quants:
        ggufs[q] = src if q == src_summary["file_type"] else f32_gguf(bin_dir, src, log)
    gguf_facts = {}
    for q, path in ggufs.items():
        gguf_facts[q] = {"path": str(path), **(src_summary if path == src else gguf_summary(path))}
        side = path.with_suffix(".json")
        if path != src and side.is_file():
            with contextlib.suppress(OSError, ValueError):
                gguf_facts[q]["conversion"] = json.loads(side.read_text())

    from harness.bench.machine import machine_facts

    machine = machine_facts("cpu")
    for k in ("malloc", "torch_threads", "torch_interop_threads"):  # facts of this process's torch, not of llama.cpp
        machine.pop(k, None)
    machine["llama_cpp_threads"] = threads

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {q: {str(n): [] for n in ns} for q in quants}
    for rep in range(reps):
        for q in quants:
            for n in ns:
                row = run_batched_bench(bin_dir, ggufs[q], prompt_tokens, new_tokens, [n], threads, log, kv_unified)[0]
                row["rep"] = rep
                runs[q][str(n)].append(row)
                log(f"[llama.cpp] rep {rep + 1}/{reps} {q} n={n}: {row['tokens_per_s']:.1f} tok/s "
                    f"(prompt {row['prompt_s']:.3f} s, decode {row['decode_s']:.3f} s)")
    results: dict[str, dict[str, Any]] = {}
    for q in quants:
        results[q] = {}
        for n in ns:
            reps_rows = runs[q][str(n)]
            results[q][str(n)] = {
                "reps": reps_rows,
                "tokens_per_s": _stats([r["tokens_per_s"] for r in reps_rows]),
                "decode_tokens_per_s": _stats([r["decode_tokens_per_s"] for r in reps_rows]),
                "prompt_s": _stats([r["prompt_s"] for r in reps_rows]),
                "total_s": _stats([r["total_s"] for r in reps_rows]),
            }
    example = batched_bench_command(bin_dir, ggufs[quants[0]], prompt_tokens, new_tokens, [ns[0]], threads, kv_unified)
    return {
        "schema": SCHEMA,
        "created": _now(),
        "workload": {
            "model": src_facts["model"], "source_gguf": str(src), "source": src_facts, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "ns": ns, "threads": threads, "reps": reps, "quants": list(quants),
            "kv_unified": kv_unified, "batch": BATCH, "ubatch": UBATCH,
            "context": {str(n): context_size(prompt_tokens, new_tokens, n, kv_unified) for n in ns},
            "order": "for rep: for quant: for n, one llama-batched-bench process each",
            "mode": "-pps: the prompt is computed once (sequence 0) and its KV copied to the n-1 others"
                    + (" (unified KV: shared cells)" if kv_unified else " (per-sequence KV streams: a physical copy, untimed)"),
            "example_command": ["llama-batched-bench", *example[1:]],
            "tokens_per_s": "n x new_tokens / (prompt_s + decode_s), the tool's own timers; model load, warm-up and "
                            "the prompt KV copy are outside them",
        },
        "machine": machine,
        "llama_cpp": {"bin_dir": str(bin_dir), **build},
        "ggufs": gguf_facts,
        "results": results,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    w = result["workload"]
    b = result.get("llama_cpp") or {}
    lines = [
        f"# llama.cpp llama-batched-bench -pps · {w['model']}",
        "",
        f"llama.cpp {b.get('llama_cpp_version') or '?'} from llama-cpp-python {b.get('llama_cpp_python') or '?'} "
        f"(sdist sha256 {str(b.get('sdist_sha256') or '?')[:16]}…), {w['threads']} threads, "
        f"prompt {w['prompt_tokens']} tokens shared, {w['new_tokens']} new tokens per sequence, "
        f"{w['reps']} reps interleaved. tokens/s = generated tokens / (prompt s + decode s).",
        "",
        "| weights | n | tokens/s (median) | min–max | decode tok/s | prompt s | total s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for q, per_n in result["results"].items():
        for n, r in per_n.items():
            t = r["tokens_per_s"]
            lines.append(f"| {q} | {n} | {t['median']:.1f} | {t['min']:.1f}–{t['max']:.1f} | "
                         f"{r['decode_tokens_per_s']['median']:.1f} | {r['prompt_s']['median']:.3f} | "
                         f"{r['total_s']['median']:.3f} |")
    return "\n".join(lines) + "\n"
