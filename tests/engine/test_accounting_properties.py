"""The accounting in grants.py against a model, under random sequences of operations.

A Hypothesis state machine creates grants (with and without a dollar cap, for one model
or any), reserves calls of random sizes at random prices on random models, settles them
with real usage below and above the hold, releases them, settles or releases twice, lets
holds go stale, sweeps them, expires grants by the database clock, revokes them, and sets
and lifts the app's daily budget. After every step the database must agree with a
plain-Python model of the rules, and the invariants hold:

    0 <= remaining <= requests        spent + held <= cap
    used + reserved + remaining == requests
    used == ledger rows 'ok'          spent == their cost
    reserved, held == the pending rows and their holds
    the app's budget rows == the spending and holds of the calls reserved under a budget
    a reservation under a budget leaves the day's spending and holds within it
    a refusal's 402 reason is the model's

and once every call is settled or released, no hold is left behind. Runs on SQLite,
and on PostgreSQL too when TEST_DATABASE_URL is set.

The model is written from the rules, not from the engine: it never calls grants.py to
work out what a balance should be (a bug there would then agree with itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, func, select, update

from wattfare_demo.engine import grants, revocation
from wattfare_demo.engine.apps import create_app_record, set_daily_budget
from wattfare_demo.engine.clock import db_now
from wattfare_demo.engine.errors import ApiError
from wattfare_demo.engine.models import App, AppSpend, Grant, Usage
from wattfare_demo.engine.pricing import Price
from wattfare_demo.engine.tokens import new_grant_token, parse_secret_key
from wattfare_demo.extensions import db

PRICES = [
    Price(1_000_000, 2_000_000),  # local/markdown: $1 / $2 per million tokens
    Price(150_000, 600_000),
    Price(3, 7),  # odd small numbers: exact integer arithmetic everywhere
    Price(5, 0),  # free output: the cap only limits the prompt
    Price(0, 0),  # free
]
HOLD_TTL = 900
MODELS = ["m/odel", "x/other"]


def cost(price: Price, prompt: int, completion: int) -> int:
    """Pico-dollars: prices are micro-dollars per million tokens (pricing.py's rule)."""
    return prompt * price.input_micro_per_m + completion * price.output_micro_per_m


def affordable(price: Price, budget: int, prompt: int) -> int:
    """How many completion tokens `budget` pays for after the prompt."""
    left = budget - prompt * price.input_micro_per_m
    if left <= 0:
        return 0
    if price.output_micro_per_m == 0:
        return 2**31 - 1
    return left // price.output_micro_per_m


@dataclass
class ModelHold:
    grant: ModelGrant
    usage_id: int
    hold: int
    price: Price
    prompt: int
    stale: bool  # its hold_expires_at is in the past: the sweeper may take it
    budgeted: bool  # reserved while the app had a daily budget: held on it too
    state: str = "pending"  # pending | ok | failed | expired (as in the ledger)
    cost: int = 0
    reservation: grants.Reservation | None = None


@dataclass
class ModelGrant:
    token: str
    id: int
    requests: int
    cap: int | None
    model: str | None  # the one model it may be spent on; None: any
    used: int = 0
    spent: int = 0
    expired: bool = False
    revoked: bool = False
    holds: list[ModelHold] = field(default_factory=list)

    @property
    def pending(self) -> list[ModelHold]:
        return [h for h in self.holds if h.state == "pending"]

    @property
    def reserved(self) -> int:
        return len(self.pending)

    @property
    def held(self) -> int:
        return sum(h.hold for h in self.pending)

    def balance(self) -> tuple[int, int | None]:
        """(requests left, dollars left under the cap): calls in flight count as spent."""
        left = self.requests - self.used - len(self.pending)
        if self.cap is None:
            return left, None
        return left, self.cap - self.spent - sum(h.hold for h in self.pending)

    def status(self) -> str:
        if self.revoked:
            return "revoked"
        if self.expired:
            return "expired"
        if self.used >= self.requests:
            return "exhausted"
        if self.cap is not None and self.spent >= self.cap:
            return "over_cap"
        return "active"

    def sweep(self) -> int:
        stale = [h for h in self.pending if h.stale]
        for h in stale:
            h.state = "expired"
        return len(stale)

    def fits(self, hold: int) -> bool:
        return (
            not self.expired
            and self.used + self.reserved < self.requests
            and (self.cap is None or self.spent + self.held + hold <= self.cap)
        )

    def predict_reserve(
        self, price: Price, prompt: int, max_tokens: int, model: str
    ) -> tuple[int, int] | str:
        """(hold, max_tokens) of a reservation as far as the grant decides, or the 402
        reason; as the rules say."""
        if self.revoked:
            return "revoked"
        if self.model is not None and self.model != model:
            return "model_not_granted"
        hold = cost(price, prompt, max_tokens)
        if self.fits(hold):
            return hold, max_tokens
        # Refused: stale holds of this grant are released first, then the reason.
        self.sweep()
        if self.expired:
            return "expired"
        if self.used + self.reserved >= self.requests:
            return "exhausted"
        if self.cap is None:
            return hold, max_tokens  # only stale holds were in the way
        room = affordable(price, self.cap - self.spent - self.held, prompt)
        if room < 1:
            return "over_cap"
        tokens = min(max_tokens, room)
        return cost(price, prompt, tokens), tokens


class AccountingMachine(RuleBasedStateMachine):
    """Bound to a Flask app by `machine_for(app)`; runs inside its app context."""

    flask_app = None

    grant_refs = Bundle("grants")
    hold_refs = Bundle("holds")  # reserved, and not yet settled or released by a rule
    done_refs = Bundle("done")  # settled or released: doing it again changes nothing

    def __init__(self) -> None:
        super().__init__()
        self.ctx = self.flask_app.app_context()
        self.ctx.push()
        self._clear()
        self.app_id = parse_secret_key(self.flask_app.config["WATTFARE_SECRET_KEY"]).app_id
        self.other_app_id = self.flask_app.config["OTHER_APP_ID"]
        self.model: list[ModelGrant] = []
        self.touched: ModelGrant | None = None  # the grant the last step worked on
        self.budget: int | None = None  # the app's daily budget, pUSD
        self.steps = 0

    def _clear(self) -> None:
        db.session.rollback()
        db.session.execute(delete(Usage))
        db.session.execute(delete(Grant))
        db.session.execute(delete(AppSpend))
        db.session.execute(update(App).values(daily_budget_pusd=None))
        db.session.commit()

    # --- the app's daily budget, in the model ----------------------------------------

    def budget_spent(self) -> int:
        return sum(h.cost for g in self.model for h in g.holds if h.budgeted and h.state == "ok")

    def budget_held(self) -> int:
        return sum(h.hold for g in self.model for h in g.pending if h.budgeted)

    def sweep_all(self) -> int:
        return sum(g.sweep() for g in self.model)

    def teardown(self) -> None:
        try:
            # Whatever is still in flight ends now: nothing may stay held afterwards.
            for grant in self.model:
                for hold in grant.pending:
                    grants.release(hold.reservation, error="teardown", duration_ms=0)
                    hold.state = "failed"
            self.check_database()
            rows = {g.id: g for g in db.session.scalars(select(Grant))}
            for grant in self.model:
                row = rows[grant.id]
                assert (row.reserved, row.held_pusd) == (0, 0), "a hold was left behind"
            pending = db.session.scalars(select(Usage).where(Usage.status == "pending")).all()
            assert pending == []
        finally:
            self._clear()
            db.session.remove()
            self.ctx.pop()

    # --- operations ------------------------------------------------------------------

    @rule(
        target=grant_refs,
        requests=st.integers(1, 2) | st.integers(1, 6),
        cap=st.none() | st.integers(1, 3 * 10**9) | st.sampled_from([10**6, 10**8]),
        model=st.sampled_from([None, None, None, *MODELS]),
    )
    def create(self, requests: int, cap: int | None, model: str | None) -> ModelGrant:
        app = db.session.get(App, self.app_id)
        new = grants.create_grant(
            app, origin="http://localhost:5000", subject=None, requests=requests,
            max_pusd=cap, ttl=600, model=model,
        )  # fmt: skip
        assert new.requests == requests
        grant_id = db.session.scalar(select(Grant.id).order_by(Grant.id.desc()).limit(1))
        grant = ModelGrant(token=new.token, id=grant_id, requests=requests, cap=cap, model=model)
        self.model.append(grant)
        self.touched = grant
        return grant

    reserve_args: ClassVar[dict[str, Any]] = {
        "target": hold_refs,
        "grant": grant_refs,
        "price": st.sampled_from(PRICES),
        "prompt": st.integers(0, 400) | st.sampled_from([0, 1, 5000]),
        "max_tokens": st.integers(1, 2000) | st.sampled_from([1, 10**6]),
        # A hold whose worker "crashed": stale at once, for the sweeper to find.
        "stale": st.integers(0, 2).map(lambda n: n == 0),
        "model": st.sampled_from([MODELS[0], MODELS[0], MODELS[0], MODELS[1]]),
    }

    @rule(**reserve_args)
    def reserve(self, grant, price, prompt, max_tokens, stale, model):
        return self._reserve(grant, price, prompt, max_tokens, stale, model)

    @rule(**reserve_args)
    def reserve_more(self, grant, price, prompt, max_tokens, stale, model):
        """The same rule again, so that reserving is drawn twice as often."""
        return self._reserve(grant, price, prompt, max_tokens, stale, model)

    def predict(
        self, grant: ModelGrant, price: Price, prompt: int, max_tokens: int, model: str
    ) -> tuple[int, int] | str:
        """The grant's answer, then the app's budget's: a hold that fits the grant must
        fit the day too, after the stale holds (of any grant) are released."""
        expected = grant.predict_reserve(price, prompt, max_tokens, model)
        if isinstance(expected, str) or self.budget is None:
            return expected
        hold = expected[0]
        if self.budget_spent() + self.budget_held() + hold <= self.budget:
            return expected
        if self.sweep_all() and self.budget_spent() + self.budget_held() + hold <= self.budget:
            return expected
        return "app_budget"

    def _reserve(self, grant, price, prompt, max_tokens, stale, model):
        self.touched = grant
        expected = self.predict(grant, price, prompt, max_tokens, model)
        try:
            reservation = grants.reserve(
                self.app_id,
                grant.token,
                model=model,
                price=price,
                prompt_tokens=prompt,
                max_tokens=max_tokens,
                hold_ttl=-1 if stale else HOLD_TTL,
            )
        except ApiError as exc:
            event(f"refused: {exc.reason}")
            assert (exc.status, exc.code) == (402, "grant_invalid")
            assert exc.reason == expected, f"refused as {exc.reason}, model says {expected}"
            return multiple()
        assert not isinstance(expected, str), f"reserved, but the model says {expected}"
        hold_pusd, tokens = expected
        event("reserved, max_tokens clamped to the cap" if tokens < max_tokens else "reserved")
        assert (reservation.hold_pusd, reservation.max_tokens) == (hold_pusd, tokens)
        assert reservation.grant_id == grant.id
        assert 1 <= reservation.max_tokens <= max_tokens
        budgeted = self.budget is not None
        assert (reservation.budget_hour is not None) == budgeted
        hold = ModelHold(grant, reservation.usage_id, hold_pusd, price, prompt, stale, budgeted)
        hold.reservation = reservation
        grant.holds.append(hold)
        balance = reservation.balance
        assert (balance.remaining, balance.remaining_pusd) == grant.balance()
        if budgeted:
            assert self.budget_spent() + self.budget_held() <= self.budget
        return hold

    @rule(grant=grant_refs, other_app=st.booleans(), token=st.sampled_from(["new", "bad"]))
    def reserve_unknown(self, grant: ModelGrant, other_app: bool, token: str) -> None:
        """Another app's grant, an unknown token, a mangled one: 402 unknown, no change."""
        if other_app:
            app_id, value = self.other_app_id, grant.token
        else:
            app_id = self.app_id
            value = new_grant_token() if token == "new" else grant.token[:-1] + "!"
        with pytest.raises(ApiError) as refused:
            grants.reserve(
                app_id, value, model="m/odel", price=PRICES[0], prompt_tokens=1,
                max_tokens=1, hold_ttl=HOLD_TTL,
            )  # fmt: skip
        assert refused.value.reason == "unknown"

    settle_args: ClassVar[dict[str, Any]] = {
        "prompt_delta": st.integers(-50, 50),
        "completion": st.integers(0, 3000) | st.sampled_from([0, 10**7]),
    }

    @rule(target=done_refs, hold=consumes(hold_refs), **settle_args)
    def settle(self, hold: ModelHold, prompt_delta: int, completion: int) -> ModelHold:
        """Real usage below or above the hold (which clamps it)."""
        self._settle(hold, prompt_delta, completion)
        return hold

    @rule(hold=done_refs, how=st.sampled_from(["settle", "release"]), **settle_args)
    def finish_again(self, hold: ModelHold, how: str, prompt_delta: int, completion: int) -> None:
        """A call is settled or released once: doing either again changes nothing."""
        if how == "settle":
            self._settle(hold, prompt_delta, completion)
        else:
            self._release(hold)

    def _settle(self, hold: ModelHold, prompt_delta: int, completion: int) -> None:
        prompt = max(0, hold.prompt + prompt_delta)
        balance = grants.settle(
            hold.reservation,
            prompt_tokens=prompt,
            completion_tokens=completion,
            price=hold.price,
            duration_ms=1,
        )
        event(f"settle a hold that is {hold.state}")
        grant = self.touched = hold.grant
        if hold.state == "pending":
            real = cost(hold.price, prompt, completion)
            if real > hold.hold:
                event("settle: real cost above the hold, clamped")
            hold.state = "ok"
            hold.cost = min(real, hold.hold)
            grant.used += 1
            grant.spent += hold.cost
        assert (balance.remaining, balance.remaining_pusd) == grant.balance()

    @rule(target=done_refs, hold=consumes(hold_refs))
    def release(self, hold: ModelHold) -> ModelHold:
        self._release(hold)
        return hold

    def _release(self, hold: ModelHold) -> None:
        event(f"release a hold that is {hold.state}")
        self.touched = hold.grant
        grants.release(hold.reservation, error="upstream_status", duration_ms=1)
        if hold.state == "pending":
            hold.state = "failed"

    @rule(grant=grant_refs, how=st.sampled_from(["expire", "revoke"]))
    def end(self, grant: ModelGrant, how: str) -> None:
        """Expire the grant by the database's clock, or revoke it (one rule for both,
        so that grants live long enough to be used up)."""
        self.touched = grant
        if how == "expire":
            db.session.execute(
                update(Grant).where(Grant.id == grant.id).values(expires_at=db_now() - 1)
            )
            db.session.commit()
            grant.expired = True
        else:
            revocation.revoke_grant(grants.find_grant(self.app_id, grant.token).id)
            grant.revoked = True

    @precondition(lambda self: any(h.stale for g in self.model for h in g.pending))
    @rule()
    def sweep(self) -> None:
        swept = grants.release_stale()
        event(f"sweep released {min(swept, 2)}{'+' if swept > 2 else ''}")
        assert swept == self.sweep_all()

    # Every fourth step at most: as a rule among equals it would crowd out the calls.
    @precondition(lambda self: self.steps % 4 == 0)
    @rule(budget=st.integers(0, 3 * 10**9) | st.sampled_from([10**6, 10**8, 10**9, None]))
    def set_budget(self, budget: int | None) -> None:
        """Set, change or lift the app's daily budget between calls."""
        event("budget lifted" if budget is None else "budget set")
        set_daily_budget(db.session.get(App, self.app_id), budget)
        self.budget = budget

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def check_database(self) -> None:
        self.steps += 1
        rows = {g.id: g for g in db.session.scalars(select(Grant))}
        ledger: dict[int, list[Usage]] = {}
        budgeted: dict[int, bool] = {}
        for usage in db.session.scalars(select(Usage).order_by(Usage.id)):
            ledger.setdefault(usage.grant_id, []).append(usage)
            budgeted[usage.id] = usage.budget_hour is not None
        assert len(rows) == len(self.model)
        for grant in self.model:
            row = rows[grant.id]
            remaining = row.requests - row.used - row.reserved
            assert 0 <= remaining <= row.requests
            assert row.used + row.reserved + remaining == row.requests
            if row.max_pusd is not None:
                assert row.spent_pusd + row.held_pusd <= row.max_pusd
                assert row.spent_pusd <= row.max_pusd
            assert (row.requests, row.max_pusd) == (grant.requests, grant.cap)
            assert (row.used, row.reserved, row.spent_pusd, row.held_pusd) == (
                grant.used,
                grant.reserved,
                grant.spent,
                grant.held,
            )
            usages = ledger.get(grant.id, [])
            ok = [u for u in usages if u.status == "ok"]
            pending = [u for u in usages if u.status == "pending"]
            assert len(ok) == row.used
            assert sum(u.cost_pusd for u in ok) == row.spent_pusd
            assert all(u.cost_pusd <= u.hold_pusd for u in ok)
            assert len(pending) == row.reserved
            assert sum(u.hold_pusd for u in pending) == row.held_pusd
            assert all(u.cost_pusd == 0 for u in usages if u.status != "ok")
            assert [(u.id, u.status, u.cost_pusd, u.hold_pusd) for u in usages] == [
                (h.usage_id, h.state, h.cost, h.hold) for h in grant.holds
            ]
            if grant is self.touched:  # (two more queries: not for every grant)
                assert grants.grant_status(row) == grant.status()
                balance = grants.current_balance(grant.id)
                assert (balance.remaining, balance.remaining_pusd) == grant.balance()
        # The budget's rows: what the calls reserved under a budget spent, and still hold.
        spent, held = db.session.execute(
            select(func.coalesce(func.sum(AppSpend.spent_pusd), 0),
                   func.coalesce(func.sum(AppSpend.held_pusd), 0))
            .where(AppSpend.app_id == self.app_id)
        ).one()  # fmt: skip
        assert (spent, held) == (self.budget_spent(), self.budget_held())

        assert budgeted == {h.usage_id: h.budgeted for g in self.model for h in g.holds}


def test_accounting_matches_the_model(app) -> None:
    with app.app_context():
        other = create_app_record("other app", "test", [], app.config["SECRET_KEY"])
        app.config["OTHER_APP_ID"] = other.app.id
        db.session.remove()

    class Machine(AccountingMachine):
        flask_app = app

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=35,
            deadline=None,
            database=None,
            # Shrinking replays hundreds of runs against the database (minutes); a
            # failure prints its steps anyway. WATTFARE_SHRINK=1 to shrink it.
            phases=[Phase.explicit, Phase.generate]
            + ([Phase.shrink] if os.environ.get("WATTFARE_SHRINK") else []),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
