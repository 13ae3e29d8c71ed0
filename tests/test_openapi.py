"""
The OpenAPI description (spmgmt/openapi.json): valid OpenAPI 3.1, true to
the route table, served by every SP and through the proxy, and exercised
by schemathesis against a running array: no 5xx, and every answer (status,
content type, headers, body) as the description says.
"""

from __future__ import annotations

import configparser
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from twisted.cred.portal import Portal
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt.auth import FailureLimiter
from spmgmt.openapi import document, documentBytes, openapiPath
from spmgmt.sp.agent import SPAgent
from spmgmt.sp.web import ROUTES, ManagementWeb
from spmgmt.testing import ArrayHarness, ArrayTestMixin, sampleConfig

ROOT = Path(__file__).resolve().parent.parent
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path) -> operation object, for every operation of C{doc}."""
    return {
        (method.upper(), path): item[method]
        for path, item in doc["paths"].items()
        for method in HTTP_METHODS
        if method in item
    }


def resolve(doc: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """C{value}, or what its local C{$ref} points at."""
    while "$ref" in value:
        node: Any = doc
        for part in value["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        value = node
    return value


class DocumentTests(SynchronousTestCase):
    """The description itself, and the route table it describes."""

    def test_validOpenAPI31(self) -> None:
        """It is a valid OpenAPI 3.1 document (openapi-spec-validator)."""
        from openapi_spec_validator import OpenAPIV31SpecValidator, validate

        doc = document()
        self.assertTrue(doc["openapi"].startswith("3.1."))
        validate(doc, cls=OpenAPIV31SpecValidator)

    def test_servedBytesAreJSON(self) -> None:
        """The bytes served are the parsed document, UTF-8 JSON."""
        self.assertEqual(json.loads(documentBytes().decode("utf-8")), document())

    def test_version(self) -> None:
        """info.version is the package's version."""
        parser = configparser.ConfigParser()
        parser.read(ROOT / "setup.cfg")
        self.assertEqual(document()["info"]["version"], parser["metadata"]["version"])

    def test_packaged(self) -> None:
        """setup.cfg ships the JSON file with the spmgmt package."""
        parser = configparser.ConfigParser()
        parser.read(ROOT / "setup.cfg")
        shipped = parser["options.package_data"]["spmgmt"].split()
        self.assertIn("openapi.json", shipped)

    def test_everyRouteDescribed(self) -> None:
        """
        Every route of ROUTES is one operation, with its role and service
        mode; no operation describes a route that does not exist.
        """
        ops = operations(document())
        routes = {(r.method, openapiPath(r.path)): r for r in ROUTES}
        self.assertEqual(sorted(ops), sorted(routes))
        for key, route in routes.items():
            op = ops[key]
            with self.subTest(route=key):
                self.assertEqual(op["x-spmgmt-role"], route.role, key)
                self.assertEqual(op["x-spmgmt-service-mode"], route.service, key)
                if route.role is None:
                    self.assertEqual(op["security"], [], key)
                else:
                    self.assertEqual(op["security"], [{"basic": []}, {"bearer": []}], key)
                    for code in ("401", "429"):
                        self.assertIn(code, op["responses"], key)
                if route.role == "admin":
                    self.assertIn("403", op["responses"], key)
                if not route.service:
                    self.assertIn("503", op["responses"], key)
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                self.assertEqual(declared, set(_pathParameters(key[1])), key)

    def test_errorsAreProblems(self) -> None:
        """Every error answer is application/problem+json with its own status."""
        doc = document()
        for key, op in operations(doc).items():
            for code, response in op["responses"].items():
                response = resolve(doc, response)
                if int(code) < 400:
                    continue
                with self.subTest(operation=key, code=code):
                    self.assertEqual(list(response["content"]), ["application/problem+json"])
                    schema = response["content"]["application/problem+json"]["schema"]
                    self.assertEqual(schema["properties"]["status"], {"const": int(code)})

    def test_nothingUndescribedServed(self) -> None:
        """
        The two Klein apps serve exactly the described operations (plus the
        HEAD that comes with every GET, and the service-mode catch-all).
        """
        web = _managementWeb(self)
        ops = operations(document())
        for app, kind in ((web.fullApp, "full"), (web.serviceApp, "service")):
            served = set()
            for rule in app.url_map.iter_rules():
                if rule.endpoint in ("serviceOnly", "serviceOnlyRoot"):
                    self.assertEqual(kind, "service")
                    continue
                methods = set(rule.methods or ())
                if "GET" in methods:
                    methods.discard("HEAD")
                served |= {(method, openapiPath(rule.rule)) for method in methods}
            described = {key for key, op in ops.items() if kind == "full" or op["x-spmgmt-service-mode"]}
            self.assertEqual(served, described, kind)


