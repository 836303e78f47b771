"""Login throttling (nubis.security.throttle; issue 9 item 7): counts per user name and per
address, lockouts that double, a locked attempt that costs no argon2, state shared by every
process through the index (two throttles over one database stand for two worker processes),
on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nubis.errors import TooManyRequests, Unauthorized
from nubis.index.database import Index
from nubis.security.authn import Authenticator
from nubis.security.throttle import Lockout, LoginThrottle, ThrottlePolicy
from nubis.security.users import UserStore

PASSWORD = "a long enough password"
POLICY = ThrottlePolicy(
    max_failures_per_user=3,
    max_failures_per_address=5,
    window_seconds=100,
    lockout_seconds=10,
    max_lockout_seconds=35,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingUsers(UserStore):
    checks = 0

    def check_password(self, name: str, password: str):  # type: ignore[no-untyped-def]
        self.checks += 1
        return super().check_password(name, password)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.database(f"throttle_{abs(hash(request.node.nodeid)):x}"))


@pytest.fixture
def indexes(index_url: str) -> Iterator[tuple[Index, Index]]:
    """Two connections to one index: two worker processes (or nodes) of one archive."""
    made = []
    for _ in range(2):
        index = Index(index_url, durable=False)
        index.migrate()
        index.open()
        made.append(index)
    yield made[0], made[1]
    for index in made:
        index.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttle(index: Index, clock: Clock, started: list[Lockout] | None = None) -> LoginThrottle:
    record = started.append if started is not None else (lambda lockout: None)
    return LoginThrottle(index, POLICY, on_lockout=record, clock=clock)


def fail(t: LoginThrottle, user: str, address: str = "192.0.2.1") -> list[Lockout]:
    t.check(user, address)
    return t.failed(user, address, front_door="dicomweb")


def locked_for(t: LoginThrottle, user: str, address: str = "192.0.2.1") -> int | None:
    try:
        t.check(user, address)
    except TooManyRequests as exc:
        return exc.retry_after
    return None


def test_a_user_name_locks_after_its_failures_and_unlocks(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    started: list[Lockout] = []
    t = throttle(indexes[0], clock, started)
    assert fail(t, "alice") == [] and fail(t, "alice") == []
    [lockout] = fail(t, "alice")
    assert (lockout.kind, lockout.subject, lockout.seconds, lockout.failures) == (
        "user", "alice", 10, 3
    )  # fmt: skip
    assert started == [lockout]
    assert locked_for(t, "alice", "198.51.100.9") == 10  # from any address
    assert locked_for(t, "bob") is None  # the address is not locked yet
    clock.now += 10
    assert locked_for(t, "alice") is None


def test_lockouts_double_up_to_the_longest_then_start_again_after_a_quiet_time(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    t = throttle(indexes[0], clock)
    lengths = []
    for _ in range(4):
        for attempt in range(3):
            started = fail(t, "alice", f"192.0.2.{len(lengths) * 3 + attempt + 10}")
        lengths.append(started[0].seconds)
        clock.now += started[0].seconds
    assert lengths == [10, 20, 35, 35]
    clock.now += POLICY.window_seconds + POLICY.max_lockout_seconds
    for _ in range(3):
        started = fail(t, "alice", "192.0.2.99")
    assert started[0].seconds == 10


def test_failures_outside_the_window_do_not_count(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    t = throttle(indexes[0], clock)
    fail(t, "alice")
    fail(t, "alice")
    clock.now += POLICY.window_seconds
    assert fail(t, "alice") == [] and fail(t, "alice") == []
    assert fail(t, "alice")[0].subject == "alice"


def test_an_address_locks_whatever_names_it_tries(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    t = throttle(indexes[0], clock)
    for name in ("a", "b", "c", "d"):
        assert fail(t, name, "203.0.113.5") == []
    [lockout] = fail(t, "e", "203.0.113.5")
    assert (lockout.kind, lockout.subject, lockout.user) == ("address", "203.0.113.5", "e")
    assert locked_for(t, "anyone", "203.0.113.5") == 10
    assert locked_for(t, "anyone", "203.0.113.6") is None


def test_a_right_password_clears_the_user_name_not_the_address(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    t = throttle(indexes[0], clock)
    for _ in range(2):
        fail(t, "alice", "203.0.113.5")
    t.succeeded("alice")
    assert fail(t, "alice", "203.0.113.5") == [] and fail(t, "alice", "203.0.113.5") == []
    # The address has counted all four: one more locks it.
    assert [lo.kind for lo in fail(t, "bob", "203.0.113.5")] == ["address"]


def test_a_lockout_holds_in_every_process(indexes: tuple[Index, Index], clock: Clock) -> None:
    first, second = throttle(indexes[0], clock), throttle(indexes[1], clock)
    fail(first, "alice", "192.0.2.1")
    fail(second, "alice", "192.0.2.2")
    assert fail(first, "alice", "192.0.2.3")[0].kind == "user"  # counts from both processes
    assert locked_for(second, "alice", "192.0.2.4") == 10


def test_concurrent_failures_in_two_processes_start_one_lockout(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    throttles = [throttle(index, clock) for index in indexes]

    def failed(n: int) -> list[Lockout]:
        return throttles[n % 2].failed("carol", f"192.0.2.{n}", front_door="dicomweb")

    with ThreadPoolExecutor(8) as pool:
        started = [lockout for found in pool.map(failed, range(16)) for lockout in found]
    assert [lockout.subject for lockout in started] == ["carol"]


def test_zero_turns_a_kind_of_key_off(indexes: tuple[Index, Index], clock: Clock) -> None:
    policy = ThrottlePolicy(max_failures_per_user=0, max_failures_per_address=0)
    t = LoginThrottle(indexes[0], policy, clock=clock)
    for _ in range(50):
        assert fail(t, "alice") == []


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def test_a_locked_attempt_costs_no_password_check(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    users = CountingUsers(indexes[0])
    users.add_user("alice", roles="radiologist", password=PASSWORD)
    authn = Authenticator(users, throttle=throttle(indexes[0], clock))
    for _ in range(3):
        with pytest.raises(Unauthorized):
            authn.authenticate(basic("alice", "wrong password!"), peer="192.0.2.1")
    assert users.checks == 3
    # Locked: refused before argon2, with the right password too.
    for password in ("wrong password!", PASSWORD):
        with pytest.raises(TooManyRequests) as err:
            authn.authenticate(basic("alice", password), peer="192.0.2.7")
        assert err.value.http_status == 429 and err.value.retry_after == 10
    assert users.checks == 3
    clock.now += 10
    assert authn.authenticate(basic("alice", PASSWORD), peer="192.0.2.7").id == "alice"


def test_a_long_claimed_name_is_counted_by_its_digest(
    indexes: tuple[Index, Index], clock: Clock
) -> None:
    t = throttle(indexes[0], clock)
    name = "x" * 5000
    for _ in range(2):
        fail(t, name)
    assert fail(t, name)[0].subject == name
    assert locked_for(t, name) == 10
