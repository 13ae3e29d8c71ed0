"""
The proxy's retry policy, as tables: every outcome for every kind of
method, before and at the hold deadline.
"""

from twisted.trial.unittest import SynchronousTestCase

from spmgmt.proxy.policy import IDEMPOTENT, Action, Decision, Outcome, backoff, decide

DEADLINE = 10.0

#: (method, outcome, retries, now) -> decision.
TABLE = [
    # An answer is delivered, whatever the method.
    (b"GET", Outcome.ANSWERED, 0, 0.0, Decision(Action.DELIVER)),
    (b"POST", Outcome.ANSWERED, 3, 9.0, Decision(Action.DELIVER)),
    # 421: the SP did nothing; any method goes again, at once the first time.
    (b"GET", Outcome.MISDIRECTED, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"POST", Outcome.MISDIRECTED, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"POST", Outcome.MISDIRECTED, 1, 0.0, Decision(Action.RETRY, 0.005)),
    (b"POST", Outcome.MISDIRECTED, 3, 0.0, Decision(Action.RETRY, 0.02)),
    # Never sent: any method goes again.
    (b"POST", Outcome.NOT_SENT, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"PATCH", Outcome.NOT_SENT, 2, 1.0, Decision(Action.RETRY, 0.01)),
    (b"GET", Outcome.NOT_SENT, 0, 0.0, Decision(Action.RETRY, 0.0)),
    # Service mode: nothing done; wait for the token to move.
    (b"POST", Outcome.SERVICE_MODE, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"GET", Outcome.SERVICE_MODE, 20, 0.0, Decision(Action.RETRY, 0.25)),
    # Maybe delivered: only idempotent methods go again.
    (b"GET", Outcome.LOST, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"HEAD", Outcome.LOST, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"PUT", Outcome.LOST, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"DELETE", Outcome.LOST, 0, 0.0, Decision(Action.RETRY, 0.0)),
    (b"POST", Outcome.LOST, 0, 0.0, Decision(Action.OUTCOME_UNKNOWN)),
    (b"PATCH", Outcome.LOST, 0, 0.0, Decision(Action.OUTCOME_UNKNOWN)),
    # ...even at the deadline: "unknown" is the truth, not "unavailable".
    (b"POST", Outcome.LOST, 5, DEADLINE, Decision(Action.OUTCOME_UNKNOWN)),
    # At the deadline: 503, or the service-mode answer itself.
    (b"GET", Outcome.LOST, 5, DEADLINE, Decision(Action.UNAVAILABLE)),
    (b"GET", Outcome.NOT_SENT, 5, DEADLINE, Decision(Action.UNAVAILABLE)),
    (b"POST", Outcome.MISDIRECTED, 5, DEADLINE, Decision(Action.UNAVAILABLE)),
    (b"GET", Outcome.SERVICE_MODE, 5, DEADLINE, Decision(Action.DELIVER)),
    # A retry whose backoff would end past the deadline is not made.
    (b"GET", Outcome.LOST, 9, DEADLINE - 0.1, Decision(Action.UNAVAILABLE)),
    (b"GET", Outcome.LOST, 1, DEADLINE - 0.1, Decision(Action.RETRY, 0.005)),
]


class DecideTests(SynchronousTestCase):
    def test_table(self) -> None:
        for method, outcome, retries, now, expected in TABLE:
            with self.subTest(method=method, outcome=outcome, retries=retries, now=now):
                self.assertEqual(decide(method, outcome, retries, now, DEADLINE), expected)

    def test_everyOutcomeDecided(self) -> None:
        """No outcome falls through, for any method at any time."""
        for method in sorted(IDEMPOTENT | {b"POST", b"PATCH", b"FOO"}):
            for outcome in Outcome:
                for now in (0.0, DEADLINE):
                    decision = decide(method, outcome, 0, now, DEADLINE)
                    self.assertIsInstance(decision.action, Action)

    def test_nonIdempotentNeverResentWhenMaybeDelivered(self) -> None:
        """G5: a request that may have reached an SP goes to no other."""
        for method in (b"POST", b"PATCH", b"CONNECT", b"FOO"):
            for retries in range(5):
                decision = decide(method, Outcome.LOST, retries, 0.0, DEADLINE)
                self.assertEqual(decision.action, Action.OUTCOME_UNKNOWN)


class BackoffTests(SynchronousTestCase):
    def test_doublesUpToTheCap(self) -> None:
        self.assertEqual(
            [backoff(n) for n in range(1, 10)],
            [0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25],
        )
