// The registrar's flow through the generated Kotlin bindings of crvs-mobile,
// on the JVM (JNA), against a real crvs-server process. Run by run.sh; the
// same flow as tests/python/flow.py. Environment:
//
//   CRVS_SERVER_URL  base URL of the running server
//   CRVS_TOKEN       a one-time enrolment token for commune 171003
//   CRVS_WORK_DIR    an empty folder for the tablet store
//   CRVS_FIXTURES    the fixtures folder
//
// On success the last line on stdout is {"record_id":…,"kidc":…}.

package kh.gov.crvs.flow

import java.io.File
import kh.gov.crvs.CrvsException
import kh.gov.crvs.RecordStatus
import kh.gov.crvs.Registrar
import kh.gov.crvs.SyncPhase
import kh.gov.crvs.SyncProgress
import kh.gov.crvs.SyncStep
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking

const val PASSPHRASE = "a long passphrase the registrar chose"
const val NEW_PASSPHRASE = "rice fields after the monsoon rains"
const val COMMUNE = "171003"

// The staff's PINs, set on the server's roster before enrolment (run.sh):
// "clerk-01=PIN,clerk-02=PIN,...".
val PIN: Map<String, String> = System.getenv("CRVS_STAFF_PINS").split(",").associate {
    val (id, pin) = it.split("=", limit = 2)
    id to pin
}
var checks = 0

fun check(condition: Boolean, what: () -> String) {
    if (!condition) throw AssertionError(what())
    checks++
}

/** Runs [call] and returns the CrvsException it throws, which must be a [T]. */
inline fun <reified T : CrvsException> expectError(call: () -> Unit): T {
    try {
        call()
    } catch (e: CrvsException) {
        check(e is T) { "expected ${T::class.simpleName}, got ${e::class.simpleName}: ${e.message}" }
        return e as T
    }
    throw AssertionError("expected ${T::class.simpleName}, but the call succeeded")
}

/** DESIGN.md: ten digits; d10 = (11 - S mod 11) mod 11 with S = Σ (11 - i)·d_i. */
fun kidcIsValid(kidc: String?): Boolean {
    if (kidc == null || kidc.length != 10 || !kidc.all { it in '0'..'9' }) return false
    val d = kidc.map { it - '0' }
    val s = (1..9).sumOf { i -> (11 - i) * d[i - 1] }
    return d[9] == (11 - s % 11) % 11
}

/** A top-level string field of the record JSON (the values checked here are never personal data). */
fun field(json: String, name: String): String? =
    Regex("\"$name\":\"([^\"]*)\"").find(json)?.groupValues?.get(1)

class Recorder : SyncProgress {
    val steps = mutableListOf<SyncStep>()

    override fun onStep(step: SyncStep): Boolean {
        steps.add(step)
        return true
    }
}

class StopAtOnce : SyncProgress {
    override fun onStep(step: SyncStep): Boolean = false
}

/** A buggy progress bar: throws as soon as pushing starts. */
class Throws : SyncProgress {
    @Volatile var raised = false

    override fun onStep(step: SyncStep): Boolean {
        if (step.phase == SyncPhase.PUSHING) {
            raised = true
            throw IllegalStateException("the progress bar crashed")
        }
        return true
    }
}

