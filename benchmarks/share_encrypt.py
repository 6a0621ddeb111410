"""Share, encrypt and sign 10,000,000 float64 values for N=3 parties, t=1, in one process.

A site's upload path without the network: fixed-point encoding into GF(2^61 − 1),
Shamir sharing with compact (seed) shares, and one sealed, signed envelope per
party. Baseline, measured in the same run: writing the same array with
``np.save`` to a file. Prints progress, then one JSON line:

    mb_per_s           input MB (10^6 bytes of float64) per second, best of --repeat
    seconds            the best time
    ratio_vs_np_save   seconds / np.save seconds (how many times slower than saving)
    envelope_mb        bytes sealed for all parties (two full shares, one seed)
    peak_rss_mb        peak resident memory of this process while sealing (input included)

Run: ``python benchmarks/share_encrypt.py [--quick] [--values N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from smpc.core.encoding import FixedPoint
from smpc.core.field import FAST
from smpc.wire.packaging import open_share, seal_shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100,000 values, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.values, args.repeat = 100_000, 1

    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1000.0, size=args.values)
    mb = x.nbytes / 1e6
    parties = [X25519PrivateKey.generate() for _ in range(3)]
    site = Ed25519PrivateKey.generate()
    encoding = FixedPoint(frac_bits=24, int_bits=30)
    print(f"{args.values:,} float64 values ({mb:.0f} MB), N=3, t=1, compact shares", flush=True)

    def upload() -> list[bytearray]:
        return seal_shares(
            x,
            encoding,
            FAST,
            job="bench",
            input="x",
            site="site",
            t=1,
            recipients=[p.public_key() for p in parties],
            signer=site,
        )

    best = float("inf")
    envelopes: list[bytearray] = []
    for i in range(args.repeat):
        envelopes.clear()  # free the previous run's envelopes before timing the next
        start = time.perf_counter()
        envelopes = upload()
        seconds = time.perf_counter() - start
        best = min(best, seconds)
        print(f"  run {i + 1}: {seconds:.3f} s, {mb / seconds:.0f} MB/s", flush=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # The envelopes must open to shares of x: check once, outside the timing.
    keys = {"site": site.public_key()}
    shares = {i: open_share(e, parties[i], keys, party=i).values() for i, e in enumerate(envelopes)}
    from smpc.core.sharing import reconstruct

    back = encoding.decode(reconstruct({0: shares[0], 2: shares[2]}, FAST, 1), FAST)
    assert np.abs(back - x).max() <= 2.0**-24, "shares do not reconstruct the input"
    print("  envelopes open and reconstruct the input", flush=True)

    save_best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            start = time.perf_counter()
            np.save(Path(tmp) / "x.npy", x)
            save_best = min(save_best, time.perf_counter() - start)
    print(f"  np.save baseline: {save_best:.3f} s", flush=True)

    result = {
        "benchmark": "share_encrypt",
        "values": args.values,
        "seconds": round(best, 4),
        "mb_per_s": round(mb / best, 1),
        "ratio_vs_np_save": round(best / save_best, 2),
        "np_save_seconds": round(save_best, 4),
        "envelope_mb": round(sum(len(e) for e in envelopes) / 1e6, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
