"""Running one atheris harness: instrumented imports, its seed corpus, libFuzzer's flags.

Each harness (``fuzz/envelope.py``, ``fuzz/frames.py``, ``fuzz/messages.py``) calls
:func:`main` with its ``TestOneInput`` and its seeds. Usage::

    python fuzz/envelope.py -atheris_runs=100000        # or -max_total_time=60
    python fuzz/envelope.py CORPUS_DIR -max_total_time=600

Without a corpus directory the seeds go into a fresh temporary one; given files instead
(``python fuzz/envelope.py crash-1234``), each is run once, to reproduce a crash. The seeds (valid
messages from the real writers, ``fuzz/common.py``) are written into the corpus
directory every run, so it can be kept between runs. Any other argument is libFuzzer's
(``-help=1`` lists them). An uncaught exception (an ``AssertionError`` of an oracle, or
any exception a parser must not raise) is a crash: libFuzzer writes the input to
``crash-<sha1>`` (``-artifact_prefix=DIR/`` chooses where) and exits non-zero.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import atheris


def main(
    name: str,
    one_input: Callable[[bytes], None],
    seeds: Mapping[str, bytes],
    *,
    dictionary: Path | None = None,
) -> None:
    argv = list(sys.argv)
    if dictionary is not None and not any(a.startswith("-dict=") for a in argv):
        argv.append(f"-dict={dictionary}")
    paths = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if not paths:
        paths = [Path(tempfile.mkdtemp(prefix=f"smpc-fuzz-{name}-"))]
        argv.append(str(paths[0]))
    if not paths[0].is_file():  # a corpus directory (files: inputs to run once, e.g. a crash)
        corpus = paths[0]
        corpus.mkdir(parents=True, exist_ok=True)
        for seed, data in seeds.items():
            (corpus / f"seed-{seed}").write_bytes(data)
        print(f"fuzz {name}: corpus {corpus} ({len(seeds)} seeds)", file=sys.stderr, flush=True)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
