#!/usr/bin/env python3
"""Prints N random, well-formed keygate tokens (valid CRC32 checksum) whose
key ids no keyring holds, for benches/load.sh's unknown-id flood.

Usage: python3 benches/unknown_tokens.py N [PREFIX]   (PREFIX: ak_ or rk_, default rk_)
"""
import secrets
import sys
import zlib

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def base62(n):
    return "".join(secrets.choice(BASE62) for _ in range(n))


def checksum(body):
    crc = zlib.crc32(body.encode())  # CRC-32 (IEEE), as the token format
    digits = []
    for _ in range(6):
        digits.append(BASE62[crc % 62])
        crc //= 62
    return "".join(reversed(digits))


count = int(sys.argv[1])
prefix = sys.argv[2] if len(sys.argv) > 2 else "rk_"
for _ in range(count):
    body = f"{prefix}{base62(16)}_{base62(43)}"
    print(body + checksum(body))
