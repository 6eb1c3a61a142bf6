"""The report's "Benchmark Results" table, measured: parameters, latency, peak memory, residuals.

Run: ``make benchmark`` or ``python -m psalm.benchmark [--batch 4 --input-size 640 --device auto]``.

Defaults are the shape the report's figures were measured at (its test file): batch 4, a 640×640
input (P2 160×160 … P5 20×20), support prototypes ``(4, C)`` per level, eval mode, no grad, the
report's example configuration ([32, 64, 128, 256] → [128, 256, 512, 512], 4 heads, all flags on).

Method
- Latency: warm-up passes, then the median of ``--repeats`` timed forwards; CHEAF and PSALM are
  timed alternately in the same loop, so load on the machine hits both alike. CUDA is synchronised
  around every timed pass.
- Peak memory: what the forward itself allocates at its peak, above the parameters and inputs
  already in memory. CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the
  forward. CPU: every allocation and free that the PyTorch profiler records during one forward,
  summed in time order; the peak of that running sum.
- Residual connections: the residual additions the forward actually executed (R1, R2, …).
- Peer-comparable setting (``--peer-threads``, CPU only): the setting the report's authors' code
  is compared in (eval, no grad, one prototype per level), both modules timed interleaved again in
  each memory layout of the inputs and models (NCHW, channels-last) at each thread count.
- CPU memory pages (``--cpu-pages``): by default PyTorch's CPU allocator backs each buffer of
  2 MB or more with transparent huge pages (``THP_MEM_ALLOC_ENABLE``, see ``huge_pages``); the
  document records the setting and the kernel's THP mode.

Writes ``reports/benchmark.json`` (``--out``) and prints the table beside the report's figures.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from psalm.cli_args import OneLineParser, output_file_problem
from psalm.options import DEVICES, is_device

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported inside the functions that use it, so that `--help` answers at once.

QUERY_CHANNELS = [32, 64, 128, 256]
OUT_CHANNELS = [128, 256, 512, 512]

# The report's "Benchmark Results" table (PSALM_Final_Report.md).
REPORTED = {
    "cheaf": {"params": 1.76e6, "latency_ms": 40.15, "peak_mem_mb": 306.0, "residuals": "R1–R4"},
    "psalm": {"params": 0.78e6, "latency_ms": 27.47, "peak_mem_mb": 385.0, "residuals": "R1–R2"},
}
REPORTED_BREAKDOWN = {
    "cheaf": {
        "efficient_attentions": 0.80e6,
        "short_long_convs": 0.04e6,
        "branch_fusion": 0.11e6,
        "pyramid_refinement": 0.52e6,
        "output_projectors": 0.22e6,
        "residual_projectors": 0.07e6,
    },
    "psalm": {
        "attentions_with_conv": 0.28e6,
        "pyramid": 0.05e6,
        "refinement_projectors": 0.23e6,
        "residual_projectors": 0.22e6,
    },
}


@dataclass(frozen=True)
class ModelResult:
    params: int
    params_by_component: dict[str, int]
    latency_ms: float
    latency_iqr_ms: tuple[float, float]
    peak_mem_mb: float
    residual_connections: list[str]


def build_models() -> dict[str, nn.Module]:
    """The report's example configuration of both modules, all flags on."""
    from psalm.fusion import CHEAFFusionModule, PSALMFusion

    kwargs = dict(
        query_channels=QUERY_CHANNELS,
        support_channels=QUERY_CHANNELS,
        out_channels=OUT_CHANNELS,
        num_heads=4,
    )
    return {
        "cheaf": CHEAFFusionModule(**kwargs, use_pyramid_refinement=True, use_short_long_conv=True),
        "psalm": PSALMFusion(**kwargs, use_pyramid=True, use_conv_preprocessing=True),
    }


