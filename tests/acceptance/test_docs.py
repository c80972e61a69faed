"""The docs stay true to the code, and say so in CI when they stop being.

What is checked, and against what (never against a copy of the docs' own lists):
- every name in ``statemachine.__all__`` and ``statemachine.testing.__all__`` appears in
  docs/reference/api.md;
- the tree of errors drawn in the docstring of ``statemachine.errors`` and in the reference's
  Errors section is one tree, and it is the class hierarchy; every error class has a docstring;
  the reference's table of error fields lists what each error carries and takes;
- every command of the `statemachine` CLI (``statemachine._cli.cli.commands``) has its section in
  docs/reference/cli.md, naming each of its options, and every section there is a real command;
- every table and column of ``statemachine._schema.metadata`` is in docs/reference/schema.md, under
  its table, and so is every workflow status;
- the history kinds the library writes (found by grepping statemachine/ for ``kind="..."``) are
  exactly the ones the schema reference's table of kinds lists;
- every relative link in README.md and docs/ points to a file that exists (and to a heading that
  exists, when it names one);
- the Python the how-to guides quote is, line for line, code from machines/ or tests/ (sketches,
  which elide with ``...``, excepted), and the examples they quote from tests/docs_examples.py
  run as the guides say, on every backend.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, select

import statemachine
from statemachine import Client, Store, Worker, errors, testing
from statemachine import _schema as schema
from statemachine._cli import cli
from statemachine._records import HistoryKind
from statemachine.testing import FakeClock
from tests.claims import ClaimLog
from tests.docs_examples import (
    MONTHLY_BILLING,
    Accounts,
    BillingBatch,
    BillingDone,
    BillingDue,
    CustomerBilling,
    Invoiced,
    OnTrial,
    PlanChosen,
    Purged,
    Subscribed,
    Trial,
    TrialRequested,
)
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
REFERENCE = ROOT / "docs" / "reference"
EXAMPLE_ID = "1e0f5b8a-7c2d-4e3f-9a1b-2c3d4e5f6a7b"  # the id the docs' SQL uses


# -- reading Markdown ----------------------------------------------------------------------------

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def prose(text: str) -> str:
    """`text` without its fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    return FENCE.sub("", text)


def sections(text: str, level: int) -> dict[str, str]:
    """The body of each heading of exactly `level`, by heading text, up to the next heading of
    that level or higher; code blocks are kept in the bodies."""
    marks = [m for m in re.finditer(r"^(#+) (.*)$", text, re.M)
             if not _in_code(text, m.start())]
    found: dict[str, str] = {}
    for n, m in enumerate(marks):
        if len(m.group(1)) != level:
            continue
        end = next((o.start() for o in marks[n + 1:] if len(o.group(1)) <= level), len(text))
        found[m.group(2).strip()] = text[m.end():end]
    return found


def _in_code(text: str, pos: int) -> bool:
    return any(f.start() <= pos < f.end() for f in FENCE.finditer(text))


def table_keys(text: str) -> set[str]:
    """The first cells of the Markdown table rows in `text` that start with a code span."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.M))


def slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens, and
    ``-1``, ``-2``... for repeats."""
    base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    count = seen.get(base, 0)
    seen[base] = count + 1
    return base if count == 0 else f"{base}-{count}"


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    return {slug(h, seen) for h in re.findall(r"^#+ (.*)$", prose(read(path)), re.M)}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


API = read(REFERENCE / "api.md")
CLI = read(REFERENCE / "cli.md")
SCHEMA = read(REFERENCE / "schema.md")


# -- the reference pages -------------------------------------------------------------------------

def mentions(text: str, name: str) -> bool:
    """Whether `text` names `name` in a code span (`` `name` ``, `` `name(...)` ``) or as a word
    in a code block (the tree of errors)."""
    word = rf"(?<![\w.]){re.escape(name)}(?!\w)"
    return bool(re.search(rf"`{re.escape(name)}(?!\w)", text)) or any(
        re.search(word, block) for block in FENCE.findall(text))


@pytest.mark.parametrize("name", sorted({*statemachine.__all__, *testing.__all__}))
def test_every_public_name_is_in_the_api_reference(name: str) -> None:
    assert mentions(API, name), f"docs/reference/api.md does not mention `{name}`"


# -- the errors ----------------------------------------------------------------------------------

TREE_LINE = re.compile(r"^(?P<indent>(?:[│ ] {3}|[├└]── )*)(?P<name>[A-Z]\w*)(?: +(?P<what>.+))?$")


