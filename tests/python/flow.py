"""The registrar's flow through the generated Python bindings of crvs-mobile.

Run by `tests/mobile_python.rs` (part of `cargo test --workspace`), against
a real `crvs-server` process. Standard library only. Environment:

    CRVS_BINDINGS_DIR  folder holding crvs_mobile.py and libcrvs_mobile.so
    CRVS_SERVER_URL    base URL of the running server
    CRVS_TOKEN         a one-time enrolment token for commune 171003
    CRVS_WORK_DIR      an empty folder for the tablet store
    CRVS_FIXTURES      the fixtures folder

On success the last line on stdout is one JSON object:
{"record_id": ..., "kidc": ..., "device_id": ...}.
"""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.environ["CRVS_BINDINGS_DIR"])

from crvs_mobile import (  # noqa: E402  (the path is set just above)
    CrvsError,
    RecordStatus,
    Registrar,
    SyncPhase,
    SyncProgress,
)

PASSPHRASE = "a long passphrase the registrar chose"
NEW_PASSPHRASE = "rice fields after the monsoon rains"
COMMUNE = "171003"
CHECKS = 0


def check(condition, what):
    """An assertion that survives `python3 -O` and says what failed."""
    global CHECKS
    if not condition:
        raise AssertionError(what)
    CHECKS += 1


def expect_error(variant, call):
    """Runs `call` and returns the CrvsError it raises, of class `variant`."""
    try:
        call()
    except CrvsError as e:
        check(isinstance(e, variant), f"expected {variant.__name__}, got {type(e).__name__}: {e}")
        return e
    raise AssertionError(f"expected {variant.__name__}, but the call succeeded")


def kidc_is_valid(kidc):
    """DESIGN.md: ten digits, S = sum((11 - i) * d_i, i = 1..9), and
    d10 = (11 - S mod 11) mod 11, never 10 (an ISBN-10 with a numeric check
    digit)."""
    if not (isinstance(kidc, str) and len(kidc) == 10 and kidc.isascii() and kidc.isdigit()):
        return False
    digits = [int(c) for c in kidc]
    s = sum((11 - i) * d for i, d in enumerate(digits[:9], start=1))
    return digits[9] == (11 - s % 11) % 11


class Recorder(SyncProgress):
    """Keeps every step; never cancels."""

    def __init__(self):
        self.steps = []

    def on_step(self, step):
        self.steps.append(step)
        return True


class StopAtOnce(SyncProgress):
    """Asks to stop at the first step."""

    def on_step(self, step):
        return False


class Throws(SyncProgress):
    """A buggy progress bar: raises as soon as pushing starts."""

    def __init__(self):
        self.raised = False

    def on_step(self, step):
        if step.phase == SyncPhase.PUSHING:
            self.raised = True
            raise ValueError("the progress bar crashed")
        return True


# The staff's PINs, set on the server's roster by the test before enrolment:
# "clerk-01=PIN,clerk-02=PIN,...".
PIN = dict(pair.split("=", 1) for pair in os.environ["CRVS_STAFF_PINS"].split(","))


