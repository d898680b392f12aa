"""An analyst's triage in a real browser, on real servers (docs/design.md, "Triage" and
"Mutes and known places"): headless Chromium on the admin of pytest-django's live server,
anomalies raised by the real bridge and worker from events on Kafka.

The analyst filters the new high anomalies, acknowledges them in bulk, marks one false
positive with a 7-day mute of its rule for its user, and then sees the next new place of
that user recorded suppressed while another user's new place is raised.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group, User
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from anomalies_app.models import Anomaly, AnomalyStatus, Mute
from anomalies_app.rules import HIGH_VALUE_PURCHASE, REPEATED_LOGIN_FAILURES, UNUSUAL_LOCATION_LOGIN
from anomalies_app.triage import mute_add
from signals_app.models import Signal
from tests.conftest import Pipeline, wait_for
from tests.factories import PAYLOADS, signal_message

pytestmark = pytest.mark.integration

PASSWORD = "a-long-enough-password-for-a-browser"
# The users of the story: two who log in from a new place, one whose logins keep failing,
# one big spender (medium, so not among the high ones), and the probe of the mutes.
TRAVELLER, OTHER, LOCKED_OUT, SPENDER, PROBE = 7101, 7102, 7103, 7104, 7109
CHANGELIST = "/admin/anomalies_app/anomaly/"
# Workers read the mutes again at most this often (RULES_REFRESH_SECONDS).
REFRESH_SECONDS = "1"


def login(user_id: int, place: str, at_ms: int, *, success: bool = True) -> dict[str, Any]:
    payload = {**PAYLOADS["login"], "location": place, "success": success}
    return signal_message("login", user_id=user_id, timestamp=at_ms, payload=payload)


def noon_yesterday_ms() -> int:
    """Event time away from the quiet hours of unusual_time_activity, whatever the clock says."""
    noon = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    return int(noon.timestamp() * 1000)


def anomaly_of(user_id: int, **fields: Any) -> Anomaly:
    return Anomaly.objects.get(user_id=user_id, **fields)


# --- the pages, as the analyst's clicks reach them ---------------------------------------
def load(browser: Chrome, element: WebElement) -> None:
    """Click what leads to another page, and wait until the browser has left this one."""
    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 30).until(staleness_of(page))


def filter_by(browser: Chrome, **choice: str) -> None:
    """Click the list filter's link that selects `choice` (keeping what is selected already)."""
    for link in browser.find_elements(By.CSS_SELECTOR, "#changelist-filter a"):
        query = parse_qs(urlsplit(link.get_attribute("href") or "").query)
        if all(query.get(parameter) == [value] for parameter, value in choice.items()):
            load(browser, link)
            return
    raise AssertionError(f"no filter link selects {choice} on {browser.current_url}")


def search(browser: Chrome, text: str) -> None:
    box = browser.find_element(By.ID, "searchbar")
    box.clear()
    box.send_keys(text)
    load(browser, browser.find_element(By.CSS_SELECTOR, "#changelist-search input[type=submit]"))