def error_tree(block: str) -> list[tuple[str, str | None, str]]:
    """(class, parent, description) for each line of a drawn tree of errors, in order."""
    tree: list[tuple[str, str | None, str]] = []
    path: list[str] = []
    for line in block.strip("\n").splitlines():
        m = TREE_LINE.match(line)
        assert m, f"not a line of the errors tree: {line!r}"
        depth = len(m.group("indent")) // 4
        del path[depth:]
        tree.append((m.group("name"), path[-1] if path else None, m.group("what") or ""))
        path.append(m.group("name"))
    return tree


def docstring_tree() -> str:
    """The tree drawn in the docstring of statemachine.errors (its indented lines)."""
    doc = errors.__doc__ or ""
    block = re.search(r"\n\n((?:    .*\n)+)", doc)
    assert block, "statemachine/errors.py: its docstring draws no tree of errors"
    return "\n".join(line[4:] for line in block.group(1).splitlines())


def reference_tree() -> str:
    body = sections(API, 2)["Errors"]
    block = re.search(r"^```text\n(.*?)^```", body, re.M | re.S)
    assert block, "docs/reference/api.md: the Errors section draws no tree of errors"
    return block.group(1)


LIBRARY_ERRORS = [getattr(errors, n) for n in errors.__all__
                  if issubclass(getattr(errors, n), errors.StateMachineError)]


def test_the_errors_tree_is_the_same_in_the_docstring_and_the_reference() -> None:
    assert error_tree(reference_tree()) == error_tree(docstring_tree())


def test_the_errors_tree_is_the_class_hierarchy() -> None:
    tree = error_tree(reference_tree())
    assert sorted(name for name, _, _ in tree) == sorted(c.__name__ for c in LIBRARY_ERRORS)
    for name, parent, _ in tree:
        cls = getattr(errors, name)
        bases = [b.__name__ for b in cls.__bases__ if issubclass(b, errors.StateMachineError)]
        assert bases == ([parent] if parent else []), f"{name}: drawn under {parent}, is {bases}"


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_class_has_a_docstring(name: str) -> None:
    assert (vars(getattr(errors, name)).get("__doc__") or "").strip(), (
        f"statemachine.errors.{name} has no docstring of its own")


def documented_error_fields() -> dict[str, set[str]]:
    """The fields table of the Errors section: error class -> the fields its row lists."""
    body = sections(API, 2)["Errors"]
    fields: dict[str, set[str]] = {}
    for names, listed in re.findall(r"^\| (`[^|]*`[^|]*) \| ([^|]*) \|$", body, re.M):
        for name in re.findall(r"`(\w+)`", names):
            fields.setdefault(name, set()).update(re.findall(r"`(\w+)`", listed))
    return fields


@pytest.mark.parametrize("cls", LIBRARY_ERRORS, ids=lambda c: c.__name__)
def test_the_reference_lists_the_fields_of_each_error(cls: type[Exception]) -> None:
    """A row names a class and the fields it adds; every class has those of its ancestors."""
    table = documented_error_fields()
    assert table, "docs/reference/api.md: no table of error fields"
    assert set(table) <= {c.__name__ for c in LIBRARY_ERRORS}, set(table)
    documented = set().union(*(table.get(c.__name__, set()) for c in cls.__mro__))
    error = cls()
    for field in sorted(documented):
        assert hasattr(error, field), f"{cls.__name__} has no attribute {field}"
        assert getattr(error, field) is None
    init = inspect.signature(cls.__init__).parameters.values()
    takes = {p.name for p in init if p.kind is p.KEYWORD_ONLY}
    assert takes <= documented, f"{cls.__name__} takes {takes - documented}, undocumented"


def cli_sections() -> dict[str, str]:
    """The command sections of cli.md by command name (``### `name ARGS...` ``)."""
    return {re.match(r"`([\w-]+)", heading).group(1): body  # type: ignore[union-attr]
            for heading, body in sections(CLI, 3).items() if heading.startswith("`")}


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_cli_command_and_option_is_in_the_cli_reference(command: str) -> None:
    found = cli_sections()
    assert command in found, f"docs/reference/cli.md has no section for `{command}`"
    heading = next(h for h in sections(CLI, 3) if h.startswith(f"`{command}"))
    documented = heading + found[command]
    for param in cli.commands[command].params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("--"):
                assert re.search(rf"{re.escape(opt)}(?![\w-])", documented), (
                    f"docs/reference/cli.md: `{command}` does not document {opt}")


def test_the_cli_reference_documents_no_command_that_does_not_exist() -> None:
    assert set(cli_sections()) <= set(cli.commands)
    global_options = sections(CLI, 2)["Global options"]
    for param in cli.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert f"`{opt}" in global_options, opt


