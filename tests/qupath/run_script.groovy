/*
 * Runs a QuPath script file unchanged as QuPath runs it, on QuPath's own classes (the jars of
 * ../shared/qupath/<version>/ on the class path): an ImageData from
 * ImageServerProvider.buildServer on a real image file, made current with
 * QP.setBatchProjectAndImage(null, imageData), and the script evaluated with an ImportCustomizer
 * holding a static star import of qupath.lib.scripting.QP plus imports of QP.getCoreClasses().
 *
 * Usage: groovy -cp <QuPath and Debian jars> run_script.groovy SCRIPT IMAGE POINTS_JSON OUT_DIR [name=value ...]
 *   POINTS_JSON: [{"x":..,"y":..,"class":"Tumor"|"Tumor: Positive"|null}, ...] become real point
 *   annotations; one detection from an "earlier run" (measurement "histosic: confidence"), a user's
 *   rectangle annotation and a user's detection (never to be touched) are added.
 *   name=value ...: the script's `args`, as `QuPath script -a name=value` passes them.
 *   QUPATH_TEST_SCENARIO (environment): a Groovy file run after the script with `imageData`,
 *   `hierarchy`, `runScript` (a closure: run the script again with a list of args), `outDir`,
 *   `result` bound: what a user does next (fire real hierarchy events, wait, record);
 *   QUPATH_TEST_SKIP_FIRST=1 leaves the first run to the scenario.
 * Writes OUT_DIR/hierarchy.geojson (every object in the hierarchy afterwards, by QuPath's exporter),
 * OUT_DIR/ids-before.txt and ids-after.txt (object ids), OUT_DIR/removed.txt (1 when the earlier
 * run's object was removed), OUT_DIR/response.json (its return value), OUT_DIR/uri.txt (the image's
 * URI as QuPath gives it) and, when the script failed, OUT_DIR/error.txt (its message; exit 1).
 */
import com.google.gson.Gson
import com.google.gson.JsonParser
import java.awt.image.BufferedImage
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.customizers.ImportCustomizer
import qupath.lib.common.GeneralTools
import qupath.lib.images.ImageData
import qupath.lib.images.servers.ImageServerProvider
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs
import qupath.lib.scripting.QP

def scriptFile = new File(args[0])
def image = new File(args[1])
def pointsJson = new File(args[2])
def outDir = new File(args[3])
def scriptArgs = args.length > 4 ? (args[4..-1] as String[]) : new String[0]
outDir.mkdirs()

PathClass.StandardPathClasses.TUMOR.getColor() // the GUI holds the standard classes from start-up
def server = ImageServerProvider.buildServer(image.toURI().toString(), BufferedImage.class)
def imageData = new ImageData<BufferedImage>(server)
def hierarchy = imageData.getHierarchy()
def plane = ImagePlane.getDefaultPlane()
def objects = []
JsonParser.parseString(pointsJson.getText('UTF-8')).getAsJsonArray().each { e ->
    def o = e.getAsJsonObject()
    def cls = (o.has('class') && !o.get('class').isJsonNull()) ? PathClass.fromString(o.get('class').getAsString()) : null
    objects << PathObjects.createAnnotationObject(
            ROIs.createPointsROI(o.get('x').getAsDouble(), o.get('y').getAsDouble(), plane), cls)
}
def earlier = PathObjects.createDetectionObject(ROIs.createRectangleROI(0, 0, 10, 10, plane), PathClass.fromString('Tumor'))
earlier.getMeasurementList().put('histosic: confidence', 0.9d)
objects << earlier
def userAnnotation = PathObjects.createAnnotationObject(ROIs.createRectangleROI(100, 100, 300, 200, plane), PathClass.fromString('Region*'))
userAnnotation.setName('user region')
objects << userAnnotation
def userDetection = PathObjects.createDetectionObject(ROIs.createEllipseROI(700, 700, 40, 40, plane), PathClass.fromString('Immune cells'))
userDetection.getMeasurementList().put('Area', 1256.5d)
objects << userDetection
hierarchy.addObjects(objects)
def ids = { hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() }.collect { it.getID().toString() }.sort().join('\n') }
new File(outDir, 'ids-before.txt').text = ids()

QP.setBatchProjectAndImage(null, imageData)
def imports = new ImportCustomizer()
imports.addStaticStars(QP.class.getName())
QP.getCoreClasses().each { imports.addImports(it.getName()) }
def config = new CompilerConfiguration()
config.addCompilationCustomizers(imports)
// As QuPath runs a script: a fresh shell per run, `args` bound as `QuPath script -a` binds it,
// and its `out` (what println writes to) the console or a writer of the scenario's.
def runScript = { List<String> a, Writer w = null ->
    def binding = new Binding()
    binding.setVariable('args', a as String[])
    if (w != null) {
        binding.setVariable('out', new PrintWriter(w, true))
    }
    return new GroovyShell(binding, config).evaluate(scriptFile)
}
def result = null
def failure = null
try {
    if (System.getenv('QUPATH_TEST_SKIP_FIRST') != '1') {
        result = runScript(scriptArgs as List)
    }
    def scenario = System.getenv('QUPATH_TEST_SCENARIO')
    if (scenario) {
        def b = new Binding([imageData: imageData, hierarchy: hierarchy, runScript: runScript, outDir: outDir, result: result])
        new GroovyShell(b).evaluate(new File(scenario))
    }
} catch (Exception e) {
    failure = e
}

def after = hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() }
new File(outDir, 'ids-after.txt').text = ids()
// What QuPath holds, beyond what its GeoJSON export says: the object type and the ROI class.
new File(outDir, 'objects.json').setText(new Gson().toJson(after.collect { o ->
    def r = o.getROI()
    [type: o.isTile() ? 'tile' : (o.isDetection() ? 'detection' : (o.isAnnotation() ? 'annotation' : 'other')),
     cls: o.getPathClass() == null ? null : o.getPathClass().toString(), roi: r.getRoiName(),
     color: o.getColor() == null ? null : [(o.getColor() >> 16) & 0xFF, (o.getColor() >> 8) & 0xFF, o.getColor() & 0xFF],
     bounds: [r.getBoundsX(), r.getBoundsY(), r.getBoundsWidth(), r.getBoundsHeight()],
     measurements: o.getMeasurementList().asMap().collectEntries { k, v -> [k, v.doubleValue()] },
     parent: o.getParent() == null ? null : (o.getParent().isRootObject() ? 'root' : o.getParent().getID().toString())]
}), 'UTF-8')
new File(outDir, 'removed.txt').text = String.valueOf(hierarchy.getFlattenedObjectList(null).contains(earlier) ? 0 : 1)
PathIO.exportObjectsAsGeoJSON(new File(outDir, 'hierarchy.geojson'), after, PathIO.GeoJsonExportOptions.FEATURE_COLLECTION)
new File(outDir, 'uri.txt').text = server.getURIs().iterator().next().toString()
new File(outDir, 'version.txt').text = GeneralTools.getVersion()
if (failure != null) {
    new File(outDir, 'error.txt').setText(String.valueOf(failure.getMessage()), 'UTF-8')
    System.err.println(failure.getClass().getName() + ': ' + failure.getMessage())
    System.exit(1)
}
new File(outDir, 'response.json').setText(new Gson().toJson(result), 'UTF-8')
