"""The request workflow's patches, folded so that a new request records one marker, not many.

Every `workflow.patched` that a run takes for the first time records a marker and, with it, an
upsert of the `TemporalChangeVersion` search attribute (sdk-core does this and has no switch
for it). Sixteen patches cost a fresh lifecycle eight markers and eight upserts, and the server
validates each upsert against its metadata: on the dev server a third of a lifecycle's
persistence operations (bench/README.md, "Levers").

So the patches up to and including v8 are folded into one, `FOLDED_INTO`. A request started on
v8 or later records that one marker the first time it asks about any of them and takes every
folded behaviour. A request started earlier has no such marker in its history: it asks about
each patch as it always did, and replays exactly as recorded. The lazy first question keeps
that true for requests caught mid-flight, because the code asks it at the same place where the
older code asked its first patch.

A patch added after v8 is not in `FOLDED`: it is asked about on its own, so that a v8 request
replays without it. v9 folds the same way: a request started on v9 records `v9-folded` alone
and takes every behaviour up to v9 (`FOLDED_V9`). A v8 request asks `v9-folded` first, which
its history answers no (nothing is recorded in replay), then `v8-folded` as before, at the
same call site; a v8 request that reaches a v9 patch live takes it, as any patch. v10 adds
one fold more, the same way (`FOLDED_V10`), and so does v11 (`FOLDED_V11`).
"""

from __future__ import annotations

from temporalio import workflow

FOLDED_INTO = "v8-folded"
FOLDED = frozenset(
    {
        "skip-disabled-oncall",
        "approval-told-with-grant",
        "auto-approved-search-attribute",
        "ledger-search-attributes",
        "verified-decisions",
        "first-decision-wins",
        "decision-at-timeout-wins",
        "decision-during-oncall-wins",
        "cancel-during-grant-revokes",
        "privileges-drift",
        "rule-search-attributes",
        "group-at-decision",
        "tell-refused-actor",
        "day-two",
        "local-database-reads",
        "changed-search-attributes",
    }
)

FOLDED_INTO_V9 = "v9-folded"
FOLDED_V9 = FOLDED | {"held-grant-continues"}

FOLDED_INTO_V10 = "v10-folded"
FOLDED_V10 = FOLDED_V9 | {"revoking-indexed-when-failing"}

FOLDED_INTO_V11 = "v11-folded"
FOLDED_V11 = FOLDED_V10 | {"burst-tail-after-revokes"}

# Newest first: a run asks a fold only about the patches it holds, and memoises the answer.
_FOLDS = (
    (FOLDED_INTO_V11, FOLDED_V11),
    (FOLDED_INTO_V10, FOLDED_V10),
    (FOLDED_INTO_V9, FOLDED_V9),
    (FOLDED_INTO, FOLDED),
)
# The folds a held grant hands to the run it continues in: continuing arrived with v9.
_CARRIED = tuple(name for name, members in _FOLDS if "held-grant-continues" in members)


class Patches:
    """One run's answers to "does this request take the behaviour added by patch X?"."""

    def __init__(self) -> None:
        self._answers: dict[str, bool] = {}  # fold marker -> whether this run took it

    def fold(self) -> str:
        """The fold this run took, for the run a held grant continues into ("" for none)."""
        return next((name for name in _CARRIED if self._answers.get(name)), "")

    def carry(self, fold: str) -> None:
        """A continued run takes the fold of the run that handed it the grant, unrecorded:
        that run's code wrote it into the input, so every replay reads the same answer."""
        if fold in _CARRIED:
            self._answers[fold] = True

    def on(self, patch_id: str) -> bool:
        for name, members in _FOLDS:
            if patch_id not in members:
                continue
            if name not in self._answers:
                self._answers[name] = workflow.patched(name)
            if self._answers[name]:
                return True
        return workflow.patched(patch_id)
