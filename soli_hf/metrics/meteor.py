"""METEOR 1.5 through the jar shipped with pycocoevalcap (needs Java).

Runs ``java -jar meteor-1.5.jar - - -stdio -l en -norm`` like coco-caption's
``Meteor`` class and speaks the same stdin protocol: one ``SCORE`` line per
image returns that image's statistics, then one ``EVAL`` line with all of them
returns the per-image scores and the corpus score (computed by METEOR from the
pooled statistics, not a mean).  Unlike coco-caption's wrapper, the process is
started per call and closed afterwards, and requests are written from a thread
so a large corpus cannot dead-lock the pipes.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

__all__ = ["meteor_jar", "meteor_score", "meteor_unavailable_reason"]

_JAR_NAME = "meteor-1.5.jar"


def meteor_jar() -> Path | None:
    """Path of pycocoevalcap's METEOR jar, or None if pycocoevalcap is not installed."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    jar = Path(next(iter(spec.submodule_search_locations))) / "meteor" / _JAR_NAME
    return jar if jar.is_file() else None


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot be computed here (None when it can)."""
    if shutil.which("java") is None:
        return "no `java` executable on PATH (METEOR 1.5 is a Java program)"
    jar = meteor_jar()
    if jar is None:
        return f"pycocoevalcap (which ships {_JAR_NAME}) is not installed; `pip install pycocoevalcap`"
    if not (jar.parent / "data" / "paraphrase-en.gz").is_file():
        return f"METEOR's paraphrase table is missing next to {jar}"
    return None


def _request_lines(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Iterable[str]:
    """coco-caption's ``SCORE ||| ref 1 ||| ... ||| ref n ||| hypothesis`` lines."""
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
        yield " ||| ".join(("SCORE", " ||| ".join(refs), hypothesis)) + "\n"


def _write_all(stream: IO[bytes], lines: Iterable[str]) -> None:
    """Write request lines; a closed pipe is left for the reader to report (with METEOR's stderr)."""
    try:
        for line in lines:
            stream.write(line.encode("utf-8"))
        stream.flush()
    except BrokenPipeError:
        pass


def meteor_score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """Corpus and per-image METEOR of tokenised captions.

    Raises:
        ValueError: no captions.
        RuntimeError: METEOR is unavailable (see :func:`meteor_unavailable_reason`)
            or the Java process failed.
    """
    if len(hypotheses) == 0:
        raise ValueError("METEOR needs at least one caption")
    reason = meteor_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"METEOR unavailable: {reason}")
    jar = meteor_jar()
    assert jar is not None
    command = ["java", "-jar", "-Xmx2G", _JAR_NAME, "-", "-", "-stdio", "-l", "en", "-norm"]
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
        ) as process,
    ):
        try:
            return _exchange(process, hypotheses, references)
        except (RuntimeError, ValueError):  # early end of output, or an unparsable line
            process.kill()
            process.wait()
            errors.seek(0)
            message = errors.read().decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"METEOR failed (exit code {process.returncode}): {message}") from None


def _exchange(
    process: subprocess.Popen[bytes], hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[float, list[float]]:
    """Send the SCORE lines (from a thread), collect statistics, then EVAL them."""
    assert process.stdin is not None and process.stdout is not None
    writer = threading.Thread(
        target=_write_all, args=(process.stdin, _request_lines(hypotheses, references)), daemon=True
    )
    writer.start()
    stats = [_read_line(process.stdout) for _ in hypotheses]
    writer.join()
    _write_all(process.stdin, ["EVAL ||| " + " ||| ".join(stats) + "\n"])
    scores = [float(_read_line(process.stdout)) for _ in hypotheses]
    corpus = float(_read_line(process.stdout))
    process.stdin.close()
    process.wait()
    return corpus, scores


def _read_line(stream: IO[bytes]) -> str:
    line = stream.readline()
    if not line:
        raise RuntimeError("METEOR closed its output early")
    return line.decode("utf-8").strip()
