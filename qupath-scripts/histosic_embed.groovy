/*
 * histosic: embed the open slide on the server, in QuPath 0.5 to 0.7.
 *
 * Run this script once per slide before histosic_cluster.groovy (Automate > Shared scripts >
 * histosic_embed). It asks a running `histosic serve` to embed the open image (StartEmbedding over
 * the Connect protocol: JSON over HTTP or HTTPS), then asks for the job's progress every few
 * seconds and prints it until the embedding is done. If the slide was embedded before with the
 * same settings it says so at once. Stop it with the script editor's Run > Kill running script:
 * the server's job is then cancelled and leaves no file behind.
 *
 * The slide must lie inside one of the server's `--slide-root` folders.
 * Uses only the JDK (java.net.http) and Gson, which QuPath bundles. See qupath-scripts/README.md.
 */

import com.google.gson.GsonBuilder
import com.google.gson.JsonObject
import com.google.gson.JsonParser

import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.charset.StandardCharsets
import java.time.Duration

// ================================================================ settings: edit these
def settings = [
    serverUrl    : 'http://127.0.0.1:50052', // histosic serve's Connect address (https:// works)
    token        : '',          // the server's bearer token, if it has one
    model        : 'he-features', // a model the server lists (histosic models), e.g. resnet18
    slideMpp     : 0.0,         // level-0 microns per pixel; 0 = the image's own pixel size
    targetMpp    : 0.0,         // microns per pixel of the patches; 0 = the server's default
    patchSize    : 0,           // patch side in pixels at targetMpp; 0 = the server's default
    batchSize    : 0,           // patches per forward pass; 0 = the server's default
    overwrite    : false,       // true: embed again even when an embedding exists
    pollSeconds  : 2,           // how often to ask for the progress
]
// ================================================================ end of settings
// Overrides, for headless runs: HISTOSIC_URL and HISTOSIC_TOKEN in the environment, and
// `QuPath script -a name=value` (e.g. -a model=resnet18).

def overrides = [:]
if (System.getenv('HISTOSIC_URL')) {
    overrides.serverUrl = System.getenv('HISTOSIC_URL')
}
if (System.getenv('HISTOSIC_TOKEN')) {
    overrides.token = System.getenv('HISTOSIC_TOKEN')
}
def scriptArgs = binding.hasVariable('args') && binding.getVariable('args') != null ? binding.getVariable('args') as List : []
scriptArgs.each { a ->
    def kv = a.toString().split('=', 2)
    if (kv.length != 2 || !settings.containsKey(kv[0])) {
        throw new IllegalArgumentException("histosic: unknown argument '${a}': give name=value with a name of the settings block (${settings.keySet().join(', ')})")
    }
    overrides[kv[0]] = kv[1]
}
overrides.each { k, v ->
    def d = settings[k]
    def text = v.toString()
    if (d instanceof Boolean) {
        if (!(text.toLowerCase() in ['true', 'false'])) {
            throw new IllegalArgumentException("histosic: ${k} must be true or false, got '${v}'")
        }
        settings[k] = text.toLowerCase() == 'true'
    } else if (d instanceof Integer) {
        if (!text.isInteger()) {
            throw new IllegalArgumentException("histosic: ${k} must be a whole number, got '${v}'")
        }
        settings[k] = text as Integer
    } else if (d instanceof Number) {
        if (!text.isNumber()) {
            throw new IllegalArgumentException("histosic: ${k} must be a number, got '${v}'")
        }
        settings[k] = text as double
    } else {
        settings[k] = text
    }
}
if (!(settings.serverUrl ==~ /(?i)https?:\/\/.+/)) {
    throw new IllegalArgumentException("histosic: serverUrl must start with http:// or https://, got '${settings.serverUrl}'")
}
def baseUrl = settings.serverUrl.replaceAll('/+$', '')

// ================================================================ the image
def imageData = getCurrentImageData()
if (imageData == null) {
    throw new IllegalStateException('histosic: no image is open; open the slide first')
}
def server = imageData.getServer()
def uris = server.getURIs()
if (uris == null || uris.isEmpty()) {
    throw new IllegalStateException('histosic: the image has no file URI (is it a file on disk?)')
}
def slideUri = uris.iterator().next().toString()
def name = server.getMetadata().getName()
double slideMpp = settings.slideMpp as double
def calibration = server.getPixelCalibration()
if (slideMpp <= 0 && calibration.hasPixelSizeMicrons()) {
    slideMpp = calibration.getAveragedPixelSizeMicrons()
}

