"""A team on one review: text limits on the server and in the export, login backoff, roles,
adjudication of double-review disagreements, agreement over designated samples only, revisits
that show the exported text, skipped samples coming back last; no browser needed."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from factories import write_fake_run
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.pipeline.cli import free_port
from refsav_pipeline.review import users as users_mod
from refsav_pipeline.review.actions import (
    ADJUDICATION,
    REJECT_REASONS,
    Form,
    Refusal,
    ReviewActions,
    Screen,
)
from refsav_pipeline.review.app import ReviewApp, wait_until_up
from refsav_pipeline.review.consensus import consensus
from refsav_pipeline.review.export import export_report, load_validated
from refsav_pipeline.review.login_guard import LoginThrottle
from refsav_pipeline.review.select import (
    BenchmarkSample,
    load_benchmark,
    select_and_write,
    write_selection,
)
from refsav_pipeline.review.stats import (
    agreement,
    krippendorff_alpha,
    review_stats,
    wilson_interval,
)
from refsav_pipeline.review.store import Decision, DecisionStore, NewDecision, Settled
from refsav_pipeline.review.users import add_user, make_auth, read_accounts, role_of
from refsav_pipeline.review.view import shown_token


def decision(s: BenchmarkSample, reviewer: str, action: str, **kw) -> NewDecision:
    return NewDecision(video_id=s.video_id, masklet_type=s.masklet_type,
                       masklet_id=s.masklet_id, sample_version=s.sample_version,
                       reviewer=reviewer, action=action, **kw)


@pytest.fixture()
def team(synth_root: Path, tmp_path: Path) -> tuple[Path, Path, list[BenchmarkSample]]:
    """A run whose first three samples are designated for double review; three accounts."""
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    samples = select_and_write(out, count=50, seed=0, double_review=0.0)
    samples = [s.model_copy(update={"double_review": i < 3}) for i, s in enumerate(samples)]
    write_selection(out, samples, seed=0, count=50, force=True)
    users = tmp_path / "users.txt"
    add_user(users, "alice", "a", iterations=1000)
    add_user(users, "bob", "b", iterations=1000)
    add_user(users, "judy", "j", iterations=1000, role="adjudicator")
    return out, users, load_benchmark(out)


def shown(screen: Screen) -> str:
    assert screen.view is not None
    return shown_token(screen.view.key, screen.view.version)


def test_text_limits_on_the_server(team) -> None:
    out, users, samples = team
    actions = ReviewActions(out, users)
    screen = actions.open("s1", "alice", "all")
    assert isinstance(screen, Screen) and screen.view is not None
    token = shown(screen)
    n = len(DecisionStore.for_run(out).decisions())
    for form, words in ((Form(video_caption="x" * 5000), "video caption is 5,000"),
                        (Form(**{**screen.view.texts, "short": "s" * 201}),
                         "short expression is 201"),
                        (Form(**{**screen.view.texts, "note": "n" * 1001}), "note is 1,001")):
        answer = actions.decide("s1", "alice", "edit_accept", token, form)
        assert isinstance(answer, Refusal) and words in answer.message, answer
        assert "limit" in answer.message
    assert len(DecisionStore.for_run(out).decisions()) == n  # nothing recorded
    with pytest.raises(ValueError, match="at most 200"):  # the store refuses it too
        decision(samples[0], "alice", "accept", short_expression="s" * 201)


def test_exporter_refuses_oversized_text(team) -> None:
    out, users, samples = team
    huge = samples[4].model_copy(update={"video_caption": "y" * 50_000})
    write_selection(out, [*samples[:4], huge, *samples[5:]], seed=0, count=50, force=True)
    samples = load_benchmark(out)
    store = DecisionStore.for_run(out)
    store.record(decision(samples[4], "alice", "accept"))
    store.record(decision(samples[5], "alice", "accept"))
    path, rows, refused, disputed = export_report(out)
    assert [r.key for r in rows] == [samples[5].key]
    assert [(r.masklet_id, "video caption is 50,000" in r.reason) for r in refused] == [
        (samples[4].masklet_id, True)]
    result = CliRunner().invoke(app, ["review", "export", "--out", str(out)])
    assert result.exit_code == 1 and "left out" in result.output and "50,000" in result.output
    assert [r.key for r in load_validated(out)] == [samples[5].key]


def test_roles_in_users_file_old_files_readable(tmp_path: Path) -> None:
    old = tmp_path / "old.txt"  # written before roles: five fields per line
    old.write_text(f"carol:{users_mod.hash_password('pw', 1000)}\n")
    assert read_accounts(old)["carol"].role == "reviewer" and make_auth(old)("carol", "pw")
    add_user(old, "judy", "x", iterations=1000, role="adjudicator")
    add_user(old, "judy", "y", iterations=1000)  # a new password keeps the role
    assert role_of(old, "judy") == "adjudicator" and role_of(old, "carol") == "reviewer"
    assert make_auth(old)("judy", "y")
    result = CliRunner().invoke(app, ["review", "add-user", "--users", str(old), "dan",
                                      "--password-stdin", "--role", "boss"], input="pw\n")
    assert result.exit_code == 2 and "role" in result.output


def test_unknown_names_cost_the_same_hashing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "users.txt"
    add_user(users, "alice", "right", iterations=5000)
    calls: list[int] = []
    real = users_mod.hashlib.pbkdf2_hmac

    def counting(name, password, salt, iterations):
        calls.append(iterations)
        return real(name, password, salt, iterations)

    monkeypatch.setattr(users_mod.hashlib, "pbkdf2_hmac", counting)
    check = make_auth(users)
    assert not check("alice", "wrong")
    known = list(calls)
    calls.clear()
    assert not check("nobody", "wrong")
    assert calls == known == [5000]


def test_backoff_doubles_from_the_fifth_failure() -> None:
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    delays = [throttle.failure("alice", "10.0.0.1")[1] for _ in range(8)]
    assert delays == [0, 0, 0, 0, 1, 2, 4, 8]
    assert throttle.retry_after("alice", "10.0.0.9") == 8  # per user, from any address
    assert throttle.retry_after("bob", "10.0.0.1") == 8  # per address, for any name
    assert throttle.retry_after("bob", "10.0.0.2") == 0
    now[0] = 8.5
    assert throttle.retry_after("alice", "10.0.0.1") == 0
    throttle.success("alice", "10.0.0.1")
    assert throttle.failure("alice", "10.0.0.1") == (1, 0)


def test_login_backoff_over_http(team, caplog: pytest.LogCaptureFixture) -> None:
    out, users, _ = team
    port = free_port()
    caplog.set_level(logging.WARNING, logger="refsav.review.login")
    demo = ReviewApp(out, users).launch("127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/")
        with httpx.Client(base_url=url, timeout=30) as client:
            def attempt(name: str, password: str) -> httpx.Response:
                return client.post("/login", data={"username": name, "password": password})

            assert [attempt("alice", "wrong").status_code for _ in range(5)] == [400] * 5
            blocked = attempt("alice", "a")  # even the right password is not checked now
            assert blocked.status_code == 429 and blocked.headers["retry-after"] == "1"
            assert "try again in 1 s" in blocked.json()["detail"]
            other = attempt("mallory", "x")  # same address, another name: blocked too
            assert other.status_code == 429
            time.sleep(1.1)  # wait out the block: the next failure doubles it
            assert attempt("alice", "wrong").status_code == 400
            again = attempt("alice", "a")
            assert again.status_code == 429 and again.headers["retry-after"] == "2"
            time.sleep(2.1)
            assert attempt("alice", "a").status_code == 200  # success clears the counts
            assert attempt("alice", "wrong").status_code == 400
            assert attempt("alice", "a").status_code == 200
    finally:
        demo.close()
    failed = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert len(failed) == 7 and "user='alice' from 127.0.0.1" in failed[0]
    assert any("login blocked" in r.getMessage() for r in caplog.records)


def test_adjudication_queue_export_and_agreement(team) -> None:
    out, users, samples = team
    s0, s1, s2, s3 = samples[:4]
    store = DecisionStore.for_run(out)
    store.record(decision(s0, "alice", "accept"))
    store.record(decision(s0, "bob", "reject", reason="other"))  # accept vs reject
    store.record(decision(s1, "alice", "edit_accept", edited_video_caption="Alice's text."))
    store.record(decision(s1, "bob", "accept"))  # accepted texts differ
    store.record(decision(s2, "alice", "accept"))
    store.record(decision(s2, "bob", "accept"))  # agreement
    store.record(decision(s3, "alice", "accept"))  # not designated: never in agreement
    store.record(decision(s3, "bob", "reject", reason="other"))
    path, rows, _, disputed = export_report(out)
    assert disputed == 2 and {r.key for r in rows} == {s2.key}  # s3: latest is a reject

    actions = ReviewActions(out, users)
    assert actions.disputed_keys() == [s0.key, s1.key]
    reviewer_screen = actions.open("a", "alice", ADJUDICATION)
    assert reviewer_screen.view is None  # not in a reviewer's choices; nothing to adjudicate
    assert ADJUDICATION not in reviewer_screen.filters
    screen = actions.open("j", "judy", ADJUDICATION)
    assert ADJUDICATION in screen.filters
    assert screen.view is not None and screen.view.key == s0.key and screen.view.adjudicating
    compare = screen.view.compare
    assert "alice" in compare and "bob" in compare and "reject" in compare
    fixed = "The adjudicated text."
    answer = actions.decide("j", "judy", "edit_accept", shown(screen),
                            Form(**{**screen.view.texts, "video_caption": fixed}))
    assert isinstance(answer, Screen) and answer.view is not None
    assert answer.view.key == s1.key  # the next disagreement
    assert "Alice&#39;s text." in answer.view.compare
    last = store.decisions(s0.key)[-1]
    assert last.adjudicates and last.reviewer == "judy"
    _, rows, _, disputed = export_report(out)
    by_key = {r.key: r for r in rows}
    assert disputed == 1 and by_key[s0.key].video_caption == fixed
    assert by_key[s0.key].long_accepted and s1.key not in by_key

    stats = review_stats(out)
    a = stats.agreement
    # designated only: s0 (accept/reject), s1 (accept/accept), s2 (accept/accept); s3 out
    assert (a.double_review_samples, a.doubly_reviewed, a.agreements) == (3, 3, 2)
    assert a.measure == "kappa" and a.value == a.kappa
    # a third rater on a designated sample switches the report to Krippendorff's alpha
    store.record(decision(s2, "judy", "reject", reason="other"))
    assert review_stats(out).agreement.measure == "alpha"
    text = CliRunner().invoke(app, ["review", "stats", "--out", str(out)]).output
    assert "Krippendorff's alpha" in text and "of 3 double-review samples" in text


def test_agreement_measures_hand_computed() -> None:
    # two raters: o_aa=2, o_bb=2, o_ab=o_ba=1; n_a=n_b=3; alpha = 1 - 5*2/18
    assert krippendorff_alpha([["a", "a"], ["b", "b"], ["a", "b"]]) == pytest.approx(4 / 9)
    # three raters, weights 1/(m-1): o_aa=4, o_ab=o_ba=1, o_bb=3; alpha = 1 - 8*2/40
    assert krippendorff_alpha([["a", "a", "b"], ["a"] * 3, ["b"] * 3]) == pytest.approx(0.6)
    assert krippendorff_alpha([["a", "a"], ["a"]]) is None  # one label in use
    keys = [(f"v{i}", "manual", 0) for i in range(3)]
    current = dict.fromkeys(keys, "v1")
    ds = []
    for i, (x, y) in enumerate((("accept", "accept"), ("reject", "reject"),
                                ("accept", "reject"))):
        for who, act in (("alice", x), ("bob", y)):
            ds.append(NewDecision(video_id=keys[i][0], masklet_type="manual", masklet_id=0,
                                  sample_version="v1", reviewer=who, action=act))
    logged = [d.model_dump() | {"seq": n, "decided_at": "", "decided_ts": 0.0,
                                "conflict": False} for n, d in enumerate(ds)]
    decisions = [Decision.model_validate(d) for d in logged]
    both = agreement(decisions, current, double=set(keys))
    # p_o = 2/3; p_e = 2/3*1/3 + 1/3*2/3 = 4/9; kappa = (2/9) / (5/9)
    assert both.doubly_reviewed == 3 and both.kappa == pytest.approx(0.4)
    assert both.alpha == pytest.approx(4 / 9)
    assert agreement(decisions, current, double={keys[0]}).doubly_reviewed == 1


def test_revisit_shows_exported_text_and_skips_return_last(team) -> None:
    out, users, samples = team
    s3, s4 = samples[3], samples[4]  # single review
    store = DecisionStore.for_run(out)
    store.record(decision(s3, "alice", "edit_accept", edited_video_caption="Alice's fix."))
    store.record(decision(s3, "bob", "edit_accept", edited_video_caption="Bob's later fix.",
                          base_seq=store.latest_seq(s3.key)))
    actions = ReviewActions(out, users)
    screen = actions.open("a", "alice", "accepted")
    while screen.view is not None and screen.view.key != s3.key:
        screen = actions.move("a", "alice", +1)
    assert screen.view is not None
    assert screen.view.texts["video_caption"] == "Bob's later fix."  # what will be exported
    assert "your edit differs" in screen.view.labels["video_caption"]
    assert "Alice&#39;s fix." in screen.view.mine and "You decided" in screen.view.mine

    # a skipped sample comes back to the skipper after every other one
    t = 1000.0
    order = []
    first = store.claim_next("carol", now=t)
    store.record(decision(next(s for s in samples if s.key == first), "carol", "skip"), now=t)
    while True:
        key = store.claim_next("carol", now=t)
        if key is None or key == first:
            order.append(key)
            break
        order.append(key)
        store.record(decision(next(s for s in samples if s.key == key), "carol", "accept"),
                     now=t)
    assert order[-1] == first and len(order) > 2
    assert s4.key in order[:-1]
    assert store.progress("carol").my_queue == 1  # the skipped one is still theirs


def test_state_snapshot_follows_decisions_from_elsewhere(team) -> None:
    out, users, samples = team
    actions = ReviewActions(out, users)
    before = {st.key: st.status for st in actions.states()}
    assert set(before.values()) == {"pending"} and len(before) == len(samples)
    other = DecisionStore.for_run(out)  # another process, e.g. a second app or a script
    other.record(decision(samples[5], "bob", "reject", reason="other"))
    other.record(decision(samples[6], "bob", "accept"))
    after = {st.key: st for st in actions.states()}
    assert after[samples[5].key].status == "rejected"
    assert after[samples[6].key].status == "accepted" and after[samples[6].key].reviewers == [
        "bob"]
    assert [st.key for st in actions.states()] == [s.key for s in samples]  # review order
    fresh = {st.key: st.status for st in DecisionStore.for_run(out).states()}
    assert {k: st.status for k, st in after.items()} == fresh


def _open_at(actions: ReviewActions, sid: str, who: str, key) -> Screen:
    """A page of ``who`` showing sample ``key`` (through the 'all' filter)."""
    screen = actions.open(sid, who, "all")
    while screen.view is not None and screen.view.key != key:
        screen = actions.move(sid, who, +1)
    assert screen.view is not None and screen.view.key == key
    return screen


def test_after_adjudication_a_reviewer_is_refused_and_all_agree(team) -> None:
    out, users, samples = team
    s0 = samples[0]  # double review
    store = DecisionStore.for_run(out)
    store.record(decision(s0, "alice", "accept"))
    store.record(decision(s0, "bob", "reject", reason="other"))
    actions = ReviewActions(out, users)
    alice, bob = _open_at(actions, "a", "alice", s0.key), _open_at(actions, "b", "bob", s0.key)
    judy = actions.open("j", "judy", ADJUDICATION)
    assert judy.view is not None and judy.view.key == s0.key
    settled = actions.decide("j", "judy", "accept", shown(judy), Form(**judy.view.texts))
    assert isinstance(settled, Screen) and "(adjudication)" in settled.notice[1]
    n = len(store.decisions())
    edit = Form(**{**alice.view.texts, "video_caption": "Alice's later fix."})
    for sid, who, screen, action, form in (
            ("a", "alice", alice, "edit_accept", edit),
            ("b", "bob", bob, "reject", Form(**bob.view.texts, reason="other"))):
        answer = actions.decide(sid, who, action, shown(screen), form)
        assert isinstance(answer, Refusal), answer
        assert "judy adjudicated this sample" in answer.message
        assert "adjudication stands" in answer.message
    assert len(store.decisions()) == n  # nothing stored that the export would ignore
    with pytest.raises(Settled):
        store.record(decision(s0, "alice", "edit_accept", edited_video_caption="x"))
    _, rows, _, _ = export_report(out)
    row = next(r for r in rows if r.key == s0.key)
    assert row.long_accepted and row.video_caption == s0.video_caption
    assert next(st for st in store.states() if st.key == s0.key).status == "accepted"
    # an adjudicator may decide again: that is a new adjudication, and it counts
    again = _open_at(actions, "j2", "judy", s0.key)
    answer = actions.decide("j2", "judy", "reject", shown(again),
                            Form(**again.view.texts, reason="other"))
    assert isinstance(answer, Screen) and "(adjudication)" in answer.notice[1]
    assert store.decisions(s0.key)[-1].adjudicates
    _, rows, _, _ = export_report(out)
    assert s0.key not in {r.key for r in rows if r.long_accepted}
    assert review_stats(out).progress.rejected == 1


def test_a_log_with_decisions_after_an_adjudication_reads_as_the_export(team) -> None:
    out, users, samples = team
    s0 = samples[0]
    store = DecisionStore.for_run(out)
    store.record(decision(s0, "alice", "accept"))
    store.record(decision(s0, "bob", "reject", reason="other"))
    store.record(decision(s0, "judy", "accept", adjudicates=True))
    conn = sqlite3.connect(store.path)  # written before reviewers were refused
    conn.execute("INSERT INTO decisions (video_id, masklet_type, masklet_id, sample_version, "
                 "reviewer, decided_at, decided_ts, action, reason) VALUES "
                 "(?, ?, ?, ?, 'bob', '', 0, 'reject', 'other')", (*s0.key, s0.sample_version))
    conn.commit()
    conn.close()
    state = next(st for st in store.states() if st.key == s0.key)
    _, rows, _, _ = export_report(out)
    assert state.status == "accepted" and s0.key in {r.key for r in rows if r.long_accepted}


def test_racing_reviewers_the_one_that_does_not_count_is_told(team) -> None:
    out, users, samples = team
    single, double = samples[5], samples[1]
    actions = ReviewActions(out, users)
    for key in (single.key, double.key):
        alice = _open_at(actions, "a", "alice", key)
        bob = _open_at(actions, "b", "bob", key)
        first = actions.decide("a", "alice", "accept", shown(alice), Form(**alice.view.texts))
        assert isinstance(first, Screen) and first.notice[0] == "ok"
        second = actions.decide("b", "bob", "reject", shown(bob),
                                Form(**bob.view.texts, reason="other"))
        assert isinstance(second, Screen)
        later = actions.move("a", "alice", +1)  # alice's page hears of it on its next answer
        if key == single.key:  # the latest counts: bob is told so, and alice that hers does not
            assert "Yours is the latest and counts" in second.notice[1]
            assert "bob's later reject" in later.notice[1] and "theirs counts" in later.notice[1]
            assert consensus(single, DecisionStore.for_run(out).decisions(key)).status == (
                "rejected")
        else:  # double review: a disagreement, for an adjudicator; both are told
            assert "waits for an adjudicator" in second.notice[1]
            assert "differently from your accept" in later.notice[1]
        assert actions.move("a", "alice", +1).notice is None  # told once


def test_next_and_previous_in_my_queue(team) -> None:
    """Next leases the queue's next sample (never the one on screen again), Previous goes
    back and re-leases a sample still waiting; with nowhere to go, a notice says so."""
    out, users, samples = team
    store = DecisionStore.for_run(out)
    actions = ReviewActions(out, users)
    first = actions.open("a", "alice")
    assert first.view is not None and first.flt == "pending (my queue)"
    a = first.view.key
    seen = [a]
    for _ in range(2):
        screen = actions.move("a", "alice", +1)
        assert screen.view is not None and screen.view.key not in seen and screen.notice is None
        seen.append(screen.view.key)
    assert [store.lease_holder(k) for k in seen] == [None, None, "alice"]  # one lease
    back = actions.move("a", "alice", -1)
    assert back.view is not None and back.view.key == seen[1]
    assert store.lease_holder(seen[1]) == "alice" and store.lease_holder(seen[2]) is None
    actions.move("a", "alice", -1)
    start = actions.move("a", "alice", -1)
    assert start.view is not None and start.view.key == a
    assert start.notice == ("warn", "No earlier sample in this tab's history.")
    # bob is never handed what alice holds
    bob = actions.open("b", "bob")
    assert bob.view is not None and bob.view.key != a
    # a queue of one: Next stays, and says so
    for s in samples[1:]:
        for who in ("bob", "judy"):
            store.record(decision(s, who, "accept"))
    actions.open("a", "alice")
    only = actions.move("a", "alice", +1)
    assert only.view is not None and only.view.key == samples[0].key
    assert only.notice == ("warn", "No other sample in your queue.")


def test_stats_progress_counts_as_the_export(team) -> None:
    """A disputed sample is neither accepted nor rejected in `review stats` or the page,
    as in the export: it awaits adjudication."""
    out, users, samples = team
    s0, s1, s5, s6 = samples[0], samples[1], samples[5], samples[6]
    store = DecisionStore.for_run(out)
    store.record(decision(s0, "alice", "edit_accept", edited_video_caption="Alice's text."))
    store.record(decision(s0, "bob", "accept"))  # accepted texts differ: disputed, latest accept
    store.record(decision(s1, "alice", "accept"))
    store.record(decision(s1, "bob", "reject", reason="other"))  # disputed, latest reject
    store.record(decision(s5, "alice", "accept"))
    store.record(decision(s6, "alice", "reject", reason="other", short_expression="the box"))
    _, rows, _, awaiting = export_report(out)
    p = review_stats(out).progress
    assert awaiting == p.disputed == 2
    assert p.accepted == sum(r.long_accepted for r in rows) == 1
    assert p.rejected == sum(not r.long_accepted for r in rows) == 1
    assert p.done == 4
    text = CliRunner().invoke(app, ["review", "stats", "--out", str(out)]).output
    assert "accepted 1, rejected 1, awaiting adjudication 2" in text
    page = ReviewActions(out, users).open("a", "alice", "all")
    assert "1 accepted, 1 rejected, 2 awaiting adjudication" in page.progress


def test_gold_checks_mixed_in_unmarked_and_scored(team) -> None:
    """An adjudicator marks gold from their own decision; reviewers get gold samples in their
    queue looking undecided; their answers never count for the sample, only for accuracy."""
    out, users, samples = team
    store = DecisionStore.for_run(out)
    gold_a, gold_r = samples[5], samples[6]
    actions = ReviewActions(out, users, gold_rate=1.0)
    judy = _open_at(actions, "j", "judy", gold_a.key)
    refused = actions.mark_gold("j", "judy")  # no decision of hers yet: no known answer
    assert isinstance(refused, Refusal) and "accept or reject this sample first" in (
        refused.message)
    actions.decide("j", "judy", "accept", shown(judy), Form(**judy.view.texts))
    _open_at(actions, "j", "judy", gold_a.key)
    marked = actions.mark_gold("j", "judy")
    assert isinstance(marked, Screen) and "known answer accept" in marked.notice[1]
    assert marked.gold_button == "Unmark gold" and "★ Gold sample" in marked.view.banner
    judy = _open_at(actions, "j", "judy", gold_r.key)
    actions.decide("j", "judy", "reject", shown(judy), Form(**judy.view.texts,
                                                             reason=REJECT_REASONS[2]))
    _open_at(actions, "j", "judy", gold_r.key)
    marked = actions.mark_gold("j", "judy")
    assert f"known answer reject ({REJECT_REASONS[2]})" in marked.notice[1]
    assert set(store.gold()) == {gold_a.key, gold_r.key}
    assert isinstance(actions.mark_gold("a", "alice"), Refusal)  # reviewers cannot mark
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE gold_marks SET active = 0")
    conn.close()

    before = {st.key: st.status for st in store.states()}
    _, rows_before, _, _ = export_report(out)
    # alice: rate 1, so after each decision in her queue comes a gold sample, unmarked
    screen = actions.open("a", "alice")
    assert "gold" not in " ".join(screen.filters).lower()
    checks = []
    for _ in range(3):
        assert screen.view is not None
        if screen.view.key in (gold_a.key, gold_r.key):
            v = screen.view
            checks.append(v.key)
            assert "Gold" not in v.banner and "★" not in v.banner and "judy" not in v.banner
            assert "Status: <b>pending</b> (decided by nobody yet)" in v.banner
            assert "No decisions on this sample yet" in v.history and not v.mine
            assert screen.gold_button is None
            sample = gold_a if v.key == gold_a.key else gold_r
            assert v.texts == {f: getattr(sample, f) for f in v.texts}
            # alice rejects both: right on one, wrong on the other
            screen = actions.decide("a", "alice", "reject", shown(screen),
                                    Form(**v.texts, reason="other"))
            assert screen.notice == ("ok", screen.notice[1]) and "Saved: reject" in (
                screen.notice[1])
        else:
            screen = actions.decide("a", "alice", "accept", shown(screen),
                                    Form(**screen.view.texts))
    assert sorted(checks) == sorted([gold_a.key, gold_r.key])
    answers = [d for d in store.decisions() if d.gold_check]
    assert [d.reviewer for d in answers] == ["alice", "alice"]
    # the samples themselves are untouched: states and export as before
    after = {st.key: st.status for st in store.states()}
    assert all(after[k] == before[k] for k in checks)
    _, rows_after, _, _ = export_report(out)
    assert {r.key: r.long_accepted for r in rows_after if r.key in checks} == {
        r.key: r.long_accepted for r in rows_before if r.key in checks}
    # gold samples are not in a reviewer's filters; an adjudicator sees them
    every = ReviewActions(out, users)
    seen = {every.open("x", "alice", "all").view.key}
    seen |= {every.move("x", "alice", +1).view.key for _ in range(len(samples))}
    assert len(seen) == len(samples) - 2 and not seen & {gold_a.key, gold_r.key}
    judy_all = {every.open("y", "judy", "all").view.key}
    judy_all |= {every.move("y", "judy", +1).view.key for _ in range(len(samples))}
    assert len(judy_all) == len(samples)
    stats = {r.reviewer: r for r in review_stats(out).reviewers}
    alice = stats["alice"]
    assert (alice.gold_checks, alice.gold_correct, alice.gold_accuracy) == (2, 1, 0.5)
    assert (alice.gold_low, alice.gold_high) == pytest.approx(wilson_interval(1, 2))
    text = CliRunner().invoke(app, ["review", "stats", "--out", str(out)]).output
    assert "1/2 50% (9%–91%)" in text
    # unmarked: no longer gold, and the checks on it no longer score
    _open_at(actions, "j", "judy", gold_r.key)
    assert "Gold mark removed" in actions.mark_gold("j", "judy").notice[1]
    assert set(store.gold()) == {gold_a.key}
    assert {r.reviewer: r for r in review_stats(out).reviewers}["alice"].gold_checks == 1


def test_wilson_interval_hand_computed() -> None:
    assert wilson_interval(0, 0) is None
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)


def test_review_prints_one_line_of_its_own(team, capfd: pytest.CaptureFixture) -> None:
    """Gradio's hints (share=True, ...) are silenced; our line gives the URL."""
    out, users, _ = team
    port = free_port()
    demo = ReviewApp(out, users).launch("127.0.0.1", port, prevent_thread_lock=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/")
    finally:
        demo.close()
    printed = capfd.readouterr()
    lines = [ln for ln in (printed.out + printed.err).splitlines() if ln.strip()]
    assert lines[0] == f"Review app: http://127.0.0.1:{port}/ (Ctrl+C stops it)", lines
    assert "share" not in printed.out + printed.err
