/*
 * histosic: cluster the open slide from its point annotations, in QuPath 0.5 to 0.7.
 *
 * 1. Place point annotations (the Points tool) and classify them: "Tumor" for the positive class,
 *    any other class (e.g. "Stroma", "Other") for the rest. A few points per class are enough.
 * 2. Run this script (Automate > Script editor > Run). It sends the points to a running
 *    `histosic serve` (Connect protocol: JSON over HTTP, no extra jars needed) and imports the
 *    result as classified tiles, plus suggested next seeds as points of the class
 *    "histosic: suggested seed".
 * 3. Add or move points where the map is wrong (or where suggestions are) and run it again: the
 *    previous histosic objects are replaced.
 *
 * The slide must have been embedded on the server first (`histosic embed`, or StartEmbedding) and
 * must lie inside one of the server's `--slide-root` folders.
 * Settings below, or from the environment: HISTOSIC_URL, HISTOSIC_TOKEN.
 * Uses only the JDK (java.net.http) and Gson, which QuPath bundles.
 */

import com.google.gson.GsonBuilder
import com.google.gson.JsonArray
import com.google.gson.JsonObject
import com.google.gson.JsonParser

import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.charset.StandardCharsets
import java.time.Duration

// ---------------------------------------------------------------- settings
def serverUrl = System.getenv('HISTOSIC_URL') ?: 'http://127.0.0.1:50052'
def token = System.getenv('HISTOSIC_TOKEN') ?: ''
def positiveClass = 'Tumor'     // QuPath's built-in class name for the positive class
def multiclass = false          // true: every seed class becomes its own class
def output = 'tiles'            // 'tiles', 'detections', 'regions' or 'both'
def suggest = 5                 // how many next seeds to suggest (0 = none)
def method = ''                 // '' = the server's default; 'sic' = the paper's algorithm
def replacePrevious = true      // remove objects from an earlier histosic run first
def timeoutSeconds = 120

// ---------------------------------------------------------------- gather the seeds
def server = getCurrentServer()
if (server == null) {
    throw new IllegalStateException('histosic: no image is open')
}
def uris = server.getURIs()
if (uris == null || uris.isEmpty()) {
    throw new IllegalStateException('histosic: the image has no file URI (is it a file on disk?)')
}
def slideUri = uris.iterator().next().toString()

def seeds = new JsonArray()
int unclassified = 0
getAnnotationObjects().each { annotation ->
    def roi = annotation.getROI()
    if (roi == null || !roi.isPoint()) {
        return
    }
    def pathClass = annotation.getPathClass()
    if (pathClass == null) {
        unclassified += roi.getAllPoints().size()
        return
    }
    def className = pathClass.toString()
    if (className == 'histosic: suggested seed') {
        return
    }
    roi.getAllPoints().each { p ->
        def seed = new JsonObject()
        seed.addProperty('x', p.getX() as double)
        seed.addProperty('y', p.getY() as double)
        seed.addProperty('className', className)
        seed.addProperty('id', annotation.getID().toString())
        seeds.add(seed)
    }
}
if (unclassified > 0) {
    println "histosic: ${unclassified} point(s) without a class were left out; classify them to use them"
}
if (seeds.size() == 0) {
    throw new IllegalArgumentException(
        'histosic: no classified point annotations; place points of class ' + positiveClass +
        ' and of at least one other class')
}

// ---------------------------------------------------------------- call histosic
def request = new JsonObject()
def embedding = new JsonObject()
embedding.addProperty('slide', slideUri)
request.add('embedding', embedding)
request.add('seeds', seeds)
def options = new JsonObject()
options.addProperty('positiveClass', positiveClass)
options.addProperty('multiclass', multiclass)
options.addProperty('suggest', suggest)
options.addProperty('geojson', output)
if (method) {
    options.addProperty('method', method)
}
request.add('options', options)

def gson = new GsonBuilder().create()
def builder = HttpRequest.newBuilder()
        .uri(URI.create(serverUrl.replaceAll('/+$', '') + '/histosic.v1.ClusteringService/Cluster'))
        .timeout(Duration.ofSeconds(timeoutSeconds))
        .header('Content-Type', 'application/json')
        .POST(HttpRequest.BodyPublishers.ofString(gson.toJson(request), StandardCharsets.UTF_8))
if (token) {
    builder.header('Authorization', 'Bearer ' + token)
}
def client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()
def response
try {
    response = client.send(builder.build(), HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8))
} catch (IOException e) {
    throw new IOException("histosic: cannot reach the server at ${serverUrl} (${e.getMessage()}); " +
            'is `histosic serve` running?', e)
}
def body = JsonParser.parseString(response.body()).getAsJsonObject()
if (response.statusCode() != 200) {
    def code = body.has('code') ? body.get('code').getAsString() : "HTTP ${response.statusCode()}"
    def message = body.has('message') ? body.get('message').getAsString() : response.body()
    throw new IllegalArgumentException("histosic: ${code}: ${message}")
}

// ---------------------------------------------------------------- import the result
if (replacePrevious) {
    def previous = (getDetectionObjects() + getAnnotationObjects()).findAll { obj ->
        def ml = obj.getMeasurementList()
        def pc = obj.getPathClass()
        (ml != null && (ml.containsKey('histosic: confidence') || ml.containsKey('histosic: mean confidence'))) ||
                (pc != null && pc.toString() == 'histosic: suggested seed')
    }
    if (!previous.isEmpty()) {
        removeObjects(previous, true)
    }
}
def geojson = body.has('geojson') ? body.get('geojson').getAsString() : ''
if (geojson) {
    def tmp = File.createTempFile('histosic-', '.geojson')
    try {
        tmp.setText(geojson, 'UTF-8')
        importObjectsFromFile(tmp.getAbsolutePath())
    } finally {
        tmp.delete()
    }
}

// ---------------------------------------------------------------- summary
def names = body.has('classNames') ? body.getAsJsonArray('classNames').collect { it.getAsString() } : []
def counts = body.has('classCounts') ? body.getAsJsonArray('classCounts').collect { it.getAsInt() } : []
def score = body.has('score') ? body.get('score').getAsDouble() : Double.NaN
println "histosic: method ${body.has('method') ? body.get('method').getAsString() : '?'}, " +
        "seeds used ${body.has('nSeedsUsed') ? body.get('nSeedsUsed').getAsInt() : 0}, score on seeds ${String.format('%.3f', score)}"
[names, counts].transpose().each { pair -> println "histosic:   ${pair[0]}: ${pair[1]} patches" }
if (body.has('ignoredSeeds')) {
    body.getAsJsonArray('ignoredSeeds').each { s ->
        def o = s.getAsJsonObject()
        println "histosic: ignored seed at (${o.get('x')}, ${o.get('y')}): ${o.get('reason').getAsString()}"
    }
}
return body