// ================================================================ talking to the server
def client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()
def gson = new GsonBuilder().create()
def call = { String rpc, JsonObject request ->
    def builder = HttpRequest.newBuilder()
            .uri(URI.create("${baseUrl}/histosic.v1.EmbeddingService/${rpc}"))
            .timeout(Duration.ofSeconds(60))
            .header('Content-Type', 'application/json')
            .POST(HttpRequest.BodyPublishers.ofString(gson.toJson(request), StandardCharsets.UTF_8))
    if (settings.token) {
        builder.header('Authorization', 'Bearer ' + settings.token)
    }
    def response
    try {
        response = client.send(builder.build(), HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8))
    } catch (javax.net.ssl.SSLException e) {
        throw new IOException("histosic: no TLS connection to ${baseUrl} (${e.getMessage()}); if the server's certificate is from your own CA, add it to QuPath's Java truststore (see qupath-scripts/README.md)")
    } catch (IOException e) {
        throw new IOException("histosic: cannot reach the server at ${baseUrl} (${e.getClass().getSimpleName()}${e.getMessage() ? ': ' + e.getMessage() : ''}); is `histosic serve` running, and is serverUrl right?")
    }
    def body
    try {
        body = JsonParser.parseString(response.body()).getAsJsonObject()
    } catch (Exception e) {
        throw new IOException("histosic: ${baseUrl} answered HTTP ${response.statusCode()} without a histosic reply; is serverUrl the Connect port of `histosic serve`?")
    }
    if (response.statusCode() != 200) {
        def code = body.has('code') ? body.get('code').getAsString() : "HTTP ${response.statusCode()}"
        def message = body.has('message') ? body.get('message').getAsString() : response.body()
        def hint = code == 'unauthenticated' ? '; set token in the settings block to the server\'s token' : ''
        throw new IllegalArgumentException("histosic: ${code}: ${message}${hint}")
    }
    return body.getAsJsonObject('job')
}
def text = { JsonObject job, String key -> job.has(key) ? job.get(key).getAsString() : '' }
def number = { JsonObject job, String key -> job.has(key) ? job.get(key).getAsLong() : 0L }
def jobRequest = { JsonObject job ->
    def r = new JsonObject()
    r.addProperty('jobId', text(job, 'jobId'))
    return r
}

// ================================================================ start, then poll until done
def request = new JsonObject()
request.addProperty('slide', slideUri)
request.addProperty('model', settings.model)
if (slideMpp > 0) {
    request.addProperty('slideMpp', slideMpp)
}
def tiling = new JsonObject()
if ((settings.targetMpp as double) > 0) {
    tiling.addProperty('targetMpp', settings.targetMpp as double)
}
if ((settings.patchSize as int) > 0) {
    tiling.addProperty('patchSize', settings.patchSize as int)
}
if (tiling.size() > 0) {
    request.add('tiling', tiling)
}
request.addProperty('overwrite', settings.overwrite as boolean)
if ((settings.batchSize as int) > 0) {
    request.addProperty('batchSize', settings.batchSize as int)
}
def job = call('StartEmbedding', request)
if (text(job, 'state') == 'JOB_STATE_SUCCEEDED' && job.has('reused') && job.get('reused').getAsBoolean()) {
    println "histosic: ${name} is embedded already with ${text(job, 'model')}: ${text(job, 'embeddingId')}; run histosic_cluster.groovy"
    return job
}
println "histosic: embedding ${name} with ${settings.model} (job ${text(job, 'jobId')}); stop with Run > Kill running script"
def shown = ''
try {
    while (!(text(job, 'state') in ['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED'])) {
        def state = text(job, 'state')
        long done = number(job, 'patchesDone')
        long total = number(job, 'patchesTotal')
        def line = state == 'JOB_STATE_QUEUED' ?
                "histosic: queued, ${number(job, 'queuePosition')} job(s) ahead" :
                (total > 0 ? "histosic: ${done} / ${total} patches (${(int) (100 * done / total)}%)" : 'histosic: starting')
        if (line != shown) {
            println line
            shown = line
        }
        Thread.sleep(1000L * (settings.pollSeconds as long))
        job = call('GetJob', jobRequest(job))
    }
} catch (InterruptedException e) {
    // Run > Kill running script: cancel the server's job too.
    Thread.interrupted() // clear the flag so that the cancel call can be made
    def cancelled = call('CancelJob', jobRequest(job))
    println "histosic: stopped; job ${text(cancelled, 'jobId')} cancelled at ${number(cancelled, 'patchesDone')} / ${number(cancelled, 'patchesTotal')} patches"
    return cancelled
}
if (text(job, 'state') != 'JOB_STATE_SUCCEEDED') {
    throw new IllegalStateException("histosic: the embedding ${text(job, 'state') == 'JOB_STATE_CANCELLED' ? 'was cancelled' : 'failed'}: ${text(job, 'errorCode')}: ${text(job, 'errorMessage')}")
}
println "histosic: done: ${number(job, 'patchesTotal')} patches embedded as ${text(job, 'embeddingId')}; run histosic_cluster.groovy"
return job
