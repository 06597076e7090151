"""Load and soak test of ``engine serve``: N concurrent loopback clients for a fixed time, per phase.

    python -m bench.load_soak --index INDEX_DIR [--clients 1 10] [--seconds 60] [--batch on off] [--update-docs]

Starts the real ``engine serve`` as a separate process (``python -m engine serve --port 0``), so its memory is
measured on its own, waits for ``/healthz``, warms it up, then runs one phase per ``--clients`` value: that many
client threads, each on its own keep-alive connection (reconnecting after an error), send k=10 text queries
back to back for ``--seconds``. Queries are distinct natural sentences (the fixed list, then captions stored in
the index); every fifth carries a ``where`` filter (a split or a class). A probe thread asks ``/healthz`` once a
second on a fresh connection. Recorded per phase: requests, throughput, errors by kind (non-200 statuses,
timeouts, connection errors), latency p50/p95/p99/max, ``/healthz`` latency under load, the server's resident
memory (VmRSS) before and after the phase and its peak (sampled every 0.5 s), and its CPU seconds. The server's
log is scanned for tracebacks at the end.

``--batch on off`` compares batched query encoding with one-query-at-a-time in one run: one server per mode
(``engine serve --batch on|off``), the same index and queries, the phases interleaved (for each client count,
every mode in turn) so that a change in the machine's load hits both alike. Each phase also averages the
server's ``Server-Timing`` stages (queue wait, encode and its batch size, search, serialisation, the whole
handler): where the time goes. Raw results go to ``docs/bench/load_soak_<index name>.json``;
``--update-docs`` rewrites the ``load-soak`` block of docs/benchmarks.md.

Clients are threads of this process on the same machine as the server: on a small machine they take CPU from
it, which the JSON records (cores, load average) and the docs say.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from bench.machine import machine_info, machine_text, run_meta
from engine.atomic import write_json_atomic
from indexing.layout import INDEX_JSON, SHARDS_DIR

QUERIES = ("airport with runways", "dense residential area", "a river through green fields", "baseball diamond",
           "parking lot with many cars", "beach and sea", "harbor with boats", "tennis court", "freeway",
           "storage tanks", "golf course", "sparse residential houses")
K = 10
# --batch modes: the engine serve flags of each ("on-1lane": batched, text on the model thread only, as before
# the text lanes)
MODES = {"on": ["--batch", "on"], "off": ["--batch", "off"],
         "on-1lane": ["--batch", "on", "--batch-text-lanes", "1"]}
FILTER_EVERY = 5
CLIENT_TIMEOUT_S = 60.0
WARMUP_S = 10.0
SAMPLE_S = 0.5
START_TIMEOUT_S = 600.0
DOCS = Path(__file__).resolve().parents[1] / "docs"
REPO = Path(__file__).resolve().parents[1]


def index_sentences(index: Path, count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(distinct query sentences, class names) from the index's own shards (no model needed here)."""
    import pyarrow.parquet as pq

    table = pq.read_table(index / SHARDS_DIR, columns=["captions", "label"])
    captions = [row[0] for row in table.column("captions").to_pylist() if row]
    rng = np.random.default_rng(seed)
    texts = list(dict.fromkeys(QUERIES))
    for position in rng.permutation(len(captions)):
        if len(texts) >= count:
            break
        if captions[position] not in texts:
            texts.append(captions[position])
    labels = sorted({label for label in table.column("label").to_pylist() if label})
    return texts, labels


