/*
 * histosic: cluster the open slide from its point annotations, in QuPath 0.5 to 0.7.
 *
 * 1. Place point annotations (the Points tool) and classify them: "Tumor" for the positive class,
 *    any other class (e.g. "Stroma", "Other") for the rest. A few points per class are enough.
 * 2. Run this script (Automate > Shared scripts > histosic_cluster, or the Script editor's Run).
 *    It sends the points to a running `histosic serve` (Connect protocol: JSON over HTTP or HTTPS,
 *    no extra jars needed) and adds the result as classified tiles, plus suggested next seeds as
 *    points of the class "histosic: suggested seed".
 * 3. Add or move points where the map is wrong (or reclassify a suggested seed: it then is a seed)
 *    and run it again: only the previous histosic objects are replaced. With `live = true` the
 *    script stays attached to the image and re-clusters by itself after each change; running it
 *    again (or closing the image) detaches it.
 *
 * The slide must have been embedded on the server first (histosic_embed.groovy, or `histosic
 * embed`) and must lie inside one of the server's `--slide-root` folders.
 * Uses only the JDK (java.net.http) and Gson, which QuPath bundles. See qupath-scripts/README.md.
 */

import com.google.gson.GsonBuilder
import com.google.gson.JsonArray
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import qupath.lib.io.PathIO
import qupath.lib.measurements.MeasurementList
import qupath.lib.measurements.MeasurementListFactory
import qupath.lib.objects.PathObject
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.objects.hierarchy.events.PathObjectHierarchyListener
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs
import qupath.lib.roi.interfaces.ROI

import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.nio.charset.StandardCharsets
import java.time.Duration
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

// ================================================================ settings: edit these
def settings = [
    serverUrl     : 'http://127.0.0.1:50052', // histosic serve's Connect address (https:// works)
    token         : '',         // the server's bearer token, if it has one
    positiveClass : 'Tumor',    // the positive class (its derived classes count as positive)
    multiclass    : false,      // true: every seed class becomes its own class
    output        : 'tiles',    // 'tiles', 'detections', 'regions' or 'both'
    method        : '',         // '' = the server's default; 'sic' = the paper's algorithm
    suggest       : 5,          // how many next seeds to suggest (0 = none)
    live          : false,      // true: stay attached and re-cluster after each seed change
    compact       : true,       // true: build tiles here from the compact answer (no GeoJSON)
    debounceMs    : 400,        // live mode: wait this long after the last change
    timeoutSeconds: 120,
]
// ================================================================ end of settings
// Overrides, for headless runs: HISTOSIC_URL and HISTOSIC_TOKEN in the environment, and
// `QuPath script -a name=value` (e.g. -a output=detections -a live=false).

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
    if (d instanceof Boolean) {
        if (!(v.toString().toLowerCase() in ['true', 'false'])) {
            throw new IllegalArgumentException("histosic: ${k} must be true or false, got '${v}'")
        }
        settings[k] = v.toString().toLowerCase() == 'true'
    } else if (d instanceof Integer) {
        if (!v.toString().isInteger()) {
            throw new IllegalArgumentException("histosic: ${k} must be a whole number, got '${v}'")
        }
        settings[k] = v.toString() as Integer
    } else {
        settings[k] = v.toString()
    }
}
if (!(settings.output in ['tiles', 'detections', 'regions', 'both'])) {
    throw new IllegalArgumentException("histosic: output must be 'tiles', 'detections', 'regions' or 'both', got '${settings.output}'")
}
if (!(settings.serverUrl ==~ /(?i)https?:\/\/.+/)) {
    throw new IllegalArgumentException("histosic: serverUrl must start with http:// or https://, got '${settings.serverUrl}'")
}
def baseUrl = settings.serverUrl.replaceAll('/+$', '')
def SUGGESTED = 'histosic: suggested seed'
def LOG = org.slf4j.LoggerFactory.getLogger('histosic')

// ================================================================ the image
def imageData = getCurrentImageData()
if (imageData == null) {
    throw new IllegalStateException('histosic: no image is open; open the slide first')
}
def uris = imageData.getServer().getURIs()
if (uris == null || uris.isEmpty()) {
    throw new IllegalStateException('histosic: the image has no file URI (is it a file on disk?)')
}
def slideUri = uris.iterator().next().toString()
def hierarchy = imageData.getHierarchy()

// A live session of an earlier run (on any image) stops here: running the script again detaches it.
Thread.getAllStackTraces().keySet().findAll { it.getName().startsWith('histosic-live') }.each { t ->
    t.interrupt()
    t.join(10000)
    println "histosic: live mode of the earlier run detached"
}

