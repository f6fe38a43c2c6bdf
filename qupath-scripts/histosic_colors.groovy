/*
 * histosic: the colour view of the open slide, in QuPath 0.5 to 0.7.
 *
 * Each patch becomes a detection coloured by a 3-D PCA (or UMAP) of its embedding: patches that
 * look alike to the model get similar colours, so tissue types show as colour regions before any
 * point is placed, a guide to where seeds are worth placing. Run it after histosic_embed.groovy
 * (Automate > Shared scripts > histosic_colors). Running it again replaces its own detections
 * only; remove them with Objects > Delete > Delete all detections, or keep them: the cluster
 * script leaves them alone.
 *
 * The slide must have been embedded on the server and lie inside one of its `--slide-root`s.
 * Uses only the JDK (java.net.http) and Gson, which QuPath bundles. See qupath-scripts/README.md.
 */

import com.google.gson.GsonBuilder
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import qupath.lib.measurements.MeasurementList
import qupath.lib.measurements.MeasurementListFactory
import qupath.lib.objects.PathObject
import qupath.lib.objects.PathObjects
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs
import qupath.lib.roi.interfaces.ROI

import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.LongBuffer
import java.nio.charset.StandardCharsets
import java.time.Duration

// ================================================================ settings: edit these
def settings = [
    serverUrl: 'http://127.0.0.1:50052', // histosic serve's Connect address (https:// works)
    token    : '',          // the server's bearer token, if it has one
    method   : 'pca',       // 'pca' (quick) or 'umap' (slower, often clearer; the server needs umap-learn)
]
// ================================================================ end of settings
// Overrides, for headless runs: HISTOSIC_URL and HISTOSIC_TOKEN in the environment, and
// `QuPath script -a name=value` (e.g. -a method=umap).

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
if (!(settings.serverUrl ==~ /(?i)https?:\/\/.+/)) {
    throw new IllegalArgumentException("histosic: serverUrl must start with http:// or https://, got '${settings.serverUrl}'")
}
if (!(settings.method in ['pca', 'umap'])) {
    throw new IllegalArgumentException("histosic: method must be 'pca' or 'umap', got '${settings.method}'")
}
def baseUrl = settings.serverUrl.replaceAll('/+$', '')

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

// ================================================================ talking to the server
def client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build()
def gson = new GsonBuilder().create()
def call = { String service, String rpc, JsonObject request ->
    def builder = HttpRequest.newBuilder()
            .uri(URI.create("${baseUrl}/histosic.v1.${service}/${rpc}"))
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
    return body
}
def ndarray = { JsonObject a, String dtype ->
    if (a.get('dtype').getAsString() != dtype) {
        throw new IllegalStateException("histosic: the server sent a ${a.get('dtype').getAsString()} array where ${dtype} was expected; update the script or the server")
    }
    def bytes = a.has('data') ? Base64.getDecoder().decode(a.get('data').getAsString()) : new byte[0]
    return ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
}

// ================================================================ colours, then the patch grid
def request = new JsonObject()
def embedding = new JsonObject()
embedding.addProperty('slide', slideUri)
request.add('embedding', embedding)
request.addProperty('method', settings.method)
def colors = call('ClusteringService', 'Colors', request)
def embeddingId = colors.get('embeddingId').getAsString()
def list = new JsonObject()
list.addProperty('slide', slideUri)
def info = call('EmbeddingService', 'ListEmbeddings', list).getAsJsonArray('embeddings')
        .collect { it.getAsJsonObject() }.find { it.get('embeddingId').getAsString() == embeddingId }
if (info == null) {
    throw new IllegalStateException("histosic: the server did not list the embedding ${embeddingId} it coloured; run the script again")
}
def label = settings.method.toUpperCase()
def objects = ColourCells.build(ndarray(colors.getAsJsonObject('coords'), 'int64').asLongBuffer(),
        ndarray(colors.getAsJsonObject('rgb'), 'uint8'),
        info.get('patchSizeLevel0').getAsInt(), info.get('strideLevel0').getAsInt(), label)

// ================================================================ replace the earlier colour view
def previous = hierarchy.getDetectionObjects().findAll { o ->
    def ml = o.getMeasurementList()
    ['PCA', 'UMAP'].any { ml.containsKey("histosic: ${it} R".toString()) }
}
if (!previous.isEmpty()) {
    hierarchy.removeObjects(previous, true)
}
hierarchy.addObjects(objects)
println "histosic: colour view (${label}) of ${objects.size()} patches from ${embeddingId}; replaced ${previous.size()} of an earlier run"
return objects.size()

// ================================================================ patch cells (static code)
@groovy.transform.CompileStatic
class ColourCells {
    /** One detection per patch, its central stride x stride cell, coloured, as `histosic colors` writes it. */
    static List<PathObject> build(LongBuffer coords, ByteBuffer rgb, int patchSize, int stride, String label) {
        ImagePlane plane = ImagePlane.getDefaultPlane()
        double half = Math.max(stride, 1) / 2.0d
        int n = rgb.remaining().intdiv(3) as int
        List<PathObject> out = new ArrayList<PathObject>(n)
        for (int i = 0; i < n; i++) {
            double cx = (double) coords.get(2 * i) + patchSize / 2.0d
            double cy = (double) coords.get(2 * i + 1) + patchSize / 2.0d
            double x0 = round2(cx - half)
            double y0 = round2(cy - half)
            ROI roi = ROIs.createRectangleROI(x0, y0, round2(cx + half) - x0, round2(cy + half) - y0, plane)
            int r = rgb.get(3 * i) & 0xFF
            int g = rgb.get(3 * i + 1) & 0xFF
            int b = rgb.get(3 * i + 2) & 0xFF
            MeasurementList ml = MeasurementListFactory.createMeasurementList(3, MeasurementList.MeasurementListType.FLOAT)
            ml.put('histosic: ' + label + ' R', (double) r)
            ml.put('histosic: ' + label + ' G', (double) g)
            ml.put('histosic: ' + label + ' B', (double) b)
            PathObject o = PathObjects.createDetectionObject(roi, null, ml)
            o.setColor(r, g, b)
            out.add(o)
        }
        return out
    }

    static double round2(double v) {
        return Math.rint(v * 100d) / 100d
    }
}
