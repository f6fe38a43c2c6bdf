/*
 * A QuPath project built with QuPath's own project API, and a script run over it as
 * `QuPath script -p project.qpproj -s SCRIPT -a ...` runs it: for each image entry, its saved
 * ImageData read (entry.readImageData), made current with QP.setBatchProjectAndImage(project,
 * imageData), the script evaluated with QuPath's default imports and `args`, the image data saved
 * back (entry.saveImageData); an error is printed for that image and the next one runs.
 *
 * Usage: java -cp <QuPath and Debian jars>:groovy-all.jar groovy.ui.GroovyMain run_project.groovy
 *          create PROJECT_DIR SPEC_JSON | edit PROJECT_DIR SPEC_JSON (see below)
 *        ... run_project.groovy read PROJECT_DIR OUT_DIR: OUT_DIR/<image name>.json as below
 *        ... run_project.groovy script PROJECT_DIR SCRIPT OUT_DIR [name=value ...]
 *   (QuPath's classes on the JVM's class path, as in QuPath: PathIO refuses to read .qpdata
 *   classes loaded by another loader, e.g. the one of `groovy -cp`.)
 *          then reopens the project from disk and writes OUT_DIR/<image name>.json: what each
 *          image's saved hierarchy holds; OUT_DIR/errors.json: the error of each failed image.
 */
import com.google.gson.Gson
import com.google.gson.JsonParser
import java.awt.image.BufferedImage
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.customizers.ImportCustomizer
import qupath.lib.images.servers.ImageServerProvider
import qupath.lib.images.servers.ImageServers
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.projects.ProjectIO
import qupath.lib.projects.Projects
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs
import qupath.lib.scripting.QP

PathClass.StandardPathClasses.TUMOR.getColor() // the GUI holds the standard classes from start-up
// QuPath's GUI loads ImageServers early; its static block registers the server builders' Gson
// subtypes. Without it a project saves each image's serverBuilder as {} and cannot be reopened.
ImageServers.getServerBuilderFactory()
def dir = new File(args[1])
def plane = ImagePlane.getDefaultPlane()
def point = { o ->
    def cls = o.has('class') && !o.get('class').isJsonNull() ? PathClass.fromString(o.get('class').getAsString()) : null
    PathObjects.createAnnotationObject(ROIs.createPointsROI(o.get('x').getAsDouble(), o.get('y').getAsDouble(), plane), cls)
}
// What each image's saved hierarchy holds, read back from disk.
def readBack = { File outDir ->
    outDir.mkdirs()
    def reopened = ProjectIO.loadProject(new File(dir, 'project.qpproj'), BufferedImage.class)
    reopened.getImageList().each { entry ->
        def h = entry.readImageData().getHierarchy()
        def all = h.getFlattenedObjectList(null).findAll { !it.isRootObject() }
        def isSuggested = { it.getPathClass() != null && it.getPathClass().toString() == 'histosic: suggested seed' }
        def summary = [
            tiles      : h.getTileObjects().size(),
            points     : all.count { it.isAnnotation() && it.getROI().isPoint() && !isSuggested(it) },
            suggested  : all.count { isSuggested(it) },
            classes    : all.findAll { it.isTile() }.collect { it.getPathClass().toString() }.countBy { it },
            all        : all.size(),
            user       : all.findAll { it.getName() == 'user region' || (it.isDetection() && !it.isTile()) }
                    .collect { [it.getID().toString(), it.getPathClass().toString(), it.getROI().getRoiName()] },
        ]
        new File(outDir, entry.getImageName() + '.json').setText(new Gson().toJson(summary), 'UTF-8')
    }
}
if (args[0] == 'create' || args[0] == 'edit') {
    // create: [{"image": PATH, "points": [...], "user": true}]: a new project, one entry per image,
    //   the points (and with "user" a user's rectangle annotation and detection) saved in it.
    // edit: [{"imageName": NAME, "points": [...]}]: more points saved into that entry.
    def project
    if (args[0] == 'create') {
        dir.mkdirs() // an existing folder: the project file goes inside it
        project = Projects.createProject(dir, BufferedImage.class)
    } else {
        project = ProjectIO.loadProject(new File(dir, 'project.qpproj'), BufferedImage.class)
    }
    JsonParser.parseString(new File(args[2]).getText('UTF-8')).getAsJsonArray().each { e ->
        def spec = e.getAsJsonObject()
        def entry
        if (args[0] == 'create') {
            def file = new File(spec.get('image').getAsString())
            def support = ImageServerProvider.getPreferredUriImageSupport(BufferedImage.class, file.toURI().toString())
            entry = project.addImage(support.getBuilders().get(0))
            entry.setImageName(file.getName())
        } else {
            entry = project.getImageList().find { it.getImageName() == spec.get('imageName').getAsString() }
        }
        def imageData = entry.readImageData()
        def objects = spec.getAsJsonArray('points').collect { point(it.getAsJsonObject()) }
        if (spec.has('user') && spec.get('user').getAsBoolean()) {
            def region = PathObjects.createAnnotationObject(ROIs.createRectangleROI(100, 100, 300, 200, plane), PathClass.fromString('Region*'))
            region.setName('user region')
            objects << region
            objects << PathObjects.createDetectionObject(ROIs.createEllipseROI(700, 700, 40, 40, plane), PathClass.fromString('Immune cells'))
        }
        imageData.getHierarchy().addObjects(objects)
        entry.saveImageData(imageData)
    }
    project.syncChanges()
    return
}
if (args[0] == 'read') {
    readBack(new File(args[2]))
    return
}

def scriptFile = new File(args[2])
def outDir = new File(args[3])
outDir.mkdirs()
def scriptArgs = args.length > 4 ? (args[4..-1] as String[]) : new String[0]
def imports = new ImportCustomizer()
imports.addStaticStars(QP.class.getName())
QP.getCoreClasses().each { imports.addImports(it.getName()) }
def config = new CompilerConfiguration()
config.addCompilationCustomizers(imports)

def project = ProjectIO.loadProject(new File(dir, 'project.qpproj'), BufferedImage.class)
def errors = [:]
project.getImageList().each { entry ->
    def imageData = entry.readImageData()
    QP.setBatchProjectAndImage(project, imageData)
    try {
        def binding = new Binding()
        binding.setVariable('args', scriptArgs)
        new GroovyShell(binding, config).evaluate(scriptFile)
        entry.saveImageData(imageData)
    } catch (Exception e) {
        errors[entry.getImageName()] = e.getMessage()
        System.err.println("ERROR: ${entry.getImageName()}: ${e.getMessage()}")
    } finally {
        QP.resetBatchProjectAndImage()
    }
}
project.syncChanges()

readBack(outDir)
new File(outDir, 'errors.json').setText(new Gson().toJson(errors), 'UTF-8')
