"""Triage services: what analysts decide about anomalies, and the mutes and known places
that come of it (docs/design.md, "Triage").

Every door (the admin's actions and forms, the user page, the API) calls these, so each
decision is checked in one place, keeps who and when, and leaves a line in the admin's
history (`LogEntry`) saying what changed and through which door.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.utils import timezone

from anomalies_app.detection import place_key
from anomalies_app.locks import users_lock
from anomalies_app.models import OPEN_STATUSES, Anomaly, AnomalyStatus, Mute, UserLocation
from anomalies_app.rules import DEFAULT_RULES, UNUSUAL_LOCATION_LOGIN

TRIAGE_PERMISSION = "anomalies_app.triage_anomaly"
MUTE_MAX_DAYS = 365

# Where each status may go. Nothing goes back to new: someone has looked at it. A closed
# anomaly (resolved, false positive) is reopened as acknowledged before anything else.
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    AnomalyStatus.NEW: frozenset({AnomalyStatus.ACKNOWLEDGED, AnomalyStatus.RESOLVED, AnomalyStatus.FALSE_POSITIVE}),
    AnomalyStatus.ACKNOWLEDGED: frozenset({AnomalyStatus.RESOLVED, AnomalyStatus.FALSE_POSITIVE}),
    AnomalyStatus.RESOLVED: frozenset({AnomalyStatus.ACKNOWLEDGED}),
    AnomalyStatus.FALSE_POSITIVE: frozenset({AnomalyStatus.ACKNOWLEDGED}),
}


# What a decision reads of an anomaly (docs/performance.md, "Triage at size").
TRIAGE_READS = (
    "id",
    "user_id",
    "anomaly_type",
    "severity",
    "status",
    "assigned_to",
    "triage_notes",
    "episode_key",
    "suppressed",
)


class TriageError(ValueError):
    """A request that cannot be carried out at all; names the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()  # `assigned_to=KEEP`: leave the assignee as it is (None unassigns)


@dataclass
class TriageResult:
    """What a decision did: per anomaly, the history line of what changed, or why nothing did."""

    changed: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    # For each refused anomaly, the part of the request it was refused on: "id" (no such
    # anomaly), "status", "assigned_to", "triage_notes", or "request" when nothing was
    # asked. The API names it in its answers.
    refused_fields: dict[int, str] = field(default_factory=dict)
    mutes: list[Mute] = field(default_factory=list)
    places: list[UserLocation] = field(default_factory=list)

    def refuse(self, anomaly_id: int, field_name: str, reason: str) -> None:
        self.refused[anomaly_id] = reason
        self.refused_fields[anomaly_id] = field_name

    def summary(self) -> str:
        parts = [f"{len(self.changed)} changed"]
        if self.refused:
            reasons: dict[str, int] = {}
            for reason in self.refused.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            parts.append(
                f"{len(self.refused)} left as they were ("
                + "; ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
                + ")"
            )
        if self.mutes:
            parts.append(f"{len(self.mutes)} mute{'s' if len(self.mutes) != 1 else ''} added")
        if self.places:
            parts.append(f"{len(self.places)} known place{'s' if len(self.places) != 1 else ''} added")
        return ", ".join(parts) + "."


def _status_label(status: str) -> str:
    return str(AnomalyStatus(status).label).lower()


def _who(user: Any) -> str:
    return user.get_username() if user is not None else "nobody"


def can_triage(user: Any) -> bool:
    return bool(user is not None and user.is_active and user.has_perm(TRIAGE_PERMISSION))


def _transition_refusal(current: str, wanted: str) -> str | None:
    if wanted == current:
        return f"already {_status_label(current)}"
    if wanted in TRANSITIONS[current]:
        return None
    if wanted == AnomalyStatus.NEW:
        return "an anomaly someone has looked at cannot be new again"
    return f"{_status_label(current)}: reopen it (acknowledge) before marking it {_status_label(wanted)}"


