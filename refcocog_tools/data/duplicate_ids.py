"""Repeated ref and sentence ids in a refs file: found, named, and resolved one way.

The engine asks a method once per ``ref_id`` (red-circle debiases over the expressions of one
ref), and results rows are keyed by ``sent_id``: two refs sharing a ``ref_id`` would be scored
as one object, so an expression's answer would change with an unrelated record. Every repeat
is a problem ``validate`` lists; a run refuses the data unless told to go ahead
(``evaluate --warn-data-problems``), and then, as for repeated image and annotation ids in
instances.json, **the first record of each id is kept and the later ones are dropped**:

* a ref whose ``ref_id`` an earlier ref of the file already has is dropped whole;
* a sentence whose ``sent_id`` an earlier sentence (of any kept ref) already has is dropped
  from its ref, and a ref left without a sentence is dropped. ``sent_id`` -1 (the file gives
  none) is never a repeat.

So a repeat removes expressions from the run; it never joins two objects or changes an
answer. The dropped records are named in the problems, hence in the results' ``problems``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# A ref record (annotations.RefRecord, which imports this module): only its ref_id, sentences
# and sent_id fields are read, and dataclasses.replace copies it.
RefRecord = Any

NO_SENT_ID = -1


def _listing(places: Sequence[str]) -> str:
    shown = ", ".join(places[:5])
    return shown + (f" and {len(places) - 5} more" if len(places) > 5 else "")


def unique_refs(parsed: Sequence[tuple[int, RefRecord]], refs_path: Path
                ) -> tuple[list[RefRecord], list[str]]:
    """The records of ``parsed`` (``(index in the refs file, record)``, in file order) with
    later repeats of a ``ref_id`` or ``sent_id`` dropped, and one problem per repeated id
    (``refs(umd).p: ref_id 12 appears 2 times (refs[3], refs[9])``)."""
    problems: list[str] = []
    places: dict[int, list[int]] = {}
    for index, record in parsed:
        places.setdefault(record.ref_id, []).append(index)
    for ref_id, indices in places.items():
        if len(indices) > 1:
            problems.append(f"{refs_path}: ref_id {ref_id} appears {len(indices)} times "
                            f"({_listing([f'refs[{i}]' for i in indices])})")
    first = [record for index, record in parsed if places[record.ref_id][0] == index]

    holders: dict[int, list[str]] = {}
    for record in first:
        for sent_id in record.sent_ids:
            if sent_id != NO_SENT_ID:
                holders.setdefault(sent_id, []).append(f"ref_id {record.ref_id}")
    for sent_id, refs in holders.items():
        if len(refs) > 1:
            problems.append(f"{refs_path}: field 'sentences[].sent_id' {sent_id} appears "
                            f"{len(refs)} times ({_listing(refs)})")
    if not any(len(refs) > 1 for refs in holders.values()):
        return first, problems
    kept: list[RefRecord] = []
    claimed: set[int] = set()
    for record in first:
        keep = []
        for j, sent_id in enumerate(record.sent_ids):  # in order: a repeat within a ref too
            if sent_id == NO_SENT_ID or sent_id not in claimed:
                keep.append(j)
                claimed.add(sent_id)
        if len(keep) == len(record.sent_ids):
            kept.append(record)
        elif keep:
            kept.append(replace(record, sentences=tuple(record.sentences[j] for j in keep),
                                sent_ids=tuple(record.sent_ids[j] for j in keep)))
    return kept, problems
