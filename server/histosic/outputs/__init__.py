"""What histosic writes for people and for QuPath, one job per module.

=================================== ===========================================================
:mod:`~histosic.outputs.qupath_classes` QuPath class colours and ``classification`` objects
:mod:`~histosic.outputs.seedfile`   reading seed points from QuPath GeoJSON
:mod:`~histosic.outputs.geojson`    a clustering as QuPath GeoJSON (tiles, detections, regions)
:mod:`~histosic.outputs.labels_csv` the per-patch labels CSV
:mod:`~histosic.outputs.raster`     the one patch painter, the one slide thumbnail reader, PNG
:mod:`~histosic.outputs.overlay`    the overlay PNG of a clustering (classes over the slide)
=================================== ===========================================================

Every file goes through :mod:`histosic.atomic`. These modules are core: they import none of
torch, grpc, paquo, :mod:`histosic.embed`, :mod:`histosic.service`, :mod:`histosic.commands`.
"""
