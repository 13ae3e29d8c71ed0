"""Cutting an event stream into whole events, and the last id delivered."""

from twisted.trial.unittest import SynchronousTestCase

from spmgmt.proxy.sse import EventSplitter, EventStreamTooLarge


class EventSplitterTests(SynchronousTestCase):
    def test_wholeEventsOnly(self) -> None:
        splitter = EventSplitter()
        self.assertEqual(splitter.feed(b"id: 1\ndata: a"), [])
        self.assertIsNone(splitter.lastId)
        self.assertEqual(splitter.feed(b"\n\nid: 2\n"), [b"id: 1\ndata: a\n\n"])
        self.assertEqual(splitter.lastId, b"1")
        self.assertEqual(splitter.feed(b"data: b\n\n"), [b"id: 2\ndata: b\n\n"])
        self.assertEqual(splitter.lastId, b"2")

    def test_severalAtOnce(self) -> None:
        splitter = EventSplitter()
        events = splitter.feed(b"id:7\ndata: x\n\n: keepalive\n\nid: 8\r\ndata: y\r\n\r\n")
        self.assertEqual(events, [b"id:7\ndata: x\n\n", b": keepalive\n\n", b"id: 8\r\ndata: y\r\n\r\n"])
        self.assertEqual(splitter.lastId, b"8")

    def test_commentKeepsLastId(self) -> None:
        splitter = EventSplitter(lastId=b"41")
        splitter.feed(b": keepalive\n\n")
        self.assertEqual(splitter.lastId, b"41")

    def test_idWithNulIgnored(self) -> None:
        splitter = EventSplitter(lastId=b"3")
        splitter.feed(b"id: 4\0\n\n")
        self.assertEqual(splitter.lastId, b"3")

    def test_discardPartial(self) -> None:
        splitter = EventSplitter()
        splitter.feed(b"id: 1\n\nid: 2\ndata: hal")
        splitter.discardPartial()
        self.assertEqual(splitter.feed(b"id: 2\ndata: whole\n\n"), [b"id: 2\ndata: whole\n\n"])
        self.assertEqual(splitter.lastId, b"2")

    def test_tooLarge(self) -> None:
        splitter = EventSplitter(maxEvent=10)
        self.assertRaises(EventStreamTooLarge, splitter.feed, b"data: " + b"x" * 20)
