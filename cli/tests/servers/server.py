#!/usr/bin/env python3
"""An HTTP server for `octopus run`, in the Python standard library only.

It takes its listening socket by the systemd socket-activation convention (fd 3, LISTEN_FDS,
LISTEN_PID), tells the supervisor it is ready with READY=1 on NOTIFY_SOCKET, and on SIGTERM
stops accepting, finishes the requests in flight and exits 0.

Routes: GET /ping, GET /pid (its pid), GET /slow?ms=N[&mark=PATH] (answers after N ms; creates PATH as
soon as the request is received).

Options, for the tests: --mode ok | exit1 (exits 1 at start) | never (never ready) |
crash-after-ready (exits 2 shortly after READY=1) | stubborn (never exits on SIGTERM, and forks a
child that does not either); --hold FIFO (if FIFO exists at start, reads it
before anything else, so a test decides when this instance may start).
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


def inherited_socket():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("LISTEN_PID is not this process's pid: not started by socket activation")
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("no socket passed (LISTEN_FDS)")
    sock = socket.socket(fileno=3)
    # Several instances may wait on the socket at once during an upgrade: the one that loses
    # the race for a connection must not block in accept.
    sock.setblocking(False)
    return sock


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/ping":
            self.answer("pong\n")
        elif url.path == "/pid":
            self.answer(f"{os.getpid()}\n")
        elif url.path == "/slow":
            query = parse_qs(url.query)
            if "mark" in query:
                open(query["mark"][0], "w").close()
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
            self.answer(f"slow done {os.getpid()}\n")
        else:
            self.send_error(404)

    def answer(self, body):
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    # server_close() waits for the requests in flight.
    daemon_threads = False

    def get_request(self):
        conn, address = self.socket.accept()
        conn.setblocking(True)
        return conn, address


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--hold")
    options = parser.parse_args()
    if options.hold and os.path.exists(options.hold):
        with open(options.hold) as fifo:
            fifo.read()
    if options.mode == "exit1":
        sys.exit(1)
    # SIGTERM is taken by sigwait in the main thread, not by a handler: a handler runs between
    # any two bytecodes and could find a lock it needs held by the code it interrupted.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if options.mode == "never":
        signal.sigwait({signal.SIGTERM})
        return
    server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = inherited_socket()
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    notify("STATUS=serving")
    notify("READY=1")
    if options.mode == "crash-after-ready":
        threading.Timer(0.3, lambda: os._exit(2)).start()
    if options.mode == "stubborn":
        import subprocess
        subprocess.Popen(["sleep", "600"])
        threading.Event().wait()
    signal.sigwait({signal.SIGTERM})
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