@pytest.mark.parametrize("table", sorted(schema.metadata.tables))
def test_every_table_and_column_is_in_the_schema_reference(table: str) -> None:
    mine = "".join(body for heading, body in sections(SCHEMA, 2).items()
                   if f"`{table}`" in heading)
    assert mine, f"docs/reference/schema.md has no section whose heading names `{table}`"
    missing = [c.name for c in schema.metadata.tables[table].columns
               if c.name not in table_keys(mine)]
    assert not missing, f"docs/reference/schema.md: {table} lacks the columns {missing}"


def test_every_status_is_in_the_schema_reference() -> None:
    assert table_keys(sections(SCHEMA, 3)["Statuses"]) == set(schema.STATUSES)


def kinds_written_by_the_library() -> set[str]:
    """Every history kind the library writes: the `HistoryKind` literal, which mypy holds every
    `Change(kind=...)` to, plus any ``kind="..."`` written into history directly by the store."""
    source = "\n".join(read(p) for p in sorted((ROOT / "statemachine" / "_store").rglob("*.py")))
    return set(typing.get_args(HistoryKind)) | set(re.findall(r'\bkind="([a-z_]+)"', source))


def test_the_history_kinds_in_the_schema_reference_are_the_ones_written() -> None:
    written = kinds_written_by_the_library()
    assert {"start", "transition", "retry", "rerun", "in_doubt"} <= written  # the grep works
    documented = table_keys(sections(SCHEMA, 3)["History kinds"])
    assert written - documented == set(), "written by the library, missing from schema.md"
    assert documented - written == set(), "in schema.md, but the library never writes them"


# -- links ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_point_to_files_and_headings_that_exist(doc: Path) -> None:
    text = re.sub(r"`[^`\n]*`", "", prose(read(doc)))  # inline code is not a link either
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        file, _, fragment = link.partition("#")
        target = (doc.parent / file).resolve() if file else doc
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{link} (no heading #{fragment} in {target.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


# -- code quoted in the guides -------------------------------------------------------------------

GUIDES = ["docs/how-to/waiting.md", "docs/how-to/cron-batches.md", "docs/how-to/rate-limits.md",
          "docs/how-to/upgrading-state-classes.md", "docs/how-to/side-effects.md",
          "docs/how-to/property-testing.md", "docs/how-to/async.md"]
SOURCES = {p: read(p) for p in sorted([*(ROOT / "machines").rglob("*.py"),
                                       *(ROOT / "tests").rglob("*.py")])}


def is_sketch(block: str) -> bool:
    """A sketch elides with ``...`` (a line of its own, or a body ``: ...``): not a quote."""
    return any(line.strip() == "..." or line.rstrip().endswith(": ...")
               for line in block.splitlines())


def quoted_from(block: str) -> Path | None:
    """The file of machines/ or tests/ that holds `block` verbatim (at any indentation)."""
    lines = block.rstrip("\n").split("\n")
    for path, source in SOURCES.items():
        for indent in ("", "    ", "        "):
            if "\n".join(indent + line if line.strip() else "" for line in lines) in source:
                return path
    return None


QUOTES = [(guide, n, block) for guide in GUIDES if (ROOT / guide).exists()
          for n, block in enumerate(python_blocks(read(ROOT / guide))) if not is_sketch(block)]


@pytest.mark.parametrize("guide", GUIDES)
def test_the_guides_exist_and_quote_code(guide: str) -> None:
    assert (ROOT / guide).exists()
    assert any(g == guide for g, _, _ in QUOTES), f"{guide} quotes no tested code"


@pytest.mark.parametrize(("guide", "n", "block"), QUOTES,
                         ids=[f"{g.rsplit('/', 1)[-1]}-{n}" for g, n, _ in QUOTES])
def test_code_quoted_in_the_guides_is_the_tested_code(guide: str, n: int, block: str) -> None:
    assert quoted_from(block) is not None, (
        f"{guide}, python block {n}, is not verbatim in machines/ or tests/:\n{block}")


def test_side_effects_quotes_the_checkout_reconcile_as_it_is() -> None:
    blocks = [b for b in python_blocks(read(ROOT / "docs/how-to/side-effects.md"))
              if "def find_charge" in b]
    assert len(blocks) == 1
    assert quoted_from(blocks[0]) == ROOT / "machines" / "checkout" / "machine.py"
    assert "return rerun()" in blocks[0]


# -- the examples the guides quote, run --------------------------------------------------------

FAST: dict[str, Any] = dict(concurrency=8, poll_interval=0.05)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 15, 9, 0, tzinfo=UTC))


