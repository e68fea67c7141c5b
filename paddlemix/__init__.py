"""PaddlePaddle port of the InternVL2 multimodal chat models."""
import os
import platform


def cpuinfo_field(name):
    """A field of /proc/cpuinfo's first CPU ("vendor_id", "model name"), or None (not Linux, or absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_has_avx2_fma():
    """AVX2 and FMA, as cpuid reports them (numpy's dispatcher reads it)."""
    import numpy

    features = numpy.core._multiarray_umath.__cpu_features__
    return bool(features.get("AVX2") and features.get("FMA3"))


def _cpu_vendor():
    """The CPU's vendor string from cpuid ("GenuineIntel", "AuthenticAMD", ...), or "" when unknown.
    Windows names the vendor in platform.processor()."""
    return cpuinfo_field("vendor_id") or next(
        (name for name in ("GenuineIntel", "AuthenticAMD", "HygonGenuine") if name in platform.processor()), "")


def mkl_cpu_type(vendor, has_avx2_fma):
    """The MKL_DEBUG_CPU_TYPE this process should run with, or None to leave MKL alone.

    Paddle's wheels ship MKL 2019, which runs its SSE kernels on any x86 CPU not made by Intel: on
    an AMD EPYC (Zen 3) its sgemm ran at 24 GFLOP/s per core, against 70 with its AVX2 kernels,
    which type 5 selects. Those kernels need AVX2 and FMA. (MKL 2020.1 and newer ignore the setting.)
    """
    if vendor and vendor != "GenuineIntel" and has_avx2_fma:
        return "5"
    return None


# `import paddle` pins OMP_NUM_THREADS to 1 when it is unset, which leaves all
# but one CPU core idle. Use every core unless the user chose a number.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def _choose_mkl_kernels():
    """Set MKL_DEBUG_CPU_TYPE (see mkl_cpu_type) unless the user did. MKL reads it at its first call,
    so this works as long as nothing has multiplied yet."""
    if platform.machine().lower() not in ("x86_64", "amd64") or "MKL_DEBUG_CPU_TYPE" in os.environ:
        return
    cpu_type = mkl_cpu_type(_cpu_vendor(), cpu_has_avx2_fma())
    if cpu_type:
        os.environ["MKL_DEBUG_CPU_TYPE"] = cpu_type


_choose_mkl_kernels()

__version__ = "0.1.0"