def anomalies_triage(
    *,
    anomaly_ids: Sequence[int],
    by: User,
    status: str | None = None,
    assigned_to: User | _Keep | None = KEEP,
    triage_notes: str | None = None,
    mute_days: int | None = None,
    mute_reason: str = "",
    add_known_place: bool = False,
    via: str = "admin",
) -> TriageResult:
    """Apply one decision to these anomalies, each on its own merits: a transition that
    makes no sense for one of them (resolving a false positive, acknowledging twice)
    leaves that one as it was and says why, and the others go ahead.

    - `status`: where they go (TRANSITIONS). An anomaly nobody was assigned to becomes
      the deciding analyst's.
    - `assigned_to`: a user who may triage, or None to unassign; only open anomalies.
    - `mute_days` and `mute_reason`, with `status` false positive: no new anomalies of
      that rule for each user concerned, for that many days (`mute_add`).
    - `add_known_place`, with false positive: the place of each unusual_location_login
      becomes one of its user's known places (`known_place_add`).
    Raises TriageError, changing nothing, when the request itself is wrong.
    """
    _triage_request_check(
        by=by,
        status=status,
        assigned_to=assigned_to,
        mute_days=mute_days,
        mute_reason=mute_reason,
        add_known_place=add_known_place,
    )
    result = TriageResult()
    now = timezone.now()
    with transaction.atomic():
        # The users' detection locks first, as detection takes them, then the rows in id
        # order: a decision and a batch of the same users take turns instead of deadlocking.
        users_lock(sorted(set(Anomaly.objects.filter(pk__in=anomaly_ids).values_list("user_id", flat=True))))
        rows = (
            Anomaly.objects.select_for_update(of=("self",))
            .select_related("assigned_to")
            .filter(pk__in=anomaly_ids)
            .order_by("pk")
            .only(*TRIAGE_READS)  # not the evidence: parsing it was a third of a bulk decision's time
        )
        anomalies = {a.pk: a for a in rows}
        for anomaly_id in anomaly_ids:
            if anomaly_id not in anomalies:
                result.refuse(anomaly_id, "id", "no such anomaly")
        decided: list[Anomaly] = []
        for anomaly in anomalies.values():
            changes, refusal = _triage_changes(anomaly, by, status, assigned_to, triage_notes)
            if refusal:
                result.refuse(anomaly.pk, *refusal)
                continue
            anomaly.triaged_at, anomaly.triaged_by = now, by  # type: ignore[assignment]
            result.changed[anomaly.pk] = "; ".join(changes)
            decided.append(anomaly)
        _decisions_save(decided, now, by)
        false_positives = [a for a in decided if status == AnomalyStatus.FALSE_POSITIVE]
        if mute_days is not None:
            _mutes_from(false_positives, by, mute_days, mute_reason, via, result)
        if add_known_place:
            _places_from(false_positives, by, via, result)
        _history_write(by, CHANGE, [(a, f"{result.changed[a.pk]} ({via})") for a in decided])
    return result


def _decisions_save(decided: list[Anomaly], now: datetime, by: User) -> None:
    """One UPDATE per distinct outcome: a bulk decision has one or two (the assignee kept,
    or given to the analyst). Django's bulk_update builds a CASE per row and field, which
    costs seconds of Python for hundreds of rows (docs/performance.md, "Triage at size")."""
    outcomes: dict[tuple[str, Any, str], list[int]] = defaultdict(list)
    for anomaly in decided:
        outcomes[(anomaly.status, anomaly.assigned_to_id, anomaly.triage_notes)].append(anomaly.pk)
    for (status, assigned_to_id, notes), ids in outcomes.items():
        Anomaly.objects.filter(pk__in=ids).update(
            status=status, assigned_to_id=assigned_to_id, triage_notes=notes, triaged_at=now, triaged_by=by
        )


