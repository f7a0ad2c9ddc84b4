"""A body site's first plan is written on the event loop (PostgreSQL): one pipelined transaction that stores
exactly what the session path stores, with what the plan hooks queue, and that leaves everything else (a
reassessment, a duplicate, a hook that writes only in a session) to the session path, storing nothing itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from services.careplan.delivery.outbox import DELIVERIES, EnqueueHook
from services.careplan.generate import PlanHook, PlanRepository, PlanResult
from services.careplan.subscriptions.events import PlanEventHook
from services.careplan.subscriptions.tables import ACTIVE, NOTIFICATIONS, Subscription
from services.careplan.subscriptions.topics import PLAN_CREATED
from services.careplan.tables import AssessmentPlan
from services.fhir.loopdb import LoopDatabase, LoopTransaction
from services.fhir.outcome import Unprocessable
from services.fhir.store import StoredResource
from tests.careplan.conftest import example
from tests.delivery.conftest import pg_engine  # noqa: F401 - shared fixture
from tests.delivery.factories import make_store, plan_result
from tests.support.apps import FHIR_JSON, careplan_app, running

T = TypeVar("T")
ROW_IDENTITY = {"id", "careplan_id", "subject", "created", "updated", "window_start", "next_attempt_at"}


class Pokes:
    """In-process wake-ups, counted: the delivery and subscription hooks call them after a commit."""

    def __init__(self) -> None:
        self.delivery = self.subscriptions = 0

    def wake_delivery(self) -> None:
        self.delivery += 1

    def wake_subscriptions(self) -> None:
        self.subscriptions += 1


@pytest.fixture
def database(pg_engine: tuple[str, Engine]) -> Iterator[tuple[Engine, Callable[..., Any]]]:  # noqa: F811
    """The migrated PostgreSQL engine, and `on_loop(function, *args)`: awaits `function(loop_database, *args)`
    on a fresh loop with event-loop connections of its own."""
    url, engine = pg_engine

    def on_loop(function: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def run() -> T:
            database = LoopDatabase.of(url, 2, 5.0)
            assert database is not None
            await database.open()
            try:
                return await function(database, *args)
            finally:
                await database.close()

        return asyncio.run(run())

    yield engine, on_loop


def _repository(pokes: Pokes, *extra: PlanHook) -> PlanRepository:
    return PlanRepository(make_store(), [EnqueueHook(pokes.wake_delivery), PlanEventHook(pokes.wake_subscriptions),
                                         *extra])


def _subscribe(engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(engine) as session:
        session.add(Subscription(id="every-new-plan", topic=PLAN_CREATED.url, status=ACTIVE, content="id-only",
                                 endpoint="https://scheduling.example/hook", resource="{}", created=now, updated=now))
        session.commit()


def _rows(engine: Engine, table: Any, **where: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        statement = select(table).where(*(table.c[name] == value for name, value in where.items()))
        return [dict(row._mapping) for row in connection.execute(statement)]


def _stored_plans(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return sorted(session.execute(select(AssessmentPlan.careplan_id)).scalars())


def test_a_first_plan_on_the_loop_stores_and_queues_what_a_session_does(database):
    engine, on_loop = database
    _subscribe(engine)
    pokes = Pokes()
    repository = _repository(pokes)
    looped, looped_id = plan_result(status="active")
    in_session, session_id = plan_result(status="active")

    saved = on_loop(lambda db: repository.save_on_loop(db, looped, careplan_id=looped_id))
    assert saved is not None
    stored, created = saved
    assert created and stored.id == looped_id
    assert (pokes.delivery, pokes.subscriptions) == (1, 1), "both wake-ups once, after the commit"
    with Session(engine, expire_on_commit=False) as session:
        _, created = repository.save(session, in_session, careplan_id=session_id)
        assert created
        assert repository.store.read(session, "CarePlan", looped_id).content == stored.content
        rows = {row.careplan_id: row for row in session.execute(select(AssessmentPlan)).scalars()}
        response = repository.store.read(session, "QuestionnaireResponse", rows[looped_id].questionnaire_response_id)
        assert response.version_id == 1 and response.parsed()["subject"] == {"reference": "Patient/p1"}
    assert rows[looped_id].active and rows[session_id].active
    assert rows[looped_id].body_site != rows[session_id].body_site

    [loop_delivery] = _rows(engine, DELIVERIES, careplan_id=looped_id)
    [session_delivery] = _rows(engine, DELIVERIES, careplan_id=session_id)
    assert {k: v for k, v in loop_delivery.items() if k not in ROW_IDENTITY} == \
        {k: v for k, v in session_delivery.items() if k not in ROW_IDENTITY}
    assert loop_delivery["subject"] == session_delivery["subject"] == "Patient/p1"

    notified = {row["focus_id"]: row for row in _rows(engine, NOTIFICATIONS, subscription_id="every-new-plan")}
    assert (notified[looped_id]["seq"], notified[session_id]["seq"]) == (1, 2), "numbered in commit order"
    for row in notified.values():
        assert (row["topic"], row["interaction"], row["focus_type"], row["state"]) == (
            PLAN_CREATED.url, "create", "CarePlan", "pending")
    assert notified[looped_id]["occurred"] == stored.last_updated


def test_a_reassessment_or_a_duplicate_is_left_to_the_session(database):
    engine, on_loop = database
    pokes = Pokes()
    repository = _repository(pokes)
    first, first_id = plan_result(status="active", site="left-cheek")
    reassessment, second_id = plan_result(status="active", site="left-cheek")

    assert on_loop(lambda db: repository.save_on_loop(db, first, careplan_id=first_id)) is not None
    assert on_loop(lambda db: repository.save_on_loop(db, reassessment, careplan_id=second_id)) is None, \
        "the site has an active plan to revoke"
    again = on_loop(lambda db: repository.save_on_loop(db, first, careplan_id=first_id))
    assert again is not None and (again[0].id, again[0].version_id, again[1]) == (first_id, 1, False), \
        "the same assessment again: the plan it made"
    assert _stored_plans(engine) == [first_id] and len(_rows(engine, DELIVERIES)) == 1, "nothing more stored"
    assert pokes.delivery == 1
    assert _rows(engine, NOTIFICATIONS) == [] and pokes.subscriptions == 0, "no subscription: none queued or woken"

    with Session(engine, expire_on_commit=False) as session:
        stored, created = repository.save(session, reassessment, careplan_id=second_id)
        assert created and stored.parsed()["replaces"] == [{"reference": f"CarePlan/{first_id}"}]
        assert repository.store.read(session, "CarePlan", first_id).parsed()["status"] == "revoked"
        again, created = repository.save(session, first, careplan_id=first_id)
        assert not created and again.id == first_id

    draft, draft_id = plan_result(status="draft")
    with Session(engine) as session:  # what a concurrent submission of the same assessment has committed
        repository.store.create(session, dict(draft.careplan), resource_id=draft_id)
        session.commit()
    assert on_loop(lambda db: repository.save_on_loop(db, draft, careplan_id=draft_id)) is None, \
        "a duplicate collides on the plan's id, and the transaction stores none of it"
    assert _rows(engine, AssessmentPlan.__table__, careplan_id=draft_id) == []
    assert [row["careplan_version"] for row in _rows(engine, DELIVERIES, careplan_id=draft_id)] == [1]


class FailingHook:
    """A plan hook whose statement fails, in a session and on the loop alike."""

    def __call__(self, session: Session, plan: StoredResource, previous: StoredResource | None) -> None:
        raise RuntimeError("the hook's table is gone")

    async def on_loop(self, transaction: LoopTransaction, plan: StoredResource,
                      previous: StoredResource | None) -> None:
        await transaction.execute(b"SELECT * FROM no_such_table")


def test_a_failing_hook_stores_nothing_and_a_session_only_hook_keeps_the_session(database):
    engine, on_loop = database
    pokes = Pokes()
    result, identifier = plan_result(status="active")
    with pytest.raises(Exception, match="no_such_table"):
        on_loop(lambda db: _repository(pokes, FailingHook()).save_on_loop(db, result, careplan_id=identifier))
    assert _stored_plans(engine) == [] and _rows(engine, DELIVERIES) == [] and pokes.delivery == 0

    seen: list[str] = []
    repository = _repository(pokes, lambda session, plan, previous: seen.append(plan.id))
    assert on_loop(lambda db: repository.save_on_loop(db, result, careplan_id=identifier)) is None
    assert _stored_plans(engine) == [] and seen == []
    with Session(engine, expire_on_commit=False) as session:
        repository.save(session, result, careplan_id=identifier)
    assert seen == [identifier] and _stored_plans(engine) == [identifier]


def test_generate_writes_a_first_plan_on_the_loop(postgres_database_url, catalog_url, monkeypatch):
    in_session: list[str] = []
    real = PlanRepository.save

    def counted(self: PlanRepository, session: Session, result: PlanResult, *, careplan_id: str) -> Any:
        in_session.append(careplan_id)
        return real(self, session, result, careplan_id=careplan_id)

    monkeypatch.setattr(PlanRepository, "save", counted)
    app = careplan_app(postgres_database_url, CATALOG_URL=catalog_url, LOG_LEVEL="WARNING", DISPATCHER="off")
    with running(app) as client:
        created = client.post("/fhir/CarePlan/$generate", json=example("atrophic-pregnant"), headers=FHIR_JSON)
        assert created.status_code == 201 and in_session == []
        plan = created.json()
        read = client.get(f"/fhir/CarePlan/{plan['id']}")
        assert read.json() == plan and read.headers["etag"] == created.headers["etag"] == 'W/"1"'
        tasks = client.get("/fhir/Task", params={"focus": f"CarePlan/{plan['id']}"}).json()
        assert [e["resource"]["status"] for e in tasks["entry"]] == ["requested"], "queued for delivery"

        again = client.post("/fhir/CarePlan/$generate", json=example("atrophic-pregnant"), headers=FHIR_JSON)
        assert again.status_code == 200 and again.json() == plan and in_session == [], \
            "a resubmission is found in the write's first round trip"
        planner = app.state.ctx.extras["planner"]

        def no_longer_plannable(*_: Any) -> PlanResult:
            raise Unprocessable("The catalog has no treatment protocol for this scar type")

        with monkeypatch.context() as patched:
            patched.setattr(planner, "_plan", no_longer_plannable)
            kept = client.post("/fhir/CarePlan/$generate", json=example("atrophic-pregnant"), headers=FHIR_JSON)
            assert kept.status_code == 200 and kept.json() == plan, "the plan made before, though planning now fails"
            fresh = client.post("/fhir/CarePlan/$generate", json=example("hypotrophic-abdomen"), headers=FHIR_JSON)
            assert fresh.status_code == 422, "a new assessment that cannot be planned is refused"
        invalid = example("atrophic-pregnant")
        for parameter in invalid["parameter"]:
            if parameter["name"] == "assessment":
                parameter["resource"]["item"] = [item for item in parameter["resource"]["item"]
                                                 if item["linkId"] != "scar-type"]
        refused = client.post("/fhir/CarePlan/$generate", json=invalid, headers=FHIR_JSON)
        assert refused.status_code == 422, "an invalid resubmission learns nothing about what is stored"
