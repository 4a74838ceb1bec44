#!/usr/bin/env python3
"""Regenerates the seed corpus for the save image fuzzer (small valid and invalid images).

Layout from docs/formats/save-image.md: 92-byte header, data area, QEMU stream (truncated here).
"""
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
XML = b"<domain type='qemu'>\n  <name>fuzz</name>\n  <memory unit='KiB'>32768</memory>\n</domain>\n"
COOKIE = b"<cookie>\n  <slirpHelper/>\n</cookie>\n"
STREAM = b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0b"


def image(magic=b"LibvirtQemudSave", version=2, area=None, running=1, comp=0, cookie_off=None,
          endian="<", stream=STREAM, data_len=None, unused=0):
    if area is None:
        area = XML + b"\0" + COOKIE + b"\0" + b"\0" * 64
        cookie_off = len(XML) + 1 if cookie_off is None else cookie_off
    cookie_off = cookie_off or 0
    dl = len(area) if data_len is None else data_len
    header = magic + struct.pack(endian + "5I", version, dl, running, comp, cookie_off)
    header += struct.pack("<14I", *([unused] * 14))
    assert len(header) == 92
    return header + area + stream


seeds = {
    "valid-cookie": image(),
    "valid-no-cookie": image(area=XML + b"\0" * 16),
    "valid-full-padding": image(area=XML + b"\0" + COOKIE + b"\0" + b"\0" * 65536, cookie_off=len(XML) + 1),
    "valid-gzip": image(comp=1, stream=b"\x1f\x8b\x08\x00"),
    "valid-big-endian": image(endian=">"),
    "valid-version1": image(version=1, area=XML + b"\0" * 8, comp=7, cookie_off=5),
    "unknown-compression": image(comp=9),
    "partial": image(magic=b"LibvirtQemudPart"),
    "bad-magic": image(magic=b"LibvirtQemuSave!"),
    "version3": image(version=3),
    "data-len-zero": image(data_len=0),
    "data-len-huge": image(data_len=0x7FFFFFFF),
    "cookie-offset-beyond": image(cookie_off=0xFFFFFFF0),
    "xml-unterminated": image(area=XML, cookie_off=0),
    "cookie-unterminated": image(area=XML + b"\0" + COOKIE, cookie_off=len(XML) + 1),
    "stream-beyond-eof": image(data_len=5000, stream=b""),
    "short-header": image()[:50],
    "unused-words-set": image(unused=0xDEADBEEF),
}

# A real libvirt 9.0 image, cut 16 bytes into its stream.
FIXTURE = os.path.join(os.path.dirname(HERE), "..", "..", "Tests", "KeelSaveImageTests", "Fixtures", "libvirt-9.0-raw.save")
if os.path.exists(FIXTURE):
    real = open(FIXTURE, "rb").read()
    (data_len,) = struct.unpack("<I", real[20:24])
    seeds["libvirt-9.0-raw-head"] = real[:92 + data_len + 16]

os.makedirs(HERE, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