def listed(browser: Chrome) -> set[int]:
    """The ids of the anomalies in the changelist as shown."""
    hrefs = [a.get_attribute("href") or "" for a in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody a")]
    return {int(found[1]) for href in hrefs if (found := re.search(r"/anomaly/(\d+)/change/", href))}


def messages(browser: Chrome) -> list[str]:
    return [item.text for item in browser.find_elements(By.CSS_SELECTOR, "ul.messagelist li")]


def history(browser: Chrome, base_url: str, anomaly: Anomaly) -> list[tuple[str, str]]:
    """The lines of an anomaly's history page, oldest first: who, and what changed."""
    browser.get(f"{base_url}{CHANGELIST}{anomaly.pk}/history/")
    rows = [
        row.find_elements(By.TAG_NAME, "td")
        for row in browser.find_elements(By.CSS_SELECTOR, "#change-history tbody tr")
    ]
    return [(who.text, what.text) for who, what in rows]


# --- the pipeline -------------------------------------------------------------------------
def wait_until_the_worker_reads_the_mutes(pipeline: Pipeline, analyst: User, at_ms: int) -> None:
    """Wait until the worker has read the mutes again since now: mute the probe user's
    new places, then send it one new place after another until one is recorded
    suppressed. The worker reads all mutes at once, so it then knows every mute made
    before this one."""
    mute_add(user_id=PROBE, anomaly_type=UNUSUAL_LOCATION_LOGIN, days=1, reason="probe", by=analyst, via="test")
    probes = count(1)

    def probe_recorded_suppressed() -> bool:
        n = next(probes)
        place = f"Probe town {n}, XX"
        pipeline.produce([login(PROBE, place, at_ms + n * 1000)])
        wait_for(
            lambda: Anomaly.objects.filter(user_id=PROBE, episode_key=place).exists(),
            timeout=60,
            what=f"the probe's login from {place} to be analysed",
        )
        return anomaly_of(PROBE, episode_key=place).suppressed

    wait_for(probe_recorded_suppressed, timeout=60, interval=0, what="the worker to read the mutes again")


@pytest.fixture
def analyst(pipeline: Pipeline) -> User:
    """A staff member in the analysts group. (After `pipeline`, whose serialized rollback
    keeps the groups that migrations made.)"""
    user = User.objects.create_user("ana", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="analysts"))
    return user


