"""Opens N keep-alive connections to HOST:PORT, sends one GET on each, reads
each response, then holds them idle until stdin closes or SECONDS pass.

Prints "ready" once every connection has its response, so the caller can
measure the server's memory with N idle keep-alive connections open.
"""

import select
import socket
import sys
import time


def main() -> None:
    host, port, count, path, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    conns = []
    for _ in range(count):
        s = socket.create_connection((host, port))
        s.sendall(request)
        conns.append(s)
    pending = {s.fileno(): s for s in conns}
    got = {fd: b"" for fd in pending}
    deadline = time.time() + 60
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    while pending and time.time() < deadline:
        for fd, _ in poller.poll(1000):
            data = pending[fd].recv(65536)
            got[fd] += data
            head, sep, body = got[fd].partition(b"\r\n\r\n")
            if not data or (sep and len(body) >= content_length(head)):
                poller.unregister(fd)
                del pending[fd]
    if pending:
        print(f"error: {len(pending)} connections got no full response", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    time.sleep(hold)


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


if __name__ == "__main__":
    main()
