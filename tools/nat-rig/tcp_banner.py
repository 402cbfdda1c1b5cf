#!/usr/bin/env python3
"""Tiny TCP server for the NAT rig: tcp_banner.py BIND_IP PORT [PORT...]

Answers every connection with one line, "zp-banner <port> <peer-ip>\\n", and closes it, so a
client sees which server port it reached and the server shows which address the connection
came from (the router's external address when it was masqueraded). Prints "ready" once all
ports are bound. Standard library only; no DNS lookups (unlike python3 -m http.server).
"""
import socket
import sys
import threading


def serve(sock, port):
    while True:
        conn, peer = sock.accept()
        with conn:
            conn.sendall(f"zp-banner {port} {peer[0]}\n".encode())


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
    threads = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        t = threading.Thread(target=serve, args=(s, port), daemon=True)
        t.start()
        threads.append(t)
    print("ready", flush=True)
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
