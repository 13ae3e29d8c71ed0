"""
Loaded by Python at start-up when C{bench/_memdump} is on C{PYTHONPATH}
(C{proxy_idle_bench.py --diagnose} puts it there for the proxy process
only): on SIGUSR2 the process writes where its memory is to the file named
by C{SPMGMT_BENCH_MEMDUMP} (with a counter appended), as JSON:

  - C{tracemalloc}: Python allocations by source line (when tracing, e.g.
    C{PYTHONTRACEMALLOC=1}), the top 60 and the total;
  - C{types}: the number of live objects of each class that the garbage
    collector tracks, and their summed C{sys.getsizeof};
  - C{mallinfo}: glibc's C{mallinfo2} (arena = heap in use, hblkhd = large
    blocks mapped on their own), which also counts OpenSSL's allocations.

Nothing happens without C{SPMGMT_BENCH_MEMDUMP}.
"""

import os
import signal

_target = os.environ.get("SPMGMT_BENCH_MEMDUMP")
_count = [0]


def _mallinfo():
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        return {name: int(getattr(info, name)) for name, _ in MallInfo2._fields_}
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}


def _dump(signum, frame):
    import collections
    import gc
    import json
    import sys
    import tracemalloc

    _count[0] += 1
    out = {"types": {}, "tracemalloc": None, "mallinfo": _mallinfo()}
    counts = collections.Counter()
    sizes = collections.Counter()
    for obj in gc.get_objects():
        cls = type(obj)
        key = f"{cls.__module__}.{cls.__qualname__}"
        counts[key] += 1
        try:
            sizes[key] += sys.getsizeof(obj)
        except Exception:  # noqa: BLE001
            pass
    out["types"] = {k: [counts[k], sizes[k]] for k, _ in counts.most_common(300)}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("lineno")
        out["tracemalloc"] = {
            "total": sum(s.size for s in stats),
            "top": [[str(s.traceback[0]), s.size, s.count] for s in stats[:60]],
        }
    with open(f"{_target}.{_count[0]}", "w") as f:
        json.dump(out, f)


if _target:
    signal.signal(signal.SIGUSR2, _dump)
