/*
 * TEST DOUBLE of QuPath's scripting API, for running qupath-scripts/*.groovy with a plain Groovy
 * on machines where QuPath itself cannot be installed. It provides only what the scripts call
 * (getCurrentServer, getAnnotationObjects, getDetectionObjects, removeObjects,
 * importObjectsFromFile), records what the script does, and runs the real script file unchanged
 * against a real histosic server.
 *
 * Usage: groovy -cp gson.jar qupath_test_double.groovy SCRIPT SLIDE_URI POINTS_JSON OUT_DIR
 *   POINTS_JSON: [{"x":..,"y":..,"class":"Tumor"|null}, ...]
 * Writes OUT_DIR/imported.geojson (what the script imported), OUT_DIR/removed.txt (count of removed
 * objects) and OUT_DIR/response.json (the script's return value).
 */
import com.google.gson.Gson
import com.google.gson.JsonParser

class DoublePoint {
    double x
    double y
    double getX() { x }
    double getY() { y }
}

class DoubleRoi {
    List points
    boolean isPoint() { true }
    List getAllPoints() { points }
}

class DoubleClass {
    String name
    String toString() { name }
}

class DoubleObject {
    DoubleRoi roi
    DoubleClass pathClass
    UUID id = UUID.randomUUID()
    Map measurements = [:]
    DoubleRoi getROI() { roi }
    DoubleClass getPathClass() { pathClass }
    UUID getID() { id }
    Map getMeasurementList() { measurements }
}

def scriptPath = args[0]
def slideUri = args[1]
def pointsJson = args[2]
def outDir = new File(args[3])
outDir.mkdirs()

def annotations = []
JsonParser.parseString(new File(pointsJson).getText('UTF-8')).getAsJsonArray().each { e ->
    def o = e.getAsJsonObject()
    def cls = (o.has('class') && !o.get('class').isJsonNull()) ? new DoubleClass(name: o.get('class').getAsString()) : null
    def pt = new DoublePoint(x: o.get('x').getAsDouble(), y: o.get('y').getAsDouble())
    annotations << new DoubleObject(roi: new DoubleRoi(points: [pt]), pathClass: cls)
}
// one object from an "earlier run" that the script must remove before importing
def earlier = new DoubleObject(roi: new DoubleRoi(points: []), pathClass: new DoubleClass(name: 'Tumor'))
earlier.measurements['histosic: confidence'] = 0.9d
def detections = [earlier]
def removed = []

def binding = new Binding()
binding.setVariable('getCurrentServer', { -> [getURIs: { -> [new URI(slideUri)] }] })
binding.setVariable('getAnnotationObjects', { -> annotations })
binding.setVariable('getDetectionObjects', { -> detections })
binding.setVariable('removeObjects', { objs, boolean keepChildren -> removed.addAll(objs) })
binding.setVariable('importObjectsFromFile', { String path ->
    new File(outDir, 'imported.geojson').setText(new File(path).getText('UTF-8'), 'UTF-8')
    true
})
def result = new GroovyShell(binding).evaluate(new File(scriptPath))
new File(outDir, 'removed.txt').text = String.valueOf(removed.size())
new File(outDir, 'response.json').setText(new Gson().toJson(result), 'UTF-8')
