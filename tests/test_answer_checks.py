"""Answer checks, each on its own with hand-written answers that must pass and must fail; the
referring-uniqueness measure; and every bad kind end to end over real HTTP through the
reference server's bad mode (calls, retries with a changed request, the request cache)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from refsav_pipeline.llm import calls
from refsav_pipeline.llm.answer_checks import AnswerChecker
from refsav_pipeline.llm.config import AnswerChecksConfig, ModelsConfig
from refsav_pipeline.llm.errors import AnswerRejected
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.pipeline import uniqueness
from refsav_pipeline.records import ROW_SCHEMA, RefSavRow, rows_to_table, table_to_rows
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import (
    box_frames,
    contour_frame,
    crop,
    fast_client,
    masked_frame,
    models_at,
    object_frame,
    to_jpeg,
)

CHECK = AnswerChecker()

GOOD_VIDEO = ("The woman in the red jacket walks from the left side of the street toward the "
              "bakery, passing behind a parked silver car. She slows down near the door, turns "
              "to look at the window display and then steps inside. The woman in the red "
              "jacket who walks along the street and enters the bakery.")


@pytest.mark.parametrize("call,text", [
    ("object", "A red object in the center of the image."),
    ("object", "A black car with dark tinted windows is parked on the left."),
    ("video", GOOD_VIDEO),
    ("video", "The yellow taxi drives from the left of the street to the right, passing a bus."),
    ("scene", "A yellow box sits on the shelf next to a blue cup, in the top left of the frame."),
    ("scene", "The dog in the yellow raincoat stands on the yellow line at the crossing."),
    ("video", "The boy kicks the ball; it bounces twice and rolls under the bench."),
    ("judge", "Both descriptions name the colour red."),
    ("object", "Red plastic toy car with black wheels, chrome bumpers, tinted windows."),
])
def test_usable_answers_pass(call: str, text: str) -> None:
    assert CHECK.check(call, text) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("call,text,finish,kind", [
    ("object", None, "stop", "empty_answer"),
    ("object", "", "stop", "empty_answer"),
    ("object", "  \n ", "stop", "empty_answer"),
    ("object", "A red object in the", "length", "truncated"),
    ("video", GOOD_VIDEO, None, "truncated"),
    ("object", "A red ball. " * 200, "stop", "runaway"),
    ("object", "这是一个红色的物体，位于图像中央。", "stop", "not_english"),
    ("object", "Объект красного цвета находится в центре изображения.", "stop", "not_english"),
    ("object", "Un objet rouge au centre de l'image, avec une forme ronde et une surface lisse.",
     "stop", "not_english"),
    ("object", "El objeto rojo está en el centro de la imagen, con una forma redonda.", "stop",
     "not_english"),
    ("object", "Das rote Objekt ist in der Mitte des Bildes und hat eine runde Form.", "stop",
     "not_english"),
    ("object", "**Object**: a red ball\n- round\n- shiny", "stop", "not_english"),
    ("object", '{"object": "red ball", "position": "center"}', "stop", "not_english"),
    ("object", "The image is completely black; I cannot see any object.", "stop", "refusal"),
    ("object", "I'm sorry, but I can't help with identifying this object.", "stop", "refusal"),
    ("scene", "As an AI, I am unable to determine what is outlined.", "stop", "refusal"),
    ("video", "The object moves to the left. The object moves to the left. The object moves to "
              "the left.", "stop", "repetition"),
    ("video", "The person walks along the road and then " * 12, "stop", "repetition"),
    ("scene", "The green object outlined in yellow is in the center of the frame.", "stop",
     "prompt_leak"),
    ("video", "The red object in the yellow box moves left across the video.", "stop",
     "prompt_leak"),
    ("video", "The highlighted person walks to the door.", "stop", "prompt_leak"),
    ("scene", "A man stands beside the car, marked by a yellow contour.", "stop",
     "prompt_leak"),
    ("video", "The boxed object slides down the slope.", "stop", "prompt_leak"),
    ("scene", "The cat with a yellow outline sleeps on the sofa.", "stop", "prompt_leak"),
])
def test_defects_are_named(call: str, text: str | None, finish: str | None, kind: str) -> None:
    defect = CHECK.check(call, text, finish)  # type: ignore[arg-type]
    assert defect is not None and defect.kind == kind, defect


def test_leak_is_only_checked_where_marks_were_drawn() -> None:
    text = "The green object outlined in yellow is in the center of the frame."
    assert CHECK.check("object", text) is None
    assert CHECK.check("scene", text) is not None


def test_thresholds_come_from_the_config() -> None:
    text = " ".join(["word"] * 5 + ["the"] * 5)
    strict = AnswerChecker(AnswerChecksConfig(max_words={"object": 8}))
    assert strict.check("object", text).kind == "runaway"  # type: ignore[union-attr]
    assert CHECK.check("object", text) is None


def test_similarity_measure() -> None:
    a = "The red object moves left across the video."
    assert uniqueness.similarity(a, a) == 1.0
    assert uniqueness.similarity(a, "The blue object moves left across the video.") < 0.7
    long = GOOD_VIDEO
    assert uniqueness.similarity(long, long.replace("silver", "grey")) >= 0.7
    assert uniqueness.similarity(a, "") == 0.0


def _row(mid: int, caption: str, **kw: object) -> RefSavRow:
    return RefSavRow(video_id="v", masklet_type="manual", masklet_id=mid, masklet_index=mid,
                     video_path="v.mp4", anno_path="v_manual.json", height=4, width=4,
                     video_frame_count=4, video_caption=caption, status="ok",
                     pipeline_version="t", config_fingerprint="f", **kw)  # type: ignore[arg-type]


def test_uniqueness_flags_recaptions_and_settles() -> None:
    cfg = AnswerChecksConfig()
    same = "A person walks slowly from one side of the room to the other."
    rows = [_row(0, same), _row(1, same), _row(2, "The blue ball rolls under the red chair.")]
    todo = uniqueness.to_recaption(rows, {r.key for r in rows}, cfg)
    assert [(r.masklet_id, others) for r, others in todo] == [(0, [same]), (1, [same])]
    assert uniqueness.to_recaption(rows, {rows[2].key}, cfg) == []  # no images: not re-asked
    # masklet 0 became distinct, masklet 1 did not: only 1 is ambiguous
    after = [rows[0].model_copy(update={"video_caption": "A man in a hat walks to the door.",
                                        "first_video_caption": same}),
             rows[1].model_copy(update={"first_video_caption": same}),
             rows[2].model_copy(update={"video_caption": same})]
    settled = uniqueness.settle(after, {rows[0].key, rows[1].key}, cfg)
    assert [r.status for r in settled] == ["ok", "rejected", "ok"]
    assert settled[1].error_kind == "ambiguous" and settled[1].rejected_answer == same
    assert settled[1].check_failures == ["video:ambiguous"]
    assert settled[2].max_similarity == 1.0  # never re-captioned here: kept, but measured
    assert uniqueness.ambiguous_rounds(settled[1]) == 1


# -- end to end over HTTP: the reference server's bad mode --------------------------------------


@pytest.fixture(scope="module")
def images() -> dict[str, object]:
    frame, mask = object_frame("red", 160, 120, r=30)
    return {"crop": to_jpeg(crop(frame, mask)), "masked": to_jpeg(masked_frame(frame, mask)),
            "contour": to_jpeg(contour_frame(frame, mask)),
            "frames": box_frames("red", [(60 + 25 * i, 120) for i in range(8)])}


@pytest.fixture
def bad() -> Iterator[object]:
    """Starts reference servers in bad mode: ``bad(kinds, rate, seed)``; all stop after."""
    servers: list[ReferenceServer] = []

    def start(kinds: list[str], rate: float = 1.0, seed: int = 0) -> ReferenceServer:
        cfg = ReferenceServerConfig(port=0, bad_answer_rate=rate, bad_answers=kinds,  # type: ignore[arg-type]
                                    seed=seed)
        srv = ReferenceServer(ModelsConfig(), cfg, record_bodies=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def _session(srv: ReferenceServer, tmp: Path, **checks: object) -> ModelSession:
    return ModelSession(models_at(srv.url), fast_client(cache_local_dir=""), tmp,
                        AnswerChecksConfig(**checks))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind,expected,calls_hit", [
    ("null", "empty_answer", ["object", "judge", "scene", "video"]),
    ("empty", "empty_answer", ["object", "judge", "scene", "video"]),
    ("truncated", "truncated", ["object", "judge", "scene", "video"]),
    ("refusal", "refusal", ["object", "judge", "scene", "video"]),
    ("runaway", "runaway", ["object", "judge", "scene", "video"]),
    ("repetition", "repetition", ["object", "judge", "scene", "video"]),
    ("not_english", "not_english", ["object", "judge", "scene", "video"]),
    ("prompt_leak", "prompt_leak", ["scene", "video"]),
])
def test_each_bad_kind_is_rejected_over_http(bad, images, tmp_path: Path, kind: str,
                                             expected: str, calls_hit: list[str]) -> None:
    srv = bad([kind])
    with _session(srv, tmp_path) as s:
        im = images
        steps = {
            "object": lambda: calls.describe_object(s, im["crop"], im["masked"]),
            "judge": lambda: calls.judge_consistency(s, "A red ball.", "A red ball, center."),
            "scene": lambda: calls.describe_scene(s, im["contour"], "A red ball."),
            "video": lambda: calls.describe_video(s, im["frames"], "A red ball."),
        }
        for name, step in steps.items():
            if name not in calls_hit:
                s.run(step())  # the kind does not fit this call: answered well
                continue
            with pytest.raises(AnswerRejected) as info:
                s.run(step())
            err = info.value
            assert err.kind == expected and err.failures == [expected] * 3, (name, err)
        assert s.cache is not None  # only the good answers (of calls the kind does not fit)
        answers = {"object": 2, "judge": 1, "scene": 1, "video": 1}  # object: crop + masked
        assert len(s.cache) == sum(n for c, n in answers.items() if c not in calls_hit)


def test_retry_changes_the_request_and_heals(bad, images, tmp_path: Path) -> None:
    """At a 50 % bad rate, retries (another seed, a note) turn most calls good; what failed
    is kept in ``check_failures``; the server saw different requests, never the same twice."""
    srv = bad(["refusal", "prompt_leak", "repetition"], rate=0.5, seed=3)
    failures: list[str] = []
    with _session(srv, tmp_path, attempts=6) as s:
        for i in range(6):
            frames = box_frames("red", [(60 + 20 * i + 10 * k, 120) for k in range(8)])
            res = s.run(calls.describe_video(s, frames, f"A red ball, scene {i}."))
            assert CHECK.check("video", res.text) is None
            failures += res.check_failures
    assert failures, "at 50 % some first answers are bad"
    assert set(failures) <= {"refusal", "prompt_leak", "repetition"}
    bodies = srv.stats.bodies or []
    retries = [b for b in bodies if b["seed"] != 0]
    assert len(retries) == len(failures) and len(bodies) == 6 + len(failures)
    assert all(b["temperature"] == 0.5 and "Your previous answer" in
               b["messages"][-1]["content"][-1]["text"] for b in retries)


def test_cache_keeps_only_good_answers_and_stricter_checks_rejudge_them(
        bad, images, tmp_path: Path) -> None:
    srv = bad(["refusal"], rate=0.0)
    with _session(srv, tmp_path) as s:
        s.run(calls.describe_scene(s, images["contour"], "A red ball."))
    before = srv.stats.requests["chat_completions"]
    # the same call under a stricter check: the cached answer fails it and is not served;
    # the retry is a new request (the model is asked once more, not for the cached one)
    with _session(srv, tmp_path, max_words={"scene": 3}) as s, \
            pytest.raises(AnswerRejected) as info:
        s.run(calls.describe_scene(s, images["contour"], "A red ball."))
    assert info.value.kind == "runaway" and info.value.failures == ["runaway"] * 3
    assert srv.stats.requests["chat_completions"] - before == 2  # attempts 2 and 3 only
    with _session(srv, tmp_path) as s:  # the old checks again: served from cache, no call
        res = s.run(calls.describe_scene(s, images["contour"], "A red ball."))
    assert res.cached and srv.stats.requests["chat_completions"] - before == 2


def test_same_video_caption_and_contrastive_answer(bad, images, tmp_path: Path) -> None:
    srv = bad(["same_video_caption"])
    with _session(srv, tmp_path) as s:
        a = s.run(calls.describe_video(s, box_frames("red", [(60 + 20 * k, 60)
                                                              for k in range(8)]), "A."))
        b = s.run(calls.describe_video(s, box_frames("blue", [(200, 60 + 15 * k)
                                                               for k in range(8)]), "B."))
    assert a.text == b.text  # passes every answer check: only uniqueness can catch it
    healthy = bad([], rate=0.0)
    with _session(healthy, tmp_path / "h") as s:
        res = s.run(calls.describe_video_distinct(
            s, box_frames("red", [(60 + 20 * k, 60) for k in range(8)]), "A.", [a.text]))
    assert "unlike the other objects" in res.text and uniqueness.similarity(res.text, a.text) < 0.7


def test_rows_of_shards_written_before_the_new_columns_still_load(tmp_path: Path) -> None:
    """A shard without ``check_failures`` / ``rejected_answer`` / ``max_similarity`` (an older
    run) reads with nulls there, and its rows validate."""
    new = {"check_failures", "rejected_answer", "max_similarity", "first_video_caption"}
    old = rows_to_table([_row(0, "A red ball rolls left.")])
    old = old.drop_columns(list(new))
    pq.write_table(old, tmp_path / "old.parquet")
    rows = table_to_rows(pq.read_table(tmp_path / "old.parquet", schema=ROW_SCHEMA))
    assert rows[0].check_failures == [] and rows[0].rejected_answer is None
