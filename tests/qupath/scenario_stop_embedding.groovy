/*
 * Scenario for tests/test_qupath_embed_script.py: run histosic_embed.groovy in a background thread
 * with the image current there (as QuPath's script editor runs scripts), wait until it prints
 * progress, then stop it as Run > Kill running script does (Thread.interrupt). Writes
 * OUT_DIR/scenario.json: what the script printed, returned and threw.
 */
import com.google.gson.GsonBuilder
import qupath.lib.scripting.QP

def printed = new StringWriter()
def outcome = [:]
def worker = new Thread({
    QP.setBatchProjectAndImage(null, imageData)
    try {
        outcome.result = String.valueOf(runScript(System.getenv('QUPATH_TEST_ARGS').split(' ') as List, printed))
    } catch (Throwable e) {
        outcome.error = e.getClass().getName() + ': ' + e.getMessage()
    }
} as Runnable, 'script')
worker.start()
long deadline = System.currentTimeMillis() + 120000
while (!(printed.toString() =~ /[1-9]\d* \/ \d+ patches/) && worker.isAlive() && System.currentTimeMillis() < deadline) {
    Thread.sleep(20)
}
outcome.interruptedAt = printed.toString()
worker.interrupt()
worker.join(60000)
outcome.alive = worker.isAlive()
outcome.printed = printed.toString()
new File(outDir, 'scenario.json').setText(new GsonBuilder().create().toJson(outcome), 'UTF-8')