// ================================================================ talking to the server
def client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()
def gson = new GsonBuilder().create()
def call = { String service, String rpc, JsonObject request ->
    def builder = HttpRequest.newBuilder()
            .uri(URI.create("${baseUrl}/histosic.v1.${service}/${rpc}"))
            .timeout(Duration.ofSeconds(settings.timeoutSeconds as long))
            .header('Content-Type', 'application/json')
            .POST(HttpRequest.BodyPublishers.ofString(gson.toJson(request), StandardCharsets.UTF_8))
    if (settings.token) {
        builder.header('Authorization', 'Bearer ' + settings.token)
    }
    def response
    long t0 = System.nanoTime()
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
        def hint = ''
        if (code == 'not_found' && message.contains('no embedding')) {
            hint = '; embed it first with histosic_embed.groovy'
        } else if (code == 'unauthenticated') {
            hint = '; set token in the settings block to the server\'s token'
        }
        throw new IllegalArgumentException("histosic: ${code}: ${message}${hint}")
    }
    body.addProperty('_seconds', (System.nanoTime() - t0) / 1e9)
    body.addProperty('_chars', response.body().length())
    return body
}

// ================================================================ the seeds
def isPositive = { String name -> name == settings.positiveClass || name.startsWith(settings.positiveClass + ':') }
// histosic's own objects: tiles/detections and regions it made, and suggested seeds not yet accepted.
def isOurs = { obj ->
    def pc = obj.getPathClass()
    def roi = obj.getROI()
    if (obj.isAnnotation() && roi != null && roi.isPoint()) {
        return pc != null && pc.toString() == SUGGESTED
    }
    def ml = obj.getMeasurementList()
    return ml != null && (ml.containsKey('histosic: confidence') || ml.containsKey('histosic: mean confidence'))
}
def collectSeeds = {
    def seeds = new JsonArray()
    def names = new LinkedHashSet<String>()
    int unclassified = 0
    def signature = new StringBuilder()
    hierarchy.getAnnotationObjects().each { annotation ->
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
        if (className == SUGGESTED) {
            return
        }
        names << className
        roi.getAllPoints().each { p ->
            def seed = new JsonObject()
            seed.addProperty('x', p.getX() as double)
            seed.addProperty('y', p.getY() as double)
            seed.addProperty('className', className)
            seed.addProperty('id', annotation.getID().toString())
            seeds.add(seed)
            signature.append(p.getX()).append(',').append(p.getY()).append(',').append(className).append(';')
        }
    }
    return [seeds: seeds, names: names, unclassified: unclassified, signature: signature.toString()]
}
// One line saying what is missing, or null when the seeds can be clustered.
def seedProblem = { found ->
    if (found.seeds.size() == 0) {
        return "histosic: no classified point annotations; place points of class ${settings.positiveClass} and of at least one other class"
    }
    if (settings.multiclass && found.names.size() < 2) {
        return "histosic: every seed is of class ${found.names.join(', ')}; multi-class clustering needs points of at least two classes"
    }
    if (!settings.multiclass && !found.names.any { isPositive(it) }) {
        return "histosic: no seed of the positive class ${settings.positiveClass} (seeds: ${found.names.join(', ')}); place points of class ${settings.positiveClass} or set positiveClass"
    }
    if (!settings.multiclass && found.names.every { isPositive(it) }) {
        return "histosic: every seed is of the positive class ${settings.positiveClass}; place points of at least one other class (e.g. Stroma)"
    }
    return null
}

