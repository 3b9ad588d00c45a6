#!/usr/bin/env python3
"""A stand-in for one Patroni REST API whose node is the primary.

GET /primary and /master -> 200, GET /replica -> 503, GET /patroni -> {"timeline":1}.
Usage: fake_patroni.py PORT   (binds 127.0.0.1 only)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, send_body):
        path = self.path.split("?", 1)[0]
        if path in ("/primary", "/master", "/read-write", "/leader"):
            status, doc = 200, {"state": "running", "role": "master", "timeline": 1}
        elif path in ("/patroni", "/"):
            status, doc = 200, {"state": "running", "role": "master", "timeline": 1}
        elif path in ("/replica", "/read-only"):
            status, doc = 503, {"state": "running", "role": "master", "timeline": 1}
        else:
            status, doc = 404, {"error": "not found"}
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_GET(self):
        self._answer(True)

    def do_HEAD(self):
        self._answer(False)

    def do_OPTIONS(self):
        self._answer(False)

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