def _pathParameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _managementWeb(case: SynchronousTestCase) -> ManagementWeb:
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-test-openapi-"))
    case.addCleanup(shutil.rmtree, directory, True)
    config = sampleConfig(directory)
    clock = MemoryReactorClock()
    agent = SPAgent(clock, config, config.sps[0])
    return ManagementWeb(agent, Portal(None, []), FailureLimiter(clock))


#: Operations that are slow or change the array: fewer examples each.
_BOUNDED = {
    # Never ends: read for at most a few events or a second, a few times.
    # (Its query parameter is GET /api/v1/events's: no coverage phase.)
    "streamEvents": {
        "request-timeout": 1.5,
        "max-stream-events": 3,
        "generation": {"max-examples": 3},
        "phases": {"coverage": {"enabled": False}},
    },
    # Moves the token (each move is a short failover for the proxy).
    "switchover": {"generation": {"max-examples": 3}},
    # Runs processes.
    "runCommand": {"generation": {"max-examples": 10}},
}

#: The checks of the run: no 5xx, every answer as described, 405 for
#: methods not described, and input the description calls invalid refused
#: (4xx), valid input not refused as malformed (400).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "negative_data_rejection",
    "positive_data_acceptance",
)

#: Schema-valid input may still name no SP or command of this array, or
#: parameters its command does not declare: 404 or 422, never 400.
_ACCEPTED = ["2xx", "401", "403", "404", "409", "422", "429"]