@pytest.fixture
def faked(db_url: str, clock: FakeClock) -> Iterator[Store]:
    """A store on the test's database whose time is `clock`."""
    store = Store(db_url, clock=clock)
    yield store
    store.dispose()


def in_state(client: Client, wid: uuid.UUID, state: str, status: str) -> bool:
    info = client.get(wid)
    return (info.state_name, info.status) == (state, status)


def test_trial_ends_with_the_event_it_waits_for(faked: Store, clock: FakeClock) -> None:
    accounts = Accounts()
    client = Client(faked, [Trial])
    with Worker(faked, [Trial(accounts)], **FAST):
        wid = client.start(Trial, TrialRequested("acct_1"))
        wait_until(lambda: in_state(client, wid, "OnTrial", "waiting"), "the trial to wait")
        assert client.get(wid).state == OnTrial("acct_1", clock.now() + timedelta(days=14))
        assert client.get(wid).wake_at == clock.now() + timedelta(days=14)  # the deadline
        client.send(wid, PlanChosen("pro"))
        info = client.wait(wid, timeout=60)
    assert info.state == Subscribed("acct_1", "pro")
    assert [h.kind for h in client.history(wid)] == ["start", "transition", "transition"]
    assert (client.history(wid)[-1].cause or "").startswith("event PlanChosen ")


def test_trial_times_out_then_sleeps_thirty_days(faked: Store, clock: FakeClock) -> None:
    accounts = Accounts()
    client = Client(faked, [Trial])
    with Worker(faked, [Trial(accounts)], **FAST):
        wid = client.start(Trial, TrialRequested("acct_2"))
        wait_until(lambda: in_state(client, wid, "OnTrial", "waiting"), "the trial to wait")
        clock.advance(days=14)
        wait_until(lambda: in_state(client, wid, "PurgeDue", "ready"), "the 30-day timer")
        sleeping = client.get(wid)
        assert sleeping.wake_at == clock.now() + timedelta(days=30)
        assert sleeping.lease_owner is None  # asleep in the database, held by no worker
        clock.advance(days=30)
        info = client.wait(wid, timeout=60)
    assert info.state == Purged("acct_2")
    assert accounts.purged == ["acct_2"]
    assert [(h.kind, h.to_state) for h in client.history(wid)] == [
        ("start", "TrialRequested"), ("transition", "OnTrial"), ("transition", "TrialExpired"),
        ("transition", "PurgeDue"), ("transition", "Purged")]
    assert (client.history(wid)[2].cause or "").startswith("timeout at ")
    assert len(accounts.mails) == 2  # the welcome, and the end of the trial


def test_closing_the_account_cancels_through_the_cancel_route(faked: Store) -> None:
    accounts = Accounts()
    client = Client(faked, [Trial])
    with Worker(faked, [Trial(accounts)], **FAST):
        wid = client.start(Trial, TrialRequested("acct_3"))
        wait_until(lambda: in_state(client, wid, "OnTrial", "waiting"), "the trial to wait")
        assert client.cancel(wid, reason="support: ticket 7, customer closed the account") \
            == "requested"
        info = client.wait(wid, timeout=60)
    assert (info.status, info.state) == ("done", Purged("acct_3"))
    assert accounts.purged == ["acct_3"]
    cancel = next(h for h in client.history(wid) if h.kind == "cancel")
    assert (cancel.from_state, cancel.to_state, cancel.cause) == (
        "OnTrial", "PurgeDue", "support: ticket 7, customer closed the account")


def test_the_guides_sql_insert_sends_an_event(faked: Store, db_url: str) -> None:
    [insert] = [b for b in re.findall(r"^```sql\n(.*?)^```", read(ROOT / "docs/how-to/waiting.md"),
                                      re.M | re.S) if "INSERT INTO sm_events" in b]
    client = Client(faked, [Trial])
    engine: Engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with Worker(faked, [Trial()], **FAST):
            wid = client.start(Trial, TrialRequested("acct_4"))
            wait_until(lambda: in_state(client, wid, "OnTrial", "waiting"), "the trial to wait")
            with engine.connect() as conn:
                conn.exec_driver_sql(insert.replace(EXAMPLE_ID, str(wid)))
            info = client.wait(wid, timeout=60)
    finally:
        engine.dispose()
    assert info.state == Subscribed("acct_4", "pro")


