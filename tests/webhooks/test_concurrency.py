"""One slow webhook receiver does not hold anyone else's webhooks (issue 17 item 4), through the
real app: jobs with `webhook_url` to two loopback receivers, one answering only after every
test has looked (110 s, or at teardown)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gateway.webhooks.outbox import endpoint_of
from tests.conftest import Gateway
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_end_to_end import FAST, generate

# the slow receiver's attempts neither time out nor lose their lease while a test runs
SLOW_RECEIVER = {"webhooks": {**FAST["webhooks"], "timeout": 120.0, "lease": 180.0}}
PROMPT = 1.0  # seconds: "promptly", from the job's answer to its receiver's first request


def fill_slow(gw: Gateway, key: str, slow: Receiver, jobs: int) -> None:
    """`jobs` finished jobs whose webhooks go to `slow`."""
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: generate(gw, key, webhook_url=slow.url).status_code,
                              range(jobs)))
    assert codes == [200] * jobs


def first_delivery_delay(gw: Gateway, key: str, fast: Receiver) -> float:
    """Seconds from the end of a job (its synchronous answer) to its webhook's arrival."""
    assert generate(gw, key, webhook_url=fast.url).status_code == 200
    answered = time.monotonic()
    return fast.wait_for(1, timeout=20)[0].at - answered


def test_a_slow_receiver_does_not_delay_another_receivers_first_delivery(
        gateway_factory: Any, receiver: Receiver, slow_receiver: Receiver) -> None:
    gw = gateway_factory(**SLOW_RECEIVER)
    key = gw.create_key("wh")[1]
    fill_slow(gw, key, slow_receiver, 1)
    slow_receiver.wait_for(1)  # its attempt stays in flight
    delay = first_delivery_delay(gw, key, receiver)
    assert delay < PROMPT, f"the fast receiver waited {delay:.1f} s"
    assert len(slow_receiver.requests) == 1  # still answering


@pytest.mark.parametrize("per_endpoint", [4, 40])
def test_40_deliveries_to_a_slow_receiver_leave_room_for_others(
        gateway_factory: Any, receiver: Receiver, slow_receiver: Receiver,
        per_endpoint: int) -> None:
    """40 deliveries queued on the slow receiver: it gets `per_endpoint` at once (4 by
    default; all 40 with room for them), and the other receiver still gets its delivery at
    once."""
    gw = gateway_factory(webhooks={**SLOW_RECEIVER["webhooks"], "per_endpoint": per_endpoint})
    key = gw.create_key("wh")[1]
    fill_slow(gw, key, slow_receiver, 40)
    slow_receiver.wait_for(per_endpoint)  # every slot of the slow endpoint is taken
    delay = first_delivery_delay(gw, key, receiver)
    assert delay < PROMPT, f"the fast receiver waited {delay:.1f} s"
    # nobody has answered: the slow endpoint never had more than its limit
    assert len(slow_receiver.requests) == per_endpoint


def test_the_5_s_retry_is_on_time_while_the_slow_receiver_is_busy(
        gateway_factory: Any, receiver: Receiver, slow_receiver: Receiver) -> None:
    gw = gateway_factory(webhooks={**SLOW_RECEIVER["webhooks"], "jitter": 0})
    key = gw.create_key("wh")[1]
    fill_slow(gw, key, slow_receiver, 12)  # a backlog: 4 in flight, 8 waiting for a slot
    slow_receiver.wait_for(4)
    receiver.script = [(500, {})]  # the first attempt fails, the retry (5 s later) succeeds
    assert first_delivery_delay(gw, key, receiver) < PROMPT
    first, retry = receiver.wait_for(2, timeout=20)[:2]
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    gap = retry.at - first.at
    assert 5.0 - 0.1 <= gap <= 5.0 + 1.0, f"the 5 s retry came after {gap:.1f} s"
    assert len(slow_receiver.requests) == 4  # the slow receiver is still busy


def test_endpoint_is_scheme_host_and_port() -> None:
    assert endpoint_of("https://Hooks.Example.com/a?b=1") == "https://hooks.example.com:443"
    assert endpoint_of("http://hooks.example.com/x") == endpoint_of("HTTP://hooks.example.com:80/y")
    assert endpoint_of("http://[::1]:8080/x") == "http://[::1]:8080"
    assert endpoint_of("http://127.0.0.1:8080/x") != endpoint_of("http://127.0.0.1:8081/x")
