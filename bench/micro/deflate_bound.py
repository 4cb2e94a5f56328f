#!/usr/bin/env python3
"""The best ratio permessage-deflate without context takeover can give on
cchat's message frames (issue 30's compression target): every frame deflated
alone by zlib at levels 1, 6 and 9 (window 2^15, memLevel 9), the RFC 7692
tail (00 00 ff ff) stripped, the 2-byte WebSocket header counted on both
sides. `msg` is everyday chat words, with and without loadgen's 24 hex digits
at its front.

    python3 bench/micro/deflate_bound.py
"""
import random
import zlib

WORDS = """I you the to a it and is that in of for me on so have we be just my do this not are lol with
but what was can at if get know like ok yeah no your all it's I'm go about up think will one out now how
there see when time good they going don't back today tomorrow meeting thanks sure later need want call
did had right here home work night still tonight haha let's maybe really then can't got sorry please
coffee lunch deploy build ship fixed review PR ticket prod Alice Bob Carol Dave Erin Frank 3pm 10 Friday
Monday weekend soon done nice great awesome hmm btw omw brb np idk""".split()


def msg(rng, n, head):
    s = "%016x%08x" % (rng.getrandbits(64), rng.getrandbits(32)) if head else ""
    while len(s) < n:
        s += (" " if s else "") + rng.choice(WORDS)
    return s[:n]


def frame(rng, n, head, i):
    # The server's field order and a room message's fields.
    return ('{"cmd":"message","uid":"u%d","name":"n%d","type":"text","rid":"r%d","msg":"%s",'
            '"seq":%d,"epoch":1796664851734,"ts":%d}'
            % (i, i, i % 20, msg(rng, n, head), 1000 + i, 1796664851735 + i * 7)).encode()


def main():
    print("| msg bytes | msg | frame bytes | level 1 | level 6 | level 9 |")
    print("|---|---|---|---|---|---|")
    for n in (64, 256, 1000):
        for head in (True, False):
            rng = random.Random(1)
            plain, deflated = 0, {1: 0, 6: 0, 9: 0}
            for i in range(500):
                f = frame(rng, n, head, i)
                plain += len(f) + 2
                for level in deflated:
                    c = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
                    z = (c.compress(f) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
                    deflated[level] += len(z) + 2
            kind = "loadgen's (24 hex digits first)" if head else "chat words only"
            ratios = " | ".join("%.3f" % (deflated[lv] / plain) for lv in (1, 6, 9))
            print(f"| {n} | {kind} | {plain // 500} | {ratios} |")


if __name__ == "__main__":
    main()