def main():
    store = os.path.join(os.environ["CRVS_WORK_DIR"], "tablet")
    fixtures = os.environ["CRVS_FIXTURES"]
    with open(os.path.join(fixtures, "birth-sok-dara.json"), encoding="utf-8") as f:
        birth = f.read()
    with open(os.path.join(fixtures, "birth-invalid.json"), encoding="utf-8") as f:
        invalid = f.read()

    # The store: created once, then opened with the passphrase.
    Registrar.init(store, PASSPHRASE, COMMUNE)
    expect_error(CrvsError.AlreadyInitialized, lambda: Registrar.init(store, PASSPHRASE, COMMUNE))
    expect_error(CrvsError.WrongPassphrase, lambda: Registrar.open(store, "not the passphrase"))
    # A weak passphrase is refused at init, its reason does not repeat it.
    weak = expect_error(CrvsError.WeakPassphrase,
                        lambda: Registrar.init(os.path.join(os.environ["CRVS_WORK_DIR"], "weak"), "letmein123", COMMUNE))
    check(weak.reason and "letmein123" not in str(weak), "the weak passphrase's reason")
    # A passphrase change: afterwards only the new one opens; then back.
    Registrar.open(store, PASSPHRASE).change_passphrase(PASSPHRASE, NEW_PASSPHRASE)
    expect_error(CrvsError.WrongPassphrase, lambda: Registrar.open(store, PASSPHRASE))
    Registrar.open(store, NEW_PASSPHRASE).change_passphrase(NEW_PASSPHRASE, PASSPHRASE)
    registrar = Registrar.open(store, PASSPHRASE)

    # Not enrolled yet: a sync says so.
    try:
        asyncio.run(registrar.sync(Recorder()))
        raise AssertionError("a sync before enrolment succeeded")
    except CrvsError.NotEnrolled:
        check(True, "NotEnrolled")

    # A CA that is not a PEM certificate is refused before anything is sent.
    e = expect_error(CrvsError.InvalidInput,
                     lambda: registrar.enroll(os.environ["CRVS_SERVER_URL"], os.environ["CRVS_TOKEN"], "not a certificate"))
    check("not a PEM certificate" in str(e), "the bad CA is named")
    # No CA (None): the server's certificate, if any, must chain to a web root.
    enrollment = registrar.enroll(os.environ["CRVS_SERVER_URL"], os.environ["CRVS_TOKEN"], None)
    check(enrollment.office == COMMUNE, f"enrolled for office {enrollment.office}")

    # The office's roster came with the enrolment: staff prove who they
    # are with their own PIN, and act in their roles.
    roster = json.loads(registrar.roster_json())
    check(roster["enforced"] and len(roster["staff"]) == 3, f"the roster: {roster}")
    check("argon2" not in registrar.roster_json(), "no PIN hash in the roster's JSON")
    e = expect_error(CrvsError.Staff, lambda: registrar.register_birth(birth, "clerk-01", None))
    check(e.code == "pin_required", f"a PIN is required: {e.code}")
    e = expect_error(CrvsError.Staff, lambda: registrar.register_birth(birth, "clerk-01", "999999"))
    check(e.code == "wrong_pin" and e.tries_left == 4, f"a wrong PIN: {e.code} {e.tries_left}")
    check("999999" not in str(e), "the PIN is never repeated")
    e = expect_error(CrvsError.Staff, lambda: registrar.register_birth(birth, "nobody", "204816"))
    check(e.code == "not_on_roster", f"a stranger: {e.code}")
    check(json.loads(registrar.list_json())["records"] == [], "nothing stored by a refused staff member")

    # A clerk registers the fixture birth; an invalid one names its fields.
    record_id = registrar.register_birth(birth, "clerk-01", PIN["clerk-01"])
    e = expect_error(CrvsError.InvalidRecord, lambda: registrar.register_birth(invalid, "clerk-01", PIN["clerk-01"]))
    fields = [p.field for p in e.problems]
    check(len(fields) >= 2 and "child.family_name" in fields, f"problems named {fields}")
    check(len(json.loads(registrar.list_json())["records"]) == 1, "the invalid birth stored nothing")

    # The clerk may not verify their own record; nothing changes.
    e = expect_error(CrvsError.NotAllowed, lambda: registrar.verify(record_id, "clerk-01", PIN["clerk-01"]))
    check(e.reason, "NotAllowed carries a reason")
    check(json.loads(registrar.record_json(record_id))["status"] == "submitted", "still submitted")
    expect_error(CrvsError.NotFound, lambda: registrar.verify("01234567-89ab-7def-8123-456789abcdef", "clerk-02", PIN["clerk-02"]))
    expect_error(CrvsError.InvalidInput, lambda: registrar.verify("not-a-uuid", "clerk-02", PIN["clerk-02"]))

    # Only a registrar approves.
    e = expect_error(CrvsError.Staff, lambda: registrar.approve(record_id, "clerk-02", PIN["clerk-02"]))
    check(e.code == "role_missing", f"a clerk does not approve: {e.code}")

    # A second staff member verifies, the registrar approves.
    check(registrar.verify(record_id, "clerk-02", PIN["clerk-02"]) == RecordStatus.VERIFIED, "verified")
    check(registrar.approve(record_id, "registrar-01", PIN["registrar-01"]) == RecordStatus.APPROVED, "approved")

    # A progress callback that asks to stop: a clean, cancelled report.
    report = asyncio.run(registrar.sync(StopAtOnce()))
    check(report.cancelled and report.pushed == 0, f"cancelled report: {report}")

    # A progress callback that raises: the sync fails, the store is intact.
    throws = Throws()
    try:
        asyncio.run(registrar.sync(throws))
        raise AssertionError("a sync whose callback raised succeeded")
    except CrvsError.CallbackFailed:
        check(throws.raised, "the callback raised")
    shown = json.loads(registrar.record_json(record_id))
    check("kidc" not in shown and shown["sync_state"] == "pending", f"nothing pushed yet: {shown}")

    # The next sync completes: pushed, acknowledged, KIdC received.
    recorder = Recorder()
    report = asyncio.run(registrar.sync(recorder))
    check(not report.cancelled, "not cancelled")
    check(report.pushed == 1 and report.kidcs_received == 1, f"report: {report}")
    check(report.pending == 0 and report.records_pending == 0, f"nothing pending: {report}")
    phases = [s.phase for s in recorder.steps]
    check(phases[0] == SyncPhase.PREPARING and phases[-1] == SyncPhase.DONE, f"phases {phases}")
    pushing = [s for s in recorder.steps if s.phase == SyncPhase.PUSHING]
    check(pushing and pushing[0].pushed == 0 and pushing[0].total == 1, f"pushing steps {pushing}")
    last = recorder.steps[-1]
    check(last.pushed == last.total == 1 and last.pulled == 1, f"last step {last}")

    # The record, as `crvs show --json` prints it, now has a valid KIdC.
    shown = json.loads(registrar.record_json(record_id))
    check(shown["record_id"] == record_id, "the same record")
    check(shown["status"] == "registered", f"status {shown['status']}")
    check(shown["sync_state"] == "synced", f"sync state {shown['sync_state']}")
    kidc = shown.get("kidc")
    check(kidc_is_valid(kidc), f"a valid KIdC, got {kidc!r}")
    check(kidc[0] == "1", "category 1: the parents are Khmer")
    listed = json.loads(registrar.list_json())["records"]
    check([(r["record_id"], r.get("kidc")) for r in listed] == [(record_id, kidc)], f"list {listed}")

    # A re-opened store still has it (durable), and a further sync has nothing to do.
    del registrar
    registrar = Registrar.open(store, PASSPHRASE)
    check(json.loads(registrar.record_json(record_id))["kidc"] == kidc, "the KIdC survives a reopen")
    report = asyncio.run(registrar.sync(Recorder()))
    check(report.pushed == 0 and report.kidcs_received == 0, f"idle sync: {report}")
    # The store checks clean, and a repair of a clean store changes nothing.
    check(registrar.check() == 1, "check counts the one record")
    repair = registrar.repair("support-1")
    check(repair.repaired == [] and repair.unrecoverable == [], f"nothing to repair: {repair}")

    # A death of the registered child (by KIdC), and an amendment of the
    # birth: each verified and approved, registered with its own number.
    with open(os.path.join(fixtures, "death-by-kidc.json"), encoding="utf-8") as f:
        death = f.read().replace("1000000001", kidc)
    with open(os.path.join(fixtures, "amendment-add-given-name.json"), encoding="utf-8") as f:
        amendment = f.read()
    with open(os.path.join(fixtures, "amendment-no-reason.json"), encoding="utf-8") as f:
        no_reason = f.read()
    death_id = registrar.register_event(death, "clerk-01", PIN["clerk-01"])
    check(registrar.verify(death_id, "clerk-02", PIN["clerk-02"]) == RecordStatus.VERIFIED, "death verified")
    check(registrar.approve(death_id, "registrar-01", PIN["registrar-01"]) == RecordStatus.APPROVED, "death approved")
    e = expect_error(CrvsError.InvalidRecord, lambda: registrar.amend(record_id, no_reason, "clerk-01", PIN["clerk-01"]))
    check("reason" in [p.field for p in e.problems], f"the missing reason is named: {e.problems}")
    amendment_id = registrar.amend(record_id, amendment, "clerk-01", PIN["clerk-01"])
    check(amendment_id != record_id, "an amendment is a record of its own")
    expect_error(CrvsError.NotAllowed, lambda: registrar.verify(amendment_id, "clerk-01", PIN["clerk-01"]))
    registrar.verify(amendment_id, "clerk-02", PIN["clerk-02"])
    registrar.approve(amendment_id, "registrar-01", PIN["registrar-01"])
    report = asyncio.run(registrar.sync(Recorder()))
    check(report.pushed >= 1 and report.pending == 0, f"death and amendment pushed: {report}")
    numbers = set()
    for rid in (record_id, death_id, amendment_id):
        r = json.loads(registrar.record_json(rid))
        check(r["status"] == "registered", f"{r['kind']} registered: {r['status']}")
        numbers.add(r["registration_number"])
    check(len(numbers) == 3, f"three registration numbers: {numbers}")
    birth_now = json.loads(registrar.record_json(record_id))
    check(birth_now["kidc"] == kidc, "the amendment keeps the KIdC")
    check(birth_now["current"]["child"]["given_name_latin"] == "SREYPOV", "the amended given name")
    check(birth_now["data"]["child"]["given_name_latin"] == "DARA", "the registration as first made")
    history = birth_now["history"]
    check(len(history) == 1 and history[0]["amendment_id"] == amendment_id, f"history {history}")

    print(f"{CHECKS} passed, 0 failed", file=sys.stderr)
    print(json.dumps({"record_id": record_id, "kidc": kidc, "device_id": enrollment.device_id}))


if __name__ == "__main__":
    main()
