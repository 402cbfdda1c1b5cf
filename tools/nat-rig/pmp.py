#!/usr/bin/env python3
"""Minimal NAT-PMP (RFC 6886) and PCP (RFC 6887) client for the NAT rig's self-test.

Run it inside the LAN namespace (ip netns exec zp-lan ...). Standard library only.

  pmp.py natpmp-addr GATEWAY                          -> "epoch=<s> external=<ip>"
  pmp.py natpmp-map GATEWAY tcp|udp IPORT EPORT LIFETIME
                                                      -> "epoch=<s> iport=<p> eport=<p> lifetime=<s>"
  pmp.py pcp-map GATEWAY CLIENT_IP tcp|udp IPORT EPORT LIFETIME
                                                      -> "epoch=<s> iport=<p> eport=<p> external=<ip> lifetime=<s>"

LIFETIME 0 deletes the mapping. Exit status: 0 success, 1 the router answered with an error
result code (printed), 2 no answer (timeout), 3 usage.
"""
import ipaddress
import os
import socket
import struct
import sys

PORT = 5351
PROTO = {"udp": (1, 17), "tcp": (2, 6)}  # NAT-PMP opcode, IANA protocol number


def exchange(gw, req, timeout):
    """Send req to gw:5351, retransmitting per RFC 6886 (250 ms, doubling) until timeout."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((gw, PORT))
        wait, left = 0.25, timeout
        while left > 0:
            s.send(req)
            s.settimeout(min(wait, left))
            try:
                return s.recv(1100)
            except ConnectionRefusedError:  # ICMP port unreachable: nothing listens on 5351
                return None
            except socket.timeout:
                left -= min(wait, left)
                wait *= 2
        return None
    finally:
        s.close()


def natpmp_addr(gw, timeout):
    r = exchange(gw, struct.pack("!BB", 0, 0), timeout)
    if r is None:
        return 2, "timeout"
    ver, op, rc, epoch = struct.unpack("!BBHI", r[:8])
    if ver != 0 or op != 128:
        return 1, f"bad reply version={ver} opcode={op}"
    if rc != 0:
        return 1, f"result={rc}"
    return 0, f"epoch={epoch} external={socket.inet_ntoa(r[8:12])}"


def natpmp_map(gw, proto, iport, eport, lifetime, timeout):
    op = PROTO[proto][0]
    r = exchange(gw, struct.pack("!BBHHHI", 0, op, 0, iport, eport, lifetime), timeout)
    if r is None:
        return 2, "timeout"
    ver, rop, rc, epoch, riport, report, rlife = struct.unpack("!BBHIHHI", r[:16])
    if ver != 0 or rop != 128 + op:
        return 1, f"bad reply version={ver} opcode={rop}"
    if rc != 0:
        return 1, f"result={rc}"
    return 0, f"epoch={epoch} iport={riport} eport={report} lifetime={rlife}"


def pcp_map(gw, client, proto, iport, eport, lifetime, timeout):
    mapped = ipaddress.IPv6Address("::ffff:" + client).packed
    nonce = os.urandom(12)
    hdr = struct.pack("!BBHI", 2, 1, 0, lifetime) + mapped
    body = nonce + struct.pack("!B3xHH", PROTO[proto][1], iport, eport) + bytes(16)
    r = exchange(gw, hdr + body, timeout)
    if r is None:
        return 2, "timeout"
    ver, op, _, rc, rlife, epoch = struct.unpack("!BBBBII", r[:12])
    if ver != 2 or op != 0x81:
        return 1, f"bad reply version={ver} opcode={op}"
    if rc != 0:
        return 1, f"result={rc}"
    rnonce = r[24:36]
    riport, report = struct.unpack("!HH", r[40:44])
    ext = ipaddress.IPv6Address(r[44:60])
    ext = ext.ipv4_mapped or ext
    if rnonce != nonce:
        return 1, "nonce mismatch"
    return 0, f"epoch={epoch} iport={riport} eport={report} external={ext} lifetime={rlife}"


def main(argv):
    timeout = float(os.environ.get("PMP_TIMEOUT", "2"))
    try:
        cmd, args = argv[1], argv[2:]
        if cmd == "natpmp-addr" and len(args) == 1:
            rc, out = natpmp_addr(args[0], timeout)
        elif cmd == "natpmp-map" and len(args) == 5 and args[1] in PROTO:
            rc, out = natpmp_map(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), timeout)
        elif cmd == "pcp-map" and len(args) == 6 and args[2] in PROTO:
            rc, out = pcp_map(args[0], args[1], args[2], int(args[3]), int(args[4]), int(args[5]), timeout)
        else:
            raise IndexError
    except (IndexError, ValueError):
        print(__doc__, file=sys.stderr)
        return 3
    print(out)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
