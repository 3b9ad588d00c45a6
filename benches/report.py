#!/usr/bin/env python3
"""Turn compare.sh's raw per-run numbers into the Markdown report.

Input: --raw results.tsv (round, workload, target, tps, failed, rc, peak_server_conns, note),
--idle idle.tsv (idle-client memory test), machine facts in REPORT_* environment variables.
Output: Markdown on stdout.
"""
import argparse
import csv
import os
import statistics
import time

WORKLOADS = {
    "select": ("select-only", "-S -c 32 -j 2 -M simple"),
    "prepared": ("select-only prepared", "-S -c 32 -j 2 -M prepared"),
    "c500": ("500 clients", "-S -c 500 -j 2"),
    "connect": ("connect per transaction", "-S -C -c 4 -j 1, 2 processes"),
}
TARGETS = {"direct": "direct", "switchyard": "switchyard", "pgbouncer": "pgbouncer", "haproxy": "haproxy",
           "tokio-relay": "tokio-relay (floor)", "baseline": "baseline (older build)"}


def read_tsv(path):
    if not path or not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def fmt_tps(value):
    return "{:,.0f}".format(value)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--idle")
    p.add_argument("--targets", required=True)
    p.add_argument("--workloads", required=True)
    p.add_argument("--idle-clients", type=int, default=0)
    args = p.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    workloads = [w for w in args.workloads.split(",") if w]
    rows = read_tsv(args.raw)
    env = os.environ.get

    runs = {}  # (workload, target) -> list of rows
    for row in rows:
        runs.setdefault((row["workload"], row["target"]), []).append(row)

    def cell_state(workload, target):
        """(median tps or None, text flags, list of problems)"""
        rs = runs.get((workload, target), [])
        if not rs:
            return None, "-", []
        if all(r["note"].startswith("n/a") for r in rs):
            return None, "n/a", []
        problems = []
        good = []
        for r in rs:
            tps = num(r["tps"])
            failed = int(r["failed"]) if r["failed"].isdigit() else None
            rc = r["rc"]
            bad = rc != "0" or tps is None or failed is None or failed > 0
            if bad:
                problems.append(
                    "%s / %s, round %s: pgbench exit %s, failed transactions %s%s"
                    % (WORKLOADS[workload][0], target, r["round"], rc,
                       r["failed"] or "?", (": " + r["note"]) if r["note"] else ""))
            if tps is not None and rc == "0":
                good.append(tps)
        if not good:
            return None, "error", problems
        return statistics.median(good), "", problems

    out = []
    out.append("## Benchmark: Switchyard vs. PgBouncer vs. HAProxy")
    out.append("")
    out.append("Median pgbench TPS per workload (higher is better); in brackets the ratio to "
               "connecting to PostgreSQL directly.")
    out.append("")
    header = ["workload"] + [TARGETS[t] for t in targets]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" + "---:|" * len(targets))
    problems_all = []
    backends = {}
    for w in workloads:
        direct, _, _ = cell_state(w, "direct") if "direct" in targets else (None, "", [])
        label, flags = WORKLOADS[w]
        cells = ["%s (`%s`%s)" % (label, flags, ", TPS including connection time" if w == "connect" else "")]
        for t in targets:
            median, text, problems = cell_state(w, t)
            problems_all += problems
            peaks = [int(r["peak_server_conns"]) for r in runs.get((w, t), [])
                     if r["peak_server_conns"].isdigit()]
            if peaks:
                backends[(w, t)] = max(peaks)
            if median is None:
                cells.append(text)
                continue
            cell = fmt_tps(median)
            if t != "direct" and direct:
                cell += " (%.2f×)" % (median / direct)
            if problems:
                cell += " ⚠"
            cells.append(cell)
        out.append("| " + " | ".join(cells) + " |")
    out.append("")

    cpu_rows = []
    proxies = [t for t in targets if t != "direct"]
    for w in workloads:
        cells = []
        for t in proxies:
            values = [num(r.get("proxy_cpu_us", "")) for r in runs.get((w, t), [])]
            values = [v for v in values if v is not None]
            cells.append("%.1f" % statistics.median(values) if values else "-")
        if any(c != "-" for c in cells):
            cpu_rows.append("| " + " | ".join([WORKLOADS[w][0]] + cells) + " |")
    if cpu_rows:
        out.append("The proxy's own CPU time (user + system) per transaction, in microseconds, "
                   "median over the rounds (lower is better; steadier than TPS when pgbench, "
                   "PostgreSQL and the proxy share the cores):")
        out.append("")
        out.append("| workload | " + " | ".join(TARGETS[t] for t in proxies) + " |")
        out.append("|---|" + "---:|" * len(proxies))
        out.extend(cpu_rows)
        out.append("")

    if backends:
        out.append("Peak connections to PostgreSQL opened by each target during the runs "
                   "(pgbench's own for direct; sampled every second with `ss`):")
        out.append("")
        out.append("| workload | " + " | ".join(TARGETS[t] for t in targets) + " |")
        out.append("|---|" + "---:|" * len(targets))
        for w in workloads:
            cells = [WORKLOADS[w][0]] + [str(backends.get((w, t), "-")) for t in targets]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")

    idle = read_tsv(args.idle)
    if idle:
        out.append("Memory per idle client (%s authenticated, idle client connections held open; "
                   "RSS growth of the proxy process divided by the connections that logged in):"
                   % "{:,}".format(args.idle_clients))
        out.append("")
        for r in idle:
            ok = int(r["ok"] or 0)
            before, after, hwm = num(r["rss_before_kib"]), num(r["rss_after_kib"]), num(r["hwm_kib"])
            if ok > 0 and before is not None and after is not None:
                line = "- %s: **%.1f KiB per client** (RSS %.1f → %.1f MiB, peak %.1f MiB; %s of %s logged in in %ss; connections to PostgreSQL while they idled: %s)" % (
                    r["target"], (after - before) / ok, before / 1024, after / 1024,
                    (hwm or 0) / 1024, "{:,}".format(ok), "{:,}".format(int(r["clients"])),
                    r["seconds"], r["backends"])
            else:
                line = "- %s: n/a (no client logged in)" % r["target"]
            if r.get("errors"):
                line += "; failures: " + r["errors"].strip()
            out.append(line)
        out.append("")

    if problems_all:
        out.append("**Errors** (⚠; the median only uses runs that exited 0, failed transactions are counted in):")
        out.append("")
        for text in problems_all:
            out.append("- " + text)
    else:
        out.append("Errors: none (every pgbench run exited 0 with 0 failed transactions).")
    out.append("")
    pgb_na = any(r["note"].startswith("n/a") for r in rows)
    if pgb_na:
        out.append("n/a: PgBouncer %s has no protocol-level prepared statements in transaction "
                   "mode (that needs ≥ 1.21, `max_prepared_statements`)." % env("REPORT_PGB", "?"))
        out.append("")
    out.append("Machine: %s × %s, %s RAM, Linux %s; PostgreSQL %s, PgBouncer %s, HAProxy %s; "
               "switchyard %s. One PostgreSQL server (SCRAM-SHA-256, `max_connections=700`, "
               "`shared_buffers=128MB`, `fsync=off`), pgbench on the same machine over 127.0.0.1; "
               "%s. Run on %s." % (
                   env("REPORT_NPROC", "?"), env("REPORT_CPU_MODEL", "?"), env("REPORT_MEM", "?"),
                   env("REPORT_KERNEL", "?"), env("REPORT_PG", "?"), env("REPORT_PGB", "?"),
                   env("REPORT_HAP", "?"), env("REPORT_SY", "?"), env("REPORT_PARAMS", ""),
                   time.strftime("%Y-%m-%d")))
    out.append("")

    rounds = sorted({int(r["round"]) for r in rows})
    if len(rounds) > 1:
        out.append("<details><summary>TPS of every run</summary>")
        out.append("")
        out.append("| workload | target | " + " | ".join("round %d" % n for n in rounds) + " |")
        out.append("|---|---|" + "---:|" * len(rounds))
        for w in workloads:
            for t in targets:
                by_round = {int(r["round"]): r for r in runs.get((w, t), [])}
                cells = []
                for n in rounds:
                    r = by_round.get(n)
                    if r is None:
                        cells.append("-")
                    elif r["note"].startswith("n/a"):
                        cells.append("n/a")
                    elif num(r["tps"]) is None:
                        cells.append("error")
                    else:
                        cells.append(fmt_tps(num(r["tps"])) + ("" if r["rc"] == "0" and r["failed"] == "0" else " ⚠"))
                out.append("| %s | %s | %s |" % (WORKLOADS[w][0], t, " | ".join(cells)))
        out.append("")
        out.append("</details>")
        out.append("")
    print("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    main()
