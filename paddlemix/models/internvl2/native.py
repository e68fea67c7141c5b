"""This project's C++ CPU kernels (csrc/), built once per machine and loaded by kernels.py.

The first process that needs them compiles `csrc/cpu_kernels.cc` with `paddle.utils.cpp_extension`
into a cache folder (`$PADDLEMIX_CACHE`, default `~/.cache/paddlemix`) named after the source, the
Paddle build and the Python version; every later process only loads the library. Concurrent first
builds (several ranks) wait on a file lock. Without a working compiler, one log line says so and
kernels.py keeps the plain Paddle ops; the failure is remembered until the source or Paddle changes
(delete the folder to retry).
"""
import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
import warnings

import paddle

try:
    import fcntl  # POSIX: concurrent first builds wait for each other
except ImportError:  # Windows: no lock; a concurrent first build may compile twice
    fcntl = None

logger = logging.getLogger(__name__)

NAME = "paddlemix_cpu_kernels"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "cpu_kernels.cc")
# Flags only a test build adds: tests/test_native_kernels.py runs the AVX-512 bodies emulated on AVX2 CPUs.
TEST_CFLAGS = []
_state = {}


def cache_dir():
    """The build folder of these sources (csrc/) for this Paddle, Python and flags."""
    root = os.environ.get("PADDLEMIX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "paddlemix")
    digest = hashlib.sha256()
    sources = os.path.dirname(SOURCE)
    for name in sorted(os.listdir(sources)):
        with open(os.path.join(sources, name), "rb") as f:
            digest.update(name.encode() + f.read())
    build = (paddle.__version__, paddle.version.commit, sys.version_info[:2], _openmp_link_flags(), _mkl_flags(),
             TEST_CFLAGS)
    digest.update(repr(build).encode())
    return os.path.join(root, "kernels", digest.hexdigest()[:16])


def _library_path(folder):
    return os.path.join(folder, NAME, NAME + ".so")


@contextlib.contextmanager
def _quiet(said=None):
    """Paddle's build and load speak through print, warnings, a logger with its own handler and the
    compiler subprocess's stderr: all of it goes to the debug log (and into `said["text"]`)."""
    paddle_logger = logging.getLogger("utils.cpp_extension")
    level = paddle_logger.level
    paddle_logger.setLevel(logging.WARNING)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as chatter:
        os.dup2(chatter.fileno(), 1)
        os.dup2(chatter.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            paddle_logger.setLevel(level)
            chatter.seek(0)
            text = chatter.read().decode("utf-8", "replace").strip()
            if said is not None:
                said["text"] = text
            if text:
                logger.debug("paddle.utils.cpp_extension said:\n%s", text)


def _build(folder):
    """Compile into `folder` and load the result."""
    from paddle.utils.cpp_extension import load

    started, said = time.monotonic(), {}
    logger.info("building the CPU kernels once for this machine into %s", folder)
    try:
        with _quiet(said):
            mkl_compile, mkl_link = _mkl_flags()
            module = load(NAME, [SOURCE], extra_cxx_cflags=["-O3", "-fopenmp", *mkl_compile, *TEST_CFLAGS],
                          extra_ldflags=_openmp_link_flags() + mkl_link, build_directory=folder)
    except Exception as error:  # name the compiler's first complaint, not only its exit status
        complaints = [line for line in said.get("text", "").splitlines() if "error" in line.lower()]
        raise RuntimeError(complaints[0].strip() if complaints else str(error)) from error
    logger.info("CPU kernels built in %.0f s", time.monotonic() - started)
    return module


def _wheel_library(name):
    """Link flags for a library the Paddle wheel ships in paddle/libs, or None when it does not."""
    libs = os.path.join(os.path.dirname(paddle.__file__), "libs")
    if os.path.isfile(os.path.join(libs, name)):
        return [f"-L{libs}", f"-l:{name}", f"-Wl,-rpath,{libs}"]
    return None


def _mkl_flags():
    """(compile, link) flags for MKL's BLAS when the wheel ships it; the attention kernel needs it."""
    link = _wheel_library("libmklml_intel.so")
    return (["-DPADDLEMIX_MKL"], link) if link else ([], [])


def _openmp_link_flags():
    """Link the OpenMP runtime MKL uses when the wheel ships it (libiomp5), else GCC's.

    Two OpenMP runtimes in one process each keep their threads spinning after a parallel region;
    on a 2-core machine every switch between our kernels and MKL's then cost ~3 ms, which made
    decoding 1.8x slower. With MKL's runtime both share one pool of threads.
    """
    return _wheel_library("libiomp5.so") or ["-fopenmp"]


def _load(folder):
    from paddle.utils.cpp_extension.extension_utils import _import_module_from_library

    with _quiet():
        return _import_module_from_library(NAME, os.path.join(folder, NAME))


def ops():
    """The loaded extension module, or None when it cannot be built here (said once in the log)."""
    if "module" in _state:
        return _state["module"]
    module, folder = None, cache_dir()
    failed = os.path.join(folder, "build-failed.txt")
    try:
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(failed):
            with open(failed, encoding="utf-8") as f:
                raise RuntimeError(f.read().strip())
        with open(os.path.join(folder, "build.lock"), "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
            if os.path.exists(_library_path(folder)):
                module = _load(folder)
            else:
                try:
                    module = _build(folder)
                except Exception as error:  # a missing or failing compiler, whatever it raises: no kernels
                    message = str(error).strip().splitlines()
                    reason = f"{type(error).__name__}: {message[-1] if message else 'build failed'}"
                    with open(failed, "w", encoding="utf-8") as f:
                        f.write(reason + "\n")
                    raise RuntimeError(reason) from error
    # AttributeError / TypeError: the private loader of paddle.utils.cpp_extension changed shape.
    except (OSError, RuntimeError, ImportError, AttributeError, TypeError) as error:
        logger.warning("the C++ CPU kernels are not available (%s); the plain Paddle ops run instead "
                       "(delete %s to retry)", error, folder)
    _state["module"] = module
    return module