def query_params(texts: list[str], labels: list[str]) -> list[dict]:
    filters = ["split = 'test'", *[f"class = '{label}'" for label in labels[:8]]]
    params = []
    for position, text in enumerate(texts):
        row = {"q": text, "k": K}
        if position % FILTER_EVERY == FILTER_EVERY - 1:
            row["where"] = filters[(position // FILTER_EVERY) % len(filters)]
        params.append(row)
    return params


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``engine serve`` in its own process; port read from its start-up line."""

    def __init__(self, index: Path, log_path: Path, text_encoder: str = "auto", batch: str = "on") -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--index", str(index),
                                         "--port", "0", "--device", "cpu", "--text-encoder", text_encoder,
                                         *MODES[batch]],
                                        stdout=self.log, stderr=self.log, env=env, cwd=REPO)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"engine serve exited: {self.log_path.read_text()[-2000:]}")
            found = re.search(r"on http://[^:]+:(\d+)/", self.log_path.read_text())
            if found:
                return int(found.group(1))
            time.sleep(0.2)
        raise RuntimeError("engine serve did not start in time")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        return self.log_path.read_text()


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing`` -> {stage: ms}, plus ``encode_batch`` when the encode stage names its batch size."""
    stages: dict[str, float] = {}
    for part in (header or "").split(","):
        fields = [field.strip() for field in part.split(";")]
        if not fields[0]:
            continue
        for field in fields[1:]:
            key, _, value = field.partition("=")
            if key == "dur":
                stages[fields[0]] = float(value)
            elif key == "desc" and value.strip('"').startswith("batch "):
                stages["encode_batch"] = float(value.strip('"').split()[1])
    return stages


def _client(port: int, params: list[dict], offset: int, stop_at: float, out: dict) -> None:
    latencies, errors, stages = out["latencies"], out["errors"], out.setdefault("stages", {})
    connection = None
    position = offset
    while time.monotonic() < stop_at:
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
        path = "/query?" + urlencode(params[position % len(params)])
        position += 1
        began = time.perf_counter()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - began) * 1000
            if response.status != 200:
                errors[f"HTTP {response.status}"] = errors.get(f"HTTP {response.status}", 0) + 1
            elif not json.loads(body).get("results"):
                errors["empty result"] = errors.get("empty result", 0) + 1
            else:
                latencies.append(elapsed)
                for name, value in parse_server_timing(response.getheader("Server-Timing")).items():
                    stages.setdefault(name, []).append(value)
            if response.getheader("Connection", "").lower() == "close":
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as error:
            kind = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
            errors[kind] = errors.get(kind, 0) + 1
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def _probe(port: int, stop_at: float, out: list[float], failures: list[str]) -> None:
    while time.monotonic() < stop_at:
        began = time.perf_counter()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                out.append((time.perf_counter() - began) * 1000)
            else:
                failures.append(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as error:
            failures.append(type(error).__name__)
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))


