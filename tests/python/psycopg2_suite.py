"""Runs psycopg2's own test suite (from its sdist) one test at a time, with a
per-test timeout, and writes each test's outcome as JSON.

    python psycopg2_suite.py --sdist DIR --out FILE.json [--per-test-timeout S]
                             [--overall-timeout S] [--label NAME] [--only A,B]

The suite reads PSYCOPG2_TESTDB, PSYCOPG2_TESTDB_HOST, _PORT, _USER, _PASSWORD.
A worker process runs the tests in order and reports `START i` / `END i <json>`
lines; this supervisor waits at most --per-test-timeout for each test. A test that
takes longer (psycopg2 blocked in libpq cannot be interrupted from Python) is
recorded as `timeout`, the worker is killed and a new one resumes at the next
test; a worker that dies records `crash`. Outcomes: pass, fail, error, skip,
xfail, xpass, timeout, crash. After --overall-timeout the remaining tests are
recorded as `not-run`. --only keeps the tests whose id contains one of the
given substrings. Besides FILE.json, FILE.txt lists `<test id> <outcome>` lines.
"""

import argparse
import json
import os
import select
import subprocess
import sys
import time
import traceback
import unittest


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def load_tests(sdist, only=""):
    sys.path.insert(0, sdist)
    import tests  # the sdist's tests/ package  # noqa: E402

    # tests.test_suite() first checks the database is reachable (exit 1 if not).
    wanted = [w for w in only.split(",") if w]
    return [t for t in flatten(tests.test_suite())
            if not wanted or any(w in t.id() for w in wanted)]


class OneResult(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.outcome = "pass"
        self.detail = ""

    def _set(self, outcome, detail):
        # The first non-pass outcome wins (subtests can report several).
        if self.outcome == "pass":
            self.outcome = outcome
            self.detail = detail

    def addError(self, test, err):
        super().addError(test, err)
        self._set("error", _first_line(err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set("fail", _first_line(err))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._set("fail" if failed else "error", _first_line(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set("skip", str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set("xfail", _first_line(err))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set("xpass", "")


def _first_line(err):
    text = "".join(traceback.format_exception_only(err[0], err[1])).strip()
    return " ".join(text.split())[:300]


def worker(sdist, start, only):
    tests = load_tests(sdist, only)
    print(f"COUNT {len(tests)}", flush=True)
    for i in range(start, len(tests)):
        test = tests[i]
        print(f"START {i} {test.id()}", flush=True)
        result = OneResult()
        t0 = time.monotonic()
        try:
            test.run(result)
        except Exception as e:  # noqa: BLE001
            result._set("error", f"runner: {type(e).__name__}: {e}")
        record = {"id": test.id(), "outcome": result.outcome, "detail": result.detail,
                  "seconds": round(time.monotonic() - t0, 3)}
        print(f"END {i} {json.dumps(record)}", flush=True)
    print("DONE", flush=True)


class Worker:
    def __init__(self, args, start):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--sdist", args.sdist,
             "--start", str(start), "--only", args.only],
            cwd=args.sdist, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.buffer = ""
        self.log = []

    def line(self, timeout):
        """The next line of output, None on timeout, "" at EOF."""
        deadline = time.monotonic() + timeout
        while "\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536).decode("utf-8", "replace")
            if not chunk:
                rest, self.buffer = self.buffer, ""
                return rest if rest else ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split("\n", 1)
        return line + "\n"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def supervise(args):
    started = time.monotonic()
    results = {}
    order = []
    count = None
    start = 0
    log = []
    while count is None or start < count:
        if time.monotonic() - started > args.overall_timeout:
            break
        w = Worker(args, start)
        current = None
        current_t0 = time.monotonic()
        while True:
            waited = args.per_test_timeout if current is not None else 120
            line = w.line(waited)
            if line is None:
                # The current test (or the suite import) did not finish in time.
                if current is None:
                    w.kill()
                    raise SystemExit("psycopg2_suite: the worker did not start a test within 120 s")
                i, test_id = current
                results[test_id] = {"id": test_id, "outcome": "timeout",
                                    "detail": f"no result within {args.per_test_timeout:g} s",
                                    "seconds": round(time.monotonic() - current_t0, 3)}
                order.append(test_id)
                print(f"  TIMEOUT {test_id}", flush=True)
                w.kill()
                start = i + 1
                break
            if line == "":
                w.kill()
                if current is None:
                    raise SystemExit("psycopg2_suite: the worker exited before running a test:\n"
                                     + "".join(log[-40:]))
                i, test_id = current
                results[test_id] = {"id": test_id, "outcome": "crash",
                                    "detail": "worker exited: " + " | ".join(l.strip() for l in log[-5:]),
                                    "seconds": round(time.monotonic() - current_t0, 3)}
                order.append(test_id)
                print(f"  CRASH {test_id}", flush=True)
                start = i + 1
                break
            if line.startswith("COUNT "):
                count = int(line.split()[1])
            elif line.startswith("START "):
                _, i, test_id = line.split(maxsplit=2)
                current = (int(i), test_id.strip())
                current_t0 = time.monotonic()
            elif line.startswith("END "):
                _, i, payload = line.split(maxsplit=2)
                record = json.loads(payload)
                results[record["id"]] = record
                order.append(record["id"])
                current = None
                start = int(i) + 1
            elif line.startswith("DONE"):
                w.kill()
                start = count
                break
            else:
                log.append(line)
                del log[:-200]
    not_run = 0
    if count is not None and start < count:
        # Overall timeout: name the tests that did not run.
        tests = load_tests(args.sdist, args.only)
        for test in tests[start:]:
            results[test.id()] = {"id": test.id(), "outcome": "not-run",
                                  "detail": f"overall timeout {args.overall_timeout:g} s", "seconds": 0}
            order.append(test.id())
            not_run += 1
    elapsed = time.monotonic() - started
    summary = {}
    for r in results.values():
        summary[r["outcome"]] = summary.get(r["outcome"], 0) + 1
    with open(args.out, "w") as f:
        json.dump({"label": args.label, "seconds": round(elapsed, 1), "summary": summary,
                   "tests": [results[t] for t in order]}, f, indent=1)
    with open(os.path.splitext(args.out)[0] + ".txt", "w") as f:
        f.writelines(f"{t} {results[t]['outcome']}\n" for t in order)
    print(f"psycopg2 suite [{args.label}]: {len(results)} tests in {elapsed:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(summary.items())), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdist", required=True)
    parser.add_argument("--out")
    parser.add_argument("--label", default="?")
    parser.add_argument("--per-test-timeout", type=float, default=30)
    parser.add_argument("--overall-timeout", type=float, default=1800)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    args.sdist = os.path.abspath(args.sdist)
    if args.worker:
        worker(args.sdist, args.start, args.only)
    else:
        if not args.out:
            parser.error("--out is required")
        supervise(args)


if __name__ == "__main__":
    main()
