"""The admin an analyst lives in: the anomaly list and its actions, an anomaly with its
evidence, a page per user, mutes and known places (docs/design.md, "Triage").

These are doors: every change goes through the triage services (`anomalies_app/triage.py`),
which check it, keep who and when, and write its line in the admin's history. So Django's
own history lines for these changes are not written a second time, and a form here never
decides what is allowed: it shows the service's refusal on the field the service names.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.forms import ModelForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from anomalies_app.detection import describe_detail
from anomalies_app.forms import (
    FalsePositiveForm,
    KnownPlaceAddForm,
    KnownPlaceForm,
    MuteAddForm,
    MuteForm,
    TriageForm,
)
from anomalies_app.models import Anomaly, AnomalyStatus, Mute, Rule, UserLocation
from anomalies_app.rules import DEFAULT_RULES, rule_in_words, value_in_words
from anomalies_app.selectors import (
    anomaly_evidence_events,
    anomaly_list,
    anomaly_rule_then,
    triager_list,
    user_overview,
)
from anomalies_app.triage import (
    KEEP,
    TRANSITIONS,
    TriageError,
    TriageResult,
    anomalies_triage,
    can_triage,
    known_place_add,
    mute_add,
    mute_end,
)
from signals_app.messages import ms_to_datetime
from signals_app.models import Signal
from signals_app.paging import CappedCountPaginator
from signals_app.selectors import search_term_parse

SEVERITY_COLOURS = {"high": "#ba2121", "medium": "#b35900", "low": "#417690"}
SEVERITY_RANK = {"high": 3, "medium": 2, "low": 1}
# How many of the anomalies a decision is about its form page lists by name.
FORM_PAGE_ANOMALIES = 20


def analyst(request: HttpRequest) -> User:
    """The person deciding: the admin only lets logged-in staff this far."""
    return cast(User, request.user)


def utc(timestamp_ms: int, *, milliseconds: bool = False) -> str:
    """An event time for people: UTC, to the second (or the millisecond, where the order
    of events close together matters)."""
    shown = ms_to_datetime(timestamp_ms).strftime("%Y-%m-%d %H:%M:%S")
    return f"{shown}.{timestamp_ms % 1000:03d} UTC" if milliseconds else f"{shown} UTC"


def minute(moment: datetime) -> str:
    """A wall-clock time (a mute's end, when something was added) for people, in UTC."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def person(user: User | None) -> str:
    """Who did something, as plain text: analysts may not open user pages."""
    return user.get_username() if user is not None else "someone since removed"


def user_url(user_id: int) -> str:
    return reverse("admin:anomalies_app_anomaly_user", args=[user_id])


def user_link(user_id: int) -> SafeString:
    return format_html('<a href="{}" class="user-link">{}</a>', user_url(user_id), user_id)


def severity_badge(severity: str) -> SafeString:
    return format_html(
        '<span class="severity severity-{}" style="background:{};color:#fff;padding:1px 8px;border-radius:8px;'
        'font-weight:bold">{}</span>',
        severity,
        SEVERITY_COLOURS.get(severity, "#666"),
        severity,
    )


def signal_rows(events: Iterable[tuple[str, Signal | None]]) -> list[dict[str, Any]]:
    """Signals as the signal tables show them (`admin/anomalies_app/signal_table.html`)."""
    rows = []
    for event_id, signal in events:
        if signal is None:
            rows.append({"event_id": event_id, "url": None})
            continue
        rows.append(
            {
                "event_id": event_id,
                "url": reverse("admin:signals_app_signal_change", args=[signal.pk]),
                "time": utc(signal.timestamp, milliseconds=True),
                "type": signal.type,
                "details": "; ".join(f"{key}: {value}" for key, value in (signal.payload or {}).items()),
            }
        )
    return rows


def place_first_login(place: UserLocation) -> str | SafeString:
    """When the user first logged in from the place (UTC), linked to that login's signal."""
    if place.first_seen_ms is None:
        return "none yet"
    signals_url = reverse("admin:signals_app_signal_changelist") + f"?q={place.first_event_id}"
    return format_html('<a href="{}">{}</a>', signals_url, utc(place.first_seen_ms))


def place_added_by_hand(place: UserLocation) -> str:
    return "no" if place.added_at is None else f"by {person(place.added_by)}, {minute(place.added_at)}"


def user_search(queryset: QuerySet[Any], search_term: str, by_event: Callable[[uuid.UUID], Q] | None = None) -> Any:
    """A search by user id (exact), or by event id where the list has one: both on an
    index. Any other term matches nothing rather than scanning the table for a substring."""
    if not search_term.strip():
        return queryset
    term = search_term_parse(search_term)
    if isinstance(term, int):
        return queryset.filter(user_id=term)
    if isinstance(term, uuid.UUID) and by_event is not None:
        return queryset.filter(by_event(term))
    return queryset.none()


def form_page(
    model_admin: admin.ModelAdmin[Any],
    request: HttpRequest,
    *,
    title: str,
    form: forms.Form,
    submit_name: str,
    submit_label: str,
    intro: str = "",
    hidden: Sequence[tuple[str, str]] = (),
    anomalies: Sequence[Anomaly] = (),
    anomalies_more: int = 0,
    cancel_url: str = "",
) -> TemplateResponse:
    """A page with one form of the triage admin: a false positive, a mute, a known place."""
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "intro": intro,
        "form": form,
        "submit_name": submit_name,
        "submit_label": submit_label,
        "hidden": hidden,
        "anomalies": anomalies,
        "anomalies_more": anomalies_more,
        "cancel_url": cancel_url,
    }
    return TemplateResponse(request, "admin/anomalies_app/triage_form.html", context)


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    list_display = ["anomaly_type", "enabled", "threshold", "window_seconds", "severity", "updated_at"]
    list_editable = ["enabled", "threshold", "window_seconds", "severity"]
    readonly_fields = ["anomaly_type", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the rules are the seven of the design; they are tuned, not invented

    def has_delete_permission(self, request: HttpRequest, obj: Rule | None = None) -> bool:
        return False


class SuppressedFilter(admin.SimpleListFilter):
    """Anomalies raised while a mute was on are recorded but not shown by default, as the
    API does (docs/design.md, "Mutes and known places")."""

    title = "suppressed by a mute (default: no)"
    parameter_name = "suppressed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "No (the default)"), ("yes", "Yes"), ("all", "All")]

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        shown = self.value() or "no"
        for value, label in self.lookup_choices:
            yield {
                "selected": shown == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value() or "no"
        if value == "all":
            return queryset
        if value not in ("yes", "no"):
            raise admin.options.IncorrectLookupParameters(f"suppressed: yes, no or all, not {value!r}")
        return queryset.filter(suppressed=value == "yes")


class AssigneeFilter(admin.SimpleListFilter):
    title = "assignee"
    parameter_name = "assignee"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("mine", "Mine"), ("unassigned", "Nobody")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "mine":
            return queryset.filter(assigned_to=request.user.pk)
        if self.value() == "unassigned":
            return queryset.filter(assigned_to__isnull=True)
        return queryset


class RuleFilter(admin.SimpleListFilter):
    """The seven rules, without asking the table which types it holds (a DISTINCT over
    every anomaly). The parameter is the one Django's own field filter would use."""

    title = "rule"
    parameter_name = "anomaly_type__exact"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(anomaly_type, anomaly_type) for anomaly_type in DEFAULT_RULES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(anomaly_type=self.value()) if self.value() else queryset


class TriageRefused(Exception):
    """A triage from the change form that the service refused: nothing is saved."""


class AnomalyChangeList(ChangeList):
    """The list reads no JSON: its rows show none (docs/performance.md, "Triage at size")."""

    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Anomaly]:
        rows: QuerySet[Anomaly] = super().get_queryset(request, exclude_parameters)
        return rows.defer("evidence", "original_signal_data", "triage_notes")


@admin.register(Anomaly)
class AnomalyAdmin(admin.ModelAdmin):
    paginator = CappedCountPaginator  # counts no more than it shows
    list_per_page = 50  # a page an analyst reads; rendering is most of its time (docs/performance.md, "Triage at size")
    list_display = [
        "id",
        "user",
        "rule_and_description",
        "severity_badge",
        "status_shown",
        "assigned_to",
        "episode_start",
        "age",
    ]
    list_select_related = ["assigned_to"]
    list_filter = [SuppressedFilter, "status", "severity", RuleFilter, AssigneeFilter]
    date_hierarchy = "detection_timestamp"
    ordering = ["-detection_timestamp", "-id"]
    search_fields = ["=user_id"]
    search_help_text = "A user id, or an event id (a UUID): the anomalies whose evidence holds that event."
    show_full_result_count = False
    actions = ["acknowledge", "resolve", "mark_false_positive", "assign_to_me", "unassign"]
    readonly_fields = [
        "user",
        "rule",
        "severity_badge",
        "description",
        "episode",
        "detected",
        "suppressed_shown",
        "rule_then",
        "window",
        "measured",
        "evidence_events",
        "triaged",
        "evidence_json",
        "original_signal_json",
        "published_at",
    ]
    fieldsets = [
        (None, {"fields": ["user", "rule", "severity_badge", "description", "episode", "detected"]}),
        ("Evidence", {"fields": ["rule_then", "window", "measured", "evidence_events"]}),
        (
            "Triage",
            {"fields": ["status", "assigned_to", "triage_notes", "triaged", "suppressed_shown"]},
        ),
        ("Raw", {"classes": ["collapse"], "fields": ["evidence_json", "original_signal_json", "published_at"]}),
    ]

    # --- who may do what --------------------------------------------------------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # detection makes anomalies (docs/design.md, "Triage")

    def has_delete_permission(self, request: HttpRequest, obj: Anomaly | None = None) -> bool:
        return False  # retention removes them

    def has_change_permission(self, request: HttpRequest, obj: Anomaly | None = None) -> bool:
        """Changing an anomaly is triaging it: status, assignee, notes."""
        return can_triage(request.user)

    def has_triage_permission(self, request: HttpRequest) -> bool:
        return can_triage(request.user)

    # --- the list ---------------------------------------------------------------------
    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AnomalyChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[Anomaly]:
        severity_rank = Case(
            *(When(severity=severity, then=Value(rank)) for severity, rank in SEVERITY_RANK.items()),
            default=Value(0),
            output_field=IntegerField(),
        )
        return super().get_queryset(request).annotate(severity_rank=severity_rank)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Anomaly], bool]:
        found = user_search(queryset, search_term, lambda event_id: Q(evidence__event_ids__contains=[str(event_id)]))
        if search_term.strip() and search_term_parse(search_term) is None:
            self.message_user(request, "Search takes a user id or an event id (a UUID).", messages.WARNING)
        return found, False

    @admin.display(description="user", ordering="user_id")
    def user(self, anomaly: Anomaly) -> SafeString:
        return user_link(anomaly.user_id)

    @admin.display(description="rule", ordering="anomaly_type")
    def rule(self, anomaly: Anomaly) -> str:
        return anomaly.anomaly_type

    @admin.display(description="rule: what happened", ordering="anomaly_type")
    def rule_and_description(self, anomaly: Anomaly) -> SafeString:
        return format_html("<strong>{}</strong><br>{}", anomaly.anomaly_type, anomaly.description)

    @admin.display(description="severity", ordering="severity_rank")
    def severity_badge(self, anomaly: Anomaly) -> SafeString:
        return severity_badge(anomaly.severity)

    @admin.display(description="status", ordering="status")
    def status_shown(self, anomaly: Anomaly) -> str:
        status = anomaly.get_status_display()
        return f"{status} (suppressed)" if anomaly.suppressed else status

    @admin.display(description="episode start (UTC)", ordering="episode_start_ms")
    def episode_start(self, anomaly: Anomaly) -> SafeString:
        start = ms_to_datetime(anomaly.episode_start_ms).strftime("%Y-%m-%d %H:%M:%S")
        return format_html('<span style="white-space:nowrap">{}</span>', start)

    @admin.display(description="age (since detection)", ordering="-detection_timestamp")
    def age(self, anomaly: Anomaly) -> str:
        return timesince(anomaly.detection_timestamp)

    @admin.display(description="detected")
    def detected(self, anomaly: Anomaly) -> str:
        return f"{minute(anomaly.detection_timestamp)} ({timesince(anomaly.detection_timestamp)} ago)"

    @admin.display(description="last triaged")
    def triaged(self, anomaly: Anomaly) -> str:
        if anomaly.triaged_at is None:
            return "not yet"
        return f"by {person(anomaly.triaged_by)}, {minute(anomaly.triaged_at)}"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        return super().changelist_view(request, {"title": "Anomalies", **(extra_context or {})})

    # --- actions: each one decision of the triage service -----------------------------
    def triage_report(self, request: HttpRequest, result: TriageResult) -> None:
        level = messages.WARNING if result.refused else messages.SUCCESS
        self.message_user(request, result.summary(), level)

    def triage(self, request: HttpRequest, queryset: QuerySet[Anomaly], **decision: Any) -> None:
        try:
            result = anomalies_triage(
                anomaly_ids=list(queryset.values_list("pk", flat=True)), by=analyst(request), **decision
            )
        except TriageError as error:
            self.message_user(request, error.message, messages.ERROR)
        else:
            self.triage_report(request, result)

    @admin.action(description="Acknowledge", permissions=["triage"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Anomaly]) -> None:
        self.triage(request, queryset, status=AnomalyStatus.ACKNOWLEDGED)

    @admin.action(description="Resolve", permissions=["triage"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Anomaly]) -> None:
        self.triage(request, queryset, status=AnomalyStatus.RESOLVED)

    @admin.action(description="Mark false positive (mute, known place)…", permissions=["triage"])
    def mark_false_positive(self, request: HttpRequest, queryset: QuerySet[Anomaly]) -> HttpResponse | None:
        # The form posts back to this same action, with the selection it was shown for.
        hidden = [("action", "mark_false_positive"), ("index", "0")]
        hidden += [("select_across", request.POST.get("select_across", "0"))]
        hidden += [(ACTION_CHECKBOX_NAME, pk) for pk in request.POST.getlist(ACTION_CHECKBOX_NAME)]
        return self.false_positive(
            request, list(queryset.values_list("pk", flat=True)), hidden=hidden, cancel_url=request.get_full_path()
        )

    @admin.action(description="Assign to me", permissions=["triage"])
    def assign_to_me(self, request: HttpRequest, queryset: QuerySet[Anomaly]) -> None:
        self.triage(request, queryset, assigned_to=analyst(request))

    @admin.action(description="Unassign", permissions=["triage"])
    def unassign(self, request: HttpRequest, queryset: QuerySet[Anomaly]) -> None:
        self.triage(request, queryset, assigned_to=None)

    def false_positive(
        self, request: HttpRequest, anomaly_ids: list[int], *, hidden: Sequence[tuple[str, str]] = (), cancel_url: str
    ) -> HttpResponse | None:
        """The false-positive form for these anomalies; shown again with the service's
        refusal on its field, or None once the decision is made."""
        if "apply" not in request.POST:
            form = FalsePositiveForm()
        else:
            form = FalsePositiveForm(request.POST)
            if form.is_valid():
                try:
                    result = anomalies_triage(
                        anomaly_ids=anomaly_ids,
                        by=analyst(request),
                        status=AnomalyStatus.FALSE_POSITIVE,
                        mute_days=form.cleaned_data["mute_days"],
                        mute_reason=form.cleaned_data["mute_reason"],
                        add_known_place=form.cleaned_data["add_known_place"],
                    )
                except TriageError as error:
                    form.add_triage_error(error)
                else:
                    self.triage_report(request, result)
                    return None
        named = Anomaly.objects.filter(pk__in=anomaly_ids).order_by("-detection_timestamp", "-id")
        return form_page(
            self,
            request,
            title=f"Mark {len(anomaly_ids)} {'anomaly' if len(anomaly_ids) == 1 else 'anomalies'} false positive",
            intro="A false positive usually comes back: mute the rule for the user, or, for a login from a new "
            "place, make the place one of the user's known places.",
            form=form,
            submit_name="apply",
            submit_label="Mark false positive",
            hidden=hidden,
            anomalies=list(named[:FORM_PAGE_ANOMALIES]),
            anomalies_more=max(len(anomaly_ids) - FORM_PAGE_ANOMALIES, 0),
            cancel_url=cancel_url,
        )

    # --- one anomaly ------------------------------------------------------------------
    def get_form(self, request: HttpRequest, obj: Anomaly | None = None, change: bool = False, **kwargs: Any) -> Any:
        """Only the statuses the anomaly can move to, and only people who may triage."""
        form = super().get_form(request, obj, change, **kwargs)
        if obj is not None and "status" in form.base_fields:
            reachable = [obj.status, *sorted(TRANSITIONS[obj.status], key=AnomalyStatus.values.index)]
            labels = dict(AnomalyStatus.choices)
            form.base_fields["status"].choices = [(status, labels[status]) for status in reachable]  # type: ignore[attr-defined]
        return form

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "assigned_to":
            kwargs["queryset"] = triager_list()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Anomaly, form: ModelForm[Anomaly], change: bool) -> None:
        """The changed fields, as one decision of the triage service; a refusal saves nothing."""
        data, changed = form.cleaned_data, form.changed_data
        try:
            result = anomalies_triage(
                anomaly_ids=[obj.pk],
                by=analyst(request),
                status=data["status"] if "status" in changed else None,
                assigned_to=data["assigned_to"] if "assigned_to" in changed else KEEP,
                triage_notes=data["triage_notes"] if "triage_notes" in changed else None,
            )
        except TriageError as error:
            raise TriageRefused(error.message) from error
        if obj.pk in result.refused:
            raise TriageRefused(result.refused[obj.pk])

    def log_change(self, request: HttpRequest, obj: Anomaly, message: Any) -> LogEntry:
        """Nothing: the triage service wrote this change's history line already."""
        return None  # type: ignore[return-value]

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except TriageRefused as refused:
            self.message_user(request, f"Nothing was saved: {refused}.", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Anomaly | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["user_page_url"] = user_url(obj.user_id)
            if self.has_triage_permission(request) and AnomalyStatus.FALSE_POSITIVE in TRANSITIONS[obj.status]:
                context["false_positive_url"] = reverse("admin:anomalies_app_anomaly_false_positive", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)

    def false_positive_view(self, request: HttpRequest, anomaly_id: int) -> HttpResponse:
        """The bulk action's false-positive form, for one anomaly, from its page."""
        if not self.has_triage_permission(request):
            raise PermissionDenied
        if not Anomaly.objects.filter(pk=anomaly_id).exists():
            raise Http404(f"no anomaly {anomaly_id}")
        change_url = reverse("admin:anomalies_app_anomaly_change", args=[anomaly_id])
        return self.false_positive(request, [anomaly_id], cancel_url=change_url) or HttpResponseRedirect(change_url)

    @admin.display(description="episode (event time)")
    def episode(self, anomaly: Anomaly) -> str:
        start, end = utc(anomaly.episode_start_ms), utc(anomaly.episode_end_ms)
        return start if start == end else f"{start} to {end}"

    @admin.display(description="suppressed")
    def suppressed_shown(self, anomaly: Anomaly) -> str | SafeString:
        if not anomaly.suppressed:
            return "no"
        if anomaly.suppressed_by_id is None:
            return "yes, by a mute since removed"
        mute_url = reverse("admin:anomalies_app_mute_change", args=[anomaly.suppressed_by_id])
        return format_html('yes, held back by <a href="{}">mute {}</a>', mute_url, anomaly.suppressed_by_id)

    @admin.display(description="the rule when it fired")
    def rule_then(self, anomaly: Anomaly) -> str:
        rule = anomaly_rule_then(anomaly=anomaly)
        if rule is None:
            return "not recorded in the evidence"
        return (
            f"{rule_in_words(rule)} (threshold {rule.threshold:g}, window {rule.window_seconds} s, "
            f"comparison {rule.comparison.value}, severity {rule.severity})"
        )

    @admin.display(description="window (event time)")
    def window(self, anomaly: Anomaly) -> str:
        evidence = anomaly.evidence or {}
        if "window_start_ms" not in evidence:
            return "not recorded in the evidence"
        start = utc(evidence["window_start_ms"], milliseconds=True)
        end = utc(evidence["window_end_ms"], milliseconds=True)
        return start if start == end else f"{start} to {end}"

    @admin.display(description="seen")
    def measured(self, anomaly: Anomaly) -> str:
        rule, value = anomaly_rule_then(anomaly=anomaly), (anomaly.evidence or {}).get("value")
        if rule is None or value is None:
            return "not recorded in the evidence"
        detail = describe_detail(anomaly.anomaly_type, anomaly.episode_start_ms, anomaly.episode_key)
        return value_in_words(rule, value, detail)

    @admin.display(description="events")
    def evidence_events(self, anomaly: Anomaly) -> SafeString:
        events = anomaly_evidence_events(anomaly=anomaly)
        rows = signal_rows((event.event_id, event.signal) for event in events)
        return render_to_string(
            "admin/anomalies_app/signal_table.html",
            {"rows": rows, "table_id": "evidence-events", "empty": "The evidence names no events."},
        )

    @admin.display(description="evidence (JSON)")
    def evidence_json(self, anomaly: Anomaly) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(anomaly.evidence, indent=2, sort_keys=True))

    @admin.display(description="original signal (JSON)")
    def original_signal_json(self, anomaly: Anomaly) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(anomaly.original_signal_data, indent=2, sort_keys=True))

    # --- a page per user --------------------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "user/<int:user_id>/",
                self.admin_site.admin_view(self.user_view),
                name="anomalies_app_anomaly_user",
            ),
            path(
                "<int:anomaly_id>/false-positive/",
                self.admin_site.admin_view(self.false_positive_view),
                name="anomalies_app_anomaly_false_positive",
            ),
        ]
        return own + super().get_urls()

    def user_view(self, request: HttpRequest, user_id: int) -> HttpResponse:
        """One user: risk, open anomalies (with the list's actions), mutes, known places and
        latest signals. Its forms post here; the anomaly actions go through the list's own
        action machinery, on this user's anomalies."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        user_forms: dict[str, TriageForm] = {"mute": MuteForm(), "place": KnownPlaceForm()}
        if request.method == "POST":
            if not self.has_triage_permission(request):
                raise PermissionDenied
            response = self.user_post(request, user_id, user_forms)
            if response is not None:
                return response
        overview = user_overview(user_id=user_id)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"User {user_id}",
            "overview": overview,
            "anomaly_rows": [
                {"anomaly": anomaly, "severity": severity_badge(anomaly.severity)}
                for anomaly in overview.open_anomalies
            ],
            "can_triage": self.has_triage_permission(request),
            "action_choices": self.get_action_choices(request),
            "mute_form": user_forms["mute"],
            "place_form": user_forms["place"],
            "signal_rows": signal_rows((str(signal.event_id), signal) for signal in overview.signals),
            "place_rows": [
                {"place": place, "first_login": place_first_login(place), "added": place_added_by_hand(place)}
                for place in overview.known_places
            ],
            "anomalies_url": reverse("admin:anomalies_app_anomaly_changelist") + f"?q={user_id}&suppressed=all",
            "signals_url": reverse("admin:signals_app_signal_changelist") + f"?q={user_id}",
            "mutes_url": reverse("admin:anomalies_app_mute_changelist") + f"?q={user_id}",
        }
        return TemplateResponse(request, "admin/anomalies_app/anomaly/user.html", context)

    def user_post(self, request: HttpRequest, user_id: int, user_forms: dict[str, TriageForm]) -> HttpResponse | None:
        """A form of the user page: done (a redirect), or a form to show again with its errors
        (None; the form is left in `user_forms`)."""
        back = HttpResponseRedirect(request.path)
        by = analyst(request)
        if "mute_add" in request.POST:
            mute_form = user_forms["mute"] = MuteForm(request.POST)
            if service_form_apply(
                mute_form,
                lambda data: mute_add(
                    user_id=user_id, anomaly_type=data["anomaly_type"], days=data["days"], reason=data["reason"], by=by
                ),
            ):
                self.message_user(request, f"Muted: {mute_form.result}.", messages.SUCCESS)
                return back
            return None
        if "known_place_add" in request.POST:
            place_form = user_forms["place"] = KnownPlaceForm(request.POST)
            if service_form_apply(
                place_form,
                lambda data: known_place_add(user_id=user_id, location=data["location"], note=data["note"], by=by),
            ):
                self.message_user(request, f"Known place added: {place_form.result.location}.", messages.SUCCESS)
                return back
            return None
        if "mute_end" in request.POST:
            mute_id = request.POST["mute_end"]
            mute = Mute.objects.filter(user_id=user_id, pk=int(mute_id)).first() if mute_id.isdigit() else None
            if mute is None:
                raise Http404("no such mute of this user")
            mute_end_reported(self, request, mute)
            return back
        return self.response_action(request, queryset=anomaly_list(user_id=user_id)) or back


def service_form_apply(form: TriageForm, call: Callable[[dict[str, Any]], Any]) -> bool:
    """Call a triage service with a valid form's data; its refusal becomes the form's error.
    What the service returned is kept as `form.result`."""
    if not form.is_valid():
        return False
    try:
        form.result = call(form.cleaned_data)
    except TriageError as error:
        form.add_triage_error(error)
        return False
    return True


def mute_end_reported(model_admin: admin.ModelAdmin[Any], request: HttpRequest, mute: Mute) -> None:
    """End a mute through `mute_end`, and say so, or why not."""
    try:
        mute_end(mute=mute, by=analyst(request))
    except TriageError as error:
        model_admin.message_user(request, f"Mute {mute.pk}: {error.message}.", messages.ERROR)
    else:
        model_admin.message_user(request, f"Ended: {mute}.", messages.SUCCESS)


class MuteActiveFilter(admin.SimpleListFilter):
    title = "active"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Active"), ("no", "Ended or ran out")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(pk__in=Mute.objects.active().values("pk"))
        if self.value() == "no":
            return queryset.exclude(pk__in=Mute.objects.active().values("pk"))
        return queryset


@admin.register(Mute)
class MuteAdmin(admin.ModelAdmin):
    """Mutes are added (here, from a false positive, or on the user page) and ended early,
    never edited or deleted: what was muted, why and by whom stays known."""

    list_display = ["id", "user", "anomaly_type", "until_utc", "reason", "created", "state"]
    list_select_related = ["created_by", "ended_by"]
    list_filter = ["anomaly_type", MuteActiveFilter]
    search_fields = ["=user_id"]
    search_help_text = "A user id."
    actions = ["end_now"]
    readonly_fields = ("user", "anomaly_type", "until_utc", "reason", "created", "state")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and can_triage(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Mute | None = None) -> bool:
        return False  # ended through `mute_end`, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Mute | None = None) -> bool:
        return False

    def has_triage_permission(self, request: HttpRequest) -> bool:
        return can_triage(request.user)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Mute], bool]:
        return user_search(queryset, search_term), False

    @admin.display(description="user", ordering="user_id")
    def user(self, mute: Mute) -> SafeString:
        return user_link(mute.user_id)

    @admin.display(description="until", ordering="until")
    def until_utc(self, mute: Mute) -> str:
        return minute(mute.until)

    @admin.display(description="added", ordering="created_at")
    def created(self, mute: Mute) -> str:
        return f"by {person(mute.created_by)}, {minute(mute.created_at)}"

    @admin.display(description="state")
    def state(self, mute: Mute) -> str:
        if mute.ended_at is not None:
            return f"ended {minute(mute.ended_at)} by {person(mute.ended_by)}"
        return "active" if mute.active else "ran out"

    @admin.action(description="End now", permissions=["triage"])
    def end_now(self, request: HttpRequest, queryset: QuerySet[Mute]) -> None:
        ended, refused = 0, []
        for mute in queryset:
            try:
                mute_end(mute=mute, by=analyst(request))
                ended += 1
            except TriageError as error:
                refused.append(f"mute {mute.pk}: {error.message}")
        summary = f"{ended} ended" + (f", {len(refused)} left as they were ({'; '.join(refused)})" if refused else "")
        self.message_user(request, summary + ".", messages.WARNING if refused else messages.SUCCESS)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        """A mute through `mute_add`, which keeps who added it and writes its history line."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = MuteAddForm(request.POST) if request.method == "POST" else MuteAddForm(initial=request.GET.dict())
        if request.method == "POST" and service_form_apply(
            form,
            lambda data: mute_add(
                user_id=data["user_id"],
                anomaly_type=data["anomaly_type"],
                days=data["days"],
                reason=data["reason"],
                by=analyst(request),
            ),
        ):
            self.message_user(request, f"Muted: {form.result}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:anomalies_app_mute_changelist"))
        return form_page(self, request, title="Add mute", form=form, submit_name="add", submit_label="Mute")

    def get_urls(self) -> list[URLPattern]:
        end = path("<int:mute_id>/end/", self.admin_site.admin_view(self.end_view), name="anomalies_app_mute_end")
        return [end, *super().get_urls()]

    def end_view(self, request: HttpRequest, mute_id: int) -> HttpResponse:
        """End one mute now, after a look at what it is."""
        if not self.has_triage_permission(request):
            raise PermissionDenied
        mute = Mute.objects.filter(pk=mute_id).first()
        if mute is None:
            raise Http404(f"no mute {mute_id}")
        change_url = reverse("admin:anomalies_app_mute_change", args=[mute_id])
        if request.method == "POST":
            mute_end_reported(self, request, mute)
            return HttpResponseRedirect(change_url)
        return form_page(
            self,
            request,
            title=f"End mute {mute.pk}",
            intro=f"{mute}: {mute.reason}. Ended now, the rule raises new anomalies for the user again "
            "within seconds; what it held back stays recorded.",
            form=forms.Form(),
            submit_name="end",
            submit_label="End now",
            cancel_url=change_url,
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Mute | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.active and self.has_triage_permission(request):
            context["end_url"] = reverse("admin:anomalies_app_mute_end", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)


class KnownPlaceSourceFilter(admin.SimpleListFilter):
    title = "known from"
    parameter_name = "source"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("login", "A successful login"), ("hand", "Added by hand")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "login":
            return queryset.filter(first_seen_ms__isnull=False)
        if self.value() == "hand":
            return queryset.filter(added_at__isnull=False)
        return queryset


@admin.register(UserLocation)
class KnownPlaceAdmin(admin.ModelAdmin):
    """Known places: those seen at logins (detection adds them) and those an analyst added by
    hand. Read-only once there; a place is added by hand through `known_place_add`."""

    paginator = CappedCountPaginator  # counts no more than it shows

    list_display = ["user", "location", "first_login", "added_by_hand", "note"]
    list_display_links = ["location"]
    list_select_related = ["added_by"]
    list_filter = [KnownPlaceSourceFilter]
    search_fields = ["=user_id"]
    search_help_text = "A user id."
    show_full_result_count = False
    ordering = ["user_id", "location"]
    readonly_fields = ("user", "location", "first_login", "added_by_hand", "note")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and can_triage(request.user)

    def has_change_permission(self, request: HttpRequest, obj: UserLocation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UserLocation | None = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[UserLocation], bool]:
        return user_search(queryset, search_term), False

    @admin.display(description="user", ordering="user_id")
    def user(self, place: UserLocation) -> SafeString:
        return user_link(place.user_id)

    @admin.display(description="first successful login", ordering="first_seen_ms")
    def first_login(self, place: UserLocation) -> str | SafeString:
        return place_first_login(place)

    @admin.display(description="added by hand", ordering="added_at")
    def added_by_hand(self, place: UserLocation) -> str:
        return place_added_by_hand(place)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        """A place added by hand, through `known_place_add`, which writes its history line."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = (
            KnownPlaceAddForm(request.POST)
            if request.method == "POST"
            else KnownPlaceAddForm(initial=request.GET.dict())
        )
        if request.method == "POST" and service_form_apply(
            form,
            lambda data: known_place_add(
                user_id=data["user_id"], location=data["location"], note=data["note"], by=analyst(request)
            ),
        ):
            self.message_user(request, f"Known place added: {form.result}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:anomalies_app_userlocation_changelist"))
        return form_page(
            self,
            request,
            title="Add a known place",
            intro="A login from a known place is never new: use it for a place the user is about to log in from.",
            form=form,
            submit_name="add",
            submit_label="Add known place",
        )
