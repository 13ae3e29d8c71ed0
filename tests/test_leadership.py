"""
Tests for L{spmgmt.arbiter.leadership} against a real etcd: one leader at a
time, a standby takes over after a crash within the lease TTL, a deposed
leader cannot write, and without quorum nobody leads.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from spmgmt import etcd
from spmgmt.arbiter.leadership import Leadership, NotLeading
from spmgmt.etcd import EtcdClient
from spmgmt.testing.etcd import startEtcd
from tests.test_etcd import NO_ETCD

TTL = 1  # etcd raises it to its minimum; the machine uses what it grants


class LeadershipTests(TestCase):
    timeout = 90
    skip = NO_ETCD

    async def arbiters(self, cluster: Any, *names: str) -> list[Leadership]:
        arbiters = []
        for name in names:
            client = EtcdClient(reactor, cluster.endpoints, timeout=0.5)
            leadership = Leadership(reactor, client, name, "/spmgmt/test", TTL, interval=0.05)
            self.addCleanup(client.close)
            self.addCleanup(lambda leadership=leadership: leadership.stopService() if leadership.running else None)
            leadership.startService()
            arbiters.append(leadership)
        return arbiters

    async def waitFor(self, predicate: Any, timeout: float, what: str) -> float:
        """Poll C{predicate} every 10 ms; the seconds it took."""
        start = reactor.seconds()
        while not predicate():
            if reactor.seconds() - start > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await deferLater(reactor, 0.01, lambda: None)
        return reactor.seconds() - start

    async def test_oneLeaderThenTakeover(self) -> None:
        """
        Of three arbiters exactly one leads and the others name it; when it
        crashes (its lease left to expire) another leads within the TTL
        plus a tick or two, in a newer term, and the crashed one's fenced
        write fails.
        """
        cluster = await startEtcd(self)
        arbiters = await self.arbiters(cluster, "a1", "a2", "a3")

        def leaders() -> list[Leadership]:
            return [a for a in arbiters if a.leading]

        await self.waitFor(lambda: len(leaders()) == 1 and all(a.leader for a in arbiters), 10, "a leader")
        (first,) = leaders()
        self.assertEqual({a.leader for a in arbiters}, {first.state.name})
        written = await first.fencedTxn([], [etcd.put(b"/spmgmt/test/token", b"epoch 1")])
        self.assertTrue(written.succeeded)

        # A crash: no more renewals, no resignation (as SIGKILL would leave it).
        first.resignOnStop = False
        term, ttl = first.state.term, first.state.ttl
        await first.stopService()
        others = [a for a in arbiters if a is not first]
        took = await self.waitFor(lambda: any(a.leading for a in others), ttl + 5, "a standby to lead")
        self.assertLess(took, ttl + 1.5)  # etcd revokes expired leases every 0.5 s
        self.assertEqual(len([a for a in others if a.leading]), 1)
        (second,) = [a for a in others if a.leading]
        assert second.term is not None and term is not None
        self.assertGreater(second.term, term)

        # The crashed arbiter, had it woken up believing it leads, cannot write.
        client = EtcdClient(reactor, cluster.endpoints)
        self.addCleanup(client.close)
        stale = await client.txn([etcd.createRevisionIs(first.key, term)], [etcd.put(b"/spmgmt/test/token", b"x")])
        self.assertFalse(stale.succeeded)
        token = await client.get(b"/spmgmt/test/token")
        assert token is not None
        self.assertEqual(token.value, b"epoch 1")

    async def test_deposedLeaderStepsDown(self) -> None:
        """A leader whose key was taken finds out from its next fenced write, and steps down."""
        cluster = await startEtcd(self)
        (a1,) = await self.arbiters(cluster, "a1")
        await self.waitFor(lambda: a1.leading, 10, "a1 to lead")
        client = EtcdClient(reactor, cluster.endpoints)
        self.addCleanup(client.close)
        await client.delete(a1.key)
        await client.put(a1.key, b"intruder")
        with self.assertRaises(NotLeading):
            await a1.fencedTxn([], [etcd.put(b"/spmgmt/test/token", b"y")])
        self.assertFalse(a1.leading)
        self.assertIsNone(await client.get(b"/spmgmt/test/token"))

    async def test_resignHandsOverAtOnce(self) -> None:
        """A leader that stops cleanly revokes its lease: a standby leads without waiting for the TTL."""
        cluster = await startEtcd(self)
        a1, a2 = await self.arbiters(cluster, "a1", "a2")
        await self.waitFor(lambda: a1.leading or a2.leading, 10, "a leader")
        first, second = (a1, a2) if a1.leading else (a2, a1)
        ttl = first.state.ttl
        await first.stopService()
        took = await self.waitFor(lambda: second.leading, 5, "the standby to lead")
        self.assertLess(took, ttl)  # a crash would cost the whole TTL at least

    async def test_quorumLost(self) -> None:
        """
        Three etcd members lose two: the leader steps down within its
        lease and nobody leads; when a member returns, one arbiter leads
        again.
        """
        cluster = await startEtcd(self, size=3)
        a1, a2 = await self.arbiters(cluster, "a1", "a2")
        await self.waitFor(lambda: a1.leading or a2.leading, 10, "a leader")
        leader = a1 if a1.leading else a2
        ttl = leader.state.ttl
        await cluster.kill("etcd1")
        await cluster.kill("etcd2")
        killed = reactor.seconds()
        # The last etcd member may renew the lease until it notices, after its
        # election timeout (0.5 s), that it lost quorum; the leader counts on
        # the lease only until the TTL has passed since the last renewal it
        # sent, and steps down at the first tick after that.
        until = leader.state.leaseUntil
        while leader.leading:
            until = leader.state.leaseUntil
            self.assertLess(reactor.seconds() - killed, ttl + 3, "the leader did not step down")
            await deferLater(reactor, 0.01, lambda: None)
        self.assertLess(reactor.seconds() - until, 0.3)  # a tick (50 ms) late at most, with slack for load
        self.assertFalse(a1.leading or a2.leading)
        await deferLater(reactor, 1.0, lambda: None)
        self.assertFalse(a1.leading or a2.leading)
        cluster.startMember("etcd1")
        await self.waitFor(lambda: a1.leading or a2.leading, 20, "a leader after quorum returns")
        self.assertFalse(a1.leading and a2.leading)
