#!/usr/bin/env python3
"""Extract the raw SFM frames of an NVFlare CellNet capture into a fixture.

Usage: extract.py DECODER.py CAPTURE.pcap OUT.frames

DECODER.py is ../shared/tools/nvflare-decode-pcap.py, whose pcap, TCP and
streamer.Frame readers this script uses. OUT.frames holds one record per
SFM frame, in capture order per connection and direction:
    conn (1 byte) | dir (1 byte: 0 client to server, 1 server to client) |
    length (4 bytes, big-endian) | the SFM frame (Frame.data)
"""
import collections
import importlib.util
import struct
import sys

spec = importlib.util.spec_from_file_location("dec", sys.argv[1])
dec = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dec)

conns = collections.OrderedDict()
for ts, lt, pkt in dec.read_pcap(sys.argv[2]):
    r = dec.parse_ip_tcp(lt, pkt)
    if not r:
        continue
    src, sport, dst, dport, seq, flags, payload = r
    key = tuple(sorted([(src, sport), (dst, dport)]))
    c = conns.get(key)
    if c is None:
        server = (dst, dport) if flags & 0x12 == 0x02 else ((dst, dport) if dport < sport else (src, sport))
        client = key[0] if key[1] == server else key[1]
        c = conns[key] = {"client": client, "c2s": dec.Direction(), "s2c": dec.Direction()}
    c["c2s" if (src, sport) == c["client"] else "s2c"].add(seq, flags, ts, payload)

out = open(sys.argv[3], "wb")
n = 0
for ci, c in enumerate(conns.values()):
    for di, d in enumerate(("c2s", "s2c")):
        data, _ = c[d].stream()
        i = len(dec.H2_PREFACE) if d == "c2s" and data.startswith(dec.H2_PREFACE) else 0
        bufs = collections.defaultdict(bytearray)
        while i + 9 <= len(data):
            ln = int.from_bytes(data[i:i + 3], "big")
            ftype, fflags = data[i + 3], data[i + 4]
            sid = int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF
            body = data[i + 9:i + 9 + ln]
            i += 9 + ln
            if ftype != 0:
                continue
            if fflags & 0x08:
                body = body[1:len(body) - body[0]]
            buf = bufs[sid]
            buf.extend(body)
            while len(buf) >= 5:
                mlen = int.from_bytes(buf[1:5], "big")
                if len(buf) < 5 + mlen:
                    break
                msg = bytes(buf[5:5 + mlen])
                del buf[:5 + mlen]
                _, frame = dec.decode_frame_pb(msg)
                out.write(struct.pack(">BBI", ci, di, len(frame)) + frame)
                n += 1
print("%d frames" % n)