def test_an_analyst_triages_in_the_browser_and_a_mute_holds_back_the_next_new_place(
    pipeline: Pipeline, analyst: User, live_server: Any, browser: Chrome
) -> None:
    pipeline.start_worker(RULES_REFRESH_SECONDS=REFRESH_SECONDS)
    pipeline.start_bridge()
    t0 = noon_yesterday_ms()
    first = [
        login(TRAVELLER, "Berlin, DE", t0),
        login(TRAVELLER, "Lisbon, PT", t0 + 60_000),
        login(OTHER, "Paris, FR", t0),
        login(OTHER, "Madrid, ES", t0 + 60_000),
        *(login(LOCKED_OUT, "Oslo, NO", t0 + n * 10_000, success=False) for n in range(3)),
        signal_message("purchase", user_id=SPENDER, timestamp=t0, payload={**PAYLOADS["purchase"], "amount": 5000}),
        login(PROBE, "Home town, XX", t0),
    ]
    pipeline.produce(first)
    raised = {
        (TRAVELLER, UNUSUAL_LOCATION_LOGIN),
        (OTHER, UNUSUAL_LOCATION_LOGIN),
        (LOCKED_OUT, REPEATED_LOGIN_FAILURES),
        (SPENDER, HIGH_VALUE_PURCHASE),
    }
    wait_for(
        lambda: (
            Signal.objects.count() == len(first)
            and set(Anomaly.objects.values_list("user_id", "anomaly_type")) == raised
        ),
        timeout=90,
        what="the first events and anomalies to be stored",
    )
    traveller_first, other_first = anomaly_of(TRAVELLER), anomaly_of(OTHER)
    high = {traveller_first.pk, other_first.pk, anomaly_of(LOCKED_OUT).pk}
    base = live_server.url

    # Log in as the analyst.
    browser.get(f"{base}/admin/login/?next={CHANGELIST}")
    browser.find_element(By.NAME, "username").send_keys(analyst.username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    load(browser, browser.find_element(By.CSS_SELECTOR, "#login-form input[type=submit]"))
    assert urlsplit(browser.current_url).path == CHANGELIST, browser.current_url
    assert listed(browser) == high | {anomaly_of(SPENDER).pk}

    # The new high ones, acknowledged together.
    filter_by(browser, status__exact=AnomalyStatus.NEW)
    filter_by(browser, severity__exact="high")
    assert listed(browser) == high
    browser.find_element(By.ID, "action-toggle").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("acknowledge")
    load(browser, browser.find_element(By.CSS_SELECTOR, "#changelist-form button[name=index]"))
    assert messages(browser) == ["3 changed."]
    assert listed(browser) == set(), "no new high anomaly is left"
    statuses = dict(Anomaly.objects.values_list("id", "status"))
    assert {statuses[pk] for pk in high} == {AnomalyStatus.ACKNOWLEDGED}
    assert statuses[anomaly_of(SPENDER).pk] == AnomalyStatus.NEW, "the medium one was not selected"

    # The traveller's: a false positive, and no more of its rule for the user for 7 days.
    filter_by(browser, status__exact=AnomalyStatus.ACKNOWLEDGED)
    assert listed(browser) == high
    load(
        browser, browser.find_element(By.CSS_SELECTOR, f"#result_list a[href*='/anomaly/{traveller_first.pk}/change/']")
    )
    load(browser, browser.find_element(By.ID, "false-positive-link"))
    assert urlsplit(browser.current_url).path == f"{CHANGELIST}{traveller_first.pk}/false-positive/"
    assert browser.find_element(By.NAME, "add_known_place").get_attribute("type") == "checkbox"
    days = browser.find_element(By.NAME, "mute_days")
    days.clear()
    days.send_keys("7")
    browser.find_element(By.NAME, "mute_reason").send_keys("travels for work this month")
    load(browser, browser.find_element(By.CSS_SELECTOR, "input[name=apply]"))
    assert messages(browser) == ["1 changed, 1 mute added."]
    traveller_first.refresh_from_db()
    assert traveller_first.status == AnomalyStatus.FALSE_POSITIVE
    mute = Mute.objects.get(user_id=TRAVELLER)
    assert (mute.anomaly_type, mute.reason, mute.created_by) == (
        UNUSUAL_LOCATION_LOGIN,
        "travels for work this month",
        analyst,
    )
    assert abs(mute.until - (mute.created_at + timedelta(days=7))) < timedelta(minutes=1)

    # One more new place each: the traveller's is held back, the other user's raised.
    wait_until_the_worker_reads_the_mutes(pipeline, analyst, t0)
    after = [login(TRAVELLER, "Porto, PT", t0 + 120_000), login(OTHER, "Rome, IT", t0 + 120_000)]
    pipeline.produce(after)
    wait_for(
        lambda: (
            Signal.objects.filter(event_id__in=[event["event_id"] for event in after]).count() == 2
            and Anomaly.objects.filter(
                user_id__in=[TRAVELLER, OTHER], episode_key__in=["Porto, PT", "Rome, IT"]
            ).count()
            == 2
        ),
        timeout=90,
        what="both logins to be stored and analysed",
    )
    traveller_next = anomaly_of(TRAVELLER, episode_key="Porto, PT")
    other_next = anomaly_of(OTHER, episode_key="Rome, IT")
    assert (traveller_next.suppressed, traveller_next.suppressed_by, traveller_next.published_at) == (True, mute, None)
    assert not other_next.suppressed and other_next.status == AnomalyStatus.NEW

    browser.get(f"{base}{CHANGELIST}")
    search(browser, str(OTHER))
    assert listed(browser) == {other_first.pk, other_next.pk}
    search(browser, str(TRAVELLER))
    assert listed(browser) == {traveller_first.pk}, "the held-back one is not in the default list"
    filter_by(browser, suppressed="yes")
    assert listed(browser) == {traveller_next.pk}

    # Who did what, in each anomaly's history.
    acknowledged = (analyst.username, f"status: new → acknowledged; assigned to: nobody → {analyst.username} (admin)")
    assert history(browser, base, traveller_first) == [
        acknowledged,
        (
            analyst.username,
            f"status: acknowledged → false positive; {UNUSUAL_LOCATION_LOGIN} muted for user {TRAVELLER} "
            f"until {mute.until:%Y-%m-%d %H:%M} UTC (admin)",
        ),
    ]
    assert history(browser, base, other_first) == [acknowledged]