def make_inputs(
    batch: int,
    input_size: int,
    support: str,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    seed: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """P2..P5 query maps for an ``input_size`` image and one support per level."""
    import torch

    if input_size % 32:
        raise ValueError(f"--input-size must be a multiple of 32, got {input_size}")
    g = torch.Generator().manual_seed(seed)
    query = []
    for i, c in enumerate(QUERY_CHANNELS):
        side = input_size // (4 * 2**i)
        x = torch.randn(batch, c, side, side, generator=g, dtype=dtype).to(device)
        query.append(x.to(memory_format=torch.channels_last) if channels_last else x)
    if support == "prototype":
        sup = [torch.randn(batch, c, generator=g, dtype=dtype).to(device) for c in QUERY_CHANNELS]
    else:  # one 64×64 support crop's pyramid, K = 1
        sup = [
            torch.randn(batch, 1, c, 16 // 2**i, 16 // 2**i, generator=g, dtype=dtype).to(device)
            for i, c in enumerate(QUERY_CHANNELS)
        ]
    return query, sup


# PyTorch's CPU allocator backs buffers of 2 MB or more with transparent huge pages when this is
# "1" (c10/core/impl/alloc_cpu.cpp); it reads the variable once, at its first allocation.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
CPU_PAGES = ("huge", "system")
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages(cpu_pages: str) -> str:
    """Set PyTorch's CPU buffers to huge pages (``cpu_pages="huge"``) or leave them as the system
    gives them; returns the setting in effect. Call it before torch is imported.

    A forward at 640² frees and allocates maps of up to 52 MB (P2's 4×128×160×160). The C library
    returns each to the OS on free and the kernel faults the next one in again 4 KB at a time:
    16,385 page faults per 64 MB, 544 with 2 MB pages (tests/test_benchmark.py). CUDA's caching
    allocator, under which GPU latencies are measured, keeps its memory between forwards instead.
    With torch already imported the setting cannot change, and what is in effect is returned.
    """
    import os
    import sys

    if cpu_pages not in CPU_PAGES:
        raise ValueError(f"cpu_pages must be one of {CPU_PAGES}, got {cpu_pages!r}")
    if "torch" not in sys.modules:
        os.environ[HUGE_PAGES_ENV] = "1" if cpu_pages == "huge" else "0"
    return "huge" if os.environ.get(HUGE_PAGES_ENV) == "1" else "system"


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode (always | madvise | never), or "unknown"."""
    try:
        text = THP_MODE_FILE.read_text()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else "unknown"


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_models(
    models: dict[str, nn.Module], query, support, device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Per-model forward times in ms, the models interleaved within each repeat."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(warmup):
            for m in models.values():
                m(query, support)
        _sync(device)
        for _ in range(repeats):
            for name, m in models.items():
                _sync(device)
                start = time.perf_counter()
                m(query, support)
                _sync(device)
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def peak_forward_memory_mb(model: nn.Module, query, support, device: torch.device) -> float:
    """Peak memory allocated by one forward, above what was allocated before it (see module doc)."""
    import torch

    with torch.no_grad():
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            model(query, support)
            _sync(device)
            return (torch.cuda.max_memory_allocated(device) - before) / 2**20
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            model(query, support)
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return peak / 2**20


def profile_top_ops(model: nn.Module, query, support, device: torch.device, rows: int) -> str:
    """Where a forward's time goes: the profiler's top ops by self time."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with torch.no_grad(), torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        model(query, support)
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by=sort_by, row_limit=rows, max_name_column_width=28, max_shapes_column_width=60
    )


def run_benchmark(
    batch: int = 4,
    input_size: int = 640,
    device: str = "auto",
    dtype: str = "float32",
    support: str = "prototype",
    memory_format: str = "auto",
    warmup: int = 3,
    repeats: int = 20,
) -> dict:
    """Measure both modules side by side; returns the ``reports/benchmark.json`` document."""
    import torch

    if repeats < 2:
        raise ValueError(
            f"repeats (--repeats) must be at least 2 for a median and IQR, got {repeats}"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    channels_last = memory_format in ("auto", "channels_last")
    models = build_models()
    for m in models.values():
        m.eval().to(device=dev, dtype=torch_dtype)
        if channels_last:
            m.to(memory_format=torch.channels_last)
    query, sup = make_inputs(batch, input_size, support, dev, torch_dtype, channels_last)
    times = time_models(models, query, sup, dev, warmup, repeats)
    results = {}
    for name, m in models.items():
        with torch.no_grad():
            m(query, sup)
        q1, _, q3 = statistics.quantiles(times[name], n=4, method="inclusive")  # within the data
        results[name] = ModelResult(
            params=sum(p.numel() for p in m.parameters()),
            params_by_component=m.param_breakdown(),
            latency_ms=statistics.median(times[name]),
            latency_iqr_ms=(q1, q3),
            peak_mem_mb=peak_forward_memory_mb(m, query, sup, dev),
            residual_connections=sorted(m.last_residuals),
        )
    cheaf, psalm = results["cheaf"], results["psalm"]
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "device_type": dev.type,
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "batch": batch,
        "input_size": input_size,
        "support": support,
        "warmup": warmup,
        "repeats": repeats,
        "torch": torch.__version__,
        "models": {name: asdict(r) for name, r in results.items()},
        "speedup": cheaf.latency_ms / psalm.latency_ms,
        "param_reduction": 1 - psalm.params / cheaf.params,
        "memory_ratio": psalm.peak_mem_mb / cheaf.peak_mem_mb,
        "reported": REPORTED,
        "reported_breakdown": REPORTED_BREAKDOWN,
    }


@dataclass(frozen=True)
class PeerSetting:
    """Median forward latency of both modules in one thread count and memory layout."""

    threads: int
    memory_format: str
    cheaf_ms: float
    psalm_ms: float
    speedup: float


def run_peer_settings(
    batch: int = 4,
    input_size: int = 640,
    threads: Sequence[int] = (1, 2),
    memory_formats: Sequence[str] = ("contiguous", "channels_last"),
    warmup: int = 2,
    repeats: int = 10,
) -> list[PeerSetting]:
    """CHEAF and PSALM on CPU, eval, no grad, prototypes, per thread count and layout.

    The thread count is restored afterwards.
    """
    import torch

    if repeats < 1:
        raise ValueError(f"repeats (--peer-repeats) must be at least 1, got {repeats}")
    bad = [f for f in memory_formats if f not in ("contiguous", "channels_last")]
    if bad:
        raise ValueError(f"memory_formats: unknown {bad}; use contiguous or channels_last")
    dev = torch.device("cpu")
    before = torch.get_num_threads()
    rows = []
    try:
        for fmt in memory_formats:
            cl = fmt == "channels_last"
            models = build_models()
            for m in models.values():
                m.eval()
                if cl:
                    m.to(memory_format=torch.channels_last)
            query, sup = make_inputs(batch, input_size, "prototype", dev, torch.float32, cl)
            for n in threads:
                torch.set_num_threads(n)
                times = time_models(models, query, sup, dev, warmup, repeats)
                cheaf, psalm = (statistics.median(times[k]) for k in ("cheaf", "psalm"))
                rows.append(PeerSetting(n, fmt, cheaf, psalm, cheaf / psalm))
    finally:
        torch.set_num_threads(before)
    return rows


def format_peer_table(rows: list[dict]) -> str:
    """The peer-comparable setting as a table (ms per forward)."""
    lines = [
        "Peer-comparable setting (CPU, eval, no grad, one prototype per level):",
        "",
        f"| {'threads':>7} | {'layout':<13} | {'CHEAF ms':>9} | {'PSALM ms':>9} | "
        f"{'CHEAF/PSALM':>11} |",
        f"|{'-' * 9}|{'-' * 15}|{'-' * 11}|{'-' * 11}|{'-' * 13}|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads']:>7} | {r['memory_format']:<13} | {r['cheaf_ms']:>9.1f} | "
            f"{r['psalm_ms']:>9.1f} | {r['speedup']:>10.2f}× |"
        )
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name, as the benchmark and the profile report it."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def format_table(doc: dict) -> str:
    """The report's table with the measured figures beside the report's."""
    c, p = doc["models"]["cheaf"], doc["models"]["psalm"]
    pages = doc.get("cpu_pages")
    pages = f", {pages} pages" if pages and doc["device_type"] == "cpu" else ""
    lines = [
        f"Device: {doc['device']} ({doc['device_type']}, {doc['threads']} threads, {doc['dtype']}, "
        f"{doc['memory_format']}{pages}); batch {doc['batch']}, input {doc['input_size']}×"
        f"{doc['input_size']}, support {doc['support']}; median of {doc['repeats']} runs",
        "",
        f"| {'Metric':<22} | {'CHEAF':>10} | {'PSALM':>10} | {'measured':>14} | {'report':>22} |",
        f"|{'-' * 24}|{'-' * 12}|{'-' * 12}|{'-' * 16}|{'-' * 24}|",
        f"| {'Parameters':<22} | {c['params'] / 1e6:>9.3f}M | {p['params'] / 1e6:>9.3f}M | "
        f"{-100 * doc['param_reduction']:>+13.1f}% | {'1.76M → 0.78M (−56%)':>22} |",
        f"| {'Latency (ms/batch)':<22} | {c['latency_ms']:>10.2f} | {p['latency_ms']:>10.2f} | "
        f"{doc['speedup']:>12.2f}× | {'40.15 → 27.47 (1.46×)':>22} |",
        f"| {'Peak forward mem (MB)':<22} | {c['peak_mem_mb']:>10.1f} | "
        f"{p['peak_mem_mb']:>10.1f} | "
        f"{100 * (doc['memory_ratio'] - 1):>+13.1f}% | {'306 → 385 (+26%)':>22} |",
        f"| {'Residual connections':<22} | {len(c['residual_connections']):>10} | "
        f"{len(p['residual_connections']):>10} | {'':>14} | {'4 (R1–R4) → 2 (R1–R2)':>22} |",
        "",
        "Parameters by component (measured vs report):",
    ]
    for name in ("cheaf", "psalm"):
        for comp, n in doc["models"][name]["params_by_component"].items():
            ref = REPORTED_BREAKDOWN[name][comp]
            lines.append(
                f"  {name:<6} {comp:<22} {n / 1e6:>7.3f}M  report {ref / 1e6:.2f}M  "
                f"({100 * (n / ref - 1):+.0f}%)"
            )
    lines.append(
        f"Latency IQR: CHEAF {c['latency_iqr_ms'][0]:.1f}–{c['latency_iqr_ms'][1]:.1f} ms, "
        f"PSALM {p['latency_iqr_ms'][0]:.1f}–{p['latency_iqr_ms'][1]:.1f} ms"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m psalm.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=640, help="image side, multiple of 32")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--support", default="prototype", choices=["prototype", "map"])
    parser.add_argument(
        "--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--peer-threads",
        default="1,2",
        help="thread counts of the peer-comparable CPU setting, comma-separated; '' skips it",
    )
    parser.add_argument("--peer-repeats", type=int, default=10)
    parser.add_argument(
        "--cpu-pages",
        default="huge",
        choices=CPU_PAGES,
        help="CPU buffers of 2 MB or more on transparent huge pages (huge), or as the system "
        "gives them (system)",
    )
    parser.add_argument("--profile", action="store_true", help="also print each model's top ops")
    parser.add_argument("--out", default="reports/benchmark.json")
    args = parser.parse_args(argv)
    problems = [
        f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}"
        for name, least in (("batch", 1), ("warmup", 0), ("repeats", 2), ("peer_repeats", 1))
        if getattr(args, name) < least
    ]
    if args.input_size < 32 or args.input_size % 32:
        problems.append(f"--input-size must be a positive multiple of 32, got {args.input_size}")
    if args.threads is not None and args.threads < 1:
        problems.append(f"--threads must be at least 1, got {args.threads}")
    peer = args.peer_threads.split(",") if args.peer_threads else []
    if not all(t.strip().isdigit() and int(t) >= 1 for t in peer):
        problems.append(f"--peer-threads must list thread counts such as 1,2, got {peer}")
    device = args.device
    if not is_device(device):
        problems.append(f"--device must be {DEVICES}, got {device!r}")
    out = Path(args.out)
    problems += filter(None, [output_file_problem("--out", out, "benchmark.json")])
    if problems:  # before torch loads and before reports/benchmark.json is touched
        parser.error("; ".join(problems))
    cpu_pages = huge_pages(args.cpu_pages)  # before torch allocates anything
    import torch  # after the arguments: `--help` and usage errors need no torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: this machine has no usable CUDA device")

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"Benchmarking CHEAF vs PSALM: batch {args.batch}, {args.input_size}×{args.input_size}, "
        f"{args.warmup} warm-up + {args.repeats} timed passes each…",
        flush=True,
    )
    doc = run_benchmark(
        batch=args.batch,
        input_size=args.input_size,
        device=args.device,
        dtype=args.dtype,
        support=args.support,
        memory_format=args.memory_format,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    doc["cpu_pages"], doc["kernel_thp"] = cpu_pages, thp_mode()
    print(format_table(doc), flush=True)
    if args.peer_threads:
        threads = [int(t) for t in args.peer_threads.split(",")]
        rows = run_peer_settings(
            args.batch, args.input_size, threads, warmup=2, repeats=args.peer_repeats
        )
        doc["peer_comparable"] = [asdict(r) for r in rows]
        print("\n" + format_peer_table(doc["peer_comparable"]))
    out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.profile:
        dev = torch.device("cuda" if doc["device_type"] == "cuda" else "cpu")
        query, sup = make_inputs(
            args.batch, args.input_size, args.support, dev, torch.float32, True
        )
        for name, m in build_models().items():
            m.eval().to(dev).to(memory_format=torch.channels_last)
            print(f"\nTop ops, {name}:\n{profile_top_ops(m, query, sup, dev, rows=15)}")
    print(f"\nWrote {out}")


if __name__ == "__main__":
    main()
