"""The wire protocol under 100,000 mutated frames: what comes out, and how fast.

Legal conversations (``tests/frames.py``) are mutated with a seeded random
generator (one to four operations each: bits flipped, bytes set, inserted,
deleted, stretches repeated or moved, header fields rewritten, the stream cut
short), cut into random chunks, and fed to the ``Decoder`` and to a
``Connection`` in the role that receives them, until ``--frames`` source
frames have gone through each.  The same conversations unmutated, side by
side, give the clean rate.  Every outcome is counted by class: accepted
whole, or the RemoteProtocolError subclass raised.  Anything else raised is
a bug: it is counted as UNEXPECTED and the script exits 1.

    .venv/bin/python bench/fuzz_frames.py [--frames 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time

import benchlib

import frames
from common import protocol as p


def run(target: str, streams, parts_of) -> tuple[collections.Counter, float, int]:
    """Feed every stream to ``target`` ("decoder" or "connection"); outcomes
    by class, seconds spent, frames fed."""
    outcomes: collections.Counter = collections.Counter()
    fed = 0
    spent = 0.0
    for role, source_frames, data, cuts, request in streams:
        parts = parts_of(data, cuts)
        started = time.perf_counter()
        try:
            if target == "decoder":
                out = frames.feed_decoder(parts)
            else:
                out = frames.feed_connection(role, parts, request)
        except Exception as exc:  # noqa: BLE001 - counted: anything but a protocol error is a bug
            out = [exc]
            outcomes[f"UNEXPECTED {type(exc).__name__}"] += 1
        else:
            errors = [x for x in out if isinstance(x, p.RemoteProtocolError)]
            outcomes[type(errors[0]).__name__ if errors else "accepted"] += 1
        spent += time.perf_counter() - started
        fed += source_frames
    return outcomes, spent, fed


def make_streams(rng: random.Random, total_frames: int, mutate: bool):
    """(receiving role, source frame count, bytes, cuts, the client's request) until ``total_frames``."""
    convs = list(frames.conversations().values())
    streams, count = [], 0
    while count < total_frames:
        client_msgs, server_msgs = rng.choice(convs)
        to_server = rng.random() < 0.5
        msgs = client_msgs if to_server else server_msgs
        data = b"".join(frames.frames_of(msgs))
        if mutate:
            data = frames.apply(frames.frames_of(msgs), frames.random_ops(rng, rng.randint(1, 4)))
        cuts = [rng.randrange(1 << 16) for _ in range(rng.randint(0, 3))]
        streams.append((p.Role.SERVER if to_server else p.Role.CLIENT, len(msgs), data, cuts, client_msgs[1]))
        count += len(msgs)
    return streams


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    mutated = make_streams(rng, args.frames, mutate=True)
    clean = make_streams(rng, args.frames, mutate=False)
    rows, results, unexpected = [], [], 0
    for target in ("decoder", "connection"):
        rates = {}
        # Clean: frame by frame, as a peer that waits for the answers sends them
        # (a whole conversation at once is illegal for a connection).
        for label, streams, parts_of in (("clean, a frame at a time", clean, _frame_parts),
                                         ("mutated, random chunks", mutated, frames.chunks)):
            outcomes, spent, fed = run(target, streams, parts_of)
            rates[label] = fed / spent
            unexpected += sum(n for k, n in outcomes.items() if k.startswith("UNEXPECTED"))
            results.append({"target": target, "input": label, "streams": len(streams), "frames": fed,
                            "seconds": round(spent, 3), "frames_per_s": round(fed / spent),
                            "outcomes": dict(outcomes.most_common())})
            rows.append([target, label, len(streams), fed, round(fed / spent), ""])
        rows[-1][-1] = f"{rates['mutated, random chunks'] / rates['clean, a frame at a time']:.2f}"
    print(benchlib.table("Protocol fuzzing: frames through the codec",
                         ["target", "input", "streams", "frames", "frames/s", "mutated/clean"], rows))
    print()
    for r in results:
        if r["input"].startswith("mutated"):
            print(f"{r['target']} outcomes (streams): "
                  + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()))
    out = benchlib.save("fuzz_frames", {"seed": args.seed, "frames_requested": args.frames,
                                        "unexpected": unexpected, "results": results}, args.json)
    print(f"\nJSON: {out}")
    if unexpected:
        print(f"{unexpected} streams raised something other than a protocol error", file=sys.stderr)
        return 1
    return 0


def _frame_parts(data: bytes, _cuts) -> list[bytes]:
    parts, pos = [], 0
    while pos < len(data):
        _, length = p.decode_header(data[pos:pos + p.HEADER_SIZE])
        parts.append(data[pos:pos + p.HEADER_SIZE + length])
        pos += p.HEADER_SIZE + length
    return parts


if __name__ == "__main__":
    sys.exit(main())