def _own_cpu_seconds() -> float:
    """CPU seconds of this process (the client threads, the probe and the sampler), user + system."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_phase(server, params: list[dict], clients: int, seconds: float) -> dict:
    """One phase against ``server`` (anything with ``port`` and ``pid``)."""
    rss_before, cpu_before = rss_bytes(server.pid), cpu_seconds(server.pid)
    clients_cpu_before = _own_cpu_seconds()
    load_before = os.getloadavg()[0]
    stop_at = time.monotonic() + seconds
    results = [{"latencies": [], "errors": {}} for _ in range(clients)]
    spacing = max(1, len(params) // clients)
    threads = [threading.Thread(target=_client, args=(server.port, params, number * spacing, stop_at, results[number]))
               for number in range(clients)]
    health: list[float] = []
    health_failures: list[str] = []
    probe = threading.Thread(target=_probe, args=(server.port, stop_at, health, health_failures))
    began = time.perf_counter()
    for thread in (*threads, probe):
        thread.start()
    peak = rss_before
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, rss_bytes(server.pid))
        time.sleep(SAMPLE_S)
    for thread in (*threads, probe):
        thread.join()
    wall = time.perf_counter() - began
    clients_cpu = _own_cpu_seconds() - clients_cpu_before
    latencies = np.asarray([value for result in results for value in result["latencies"]], dtype=np.float64)
    errors: dict[str, int] = {}
    for result in results:
        for kind, count in result["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    row = {"clients": clients, "seconds": round(wall, 1), "ok": int(len(latencies)),
           "errors": sum(errors.values()), "error_kinds": errors,
           "throughput_rps": round(len(latencies) / wall, 2),
           "rss_before_mib": round(rss_before / 2**20, 1), "rss_after_mib": round(rss_bytes(server.pid) / 2**20, 1),
           "rss_peak_mib": round(peak / 2**20, 1), "server_cpu_s": round(cpu_seconds(server.pid) - cpu_before, 1),
           "clients_cpu_s": round(clients_cpu, 1),
           "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
           "healthz_probes": len(health), "healthz_failures": health_failures}
    if len(latencies):
        row.update({f"p{q}_ms": round(float(np.percentile(latencies, q)), 1) for q in (50, 95, 99)})
        row["max_ms"] = round(float(latencies.max()), 1)
    stages: dict[str, list[float]] = {}
    for result in results:
        for name, values in result.get("stages", {}).items():
            stages.setdefault(name, []).extend(values)
    row["stages_mean_ms"] = {name: round(float(np.mean(values)), 3) for name, values in stages.items()}
    if health:
        row["healthz_p50_ms"] = round(float(np.percentile(health, 50)), 1)
        row["healthz_max_ms"] = round(float(max(health)), 1)
    return row


def measure(index: Path, clients: list[int], seconds: float, queries: int, warmup_s: float = WARMUP_S,
            text_encoder: str = "auto", batch_modes: tuple[str, ...] = ("on",)) -> dict:
    """One server per ``--batch`` mode, all up at once; per client count, one phase per mode in turn."""
    texts, labels = index_sentences(index, queries)
    params = query_params(texts, labels)
    config = json.loads((index / INDEX_JSON).read_text())
    report = {"index": str(index), "images": config["image_count"], "factory": config["factory"],
              "test_time_views": config.get("test_time_views"), "queries": len(params),
              "filtered_every": FILTER_EVERY, "k": K, "machine": machine_info(), "warmup_s": warmup_s,
              "text_encoder": text_encoder, "modes": []}
    servers = []
    try:
        for mode in batch_modes:
            log_path = Path(tempfile.mkstemp(prefix=f"load-soak-serve-{mode}-", suffix=".log")[1])
            started = time.perf_counter()
            server = Server(index, log_path, text_encoder, mode)
            servers.append(server)
            found = re.search(r"images; ([^;]+);", server.log_path.read_text())
            report["modes"].append({"batch": mode, "start_seconds": round(time.perf_counter() - started, 1),
                                    "text_encoder_chosen": found.group(1) if found else None,
                                    "rss_loaded_mib": round(rss_bytes(server.pid) / 2**20, 1), "phases": []})
        for server, entry in zip(servers, report["modes"]):
            entry["warmup"] = run_phase(server, params, max(clients), warmup_s)
        for count in clients:
            for server, entry in zip(servers, report["modes"]):
                row = run_phase(server, params, count, seconds)
                entry["phases"].append(row)
                print(json.dumps({"batch": entry["batch"], **row}), flush=True)
    finally:
        for server, entry in zip(servers, report["modes"]):
            log = server.stop()
            entry["server_tracebacks"] = log.count("Traceback")
            entry["server_log_lines"] = log.count("\n")
            entry["server_log_error_lines"] = [line for line in log.splitlines()
                                               if "internal error" in line or "connection error" in line][:20]
            server.log_path.unlink(missing_ok=True)
    return report


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _modes(report: dict) -> list[dict]:
    """The per-mode results; an older results file (one server, no ``--batch``) is one mode of its own."""
    if "modes" in report:
        return report["modes"]
    return [{"batch": report.get("batch", "—"), "phases": report["phases"],
             "server_tracebacks": report.get("server_tracebacks", 0)}]


def _phase_row(mode: str, row: dict) -> str:
    errors = str(row["errors"]) + (f" ({', '.join(f'{k}: {v}' for k, v in row['error_kinds'].items())})"
                                   if row["errors"] else "")
    return (f"| {mode} | {row['clients']} | {row['seconds']:.0f} | {row['ok']:,} | {errors} | "
            f"{row['throughput_rps']:.1f} | {row.get('p50_ms', '—')} | {row.get('p95_ms', '—')} | "
            f"{row.get('p99_ms', '—')} | {row.get('max_ms', '—')} | "
            f"{row.get('healthz_p50_ms', '—')} / {row.get('healthz_max_ms', '—')} | "
            f"{row['rss_before_mib']:.0f} → {row['rss_after_mib']:.0f} ({row['rss_peak_mib']:.0f}) | "
            f"{_cpu_cells(row)} | {row['load_average_before']:.1f} → {row['load_average_after']:.1f} |")


def _cpu_cells(row: dict) -> str:
    """'server / clients CPU s | CPU ms per request (server + clients)'; older results have no client CPU."""
    clients = row.get("clients_cpu_s")
    if clients is None:
        return f"{row['server_cpu_s']:.0f} / — | —"
    per_request = (row["server_cpu_s"] + clients) * 1000 / row["ok"] if row["ok"] else float("nan")
    server_share = row["server_cpu_s"] * 1000 / row["ok"] if row["ok"] else float("nan")
    return f"{row['server_cpu_s']:.1f} / {clients:.1f} | {server_share:.1f} + {per_request - server_share:.1f}"


STAGES = ("queue", "encode", "search", "serialise", "handler")


def _stage_row(mode: str, row: dict) -> str:
    stages = row.get("stages_mean_ms", {})
    cells = [f"{stages[name]:.1f}" if name in stages else "—" for name in STAGES]
    batch = f"{stages['encode_batch']:.1f}" if "encode_batch" in stages else "1"
    return f"| {mode} | {row['clients']} | " + " | ".join(cells) + f" | {batch} | {row.get('p50_ms', '—')} |"


def comparison(report: dict) -> list[str]:
    """One sentence per client count: batching on against off, measured in the same run."""
    modes = {entry["batch"]: entry["phases"] for entry in _modes(report)}
    if "off" not in modes:
        return []
    lines = []
    pairs = [(mode, on, off) for mode in MODES if mode != "off" and mode in modes
             for on, off in zip(modes[mode], modes["off"])]
    for mode, on, off in pairs:
        if on["clients"] != off["clients"] or not off["throughput_rps"]:
            continue
        name = "batching on" if mode == "on" else f"`{mode}`"
        lines.append(f"- {on['clients']} client(s): {name} gives {on['throughput_rps'] / off['throughput_rps']:.2f}× "
                     f"the req/s of off ({on['throughput_rps']:.1f} vs {off['throughput_rps']:.1f}); p50 "
                     f"{on.get('p50_ms', '—')} vs {off.get('p50_ms', '—')} ms, p95 {on.get('p95_ms', '—')} vs "
                     f"{off.get('p95_ms', '—')} ms.")
    return lines


def markdown(report: dict) -> str:
    meta = report.get("meta", {})
    modes = _modes(report)
    lines = ["## Load and soak (`bench/load_soak.py`)", "",
             f"`engine serve` on `{report['index']}` ({_count(report.get('images'))} images, faiss "
             f"`{report.get('factory', '?')}`, image embeddings of {report.get('test_time_views', '?')} test-time "
             "view(s): text queries are encoded the same whatever that number) in its own process (one per "
             "`--batch` mode, phases interleaved), loopback clients in another, each on a "
             f"keep-alive connection sending k={report['k']} text queries back to back ({report['queries']} "
             f"distinct sentences, every {report['filtered_every']}th with a `where` filter), one phase per client "
             f"count; a probe asks `/healthz` once a second. Date {meta.get('date', '?')}, commit "
             f"`{meta.get('commit', '?')}`, {machine_text(report['machine'])}. Command: `{meta.get('command', '?')}`."
             + (f" Note: {meta['note']}." if meta.get("note") else ""),
             "", "| batch | clients | s | requests ok | errors | req/s | p50 ms | p95 ms | p99 ms | max ms | "
             "/healthz p50 / max ms | RSS before → after MiB (peak) | CPU s server / clients | "
             "CPU ms per request server + clients | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for entry in modes:
        lines += [_phase_row(entry["batch"], row) for row in entry["phases"]]
    if any(row.get("stages_mean_ms") for entry in modes for row in entry["phases"]):
        lines += ["", "Where the time goes (server side, mean ms per request from `Server-Timing`): queue = waiting "
                  "for the model thread, encode = the encoder call (shared by the batch), search = filter + k-NN "
                  "+ metadata, serialise = JSON, handler = the whole request handler; the client's p50 adds "
                  "HTTP parsing, waiting for a worker thread and loopback.", "",
                  "| batch | clients | queue | encode | search | serialise | handler | mean encode batch | "
                  "client p50 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for entry in modes:
            lines += [_stage_row(entry["batch"], row) for row in entry["phases"]]
    versus = comparison(report)
    if versus:
        lines += ["", "Batching on against off, same run:", "", *versus]
    for entry in modes:
        phases = entry["phases"]
        first, last = phases[0], phases[-1]
        chosen = f" ({entry['text_encoder_chosen']})" if entry.get("text_encoder_chosen") else ""
        lines += ["", f"Server `--batch {entry['batch']}`{chosen}: RSS after loading and a {report['warmup_s']:.0f} s "
                  f"warm-up {first['rss_before_mib']:.0f} MiB; after the last phase {last['rss_after_mib']:.0f} MiB "
                  f"({last['rss_after_mib'] - first['rss_before_mib']:+.0f} MiB over "
                  f"{sum(row['seconds'] for row in phases):.0f} s and {sum(row['ok'] for row in phases):,} "
                  f"requests). Tracebacks in the server log: {entry.get('server_tracebacks', 0)}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="index folder to serve (required unless --from-json)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render the docs block from a saved results file instead of measuring")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--queries", type=int, default=500, help="distinct query sentences cycled by the clients")
    parser.add_argument("--warmup-seconds", type=float, default=WARMUP_S)
    parser.add_argument("--text-encoder", default="auto", help="engine serve --text-encoder")
    parser.add_argument("--batch", nargs="+", choices=tuple(MODES), default=["on"],
                        help="engine serve --batch modes compared in this run (e.g. --batch on off)")
    parser.add_argument("--note", default=None, help="a caveat printed with the table (e.g. a shared machine)")
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="raw results JSON (default docs/bench/load_soak_<index folder name>.json)")
    args = parser.parse_args()
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        print(markdown(report))
        if args.update_docs:
            from release.docs_blocks import update_page

            update_page(DOCS / "benchmarks.md", "load-soak", markdown(report))
        return
    if args.index is None:
        parser.error("--index is required")
    report = measure(args.index.resolve(), args.clients, args.seconds, args.queries, args.warmup_seconds,
                     args.text_encoder, tuple(dict.fromkeys(args.batch)))
    report["index"] = str(args.index)
    report["meta"] = run_meta(REPO)
    report["meta"]["command"] = "python -m bench.load_soak " + " ".join(
        f'"{argument}"' if " " in argument else argument for argument in sys.argv[1:])
    if args.note:
        report["meta"]["note"] = args.note
    out = args.out or DOCS / "bench" / f"load_soak_{args.index.resolve().name}.json"
    write_json_atomic(out, report, indent=1)
    print(markdown(report))
    if args.update_docs:
        from release.docs_blocks import update_page

        update_page(DOCS / "benchmarks.md", "load-soak", markdown(report))


if __name__ == "__main__":
    main()
