// Test harness: QuPath's own GeoJSON code (qupath.lib.io.PathIO, GsonTools) on real PathObjects.
// Compiled and run by tests/test_qupath_real.py with the jars of ../shared/qupath/<version>/.
//
//   read FILE            PathIO.readObjects(FILE) into a PathObjectHierarchy; a JSON summary of
//                        every object (type, class names, colours, ROI, measurements, id) on stdout
//   export SPEC OUT      point annotations (PathObjects.createAnnotationObject(ROIs.createPointsROI,
//                        PathClass.fromString)) from SPEC, written by QuPath's exporter to OUT
// Both load QuPath's standard classes first, as the GUI does.
import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import qupath.lib.common.GeneralTools;
import qupath.lib.geom.Point2;
import qupath.lib.io.GsonTools;
import qupath.lib.io.PathIO;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathObjects;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.ROIs;
import qupath.lib.roi.interfaces.ROI;

public class QuPathHarness {

    static JsonArray rgb(Integer color) {
        if (color == null) return null;
        JsonArray a = new JsonArray();
        a.add((color >> 16) & 0xFF);
        a.add((color >> 8) & 0xFF);
        a.add(color & 0xFF);
        return a;
    }

    static String type(PathObject o) {
        if (o.isTile()) return "tile";
        if (o.isCell()) return "cell";
        if (o.isDetection()) return "detection";
        if (o.isAnnotation()) return "annotation";
        if (o.isTMACore()) return "tmaCore";
        return o.getClass().getSimpleName();
    }

    static JsonObject summary(PathObject o) {
        JsonObject j = new JsonObject();
        j.addProperty("type", type(o));
        j.addProperty("id", o.getID().toString());
        j.addProperty("name", o.getName());
        PathClass pc = o.getPathClass();
        if (pc != null) {
            j.addProperty("class", pc.toString());
            List<String> names = new ArrayList<>();
            for (PathClass c = pc; c != null; c = c.getParentClass()) names.add(c.getName());
            Collections.reverse(names);
            JsonArray n = new JsonArray();
            for (String s : names) n.add(s);
            j.add("names", n);
            j.add("classColor", rgb(pc.getColor()));
        }
        j.add("color", rgb(o.getColor()));
        ROI roi = o.getROI();
        j.addProperty("roi", roi.getRoiName());
        j.addProperty("geometry", roi.getGeometry().getGeometryType());
        j.addProperty("area", roi.getArea());
        JsonArray bounds = new JsonArray();
        bounds.add(roi.getBoundsX());
        bounds.add(roi.getBoundsY());
        bounds.add(roi.getBoundsWidth());
        bounds.add(roi.getBoundsHeight());
        j.add("bounds", bounds);
        if (roi.isPoint()) {
            JsonArray pts = new JsonArray();
            for (Point2 p : roi.getAllPoints()) {
                JsonArray xy = new JsonArray();
                xy.add(p.getX());
                xy.add(p.getY());
                pts.add(xy);
            }
            j.add("points", pts);
        }
        JsonObject m = new JsonObject();
        for (Map.Entry<String, Number> e : o.getMeasurementList().asMap().entrySet())
            m.addProperty(e.getKey(), e.getValue().doubleValue());
        j.add("measurements", m);
        j.addProperty("nChildren", o.nChildObjects());
        return j;
    }

    public static void main(String[] args) throws Exception {
        // QuPath's GUI holds the standard classes (Tumor, Stroma, ...) from start-up. Without
        // this, a derived class read first ("Tumor: Positive") creates its base class "Tumor"
        // with the name's hash colour, and the cached class then wins over the file's colour.
        PathClass.StandardPathClasses.TUMOR.getColor();
        Gson gson = new GsonBuilder().serializeSpecialFloatingPointValues().serializeNulls().create();
        if (args[0].equals("read")) {
            List<PathObject> objects = PathIO.readObjects(new File(args[1]));
            PathObjectHierarchy hierarchy = new PathObjectHierarchy();
            hierarchy.addObjects(objects);
            JsonObject out = new JsonObject();
            out.addProperty("qupathVersion", GeneralTools.getVersion());
            out.addProperty("nTopLevel", objects.size());
            JsonObject counts = new JsonObject();
            counts.addProperty("tiles", hierarchy.getTileObjects().size());
            counts.addProperty("detections", hierarchy.getDetectionObjects().size());
            counts.addProperty("annotations", hierarchy.getAnnotationObjects().size());
            counts.addProperty("all", hierarchy.getFlattenedObjectList(null).size() - 1);
            out.add("hierarchy", counts);
            JsonArray list = new JsonArray();
            for (PathObject o : hierarchy.getFlattenedObjectList(null)) {
                if (!o.isRootObject()) list.add(summary(o));
            }
            out.add("objects", list);
            System.out.println(gson.toJson(out));
        } else if (args[0].equals("export")) {
            JsonObject spec = JsonParser.parseString(
                Files.readString(new File(args[1]).toPath(), StandardCharsets.UTF_8)).getAsJsonObject();
            List<PathObject> objects = new ArrayList<>();
            for (JsonElement e : spec.getAsJsonArray("objects")) {
                JsonObject s = e.getAsJsonObject();
                JsonArray pts = s.getAsJsonArray("points");
                double[] x = new double[pts.size()];
                double[] y = new double[pts.size()];
                for (int i = 0; i < pts.size(); i++) {
                    x[i] = pts.get(i).getAsJsonArray().get(0).getAsDouble();
                    y[i] = pts.get(i).getAsJsonArray().get(1).getAsDouble();
                }
                PathClass pc = s.has("class") && !s.get("class").isJsonNull()
                    ? PathClass.fromString(s.get("class").getAsString()) : null;
                objects.add(PathObjects.createAnnotationObject(
                    ROIs.createPointsROI(x, y, ImagePlane.getDefaultPlane()), pc));
            }
            String mode = spec.get("mode").getAsString();
            File out = new File(args[2]);
            if (mode.equals("array")) {
                PathIO.exportObjectsAsGeoJSON(out, objects);
            } else if (mode.equals("collection")) {
                PathIO.exportObjectsAsGeoJSON(out, objects,
                    PathIO.GeoJsonExportOptions.FEATURE_COLLECTION, PathIO.GeoJsonExportOptions.PRETTY_JSON);
            } else if (mode.equals("gson")) {
                Files.writeString(out.toPath(), GsonTools.getInstance(true).toJson(objects));
            } else {
                throw new IllegalArgumentException("unknown mode " + mode);
            }
        } else {
            throw new IllegalArgumentException("usage: read FILE | export SPEC OUT");
        }
    }
}
