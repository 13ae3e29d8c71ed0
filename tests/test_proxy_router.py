"""The router: holding requests for an active SP, on an injected clock."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spmgmt.proxy.router import Router


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gaps: list[float] = []
        self.router = Router(self.clock, self.clock.seconds, onGap=self.gaps.append)

    def results(self, d):  # type: ignore[no-untyped-def]
        seen: list[object] = []
        d.addCallback(seen.append)
        return seen

    def test_routedAtOnce(self) -> None:
        self.router.update((3, "spa"))
        self.assertEqual(self.results(self.router.wait(0.0, 10.0)), [(3, "spa")])

    def test_heldUntilAnSPIsActive(self) -> None:
        seen = self.results(self.router.wait(0.0, 10.0))
        self.assertEqual(self.router.waiting, 1)
        self.clock.advance(4.0)
        self.assertEqual(seen, [])
        self.router.update((1, "spb"))
        self.assertEqual(seen, [(1, "spb")])
        self.assertEqual(self.router.waiting, 0)

    def test_heldUntilTheDeadline(self) -> None:
        seen = self.results(self.router.wait(0.0, 10.0))
        self.clock.advance(9.9)
        self.assertEqual(seen, [])
        self.clock.advance(0.1)
        self.assertEqual(seen, [None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_backoffEndsEarlyOnAMove(self) -> None:
        self.router.update((1, "spa"))
        seen = self.results(self.router.wait(0.25, 10.0))
        self.clock.advance(0.01)
        self.router.update((2, "spb"))
        self.assertEqual(seen, [(2, "spb")])

    def test_backoffElapses(self) -> None:
        self.router.update((1, "spa"))
        seen = self.results(self.router.wait(0.02, 10.0))
        self.clock.advance(0.02)
        self.assertEqual(seen, [(1, "spa")])

    def test_backoffIntoAVacancyWaitsOn(self) -> None:
        self.router.update((1, "spa"))
        seen = self.results(self.router.wait(0.02, 10.0))
        self.router.update(None)
        self.clock.advance(1.0)
        self.assertEqual(seen, [])
        self.router.update((2, "spb"))
        self.assertEqual(seen, [(2, "spb")])

    def test_cancelForgets(self) -> None:
        d = self.router.wait(0.0, 10.0)
        d.addErrback(lambda _: None)
        d.cancel()
        self.assertEqual(self.router.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_watchFiresOnANewerEpochOnly(self) -> None:
        abandoned: list[int] = []
        self.router.update((5, "spa"))
        self.router.watch(5, lambda: abandoned.append(5))
        self.router.update(None)
        self.router.update((5, "spa"))  # handed back: same epoch
        self.assertEqual(abandoned, [])
        self.router.update((6, "spb"))
        self.assertEqual(abandoned, [5])
        self.router.update((7, "spa"))
        self.assertEqual(abandoned, [5])

    def test_unwatch(self) -> None:
        abandoned: list[int] = []
        self.router.update((5, "spa"))
        stop = self.router.watch(5, lambda: abandoned.append(5))
        stop()
        self.router.update((6, "spb"))
        self.assertEqual(abandoned, [])

    def test_gapMeasuredPerMove(self) -> None:
        self.clock.advance(100.0)
        self.router.update((1, "spa"))  # the first route: not a move
        self.assertEqual(self.gaps, [])
        self.router.update(None)
        self.clock.advance(0.25)
        self.router.update((2, "spb"))
        self.assertEqual(self.gaps, [0.25])
        self.router.update((3, "spa"))
        self.assertEqual(self.gaps, [0.25, 0.0])