// ================================================================ the request and the answer
def compactCells = settings.compact && settings.output != 'regions'
def clusterRequest = { JsonArray seeds ->
    def request = new JsonObject()
    def embedding = new JsonObject()
    embedding.addProperty('slide', slideUri)
    request.add('embedding', embedding)
    request.add('seeds', seeds)
    def options = new JsonObject()
    options.addProperty('positiveClass', settings.positiveClass)
    options.addProperty('multiclass', settings.multiclass)
    options.addProperty('suggest', settings.suggest)
    if (compactCells) {
        options.addProperty('geojson', settings.output == 'both' ? 'regions' : 'none')
        options.addProperty('includeCells', true)
    } else {
        options.addProperty('geojson', settings.output)
    }
    if (settings.method) {
        options.addProperty('method', settings.method)
    }
    request.add('options', options)
    return request
}
// An NDArray of Connect JSON ({"dtype", "shape", "data": base64 little-endian}) as a ByteBuffer.
def ndarray = { JsonObject a, String dtype ->
    if (a.get('dtype').getAsString() != dtype) {
        throw new IllegalStateException("histosic: the server sent a ${a.get('dtype').getAsString()} array where ${dtype} was expected; update the script or the server")
    }
    def bytes = a.has('data') ? Base64.getDecoder().decode(a.get('data').getAsString()) : new byte[0]
    return ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
}
// The tiles (or detections) from the compact answer, as the GeoJSON would give them
// (CellObjects, at the end of the script: compiled statically, 100k objects in a moment).
def cellObjects = { JsonObject body ->
    def cells = body.getAsJsonObject('cells')
    return CellObjects.build(
            ndarray(cells.getAsJsonObject('origin'), 'float32').asFloatBuffer(),
            cells.get('size').getAsDouble(),
            ndarray(body.getAsJsonObject('labels'), 'int32').asIntBuffer(),
            ndarray(body.getAsJsonObject('confidence'), 'float32').asFloatBuffer(),
            cells.has('seeded') ? ndarray(cells.getAsJsonObject('seeded'), 'uint8') : null,
            cells.has('tissueFraction') ? ndarray(cells.getAsJsonObject('tissueFraction'), 'float32').asFloatBuffer() : null,
            body.getAsJsonArray('classNames').collect { PathClass.fromString(it.getAsString()) },
            settings.output == 'detections')
}
// Suggested seeds as the GeoJSON gives them: points at 2 decimals, measurements at 4.
def round4 = { double v -> Double.isFinite(v) ? new BigDecimal(v).setScale(4, java.math.RoundingMode.HALF_EVEN).doubleValue() : v }
def suggestionObjects = { JsonObject body ->
    def pc = PathClass.fromString(SUGGESTED)
    def plane = ImagePlane.getDefaultPlane()
    def out = []
    int rank = 0
    (body.has('suggestions') ? body.getAsJsonArray('suggestions') : new JsonArray()).each { s ->
        def o = s.getAsJsonObject()
        rank++
        def point = PathObjects.createAnnotationObject(ROIs.createPointsROI(
                new BigDecimal(o.get('x').getAsDouble()).setScale(2, java.math.RoundingMode.HALF_EVEN).doubleValue(),
                new BigDecimal(o.get('y').getAsDouble()).setScale(2, java.math.RoundingMode.HALF_EVEN).doubleValue(), plane), pc)
        point.getMeasurementList().put('histosic: confidence', round4(o.has('confidence') ? o.get('confidence').getAsDouble() : 0d))
        point.getMeasurementList().put('histosic: rank', rank as double)
        out << point
    }
    return out
}
// Everything the answer adds to the hierarchy.
def resultObjects = { JsonObject body ->
    def objects = []
    if (compactCells) {
        if (!body.has('cells')) {
            throw new IllegalStateException('histosic: the server sent no cells (is it older than this script?); set compact = false')
        }
        objects.addAll(cellObjects(body))
    }
    def geojson = body.has('geojson') ? body.get('geojson').getAsString() : ''
    if (geojson) {
        objects.addAll(PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(geojson.getBytes(StandardCharsets.UTF_8))))
    } else if (compactCells) {
        objects.addAll(suggestionObjects(body))
    }
    return objects
}
def summary = { JsonObject body ->
    def lines = []
    def names = body.has('classNames') ? body.getAsJsonArray('classNames').collect { it.getAsString() } : []
    def counts = body.has('classCounts') ? body.getAsJsonArray('classCounts').collect { it.getAsInt() } : []
    def score = body.has('score') ? body.get('score').getAsDouble() : Double.NaN
    lines << "histosic: method ${body.has('method') ? body.get('method').getAsString() : '?'}, " +
            "seeds used ${body.has('nSeedsUsed') ? body.get('nSeedsUsed').getAsInt() : 0}, score on seeds ${String.format('%.3f', score)}"
    [names, counts].transpose().each { pair -> lines << "histosic:   ${pair[0]}: ${pair[1]} patches" }
    if (body.has('ignoredSeeds')) {
        body.getAsJsonArray('ignoredSeeds').each { s ->
            def o = s.getAsJsonObject()
            lines << "histosic: ignored seed at (${o.get('x')}, ${o.get('y')}): ${o.get('reason').getAsString()}"
        }
    }
    return lines
}
// Replace histosic's earlier objects by the new ones; user annotations and other objects stay.
def apply = { List added ->
    def previous = hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() && isOurs(it) }
    if (!previous.isEmpty()) {
        hierarchy.removeObjects(previous, true)
    }
    hierarchy.addObjects(added)
    return previous.size()
}

