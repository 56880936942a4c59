"""Serving benchmark: drive a running ``nemotron-sglang serve`` (or any SGLang OpenAI server with
the NemotronTriMode algorithm) with the official ``openai`` client, streaming, and report latency,
throughput and the plugin's per-request counters per decode mode and concurrency.

    python benchmarks/serving.py --url http://127.0.0.1:30000 --concurrency 1,4,8 \\
        --modes ar,diffusion,linear_spec,auto --requests 32 --max-tokens 64
    python benchmarks/serving.py --modes mix:ar=1,linear_spec=1 --modes ar   # a mix, then plain ar
    python benchmarks/serving.py --thresholds 0.5,0.7,0.9,0.99 --plot /tmp/srv   # + diffusion sweep

For every (mode or mix, concurrency) point it sends ``--requests`` ``/v1/completions`` requests
(``temperature`` 0, ``max_tokens``, prompts cycled from a fixed list or ``--prompt-file``, one
prompt per line) from ``concurrency`` client threads, each request streamed with
``stream_options.include_usage`` so the final chunk carries ``usage`` (``completion_tokens`` and the
plugin's ``decode_mode``, ``forwards``, ``tokens_per_forward``, ``acceptance_length``).

Columns (times in ms):
- ``TTFT``: request start to the first chunk that carries text.
- ``ITL``: gaps between consecutive text chunks. Block modes commit several tokens per chunk, so
  this is per chunk, not per token; ``TPOT`` = (latency - TTFT) / (tokens - 1) is per token.
- ``tok/s``: completion tokens of the successful requests / wall time of the point.
- ``TPF``: sum of completion tokens / sum of ``forwards`` (from usage; prefill excluded, every pass
  counted). ``accept``: mean ``acceptance_length`` over the requests that report one.
- ``modes``: the ``decode_mode`` values the server reported (``auto`` shows its choice).

Every request has a client timeout (``--timeout``: the httpx timeout of each read plus a wall
deadline checked between chunks); a request that hits it is closed and counted as an error.
``--json OUT`` saves the raw per-request records; ``--plot PREFIX`` writes
``PREFIX-throughput.png`` and ``PREFIX-tpf.png`` (against concurrency) and, with ``--thresholds``,
``PREFIX-thresholds.png`` (diffusion TPF and tokens/s against the threshold).
On random weights TPF and acceptance are plumbing figures, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shlex
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field

from nemotron_sglang.core.modes import SERVING_MODES as MODES

PROMPTS = (
    "The number after 41 is",
    "Hello world",
    "Once upon a time, in a small village by the sea,",
    "List three prime numbers:",
    "The capital of France is",
    "def fibonacci(n):",
    "Translate to French: good morning",
    "A B C D E F",
)


@dataclass
class Record:
    point: str
    mode_spec: str                 # the decode_mode sent
    concurrency: int
    threshold: float | None
    index: int
    prompt: str
    ok: bool = False
    error: str | None = None
    start: float = 0.0             # seconds since the point began
    latency: float | None = None
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    text: str = ""
    completion_tokens: int | None = None
    finish_reason: str | None = None
    decode_mode: str | None = None
    forwards: int | None = None
    tokens_per_forward: float | None = None
    acceptance_length: float | None = None


# ---------------------------------------------------------------------------------------------
# arguments

def parse_list(text: str, cast=str) -> list:
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def parse_modes(specs: list[str]) -> list[tuple[str, list[tuple[str, int]]]]:
    """``--modes`` values -> [(label, [(mode, weight), ...])]. A value is a comma list of modes
    (each its own point) or one ``mix:mode=w,mode=w`` spec (one point whose requests cycle through
    the modes in proportion to their integer weights)."""
    out = []
    for spec in specs:
        spec = spec.strip()
        if spec.startswith("mix:"):
            parts = []
            for item in parse_list(spec[4:]):
                mode, _, w = item.partition("=")
                weight = int(w) if w else 1
                if mode not in MODES or weight < 1:
                    raise SystemExit(f"bad mix item {item!r} (modes: {', '.join(MODES)}, "
                                     f"weight >= 1)")
                parts.append((mode, weight))
            if not parts:
                raise SystemExit(f"empty mix {spec!r}")
            out.append((spec, parts))
        else:
            for mode in parse_list(spec):
                if mode not in MODES:
                    raise SystemExit(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
                out.append((mode, [(mode, 1)]))
    return out


def mix_schedule(parts: list[tuple[str, int]], n: int) -> list[str]:
    """Deterministic interleaving: e.g. ar=2,linear_spec=1 -> ar, linear_spec, ar, ar, ..."""
    total = sum(w for _, w in parts)
    credit = {m: 0.0 for m, _ in parts}
    out = []
    for _ in range(n):                    # smooth weighted round robin
        for m, w in parts:
            credit[m] += w
        best = max(parts, key=lambda p: credit[p[0]])[0]
        credit[best] -= total
        out.append(best)
    return out


# ---------------------------------------------------------------------------------------------
# environment

def http_json(url: str, timeout: float = 10.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read().decode())
    except Exception as e:  # noqa: BLE001 - informational only
        return {"error": f"{type(e).__name__}: {e}"}


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "no GPU visible to the client"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001
        pass
    try:
        load = "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = ""
    return f"{platform.machine()}, {cpu}, {ncpu} CPUs, {gpu}, {platform.system()} " \
           f"{platform.release()}, Python {platform.python_version()}; {load}"


MODEL_KEYS = ("model_path", "served_model_name", "model_type", "architectures", "weight_version")
SERVER_KEYS = ("version", "model_path", "device", "dtype", "attention_backend",
               "max_running_requests", "max_total_tokens", "dllm_algorithm",
               "dllm_algorithm_config", "tp_size", "dp_size", "page_size")


def server_description(url: str) -> dict:
    info = {"v1/models": http_json(url + "/v1/models")}
    mi = http_json(url + "/model_info")
    info["model_info"] = {k: mi[k] for k in MODEL_KEYS if k in mi} if "error" not in mi else mi
    si = http_json(url + "/server_info")
    if isinstance(si, dict) and "error" not in si:
        info["server_info"] = {k: si[k] for k in SERVER_KEYS if k in si}
    else:
        info["server_info"] = si
    return info


# ---------------------------------------------------------------------------------------------
# running

def one_request(client, model: str, rec: Record, max_tokens: int, timeout: float,
                t_point: float, block_length: int | None) -> None:
    extra = {"decode_mode": rec.mode_spec}
    if rec.threshold is not None:
        extra["threshold"] = rec.threshold
    if block_length is not None:
        extra["block_length"] = block_length
    t0 = time.perf_counter()
    rec.start = t0 - t_point
    deadline = t0 + timeout
    last = None
    stream = None
    try:
        stream = client.completions.create(
            model=model, prompt=rec.prompt, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra)
        for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                c = chunk.choices[0]
                if c.text:
                    if last is None:
                        rec.ttft = now - t0
                    else:
                        rec.itl.append(now - last)
                    last = now
                    rec.chunks += 1
                    rec.text += c.text
                if c.finish_reason:
                    rec.finish_reason = c.finish_reason
            if chunk.usage is not None:
                u = chunk.usage
                extra_u = u.model_extra or {}
                rec.completion_tokens = u.completion_tokens
                rec.decode_mode = extra_u.get("decode_mode")
                rec.forwards = extra_u.get("forwards")
                rec.tokens_per_forward = extra_u.get("tokens_per_forward")
                rec.acceptance_length = extra_u.get("acceptance_length")
            if now > deadline:
                raise TimeoutError(f"client deadline {timeout:g} s")
        rec.latency = time.perf_counter() - t0
        rec.ok = True
        if rec.completion_tokens is None:
            rec.ok, rec.error = False, "no usage chunk"
    except Exception as e:  # noqa: BLE001 - every failure is a counted error
        rec.latency = time.perf_counter() - t0
        rec.error = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass


def run_point(client, model: str, label: str, schedule: list[str], concurrency: int,
              prompts: list[str], args, threshold: float | None, bar) -> tuple[list[Record], float]:
    recs = [Record(point=label, mode_spec=m, concurrency=concurrency, threshold=threshold,
                   index=i, prompt=prompts[i % len(prompts)]) for i, m in enumerate(schedule)]
    todo: queue.Queue = queue.Queue()
    for r in recs:
        todo.put(r)
    t_point = time.perf_counter()

    def worker():
        while True:
            try:
                r = todo.get_nowait()
            except queue.Empty:
                return
            one_request(client, model, r, args.max_tokens, args.timeout, t_point, args.block_length)
            bar.update(1)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    # every request is bounded by ~2x --timeout (read timeout + wall deadline); add slack
    point_deadline = time.perf_counter() + 2 * args.timeout * (len(recs) / concurrency + 1) + 30
    for t in threads:
        t.join(timeout=max(0.0, point_deadline - time.perf_counter()))
    wall = time.perf_counter() - t_point
    for r in recs:
        if not r.ok and r.error is None:
            r.error = "not finished by the point deadline"
    return recs, wall


# ---------------------------------------------------------------------------------------------
# summary

def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(recs: list[Record], wall: float) -> dict:
    ok = [r for r in recs if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [x for r in ok for x in r.itl]
    tpot = [(r.latency - r.ttft) / (r.completion_tokens - 1) for r in ok
            if r.ttft is not None and r.completion_tokens and r.completion_tokens > 1]
    tokens = sum(r.completion_tokens or 0 for r in ok)
    fw = [r for r in ok if r.forwards]
    forwards = sum(r.forwards for r in fw)
    acc = [r.acceptance_length for r in ok if r.acceptance_length is not None]
    modes: dict[str, int] = {}
    for r in ok:
        modes[str(r.decode_mode)] = modes.get(str(r.decode_mode), 0) + 1
    errors: dict[str, int] = {}
    for r in recs:
        if not r.ok:
            key = (r.error or "?").split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    ms = lambda v: None if v is None else 1000.0 * v  # noqa: E731
    return {
        "requests": len(recs), "ok": len(ok), "errors": len(recs) - len(ok), "error_kinds": errors,
        "wall_s": wall, "completion_tokens": tokens,
        "ttft_ms": {f"p{p}": ms(pct(ttft, p)) for p in (50, 90, 99)},
        "itl_ms": {f"p{p}": ms(pct(itl, p)) for p in (50, 90)},
        "tpot_ms_p50": ms(pct(tpot, 50)),
        "latency_s_p50": pct([r.latency for r in ok], 50),
        "tokens_per_s": tokens / wall if wall > 0 else None,
        "forwards": forwards,
        "tpf": sum(r.completion_tokens or 0 for r in fw) / forwards if forwards else None,
        "acceptance": statistics.fmean(acc) if acc else None,
        "decode_modes": modes,
    }


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = ["mode", "conc", "reqs", "err", "TTFT p50", "TTFT p90", "TTFT p99", "ITL p50", "ITL p90",
           "TPOT p50", "tok/s", "TPF", "accept", "modes"]


def row_cells(label: str, conc: int, s: dict) -> list[str]:
    modes = " ".join(f"{m}:{n}" for m, n in sorted(s["decode_modes"].items()))
    return [label, str(conc), str(s["requests"]), str(s["errors"]),
            fmt(s["ttft_ms"]["p50"]), fmt(s["ttft_ms"]["p90"]), fmt(s["ttft_ms"]["p99"]),
            fmt(s["itl_ms"]["p50"]), fmt(s["itl_ms"]["p90"]), fmt(s["tpot_ms_p50"]),
            fmt(s["tokens_per_s"]), fmt(s["tpf"], ".3f"), fmt(s["acceptance"], ".3f"), modes or "-"]


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        right = {i for i in range(1, len(COLUMNS) - 1)}
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---:" if i in right else "---" for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if 0 < i < len(COLUMNS) - 1 else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot(prefix: str, points: list[dict]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no PNGs written", file=sys.stderr)
        return []
    written = []

    def save(fig, path: str) -> None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    main = [p for p in points if p["threshold"] is None]
    labels = list(dict.fromkeys(p["label"] for p in main))
    for key, ylabel, suffix in (("tokens_per_s", "output tokens/s", "throughput"),
                                ("tpf", "tokens per forward (usage)", "tpf")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab in labels:
            pts = sorted((p["concurrency"], p["summary"][key]) for p in main
                         if p["label"] == lab and p["summary"][key] is not None)
            if pts:
                ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=lab)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, f"{prefix}-{suffix}.png")
    sweep = [p for p in points if p["threshold"] is not None]
    if sweep:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for conc in sorted({p["concurrency"] for p in sweep}):
            pts = sorted((p["threshold"], p["summary"]) for p in sweep if p["concurrency"] == conc)
            xs = [t for t, _ in pts]
            a1.plot(xs, [s["tpf"] or float("nan") for _, s in pts], marker="o",
                    label=f"conc {conc}")
            a2.plot(xs, [s["tokens_per_s"] or float("nan") for _, s in pts], marker="o",
                    label=f"conc {conc}")
        a1.set_ylabel("diffusion TPF")
        a2.set_ylabel("diffusion output tokens/s")
        for a in (a1, a2):
            a.set_xlabel("threshold")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        save(fig, f"{prefix}-thresholds.png")
    return written


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:30000", help="server base URL")
    p.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    p.add_argument("--concurrency", default="1,4,8", help="comma list of client concurrencies")
    p.add_argument("--modes", action="append", default=None,
                   help="comma list of modes, or mix:ar=1,linear_spec=1 (repeatable; "
                        "default ar,diffusion,linear_spec,auto)")
    p.add_argument("--requests", type=int, default=16, help="requests per point")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-file", default=None, help="one prompt per line")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request (s)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests per mode first")
    p.add_argument("--block-length", type=int, default=None, help="per-request block_length")
    p.add_argument("--thresholds", default=None,
                   help="comma list: also sweep the diffusion threshold at each concurrency")
    p.add_argument("--json", default=None, metavar="OUT", help="save raw records and summaries")
    p.add_argument("--plot", default=None, metavar="PREFIX", help="save PNGs (needs matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import openai
    from tqdm import tqdm

    url = args.url.rstrip("/")
    concs = parse_list(args.concurrency, int)
    if not concs or min(concs) < 1 or args.requests < 1:
        raise SystemExit("--concurrency values and --requests must be >= 1")
    points_spec = parse_modes(args.modes or [",".join(MODES)])
    thresholds = parse_list(args.thresholds, float) if args.thresholds else []
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise SystemExit("--thresholds must lie in [0, 1]")
    if args.prompt_file:
        with open(args.prompt_file) as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise SystemExit(f"{args.prompt_file} has no prompts")
    else:
        prompts = list(PROMPTS)

    server = server_description(url)
    if "error" in server["v1/models"] and "error" in server["model_info"]:
        raise SystemExit(f"no server at {url}: {server['v1/models']['error']}")
    model = args.model
    if model is None:
        try:
            model = server["v1/models"]["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            model = "default"

    cmdline = shlex.join([os.path.relpath(sys.argv[0]) if sys.argv[0] else "serving.py",
                          *(argv if argv is not None else sys.argv[1:])])
    header = [f"# command: {cmdline}",
              f"# client:  {hardware()}",
              f"# server:  {url}  model={model}",
              f"# /model_info: {json.dumps(server['model_info'])}",
              f"# /server_info: {json.dumps(server['server_info'])}",
              f"# requests/point {args.requests}, max_tokens {args.max_tokens}, temperature 0, "
              f"{len(prompts)} prompts, client timeout {args.timeout:g} s, streaming"]
    print("\n".join(header), flush=True)

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                           timeout=args.timeout)

    # (label, schedule, concurrency, threshold)
    plan = []
    for conc in concs:
        for label, parts in points_spec:
            plan.append((label, mix_schedule(parts, args.requests), conc, None))
        for t in thresholds:
            plan.append((f"diffusion@{t:g}", ["diffusion"] * args.requests, conc, t))
    used_modes = sorted({m for _, sched, _, _ in plan for m in sched})

    t_start = time.perf_counter()
    warm = []
    for mode in used_modes:
        for i in range(args.warmup):
            r = Record("warmup", mode, 1, None, i, prompts[i % len(prompts)])
            one_request(client, model, r, args.max_tokens, args.timeout, time.perf_counter(),
                        args.block_length)
            warm.append(r)
    bad = [r for r in warm if not r.ok]
    if bad:
        print(f"# warm-up errors: {[(r.mode_spec, r.error) for r in bad]}", flush=True)

    points = []
    bar = tqdm(total=len(plan) * args.requests, desc="requests", unit="req",
               disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for label, sched, conc, thr in plan:
            bar.set_postfix_str(f"{label} c={conc}")
            recs, wall = run_point(client, model, label, sched, conc, prompts, args, thr, bar)
            points.append({"label": label, "concurrency": conc, "threshold": thr,
                           "summary": summarize(recs, wall),
                           "records": [asdict(r) for r in recs]})
    finally:
        bar.close()

    rows = [row_cells(p["label"], p["concurrency"], p["summary"])
            for p in sorted(points, key=lambda p: (p["threshold"] is not None, p["label"],
                                                     p["concurrency"]))]
    order = {lab: i for i, (lab, _) in enumerate(points_spec)}
    rows.sort(key=lambda r: (order.get(r[0], len(order)), r[0], int(r[1])))
    print()
    print(render(rows, args.markdown))
    print(f"\n# total {time.perf_counter() - t_start:.1f} s; times in ms; ITL per text chunk, "
          f"TPOT per token; TPF/accept from usage")
    kinds: dict[str, int] = {}
    for p_ in points:
        for k, n in p_["summary"]["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + n
    if kinds:
        print(f"# errors: {kinds}")
    loads = http_json(url + "/v1/loads")
    try:
        used = [d.get("num_used_tokens") for d in loads["loads"]]
        print(f"# /v1/loads after the run: num_used_tokens {used}")
    except (KeyError, TypeError):
        pass

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmdline, "client": hardware(), "url": url, "model": model,
                       "server": server, "args": vars(args), "warmup": [asdict(r) for r in warm],
                       "points": points}, f, indent=1)
        print(f"# raw results: {args.json}")
    if args.plot:
        for path in plot(args.plot, points):
            print(f"# plot: {path}")
    return 1 if kinds and all(p_["summary"]["ok"] == 0 for p_ in points) else 0


if __name__ == "__main__":
    sys.exit(main())