def runSchemathesis(
    doc: dict[str, Any],
    baseURL: str,
    ca: Path,
    user: str,
    password: str,
    maxExamples: int = 10,
    seed: int | None = None,
    exceptions: Sequence[dict[str, Any]] = (),
    serverErrors: Sequence[str] = (),
) -> tuple[list[str], dict[str, dict[int, int]]]:
    """
    Run schemathesis (examples, coverage and fuzzing phases) over every
    operation of C{doc} against C{baseURL}, synchronously (in a thread:
    it uses requests).

    @param exceptions: C{[[operations]]} tables of schemathesis's
        configuration, for what is known to differ.
    @param serverErrors: 5xx statuses that are expected answers here.

    @return: a description of every failure or error, and per operation
        how many answers of each status it got.
    """
    import schemathesis
    from schemathesis.engine import Status, events, from_schema

    settings: dict[str, Any] = {
        "base-url": baseURL,
        "tls-verify": str(ca),
        "request-timeout": 30,
        "auth": {"basic": {"username": user, "password": password}},
        "checks": {
            "enabled": False,
            **{name: {"enabled": True} for name in CHECKS},
            "not_a_server_error": {"enabled": True, "expected-statuses": ["2xx", "3xx", "4xx", *serverErrors]},
            "positive_data_acceptance": {"enabled": True, "expected-statuses": [*_ACCEPTED, *serverErrors]},
        },
        "phases": {"stateful": {"enabled": False}},
        "generation": {"max-examples": maxExamples, "mode": "all", "database": "none"},
        "operations": [{"include-operation-id": opId, **extra} for opId, extra in _BOUNDED.items()] + list(exceptions),
        "warnings": False,
    }
    if seed is not None:
        settings["seed"] = seed
    config = schemathesis.Config.from_dict(settings)
    schema = schemathesis.openapi.from_dict(doc, config=config)
    problems: list[str] = []
    statuses: dict[str, dict[int, int]] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            if os.environ.get("SPMGMT_SCHEMATHESIS_TIMES"):
                print(f"{recorder.label} {event.phase} {event.elapsed_time:.2f}s")
            seen = statuses.setdefault(recorder.label, {})
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    code = interaction.response.status_code
                    seen[code] = seen.get(code, 0) + 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.append(
                            f"{recorder.label}: {check.name}: {failure.title}\n{failure.message}\n"
                            f"{check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
    return problems, statuses


def _operationLabels(doc: dict[str, Any]) -> set[str]:
    return {f"{method} {path}" for method, path in operations(doc)}


def _parseEvents(data: bytes) -> list[dict[str, str]]:
    """The events of an event stream (comments skipped), as field -> value."""
    events = []
    for block in data.decode("utf-8").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


class LiveTests(ArrayTestMixin, TestCase):
    """
    The description against a running array (every SP and the proxy as
    real processes): served, and true to what they answer.
    """

    timeout = 240
    #: Examples per operation and phase (the slow ones are bounded further).
    maxExamples = 25

    async def _array(self) -> ArrayHarness:
        """
        A running array: spa active, and each SP's peer link to the other
        up (until then a relayed request is, rightly, 504).
        """
        array = await self.startArray(arbiter=True)
        await array.waitHolder("proxy", "spa")
        for via, peer in (("spa", "spb"), ("spb", "spa")):

            async def linked(via: str = via, peer: str = peer) -> bool:
                return any(sp["id"] == peer and sp.get("reachable") for sp in (await array.array(via))["sps"])

            await array.waitFor(linked, 10.0, f"{via}'s peer link to {peer}")
        return array

    async def _served(self, array: ArrayHarness) -> dict[str, Any]:
        """The description as the proxy serves it (the one schemathesis runs on)."""
        answer = await array.request("proxy", "GET", "/api/v1/openapi.json", user=None)
        self.assertEqual(answer.code, 200)
        return answer.json()  # type: ignore[no-any-return]

    async def _schemathesis(
        self, array: ArrayHarness, target: str, exceptions: list[dict[str, Any]], **settings: Any
    ) -> dict[str, dict[int, int]]:
        doc = await self._served(array)
        # A new seed each run, named in a failure: SPMGMT_SCHEMATHESIS_SEED=N
        # runs the same examples again.
        seed = int(os.environ.get("SPMGMT_SCHEMATHESIS_SEED") or random.getrandbits(32))
        problems, statuses = await deferToThread(
            runSchemathesis,
            doc,
            array.url(target, ""),
            array.config.ca,
            "admin",
            array.passwords["admin"],
            maxExamples=self.maxExamples,
            seed=seed,
            exceptions=exceptions,
            **settings,
        )
        self.assertEqual(problems, [], f"SPMGMT_SCHEMATHESIS_SEED={seed}\n\n" + "\n\n".join(problems[:20]))
        # Every operation was exercised.
        self.assertEqual(set(statuses), _operationLabels(doc))
        return statuses

    async def test_served(self) -> None:
        """
        Every SP, and the proxy, serve the description without auth, in
        service mode too, with the usual headers.
        """
        array = await self._array()
        for target in ("spa", "spb", "proxy"):
            answer = await array.request(target, "GET", "/api/v1/openapi.json", user=None)
            self.assertEqual(answer.code, 200, target)
            self.assertEqual(answer.header("Content-Type"), "application/json")
            self.assertEqual(answer.body, documentBytes(), target)
            self.assertEqual(answer.header("X-SPMgmt-Served-By"), "spa" if target == "proxy" else target)
        proxied = await array.request("proxy", "GET", "/api/v1/openapi.json", user=None)
        self.assertEqual(proxied.header("X-SPMgmt-Epoch"), str((await array.array("spa"))["token"]["epoch"]))
        self.assertIsNotNone(proxied.header("X-Request-Id"))

        array.path("var/spb.maintenance").touch()

        async def serviceMode() -> bool:
            answer = await array.request("spb", "GET", "/healthz", user=None)
            return bool(answer.json()["web_server"] == "service")

        await array.waitFor(serviceMode, 10.0, "spb to serve the service-mode web server", "spb")
        answer = await array.request("spb", "GET", "/api/v1/openapi.json", user=None)
        self.assertEqual((answer.code, answer.body), (200, documentBytes()))
        refused = await array.request("spb", "GET", "/api/v1/sps")
        self.assertEqual(refused.code, 503)
        self.assertIn("GET /api/v1/openapi.json", refused.json()["routes"])

    async def test_schemathesisThroughTheProxy(self) -> None:
        """
        schemathesis over every operation through the proxy, as admin: no
        5xx, and every answer as described.  Afterwards the array still
        has an active SP.
        """
        array = await self._array()
        statuses = await self._schemathesis(array, "proxy", [])
        for label, seen in statuses.items():
            if label != "POST /api/v1/array/switchover":  # 200 only for a known SP or none
                self.assertIn(200, seen, label)
        after = await array.request("proxy", "GET", "/api/v1/array")
        self.assertEqual((after.code, after.json()["state"]), (200, "active"))

    async def test_schemathesisDirectToPassive(self) -> None:
        """
        The same directly against the passive SP (service access): its
        reads, its 409 for what only the active SP does, its relays to the
        active one.
        """
        array = await self._array()
        statuses = await self._schemathesis(array, "spb", [])
        self.assertIn(409, statuses["POST /api/v1/array/switchover"])

    async def test_schemathesisServiceMode(self) -> None:
        """
        The same against an SP in service mode: the routes that remain,
        and 503 (as described) for every other.
        """
        array = await self._array()
        array.path("var/spb.maintenance").touch()

        async def serviceMode() -> bool:
            answer = await array.request("spb", "GET", "/healthz", user=None)
            return bool(answer.json()["web_server"] == "service")

        await array.waitFor(serviceMode, 10.0, "spb to serve the service-mode web server", "spb")
        statuses = await self._schemathesis(
            array,
            "spb",
            # Service mode answers 503 for every route it drops, and for
            # any method on any path it does not serve: not 405.
            [{"include-path-regex": ".", "checks": {"unsupported_method": {"enabled": False}}}],
            # 503 is the described answer of a route service mode drops.
            serverErrors=["503"],
        )
        self.assertEqual(set(statuses["GET /api/v1/sps"]) - {405}, {503})

    async def test_eventStream(self) -> None:
        """
        The stream through the proxy: each event has the id, kind and data
        described, and its data is an Event.
        """
        from openapi_schema_validator import OAS31Validator

        from tests.test_events import openStream

        array = await self._array()
        doc = await self._served(array)
        reader = await openStream(array, "proxy")
        self.addCleanup(reader.close)
        ran = await array.request("proxy", "POST", "/api/v1/sps/spa/commands/uptime", body={})
        self.assertEqual(ran.code, 200)

        async def commandSeen() -> bool:
            return any(e.get("event") == "command" for e in _parseEvents(reader.data))

        await array.waitFor(commandSeen, 10.0, "the command run in the stream")
        stream = resolve(doc, doc["paths"]["/api/v1/events/stream"]["get"]["responses"]["200"])
        eventSchema = {**resolve(doc, stream["content"]["text/event-stream"]["schema"]), "components": doc["components"]}
        dataSchema = {"$ref": "#/components/schemas/Event", "components": doc["components"]}
        events = _parseEvents(reader.data)
        self.assertGreaterEqual(len(events), 3)
        for event in events:
            OAS31Validator(eventSchema).validate(event)
            data = json.loads(event["data"])
            OAS31Validator(dataSchema).validate(data)
            self.assertEqual((str(data["id"]), data["kind"]), (event["id"], event["event"]))

    async def test_relayedCommandInputIsChecked(self) -> None:
        """
        A command relayed to another SP gets the answer it would get there
        (404, 422), never a 5xx: input PB cannot carry (a huge integer, a
        deep nesting) is refused before it is relayed, and the peer link
        survives it.
        """
        array = await self._array()
        url = "/api/v1/sps/spb/commands/"
        cases = [
            (url + "x" * 70, {}, 404),
            (url + "echo", {"params": {"message": 10**400}}, 422),
            (url + "sleep", {"params": {"seconds": 10**400}}, 422),
            (url + "echo", {"params": {"message": json.loads('{"a":' * 40 + "1" + "}" * 40)}}, 422),
            (url + "echo", {"params": json.loads('{"a":' * 40 + "1" + "}" * 40)}, 422),
        ]
        for path, body, code in cases:
            answer = await array.request("proxy", "POST", path, body=body)
            self.assertEqual(answer.code, code, (path[:60], answer.body[:300]))
            self.assertEqual(answer.header("Content-Type"), "application/problem+json")
        ran = await array.request("proxy", "POST", url + "echo", body={"params": {"message": "still here"}})
        self.assertEqual((ran.code, ran.json()["stdout"], ran.json()["collected_by"]), (200, "still here\n", "spb"))