def _triage_request_check(
    *,
    by: User,
    status: str | None,
    assigned_to: User | _Keep | None,
    mute_days: int | None,
    mute_reason: str,
    add_known_place: bool,
) -> None:
    if not can_triage(by):
        raise TriageError("user", f"{_who(by)} may not triage anomalies")
    if status is not None and status not in AnomalyStatus.values:
        raise TriageError("status", f"{status!r} is not one of {', '.join(AnomalyStatus.values)}")
    if not isinstance(assigned_to, _Keep) and assigned_to is not None and not can_triage(assigned_to):
        raise TriageError("assigned_to", f"{_who(assigned_to)} may not triage anomalies, so cannot be assigned one")
    if (mute_days is not None or add_known_place) and status != AnomalyStatus.FALSE_POSITIVE:
        name = "mute_days" if mute_days is not None else "add_known_place"
        raise TriageError(name, "comes with marking anomalies false positive (status false_positive)")
    if mute_days is not None:
        _mute_check(mute_days, mute_reason)


def _mute_check(days: int, reason: str) -> None:
    if not 1 <= days <= MUTE_MAX_DAYS:
        raise TriageError("mute_days", f"a mute lasts 1 to {MUTE_MAX_DAYS} days, not {days}")
    if not reason.strip():
        raise TriageError("mute_reason", "say why the rule is muted for this user; the next analyst will ask")


def _triage_changes(
    anomaly: Anomaly,
    by: User,
    status: str | None,
    assigned_to: User | _Keep | None,
    triage_notes: str | None,
) -> tuple[list[str], tuple[str, str] | None]:
    """The changes a decision makes to one anomaly (applied to it), or why it makes none:
    the field the refusal is about, and the reason."""
    changes: list[str] = []
    was_open = anomaly.status in OPEN_STATUSES
    if status is not None:
        refusal = _transition_refusal(anomaly.status, status)
        if refusal:
            return [], ("status", refusal)
        changes.append(f"status: {_status_label(anomaly.status)} → {_status_label(status)}")
        anomaly.status = status
        if isinstance(assigned_to, _Keep) and anomaly.assigned_to_id is None:
            changes.append(f"assigned to: nobody → {_who(by)}")
            anomaly.assigned_to = by
    if not isinstance(assigned_to, _Keep):
        if _pk(assigned_to) != anomaly.assigned_to_id:
            if assigned_to is not None and not was_open:
                reopen = f"{_status_label(anomaly.status)}: reopen it (acknowledge) before assigning it"
                return [], ("assigned_to", reopen)
            changes.append(f"assigned to: {_who(anomaly.assigned_to)} → {_who(assigned_to)}")
            anomaly.assigned_to = assigned_to  # type: ignore[assignment]
        elif status is None and triage_notes is None:
            same = f"already assigned to {_who(assigned_to)}" if assigned_to else "not assigned to anyone"
            return [], ("assigned_to", same)
    if triage_notes is not None and triage_notes != anomaly.triage_notes:
        changes.append("notes changed")
        anomaly.triage_notes = triage_notes
    if not changes:
        return [], ("triage_notes" if triage_notes is not None else "request", "nothing to change")
    return changes, None


def _pk(user: User | None) -> Any:
    return None if user is None else user.pk


def _mutes_from(anomalies: list[Anomaly], by: User, days: int, reason: str, via: str, result: TriageResult) -> None:
    for user_id, anomaly_type in sorted({(a.user_id, a.anomaly_type) for a in anomalies}):
        mute = mute_add(user_id=user_id, anomaly_type=anomaly_type, days=days, reason=reason, by=by, via=via)
        result.mutes.append(mute)
        for anomaly in anomalies:
            if (anomaly.user_id, anomaly.anomaly_type) == (user_id, anomaly_type):
                result.changed[anomaly.pk] += f"; {anomaly_type} muted for user {user_id} until {_day(mute)}"


