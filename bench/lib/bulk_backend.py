"""A backend for bench/slow.sh: large responses, sent as fast as the socket
takes them, with a log of how long each response held the backend.

    python3 bulk_backend.py serve PORT SIZE LOG
        Listens on 127.0.0.1:PORT, one thread per connection. GET /ping
        answers "ok" (the readiness probe, not logged); any other GET
        answers SIZE bytes (a preallocated 1 MiB random buffer, sent again
        and again) and closes the connection. LOG gets one line per
        response, flushed at once:
            start ID T0                     when the request head is read
            end ID T0 T1 BYTES complete     last byte written
            end ID T0 T1 BYTES aborted      the connection died first
        T0, T1 are time.time() seconds. A response with a start line and no
        end line is still holding its thread and connection.

    python3 bulk_backend.py held LOG T_END
        Summarises LOG as it stood at T_END (lines after T_END are ignored,
        so the log can be read after the window): prints
        "RESPONSES RELEASED ABORTED HELD_MEDIAN HELD_MAX". RELEASED counts
        the responses completely written by T_END, ABORTED those whose
        connection died before T_END. A response's held time runs from its
        start line to its end line, or to T_END when it was still open
        then (so the figures are lower bounds when some remain held).
"""

import os
import socket
import statistics
import sys
import threading
import time

CHUNK = os.urandom(1 << 20)


class Log:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()
        self.next_id = 0

    def start(self) -> tuple[int, float]:
        with self.lock:
            self.next_id += 1
            t0 = time.time()
            self.file.write(f"start {self.next_id} {t0:.6f}\n")
            return self.next_id, t0

    def end(self, rid: int, t0: float, sent: int, how: str) -> None:
        with self.lock:
            self.file.write(f"end {rid} {t0:.6f} {time.time():.6f} {sent} {how}\n")


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return b""
        data += more
        if len(data) > 1 << 16:
            return b""
    return data


def handle(conn: socket.socket, size: int, log: Log) -> None:
    with conn:
        try:
            head = read_head(conn)
        except OSError:
            return
        if not head:
            return
        request_line = head.split(b"\r\n", 1)[0].split()
        path = request_line[1] if len(request_line) > 1 else b"/"
        if path == b"/ping":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            return
        rid, t0 = log.start()
        sent = 0
        try:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            view = memoryview(CHUNK)
            while sent < size:
                n = min(len(CHUNK), size - sent)
                conn.sendall(view[:n])
                sent += n
        except OSError:
            log.end(rid, t0, sent, "aborted")
            return
        log.end(rid, t0, sent, "complete")


def serve(port: int, size: int, log_path: str) -> None:
    log = Log(log_path)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn, size, log), daemon=True).start()


def held(log_path: str, t_end: float) -> None:
    starts: dict[str, float] = {}
    ends: dict[str, tuple[float, str]] = {}
    with open(log_path) as f:
        for line in f:
            fields = line.split()
            if fields[0] == "start" and float(fields[2]) <= t_end:
                starts[fields[1]] = float(fields[2])
            elif fields[0] == "end" and float(fields[3]) <= t_end:
                ends[fields[1]] = (float(fields[3]), fields[5])
    if not starts:
        print("0 0 0 none none")
        return
    times = [ends.get(rid, (t_end, ""))[0] - t0 for rid, t0 in starts.items()]
    complete = sum(how == "complete" for _, how in ends.values())
    aborted = len(ends) - complete
    print(f"{len(times)} {complete} {aborted} {statistics.median(times):.2f} {max(times):.2f}")


def main() -> None:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "held":
        held(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
