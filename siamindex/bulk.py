"""``check --claims`` at scale: a claims CSV of any length checked chunk by chunk, on the local
engine or on Ray, answers streamed to a CSV file.

``plan_chunks`` reads the file once, noting where each chunk of 20,000 claims starts (a byte
offset), so that any worker can read its own chunk. Each chunk is parsed as ``read_claims``
parses a whole file (same checks, line numbers of the whole file), checked against the index
(opened once per worker: on Ray, once per actor), and returned as rows of ``check``'s CSV.
This process writes the rows as they come (to a temporary file, renamed into place only when
every claim is answered) and keeps running confusion counts for the summary, the same as
``check`` prints. Nothing holds every claim or every answer.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamindex.errors import DataError
from siamindex.inputs import ClaimsFile, layout_of, parse_claims_text
from siamindex.query import CHECK_CSV_HEADER, ConfusionCounts, check_row

CHUNK_CLAIMS = 20_000


@dataclass(frozen=True)
class Chunk:
    """Claims [first_line, first_line + lines) of a claims CSV, from byte ``offset``."""

    path: str
    header: str
    offset: int
    first_line: int
    lines: int


@dataclass(frozen=True)
class CheckSettings:
    """How each chunk is checked (as ``check``'s options)."""

    index: str
    per_class: bool = False
    nprobe: int | None = None
    ef_search: int | None = None
    resize: bool = False
    prepare: str = "auto"


def plan_chunks(path: str | Path, claims: int | None = None) -> list[Chunk]:
    """Cut a claims CSV into chunks of ``claims`` lines (default ``CHUNK_CLAIMS``), reading it
    once.

    Raises:
        DataError: the file is missing or has no header or no claims.
    """
    path, claims = Path(path), claims or CHUNK_CLAIMS
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"Claims file '{path}' does not exist.") from None
    except OSError as exc:
        raise DataError(f"Claims file '{path}' cannot be read ({type(exc).__name__}).") from None
    chunks: list[Chunk] = []
    with handle:
        header, number = b"", 0
        while not header.strip():
            header = handle.readline()
            number += 1
            if not header:
                raise DataError(f"Claims file '{path}' is empty; its first line must be a header.")
        text = header.decode("utf-8-sig", errors="replace").strip()
        offset, start, count = handle.tell(), number + 1, 0
        while True:
            line = handle.readline()
            if line:
                count += 1
                number += 1
            if count and (count == claims or not line):
                chunks.append(Chunk(str(path), text, offset, start, count))
                offset, start, count = handle.tell(), number + 1, 0
            if not line:
                break
    if not chunks:
        raise DataError(f"Claims file '{path}' has a header but no claims.")
    return chunks


class ChunkChecker:
    """Checks chunks against one index, opened once (the unit a Ray actor holds)."""

    def __init__(self, settings: CheckSettings) -> None:
        from siamindex.index import Index

        self.settings = settings
        self.index = Index.open(settings.index)
        self.index.check_search(settings.nprobe, settings.ef_search)

    def __call__(self, chunk: Chunk) -> dict[str, np.ndarray]:
        """The chunk's answers: "row" (check's CSV line, JSON), "claimed", "member", "truth"
        ("" when unknown) and "error" (""); or one row whose "error" is the one-line message."""
        try:
            answer = self._check(chunk)
        except DataError as exc:
            answer = {
                "row": np.array(["[]"]),
                "claimed": np.array([""]),
                "member": np.zeros(1, bool),
            }
            answer.update(truth=np.array([""]), error=np.array([str(exc)]))
            return answer
        answer["error"] = np.full(len(answer["row"]), "")
        return answer

    def _check(self, chunk: Chunk) -> dict[str, np.ndarray]:
        with open(chunk.path, "rb") as handle:
            handle.seek(chunk.offset)
            body = b"".join(handle.readline() for _ in range(chunk.lines))
        text = chunk.header + "\n" + body.decode("utf-8", errors="strict")
        layout = layout_of(self.settings.resize, self.settings.prepare)
        claims = parse_claims_text(Path(chunk.path), text, layout, chunk.first_line - 2)
        check_claim_classes(self.index.store.class_names, claims, chunk.path)
        results = self.index.check(
            claims.images.pixels,
            claims.classes,
            self.settings.per_class,
            claims.images.names,
            claims.true_classes,
            nprobe=self.settings.nprobe,
            ef_search=self.settings.ef_search,
        )
        return {
            "row": np.array([json.dumps(check_row(r)) for r in results]),
            "claimed": np.array([r.class_name for r in results]),
            "member": np.array([r.is_member for r in results]),
            "truth": np.array([r.true_class or "" for r in results]),
        }


def check_claim_classes(known: tuple[str, ...], claims: ClaimsFile, path: str) -> None:
    """Raises DataError, naming the line, for a claimed or true class the index lacks."""
    for line, claimed, truth in zip(claims.lines, claims.classes, claims.true_classes, strict=True):
        for what, value in (("class", claimed), ("true_class", truth)):
            if value is not None and value not in known:
                raise DataError(
                    f"{path}, line {line}: unknown {what} '{value}'; this index has classes "
                    f"{', '.join(known[:20])}."
                )


def local_chunks(chunks: list[Chunk], checker: ChunkChecker) -> Iterator[dict[str, np.ndarray]]:
    """The local engine: every chunk checked in this process, in order."""
    for chunk in chunks:
        yield checker(chunk)


@dataclass(frozen=True)
class BulkResult:
    """What a bulk check wrote and found."""

    out: str
    claims: int
    members: int
    summary: dict[str, object] | None


def check_claims(
    claims_file: str | Path,
    out: str | Path,
    settings: CheckSettings,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> BulkResult:
    """Check every claim of a claims CSV, writing ``check``'s CSV rows to ``out``.

    ``out`` appears only once complete: on any error nothing is written there.

    Raises:
        DataError: a claim is malformed (the message names its line), IndexNotFound,
            BadSearchSetting, EngineError.
    """
    if engine == "ray":
        from siamindex import cluster
        from siamindex.index import Index

        # Here, once, rather than as a failure in every actor.
        Index.open(settings.index).check_search(settings.nprobe, settings.ef_search)
        answers = cluster.check_chunks(plan_chunks(claims_file), settings, address, workers)
    else:
        checker = ChunkChecker(settings)  # opens the index (and checks its settings) once
        answers = local_chunks(plan_chunks(claims_file), checker)
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    counts, claims, members = ConfusionCounts(), 0, 0
    try:
        with partial.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CHECK_CSV_HEADER)
            for answer in answers:
                if answer["error"].size and answer["error"][0]:
                    raise DataError(str(answer["error"][0]))
                writer.writerows(json.loads(str(row)) for row in answer["row"])
                member = answer["member"].astype(bool)
                claims, members = claims + len(member), members + int(member.sum())
                known = answer["truth"] != ""
                counts.add(
                    answer["claimed"][known],
                    member[known],
                    answer["claimed"][known] == answer["truth"][known],
                )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return BulkResult(str(out), claims, members, counts.summary())