def _places_from(anomalies: list[Anomaly], by: User, via: str, result: TriageResult) -> None:
    for anomaly in anomalies:
        if anomaly.anomaly_type != UNUSUAL_LOCATION_LOGIN or not anomaly.episode_key.strip():
            continue
        known = UserLocation.objects.filter(user_id=anomaly.user_id, location=anomaly.episode_key).first()
        if known is not None and known.vouched:
            continue
        # The place exactly as detection keyed it, spaces and all, so that its logins match.
        place = _known_place_vouch(
            user_id=anomaly.user_id,
            key=anomaly.episode_key,
            by=by,
            note=f"from the false positive anomaly {anomaly.pk}",
            via=via,
        )
        result.places.append(place)
        result.changed[anomaly.pk] += f"; {anomaly.episode_key} added to the user's known places"


def _day(mute: Mute) -> str:
    return f"{mute.until:%Y-%m-%d %H:%M} UTC"


def mute_add(*, user_id: int, anomaly_type: str, days: int, reason: str, by: User, via: str = "admin") -> Mute:
    """Mute one rule for one user for `days` days: detection records their new episodes of
    it as suppressed instead of raising them (docs/design.md, "Mutes and known places")."""
    if anomaly_type not in DEFAULT_RULES:
        raise TriageError("anomaly_type", f"{anomaly_type!r} is not one of the rules: {', '.join(DEFAULT_RULES)}")
    _mute_check(days, reason)
    if not can_triage(by):
        raise TriageError("user", f"{_who(by)} may not mute rules")
    now = timezone.now()
    mute = Mute.objects.create(
        user_id=user_id,
        anomaly_type=anomaly_type,
        until=now + timedelta(days=days),
        reason=reason.strip(),
        created_by=by,
        created_at=now,
    )
    _history_write(by, ADDITION, [(mute, f"muted for {days} days: {mute.reason} ({via})")])
    return mute


def mute_end(*, mute: Mute, by: User, via: str = "admin") -> Mute:
    """End a mute early: the rule raises new anomalies for the user again within
    RULES_REFRESH_SECONDS. What it held back stays recorded and is not raised."""
    if not can_triage(by):
        raise TriageError("user", f"{_who(by)} may not end mutes")
    if not mute.active:
        raise TriageError("mute", "ended already" if mute.ended_at else f"ran out already, on {_day(mute)}")
    mute.ended_at, mute.ended_by = timezone.now(), by  # type: ignore[assignment]
    mute.save(update_fields=["ended_at", "ended_by"])
    _history_write(by, CHANGE, [(mute, f"ended early ({via})")])
    return mute


def known_place_add(*, user_id: int, location: str, by: User, note: str = "", via: str = "admin") -> UserLocation:
    """Add a place to a user's known places by hand: a login from it is never a new place."""
    if not can_triage(by):
        raise TriageError("user", f"{_who(by)} may not add known places")
    location = location.strip()
    if not location:
        raise TriageError("location", "say which place, as logins name it (for example 'Lisbon, PT')")
    return _known_place_vouch(user_id=user_id, key=place_key(location), by=by, note=note, via=via)


def _known_place_vouch(*, user_id: int, key: str, by: User, note: str, via: str) -> UserLocation:
    now = timezone.now()
    place, created = UserLocation.objects.get_or_create(
        user_id=user_id, location=key, defaults={"added_by": by, "added_at": now, "note": note}
    )
    if not created:
        if place.vouched:
            raise TriageError("location", f"{key} is a known place of user {user_id} already")
        place.added_by, place.added_at, place.note = by, now, note  # type: ignore[assignment]
        place.save(update_fields=["added_by", "added_at", "note"])
    _history_write(by, ADDITION if created else CHANGE, [(place, f"added by hand as a known place ({via})")])
    return place


def _history_write(by: User, action_flag: int, entries: Iterable[tuple[models.Model, str]]) -> None:
    """Lines in the admin's history, one per object, in one statement."""
    now = timezone.now()
    LogEntry.objects.bulk_create(
        [
            LogEntry(
                action_time=now,
                user_id=by.pk,
                content_type_id=ContentType.objects.get_for_model(obj, for_concrete_model=False).pk,
                object_id=str(obj.pk),
                object_repr=str(obj)[:200],
                action_flag=action_flag,
                change_message=message,
            )
            for obj, message in entries
        ]
    )