// ================================================================ cluster once
def found = collectSeeds()
if (found.unclassified > 0) {
    println "histosic: ${found.unclassified} point(s) without a class were left out; classify them to use them"
}
def problem = seedProblem(found)
def body = null
if (problem != null && !settings.live) {
    throw new IllegalArgumentException(problem)
} else if (problem != null) {
    println problem // live mode waits for the seeds
} else {
    body = call('ClusteringService', 'Cluster', clusterRequest(found.seeds))
    long t0 = System.nanoTime()
    def added = resultObjects(body)
    long t1 = System.nanoTime()
    def removed = apply(added)
    long t2 = System.nanoTime()
    summary(body).each { println it }
    println "histosic: added ${added.size()} objects, replaced ${removed} of an earlier run"
    println String.format('histosic: timings: answer %.1f MB in %.3f s, objects made in %.3f s, put in the hierarchy in %.3f s (%s)',
            body.get('_chars').getAsLong() / 1e6, body.get('_seconds').getAsDouble(), (t1 - t0) / 1e9, (t2 - t1) / 1e9,
            compactCells ? 'compact cells' : 'GeoJSON')
}

// ================================================================ live mode
if (settings.live) {
    def signals = new LinkedBlockingQueue<Long>()
    def lastSignature = problem == null ? found.signature : ''
    def listener = null
    def worker = null
    listener = { event ->
        if (Thread.currentThread().is(worker) || event.isChanging()) {
            return // histosic's own changes, or a point still being dragged
        }
        def current = getCurrentImageData()
        if (current == null || !current.is(imageData)) {
            worker.interrupt() // the image was closed or another one opened
            return
        }
        signals.offer(System.nanoTime())
    } as PathObjectHierarchyListener
    worker = new Thread({
        int runs = 0
        try {
            while (true) {
                signals.take()
                // Debounce: wait until the changes pause for debounceMs.
                while (signals.poll(settings.debounceMs as long, TimeUnit.MILLISECONDS) != null) {
                }
                def now = collectSeeds()
                if (now.signature == lastSignature) {
                    continue // nothing that matters changed (e.g. a user annotation or detection)
                }
                def why = seedProblem(now)
                if (why != null) {
                    LOG.warn(why)
                    continue
                }
                def answer
                def objects
                try {
                    answer = call('ClusteringService', 'Cluster', clusterRequest(now.seeds))
                    if (!signals.isEmpty()) {
                        LOG.info('histosic live: a newer change came in; this result is dropped')
                        continue // a newer change cancels this run: its result is never shown
                    }
                    objects = resultObjects(answer)
                } catch (InterruptedException e) {
                    throw e
                } catch (Exception e) {
                    LOG.warn(e.getMessage()) // one line; live mode stays on for the next change
                    continue
                }
                if (!signals.isEmpty()) {
                    continue
                }
                apply(objects)
                lastSignature = now.signature
                runs++
                LOG.info("histosic live: re-clustered (update ${runs}): " + summary(answer).join(' | '))
            }
        } catch (InterruptedException e) {
            // detached: the script ran again or the image closed
        } finally {
            hierarchy.removeListener(listener)
            LOG.info('histosic live: detached')
        }
    } as Runnable, 'histosic-live ' + imageData.getServer().getMetadata().getName())
    worker.setDaemon(true)
    hierarchy.addListener(listener)
    worker.start()
    println 'histosic: live mode on: the map follows your seed changes; run the script again (or close the image) to stop'
}
return body

// ================================================================ tiles from cells (static code)
@groovy.transform.CompileStatic
class CellObjects {
    /** One tile (or detection) per patch: its cell, class and measurements, as the GeoJSON has them. */
    static List<PathObject> build(FloatBuffer origin, double size, IntBuffer labels, FloatBuffer confidence,
                                  ByteBuffer seeded, FloatBuffer tissue, List<PathClass> classes, boolean detections) {
        ImagePlane plane = ImagePlane.getDefaultPlane()
        int n = labels.remaining()
        List<PathObject> out = new ArrayList<PathObject>(n)
        for (int i = 0; i < n; i++) {
            ROI roi = ROIs.createRectangleROI((double) origin.get(2 * i), (double) origin.get(2 * i + 1), size, size, plane)
            MeasurementList ml = MeasurementListFactory.createMeasurementList(3, MeasurementList.MeasurementListType.FLOAT)
            ml.put('histosic: confidence', round4((double) confidence.get(i)))
            if (seeded != null) {
                ml.put('histosic: seed', (double) seeded.get(i))
            }
            if (tissue != null) {
                ml.put('histosic: tissue fraction', round4((double) tissue.get(i)))
            }
            PathClass pc = classes.get(labels.get(i))
            out.add(detections ? PathObjects.createDetectionObject(roi, pc, ml) : PathObjects.createTileObject(roi, pc, ml))
        }
        return out
    }

    /** numpy's round(v, 4), as the server rounds the GeoJSON's measurements. */
    static double round4(double v) {
        return Double.isFinite(v) ? Math.rint(v * 1e4d) / 1e4d : v
    }
}
