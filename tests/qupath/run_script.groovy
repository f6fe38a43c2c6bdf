/*
 * Runs a QuPath script file unchanged as QuPath runs it, on QuPath's own classes (the jars of
 * ../shared/qupath/<version>/ on the class path): an ImageData from
 * ImageServerProvider.buildServer on a real image file, made current with
 * QP.setBatchProjectAndImage(null, imageData), and the script evaluated with an ImportCustomizer
 * holding a static star import of qupath.lib.scripting.QP plus imports of QP.getCoreClasses().
 *
 * Usage: groovy -cp <QuPath and Debian jars> run_script.groovy SCRIPT IMAGE POINTS_JSON OUT_DIR
 *   POINTS_JSON: [{"x":..,"y":..,"class":"Tumor"|"Tumor: Positive"|null}, ...] become real point
 *   annotations; one detection from an "earlier run" (measurement "histosic: confidence") is added.
 * Writes OUT_DIR/hierarchy.geojson (every object in the hierarchy afterwards, by QuPath's exporter),
 * OUT_DIR/removed.txt (objects the script removed), OUT_DIR/response.json (its return value) and
 * OUT_DIR/uri.txt (the image's URI as QuPath gives it).
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
hierarchy.addObjects(objects)
int before = hierarchy.getFlattenedObjectList(null).size()

QP.setBatchProjectAndImage(null, imageData)
def imports = new ImportCustomizer()
imports.addStaticStars(QP.class.getName())
QP.getCoreClasses().each { imports.addImports(it.getName()) }
def config = new CompilerConfiguration()
config.addCompilationCustomizers(imports)
def result = new GroovyShell(config).evaluate(scriptFile)

def after = hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() }
new File(outDir, 'removed.txt').text = String.valueOf(hierarchy.getFlattenedObjectList(null).contains(earlier) ? 0 : 1)
PathIO.exportObjectsAsGeoJSON(new File(outDir, 'hierarchy.geojson'), after, PathIO.GeoJsonExportOptions.FEATURE_COLLECTION)
new File(outDir, 'response.json').setText(new Gson().toJson(result), 'UTF-8')
new File(outDir, 'uri.txt').text = server.getURIs().iterator().next().toString()
new File(outDir, 'version.txt').text = GeneralTools.getVersion()
