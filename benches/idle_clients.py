#!/usr/bin/env python3
"""Open many authenticated, idle PostgreSQL client connections and hold them.

Each connection sends a StartupMessage, completes the server's authentication
(SCRAM-SHA-256, MD5, cleartext or trust), waits for ReadyForQuery and then stays idle.
When every connection has either reached ReadyForQuery or failed, one line is
printed on stdout:

    READY ok=<n> failed=<n> seconds=<s>

followed by up to 5 lines `ERROR <count> <message>` (the most common failures).
The connections are then held until SIGTERM/SIGINT (or --hold seconds elapse),
when they are closed with a Terminate message.

Usage: idle_clients.py --host 127.0.0.1 --port 6432 --user bench --password bench_pw
                       --dbname bench --count 5000 [--concurrency 100] [--hold 0]
"""
import argparse
import asyncio
import base64
import collections
import hashlib
import hmac
import os
import signal
import struct
import sys
import time

_salted_cache = {}


def salted_password(password, salt, iterations):
    key = (password, salt, iterations)
    if key not in _salted_cache:
        _salted_cache[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return _salted_cache[key]


class PgError(Exception):
    pass


def message(kind, payload):
    return kind + struct.pack("!I", len(payload) + 4) + payload


async def read_message(reader):
    header = await reader.readexactly(5)
    kind, length = header[:1], struct.unpack("!I", header[1:])[0]
    payload = await reader.readexactly(length - 4)
    return kind, payload


def error_text(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return "%s %s: %s" % (fields.get("S", "ERROR"), fields.get("C", "?????"), fields.get("M", ""))


async def connect(args):
    """Connect and log in; returns (reader, writer) at ReadyForQuery."""
    reader, writer = await asyncio.open_connection(args.host, args.port)
    try:
        params = b"user\0" + args.user.encode() + b"\0database\0" + args.dbname.encode() + b"\0"
        params += b"application_name\0idle_clients\0\0"
        payload = struct.pack("!I", 196608) + params
        writer.write(struct.pack("!I", len(payload) + 4) + payload)
        await writer.drain()
        scram = None
        while True:
            kind, payload = await read_message(reader)
            if kind == b"E":
                raise PgError(error_text(payload))
            if kind == b"Z":
                return reader, writer
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse, ...
            code = struct.unpack("!I", payload[:4])[0]
            if code == 0:  # AuthenticationOk
                continue
            if code == 3:  # cleartext
                writer.write(message(b"p", args.password.encode() + b"\0"))
            elif code == 5:  # MD5
                salt = payload[4:8]
                inner = hashlib.md5(args.password.encode() + args.user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + salt).hexdigest()
                writer.write(message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:  # SASL
                mechanisms = [m for m in payload[4:].split(b"\0") if m]
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise PgError("no supported SASL mechanism in %r" % mechanisms)
                nonce = base64.b64encode(os.urandom(18)).decode()
                first_bare = "n=,r=" + nonce
                first = ("n,," + first_bare).encode()
                body = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
                writer.write(message(b"p", body))
                scram = {"nonce": nonce, "first_bare": first_bare}
            elif code == 11:  # SASLContinue: server-first-message
                server_first = payload[4:].decode()
                attrs = dict(part.split("=", 1) for part in server_first.split(","))
                if not attrs["r"].startswith(scram["nonce"]):
                    raise PgError("SCRAM: server nonce does not extend ours")
                salted = salted_password(args.password, base64.b64decode(attrs["s"]), int(attrs["i"]))
                client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
                stored_key = hashlib.sha256(client_key).digest()
                final_bare = "c=biws,r=" + attrs["r"]
                auth_message = ",".join([scram["first_bare"], server_first, final_bare]).encode()
                signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
                proof = bytes(a ^ b for a, b in zip(client_key, signature))
                server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
                scram["server_signature"] = hmac.new(server_key, auth_message, hashlib.sha256).digest()
                final = final_bare + ",p=" + base64.b64encode(proof).decode()
                writer.write(message(b"p", final.encode()))
            elif code == 12:  # SASLFinal
                attrs = dict(part.split("=", 1) for part in payload[4:].decode().split(","))
                if base64.b64decode(attrs.get("v", "")) != scram["server_signature"]:
                    raise PgError("SCRAM: wrong server signature")
                continue
            else:
                raise PgError("unsupported authentication request %d" % code)
            await writer.drain()
    except BaseException:
        writer.close()
        raise


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="bench")
    parser.add_argument("--password", default=os.environ.get("PGPASSWORD", ""))
    parser.add_argument("--dbname", default="bench")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100,
                        help="connections being set up at the same time")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-connection setup timeout")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="seconds to hold the connections (0: until SIGTERM/SIGINT)")
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    gate = asyncio.Semaphore(args.concurrency)
    held, errors = [], collections.Counter()

    async def one():
        async with gate:
            try:
                held.append(await asyncio.wait_for(connect(args), args.timeout))
            except asyncio.TimeoutError:
                errors["timed out after %gs" % args.timeout] += 1
            except (PgError, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as e:
                errors[str(e) or type(e).__name__] += 1

    started = time.monotonic()
    setup = asyncio.ensure_future(asyncio.gather(*(one() for _ in range(args.count))))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([setup, stopped], return_when=asyncio.FIRST_COMPLETED)
    if setup.done():
        print("READY ok=%d failed=%d seconds=%.1f"
              % (len(held), sum(errors.values()), time.monotonic() - started), flush=True)
        for text, count in errors.most_common(5):
            print("ERROR %d %s" % (count, text), flush=True)
        if args.hold > 0:
            try:
                await asyncio.wait_for(stop.wait(), args.hold)
            except asyncio.TimeoutError:
                pass
        else:
            await stop.wait()
    else:
        setup.cancel()
    stopped.cancel()
    for _, writer in held:
        try:
            writer.write(message(b"X", b""))
            writer.close()
        except OSError:
            pass
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