fun flow() {
    val store = File(System.getenv("CRVS_WORK_DIR"), "tablet").path
    val fixtures = File(System.getenv("CRVS_FIXTURES"))
    val birth = File(fixtures, "birth-sok-dara.json").readText()
    val invalid = File(fixtures, "birth-invalid.json").readText()

    // The store: created once, then opened with the passphrase.
    Registrar.init(store, PASSPHRASE, COMMUNE).close()
    expectError<CrvsException.AlreadyInitialized> { Registrar.init(store, PASSPHRASE, COMMUNE) }
    expectError<CrvsException.WrongPassphrase> { Registrar.open(store, "not the passphrase") }
    // A weak passphrase is refused at init, its reason does not repeat it.
    val weak = expectError<CrvsException.WeakPassphrase> {
        Registrar.init(File(System.getenv("CRVS_WORK_DIR"), "weak").path, "letmein123", COMMUNE)
    }
    check(weak.reason.isNotEmpty() && "letmein123" !in weak.reason) { "the weak passphrase's reason" }
    // A passphrase change: afterwards only the new one opens; then back.
    Registrar.open(store, PASSPHRASE).use { it.changePassphrase(PASSPHRASE, NEW_PASSPHRASE) }
    expectError<CrvsException.WrongPassphrase> { Registrar.open(store, PASSPHRASE) }
    Registrar.open(store, NEW_PASSPHRASE).use { it.changePassphrase(NEW_PASSPHRASE, PASSPHRASE) }
    Registrar.open(store, PASSPHRASE).use { registrar ->
        expectError<CrvsException.NotEnrolled> { runBlocking { registrar.sync(Recorder()) } }
        // A CA that is not a PEM certificate is refused before anything is sent.
        expectError<CrvsException.InvalidInput> {
            registrar.enroll(System.getenv("CRVS_SERVER_URL"), System.getenv("CRVS_TOKEN"), "not a certificate")
        }
        // No CA (null): the server's certificate, if any, must chain to a web root.
        val enrollment = registrar.enroll(System.getenv("CRVS_SERVER_URL"), System.getenv("CRVS_TOKEN"), null)
        check(enrollment.office == COMMUNE) { "enrolled for office ${enrollment.office}" }

        // The office's roster came with the enrolment: staff prove who they
        // are with their own PIN, and act in their roles.
        check(registrar.rosterJson().contains("\"enforced\":true")) { "the roster is in force" }
        check("argon2" !in registrar.rosterJson()) { "no PIN hash in the roster's JSON" }
        val noPin = expectError<CrvsException.Staff> { registrar.registerBirth(birth, "clerk-01", null) }
        check(noPin.code == "pin_required") { "a PIN is required: ${noPin.code}" }
        val wrongPin = expectError<CrvsException.Staff> { registrar.registerBirth(birth, "clerk-01", "999999") }
        check(wrongPin.code == "wrong_pin" && wrongPin.triesLeft == 4u) { "a wrong PIN: ${wrongPin.code}" }
        check("999999" !in wrongPin.reason) { "the PIN is never repeated" }
        check(Regex("\"record_id\"").findAll(registrar.listJson()).count() == 0) { "nothing stored" }

        // A clerk registers the fixture birth; an invalid one names its fields.
        val id = registrar.registerBirth(birth, "clerk-01", PIN["clerk-01"])
        val invalidErr = expectError<CrvsException.InvalidRecord> { registrar.registerBirth(invalid, "clerk-01", PIN["clerk-01"]) }
        val fields = invalidErr.problems.map { it.field }
        check(fields.size >= 2 && "child.family_name" in fields) { "problems named $fields" }
        check(Regex("\"record_id\"").findAll(registrar.listJson()).count() == 1) { "the invalid birth stored nothing" }

        // The clerk may not verify their own record; nothing changes.
        val same = expectError<CrvsException.NotAllowed> { registrar.verify(id, "clerk-01", PIN["clerk-01"]) }
        check(same.reason.isNotBlank()) { "NotAllowed carries a reason" }
        check(field(registrar.recordJson(id), "status") == "submitted") { "still submitted" }
        expectError<CrvsException.NotFound> { registrar.verify("01234567-89ab-7def-8123-456789abcdef", "clerk-02", PIN["clerk-02"]) }
        expectError<CrvsException.InvalidInput> { registrar.verify("not-a-uuid", "clerk-02", PIN["clerk-02"]) }

        // Only a registrar approves.
        val notRegistrar = expectError<CrvsException.Staff> { registrar.approve(id, "clerk-02", PIN["clerk-02"]) }
        check(notRegistrar.code == "role_missing") { "a clerk does not approve: ${notRegistrar.code}" }

        // A second staff member verifies, the registrar approves.
        check(registrar.verify(id, "clerk-02", PIN["clerk-02"]) == RecordStatus.VERIFIED) { "verified" }
        check(registrar.approve(id, "registrar-01", PIN["registrar-01"]) == RecordStatus.APPROVED) { "approved" }

        runBlocking {
            // A progress callback that asks to stop: a clean, cancelled report.
            val stopped = registrar.sync(StopAtOnce())
            check(stopped.cancelled && stopped.pushed == 0uL) { "cancelled report: $stopped" }

            // A progress callback that throws: the sync fails, the store is intact.
            val throws = Throws()
            expectError<CrvsException.CallbackFailed> { registrar.sync(throws) }
            check(throws.raised) { "the callback threw" }
            val pending = registrar.recordJson(id)
            check(field(pending, "kidc") == null && field(pending, "sync_state") == "pending") { "nothing pushed yet" }

            // The next sync completes: pushed, acknowledged, KIdC received.
            val recorder = Recorder()
            val report = registrar.sync(recorder)
            check(!report.cancelled) { "not cancelled" }
            check(report.pushed == 1uL && report.kidcsReceived == 1uL) { "report: $report" }
            check(report.pending == 0uL && report.recordsPending == 0uL) { "nothing pending: $report" }
            val phases = recorder.steps.map { it.phase }
            check(phases.first() == SyncPhase.PREPARING && phases.last() == SyncPhase.DONE) { "phases $phases" }
            val pushing = recorder.steps.filter { it.phase == SyncPhase.PUSHING }
            check(pushing.isNotEmpty() && pushing[0].pushed == 0uL && pushing[0].total == 1uL) { "pushing $pushing" }
            val last = recorder.steps.last()
            check(last.pushed == 1uL && last.total == 1uL && last.pulled == 1uL) { "last step $last" }
        }

        // The record, as `crvs show --json` prints it, now has a valid KIdC.
        val shown = registrar.recordJson(id)
        check(field(shown, "record_id") == id) { "the same record" }
        check(field(shown, "status") == "registered") { "status ${field(shown, "status")}" }
        check(field(shown, "sync_state") == "synced") { "sync state ${field(shown, "sync_state")}" }
        val kidc = field(shown, "kidc")
        check(kidcIsValid(kidc)) { "a valid KIdC, got $kidc" }
        check(kidc!!.startsWith("1")) { "category 1: the parents are Khmer" }
        check(field(registrar.listJson(), "kidc") == kidc) { "the list shows the KIdC" }
        check(registrar.check() == 1uL) { "check counts the one record" }
        val repair = registrar.repair("support-1")
        check(repair.repaired.isEmpty() && repair.unrecoverable.isEmpty()) { "nothing to repair: $repair" }

        // A death of the registered child (by KIdC), and an amendment of
        // the birth: each verified and approved, registered with its number.
        val death = java.io.File(fixtures, "death-by-kidc.json").readText().replace("1000000001", kidc)
        val amendment = java.io.File(fixtures, "amendment-add-given-name.json").readText()
        val noReason = java.io.File(fixtures, "amendment-no-reason.json").readText()
        val deathId = registrar.registerEvent(death, "clerk-01", PIN["clerk-01"])
        check(registrar.verify(deathId, "clerk-02", PIN["clerk-02"]) == RecordStatus.VERIFIED) { "death verified" }
        check(registrar.approve(deathId, "registrar-01", PIN["registrar-01"]) == RecordStatus.APPROVED) { "death approved" }
        val noReasonErr = expectError<CrvsException.InvalidRecord> { registrar.amend(id, noReason, "clerk-01", PIN["clerk-01"]) }
        check(noReasonErr.problems.any { it.field == "reason" }) { "the missing reason is named" }
        val amendmentId = registrar.amend(id, amendment, "clerk-01", PIN["clerk-01"])
        check(amendmentId != id) { "an amendment is a record of its own" }
        expectError<CrvsException.NotAllowed> { registrar.verify(amendmentId, "clerk-01", PIN["clerk-01"]) }
        registrar.verify(amendmentId, "clerk-02", PIN["clerk-02"])
        registrar.approve(amendmentId, "registrar-01", PIN["registrar-01"])
        runBlocking {
            val report = registrar.sync(Recorder())
            check(report.pending == 0uL) { "death and amendment pushed: $report" }
        }
        check(field(registrar.recordJson(id), "status") == "registered") { "the birth stays registered" }
        // (The birth's history names the amendment's number first: only
        // the two new records are read by `field`.)
        val numbers = listOf(deathId, amendmentId).map { rid ->
            val r = registrar.recordJson(rid)
            check(field(r, "status") == "registered") { "registered: ${field(r, "status")}" }
            field(r, "registration_number")
        }.toSet()
        check(numbers.size == 2 && null !in numbers) { "two new registration numbers: $numbers" }
        val birthNow = registrar.recordJson(id)
        check(field(birthNow, "kidc") == kidc) { "the amendment keeps the KIdC" }
        check(birthNow.contains("\"given_name_latin\":\"SREYPOV\"")) { "the amended given name" }
        check(birthNow.contains("\"amendment_id\":\"$amendmentId\"")) { "the amendment in the history" }

        System.err.println("$checks passed, 0 failed")
        println("{\"record_id\":\"$id\",\"kidc\":\"$kidc\",\"device_id\":\"${enrollment.deviceId}\"}")
    }
}

fun main() {
    try {
        flow()
    } catch (e: Throwable) {
        System.err.println("FAILED: $e")
        e.printStackTrace()
        exitProcess(1)
    }
    // JNA's and the coroutines' threads must not keep the JVM alive.
    exitProcess(0)
}