class PaymentProvider:
    """The payment provider's invoicing API, as an httpx mock transport: it answers the first
    request for `throttled` with 429 and ``Retry-After: 1``, and every request for `closed` with
    a 422; it notes how many requests it serves at once."""

    def __init__(self, throttled: str, closed: str) -> None:
        self.throttled, self.closed = throttled, closed
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0
        self.requests: list[tuple[str, str]] = []  # (customer, idempotency key)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        customer = body["customer"]
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            first = all(c != customer for c, _ in self.requests)
            self.requests.append((customer, request.headers["Idempotency-Key"]))
        try:
            time.sleep(0.05)
            if customer == self.throttled and first:
                return httpx.Response(429, headers={"Retry-After": "1"})
            if customer == self.closed:
                return httpx.Response(422, text="account closed")
            return httpx.Response(201, json={"id": f"in_{customer}_{body['period']}"})
        finally:
            with self.lock:
                self.in_flight -= 1


def test_billing_batch_bills_every_customer_under_the_limit(store: Store) -> None:
    customers = [f"cus_{n:02d}" for n in range(24)]
    provider = PaymentProvider(throttled="cus_03", closed="cus_07")
    http = httpx.Client(transport=httpx.MockTransport(provider))
    billing = CustomerBilling("https://payments.example", http)
    client = Client(store, [BillingBatch, CustomerBilling])
    with Worker(store, [BillingBatch(lambda period: customers), billing], **FAST):
        wid = client.start(BillingBatch, BillingDue("2030-01"))
        info = client.wait(wid, timeout=60)
    assert info.state == BillingDone("2030-01", billed=23, failed=("cus_07",))
    assert provider.peak <= 4  # PAYMENTS_API: 4 at once, across the worker's 8 threads
    children = {c.data["customer_id"]: c for c in store.sql.children_of(wid)}
    assert len(children) == 24
    assert client.get(children["cus_00"].id).state == Invoiced("cus_00", "2030-01",
                                                              "in_cus_00_2030-01")
    # The 429 was not a failed attempt: rescheduled, then the same transition (same key) again.
    throttled = client.history(children["cus_03"].id)
    assert [(h.kind, h.attempt) for h in throttled] == [
        ("start", 0), ("rescheduled", 1), ("transition", 1)]
    keys = [k for c, k in provider.requests if c == "cus_03"]
    assert len(keys) == 2
    assert len(set(keys)) == 1
    # The 422 was permanent: the child is parked, and the batch reports it.
    closed = client.get(children["cus_07"].id)
    assert closed.status == "failed"
    assert "PermanentError: 422 account closed" in (closed.last_error or "")


def test_the_monthly_schedule_starts_one_batch_per_tick(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(datetime(2030, 1, 31, 12, 0, tzinfo=UTC))
    store = Store(db_url, clock=clock)
    claims = ClaimLog(store, monkeypatch)
    try:
        client = Client(store, [BillingBatch])
        workers = [Worker(store, [BillingBatch(), CustomerBilling()], schedules=[MONTHLY_BILLING],
                          **FAST) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            # First seen now: the schedule starts from this moment, nothing before it.
            wait_until(lambda: MONTHLY_BILLING.name in store.sql.schedule_ticks(),
                       "the first sweep")
            clock.set(datetime(2030, 2, 1, 5, 0, 30, tzinfo=UTC))  # 06:00:30 in Berlin
            key = "schedule:monthly-billing:2030-02-01T05:00:00+00:00"
            batch = wait_until(lambda: [i for i in client.list(machine="billing_batch")
                                      if i.key == key], "the tick's batch")
            info = client.wait(batch[0].id, timeout=60)
            claims.sweeps_since(claims.mark(), threads=len(workers))  # each swept it again
        finally:
            for w in workers:
                w.stop()
        assert len(client.list(machine="billing_batch")) == 1
        assert info.state == BillingDone("2030-01", billed=0, failed=())
        assert client.history(info.id)[0].cause == "schedule monthly-billing"
        with store.connect() as conn:
            last = conn.execute(select(schema.schedules.c.last_tick)).scalar_one()
        assert last == datetime(2030, 2, 1, 5, 0, tzinfo=UTC)
    finally:
        store.dispose()


def test_cancelling_in_a_state_without_a_route_ends_the_workflow_at_once(faked: Store) -> None:
    """The cancel route handles `OnTrial | TrialExpired | PurgeDue`; in any other state a
    cancel ends the workflow `cancelled` (the guide says so)."""
    client = Client(faked, [Trial])
    wid = client.start(Trial, TrialRequested("acct_5"))  # no worker: it stays TrialRequested
    assert client.cancel(wid, reason="duplicate signup") == "cancelled"
    info = client.get(wid)
    assert (info.status, info.state_name) == ("cancelled", "TrialRequested")
    assert client.history(wid)[-1].cause == "duplicate signup"
