/*
 * Scenario for tests/test_qupath_live.py, run by run_script.groovy after histosic_cluster.groovy
 * ran with live=true: what a pathologist does next, as real hierarchy changes that fire QuPath's
 * own hierarchy events (addObject, removeObject, setROI + fireObjectsChangedEvent, setPathClass +
 * fireObjectClassificationsChangedEvent). After each step it waits for the map to be replaced (or
 * for nothing to happen) and records what it saw in OUT_DIR/scenario.json.
 */
import com.google.gson.GsonBuilder
import qupath.lib.images.ImageData
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.regions.ImagePlane
import qupath.lib.roi.ROIs
import qupath.lib.scripting.QP

int nPatches = System.getenv('QUPATH_TEST_N') as int
def plane = ImagePlane.getDefaultPlane()
def isOurs = { o ->
    def pc = o.getPathClass()
    (pc != null && pc.toString() == 'histosic: suggested seed') ||
            (o.isTile() && o.getMeasurementList().containsKey('histosic: confidence'))
}
def snapshot = {
    def objs = hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() && isOurs(it) }
    def tiles = objs.findAll { it.isTile() }
    [ids      : objs.collect { it.getID().toString() }.toSet(),
     complete : tiles.size() == nPatches,
     seeds    : tiles.count { it.getMeasurementList().get('histosic: seed') == 1d },
     suggested: objs.findAll { !it.isTile() }]
}
def liveThreads = { Thread.getAllStackTraces().keySet().findAll { it.getName().startsWith('histosic-live') && it.isAlive() }.size() }
// Wait up to `ms` for the map to be replaced; count every complete new map seen on the way.
def watch = { Set before, long ms ->
    long t0 = System.nanoTime()
    def seen = [] as Set
    def last = null
    long firstAt = -1
    while ((System.nanoTime() - t0) / 1e6 < ms) {
        def s = snapshot()
        if (s.complete && s.ids != before && !(s.ids in seen)) {
            seen << s.ids
            last = s
            if (firstAt < 0) {
                firstAt = (long) ((System.nanoTime() - t0) / 1e6)
            }
        }
        Thread.sleep(10)
    }
    [updates: seen.size(), firstMs: firstAt, seeds: last == null ? snapshot().seeds : last.seeds]
}
def steps = [:]
def seedPoints = { hierarchy.getAnnotationObjects().findAll { it.getROI().isPoint() && it.getPathClass() != null && !isOurs(it) } }

// 0. Nothing changes by itself: the first run's own objects trigger nothing.
steps.idle = watch(snapshot().ids, 1500) + [threads: liveThreads(), seedsBefore: snapshot().seeds]

// 1. Add a Stroma point (a click with the Points tool).
def added = PathObjects.createAnnotationObject(ROIs.createPointsROI(4200, 2500, plane), PathClass.fromString('Stroma'))
def before = snapshot().ids
hierarchy.addObject(added)
steps.add = watch(before, 4000)

// 2. Move it (a drag: the ROI is replaced, then the change is fired).
before = snapshot().ids
added.setROI(ROIs.createPointsROI(4700, 2100, plane))
hierarchy.fireObjectsChangedEvent(this, [added])
steps.move = watch(before, 4000)

// 3. Accept a suggested seed: reclassify it (it becomes a seed and is kept).
def suggestion = snapshot().suggested[0]
def sx = suggestion.getROI().getCentroidX()
def sy = suggestion.getROI().getCentroidY()
suggestion.setPathClass(PathClass.fromString(sx < 20 * 128 ? 'Tumor' : 'Stroma'))
before = snapshot().ids // without the accepted suggestion: no longer histosic's
hierarchy.fireObjectClassificationsChangedEvent(this, [suggestion])
steps.accept = watch(before, 4000) + [kept: hierarchy.getFlattenedObjectList(null).contains(suggestion),
                                      stillSuggested: snapshot().suggested.any { it.getROI().getCentroidX() == sx && it.getROI().getCentroidY() == sy }]

// 4. Remove a point.
before = snapshot().ids
hierarchy.removeObject(added, true)
steps.remove = watch(before, 4000)

// 5. Five clicks in quick succession (50 ms apart, within the debounce): one re-cluster. The
// clicks are one stride (128 px) apart, so each has its own nearest patch: 100 px apart, two of
// them are nearest to the same patch and seed it once (they only seeded two before through the
// KD-tree's order among equally near patches, y = 4800 lying halfway between two rows).
before = snapshot().ids
(0..<5).each { i ->
    hierarchy.addObject(PathObjects.createAnnotationObject(ROIs.createPointsROI(3300 + 128 * i, 4800, plane), PathClass.fromString('Stroma')))
    Thread.sleep(50)
}
steps.burst = watch(before, 5000)

// 6. A change while a clustering is on its way (the test's proxy delays each answer): the older
//    answer is dropped, only the newer one is shown.
before = snapshot().ids
def late = PathObjects.createAnnotationObject(ROIs.createPointsROI(4900, 300, plane), PathClass.fromString('Stroma'))
hierarchy.addObject(late)
Thread.sleep((System.getenv('QUPATH_TEST_DEBOUNCE') as long) + 300) // the request is in flight now
def later = PathObjects.createAnnotationObject(ROIs.createPointsROI(4900, 700, plane), PathClass.fromString('Stroma'))
hierarchy.addObject(later)
steps.overtaken = watch(before, 6000)

// 7. A user annotation and a non-seed change: no re-cluster.
before = snapshot().ids
hierarchy.addObject(PathObjects.createAnnotationObject(ROIs.createRectangleROI(2000, 2000, 100, 100, plane), PathClass.fromString('Necrosis')))
steps.userAnnotation = watch(before, 1500)

// 8. Running the script again (live off) detaches it: a new point triggers nothing.
def printed = new StringWriter()
runScript(['live=false'], printed)
steps.rerunPrinted = printed.toString()
steps.threadsAfterRerun = liveThreads()
before = snapshot().ids
hierarchy.addObject(PathObjects.createAnnotationObject(ROIs.createPointsROI(4000, 4700, plane), PathClass.fromString('Stroma')))
steps.afterRerun = watch(before, 1500)

// 9. Live again, then another image becomes current (this one closed): the next event detaches it.
runScript(['live=true'], new StringWriter())
steps.threadsLiveAgain = liveThreads()
QP.setBatchProjectAndImage(null, new ImageData(imageData.getServer()))
before = snapshot().ids
hierarchy.addObject(PathObjects.createAnnotationObject(ROIs.createPointsROI(4100, 4700, plane), PathClass.fromString('Stroma')))
steps.afterClose = watch(before, 1500)
Thread.sleep(500)
steps.threadsAfterClose = liveThreads()
QP.setBatchProjectAndImage(null, imageData)

new File(outDir, 'scenario.json').setText(new GsonBuilder().create().toJson(steps), 'UTF-8')
