"""
Tests for L{spmgmt.etcd}, the etcd v3 JSON-gateway client, against a real
etcd (Debian's C{etcd-server}): one member, and a cluster of three that
loses a member and then its quorum.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt import etcd
from spmgmt.etcd import EtcdClient, EtcdError, EtcdUnavailable
from spmgmt.testing import freePorts
from spmgmt.testing.etcd import ETCD, startEtcd

NO_ETCD = None if os.access(ETCD, os.X_OK) else "etcd is not installed (scripts/install-debian-packages)"


class CompareTests(SynchronousTestCase):
    """The gateway's JSON for compares and operations."""

    def test_compares(self) -> None:
        self.assertEqual(
            etcd.createRevisionIs(b"k", 7).json(),
            {"key": "aw==", "result": "EQUAL", "target": "CREATE", "create_revision": "7"},
        )
        self.assertEqual(
            etcd.valueIs(b"k", b"v").json(), {"key": "aw==", "result": "EQUAL", "target": "VALUE", "value": "dg=="}
        )
        self.assertEqual(etcd.absent(b"k").json()["version"], "0")
        self.assertEqual(
            etcd.put(b"k", b"v", lease=5).request, {"request_put": {"key": "aw==", "value": "dg==", "lease": "5"}}
        )


class OneMemberTests(TestCase):
    """Keys, transactions and leases on a real single-member etcd."""

    timeout = 60
    skip = NO_ETCD

    async def setUp(self) -> None:
        self.cluster = await startEtcd(self)
        self.client = EtcdClient(reactor, self.cluster.endpoints)
        self.addCleanup(self.client.close)

    async def test_keys(self) -> None:
        """Put, get with revisions, delete; a missing key is None."""
        self.assertIsNone(await self.client.get(b"/t/missing"))
        first = await self.client.put(b"/t/a", b"\x00one")
        kv = await self.client.get(b"/t/a")
        assert kv is not None
        self.assertEqual(
            (kv.key, kv.value, kv.createRevision, kv.modRevision, kv.version), (b"/t/a", b"\x00one", first, first, 1)
        )
        second = await self.client.put(b"/t/a", b"two")
        kv = await self.client.get(b"/t/a")
        assert kv is not None
        self.assertEqual((kv.value, kv.createRevision, kv.modRevision, kv.version), (b"two", first, second, 2))
        self.assertEqual(await self.client.delete(b"/t/a"), 1)
        self.assertEqual(await self.client.delete(b"/t/a"), 0)

    async def test_txn(self) -> None:
        """A transaction runs its success branch only while its compares hold."""
        created = await self.client.txn([etcd.absent(b"/t/leader")], [etcd.put(b"/t/leader", b"a1")])
        self.assertTrue(created.succeeded)
        again = await self.client.txn(
            [etcd.absent(b"/t/leader")], [etcd.put(b"/t/leader", b"a2")], [etcd.get(b"/t/leader")]
        )
        self.assertFalse(again.succeeded)
        (holder,) = again.responses
        assert holder is not None
        self.assertEqual((holder.value, holder.createRevision), (b"a1", created.revision))
        fenced = await self.client.txn(
            [etcd.createRevisionIs(b"/t/leader", created.revision)], [etcd.put(b"/t/epoch", b"1")]
        )
        self.assertTrue(fenced.succeeded)
        stale = await self.client.txn(
            [etcd.createRevisionIs(b"/t/leader", created.revision - 1)], [etcd.put(b"/t/epoch", b"2")]
        )
        self.assertFalse(stale.succeeded)
        epoch = await self.client.get(b"/t/epoch")
        assert epoch is not None
        self.assertEqual(epoch.value, b"1")

    async def test_lease(self) -> None:
        """A key on a lease lives while the lease is kept alive and goes with its revocation."""
        lease, ttl = await self.client.grant(5)
        self.assertGreater(lease, 0)
        self.assertGreaterEqual(ttl, 5)
        await self.client.put(b"/t/leased", b"x", lease=lease)
        self.assertGreater(await self.client.keepAlive(lease), 0)
        kv = await self.client.get(b"/t/leased")
        assert kv is not None
        self.assertEqual(kv.lease, lease)
        await self.client.revoke(lease)
        self.assertIsNone(await self.client.get(b"/t/leased"))
        self.assertEqual(await self.client.keepAlive(lease), 0)
        await self.client.revoke(lease)  # already gone: not an error

    async def test_errors(self) -> None:
        """A put on an unknown lease is etcd's error, with its code."""
        error = None
        try:
            await self.client.put(b"/t/k", b"v", lease=12345)
        except EtcdError as e:
            error = e
        assert error is not None
        self.assertIn("lease not found", error.message)

    async def test_endpointsInTurn(self) -> None:
        """A refused endpoint is skipped; when none answers the call says so."""
        (dead,) = freePorts(1)
        client = EtcdClient(reactor, [f"http://127.0.0.1:{dead}", *self.cluster.endpoints])
        self.addCleanup(client.close)
        await client.put(b"/t/k", b"v")
        nowhere = EtcdClient(reactor, [f"http://127.0.0.1:{dead}"], timeout=1.0)
        self.addCleanup(nowhere.close)
        error = None
        try:
            await nowhere.get(b"/t/k")
        except EtcdUnavailable as e:
            error = e
        assert error is not None
        self.assertIn(f"127.0.0.1:{dead}", str(error))


class ThreeMemberTests(TestCase):
    """A cluster of three: one member lost changes nothing; quorum lost stops writes until it returns."""

    timeout = 90
    skip = NO_ETCD

    async def test_memberAndQuorumLoss(self) -> None:
        cluster = await startEtcd(self, size=3)
        client = EtcdClient(reactor, cluster.endpoints, timeout=1.0)
        self.addCleanup(client.close)
        await client.put(b"/t/k", b"1")
        await cluster.kill("etcd0")
        await cluster.waitWritable(10.0)
        await client.put(b"/t/k", b"2")  # moves past the dead member
        await cluster.kill("etcd1")
        with self.assertRaises((EtcdUnavailable, EtcdError)):
            await client.put(b"/t/k", b"3")
        cluster.startMember("etcd1")
        await cluster.waitWritable(20.0)
        kv = await client.get(b"/t/k")
        assert kv is not None
        self.assertIn(kv.value, (b"2", b"3"))  # the write during the loss has an unknown outcome
