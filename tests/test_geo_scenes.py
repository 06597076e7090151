"""GeoTIFF scenes as map-located chips: footprints against pyproj, chipping rules, indexing and search by place.

Small GeoTIFFs with known transforms (UTM 14N and WGS84) are written in tmp folders; the real NAIP scene of
``../shared/data/geotiff`` runs the issue's flow (index, then ``--bbox`` + ``--geojson``, read back with pyogrio).
Indexing uses the tiny-test model saved as a checkpoint (fresh weights: what is tested is where chips are, not
what they show).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pyproj = pytest.importorskip("pyproj")
pytest.importorskip("faiss")

from rasterio.transform import from_origin  # noqa: E402

from engine.data.geo_read import read_chip  # noqa: E402
from engine.data.geo_scenes import GeoOptions, SceneReport, acquisition_date, plan_scene  # noqa: E402

GEOTIFF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff"
NAIP_2018 = GEOTIFF_DIR / "naip_m_4709963_se_14_20180716.tif"
UTM_14N = "EPSG:26914"
TOLERANCE_DEG = 1e-6


def write_geotiff(path: Path, width: int = 100, height: int = 80, count: int = 4, dtype: str = "uint8",
                  crs: str | None = UTM_14N, transform=None, nodata=None, data: np.ndarray | None = None,
                  tags: dict | None = None) -> Path:
    """A small GeoTIFF; default: 4 bands over UTM 14N, 10 m pixels, origin in North Dakota."""
    if data is None:
        rng = np.random.default_rng(len(path.name))
        data = rng.integers(1, 250, (count, height, width)).astype(dtype)
    transform = transform if transform is not None else from_origin(485_000.0, 5_209_000.0, 10.0, 10.0)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
               "transform": transform, "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
        if tags:
            dataset.update_tags(**tags)
    return path


def _corners(transform, chip) -> list[tuple[float, float]]:
    col, row, width, height = chip.col_off, chip.row_off, chip.win_width, chip.win_height
    return [transform @ point for point in ((col, row), (col + width, row), (col + width, row + height),
                                            (col, row + height))]


# -- footprints against pyproj --------------------------------------------------------------------------------
def test_utm_chip_footprints_match_pyproj(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "utm.tif", width=100, height=80)
    report = SceneReport()
    chips = plan_scene(scene, GeoOptions(), 32, report)
    # columns 0, 32, 64, 68 (the last shifted back to the edge) x rows 0, 32, 48
    assert len(chips) == 12 and report.chips == 12 and report.empty_chips == 0
    assert sorted({chip.col_off for chip in chips}) == [0, 32, 64, 68]
    assert sorted({chip.row_off for chip in chips}) == [0, 32, 48]
    transform = from_origin(485_000.0, 5_209_000.0, 10.0, 10.0)
    to_wgs84 = pyproj.Transformer.from_crs(UTM_14N, "EPSG:4326", always_xy=True)
    for chip in chips:
        corners = _corners(transform, chip)
        assert chip.footprint[:4] == [[x, y] for x, y in corners] and chip.crs == UTM_14N
        lons, lats = to_wgs84.transform([x for x, _ in corners], [y for _, y in corners])
        ring = np.asarray(chip.footprint_wgs84)
        # the densified ring passes through every transformed corner
        for lon, lat in zip(lons, lats):
            assert np.min(np.hypot(ring[:, 0] - lon, ring[:, 1] - lat)) < TOLERANCE_DEG
        assert chip.lon_min <= min(lons) + TOLERANCE_DEG and chip.lon_max >= max(lons) - TOLERANCE_DEG
        assert chip.lat_min == pytest.approx(min(lats), abs=TOLERANCE_DEG)
        assert chip.lat_max == pytest.approx(max(lats), abs=TOLERANCE_DEG)
        centre = transform @ (chip.col_off + 16, chip.row_off + 16)
        lon, lat = to_wgs84.transform(*centre)
        assert (chip.lon, chip.lat) == pytest.approx((lon, lat), abs=TOLERANCE_DEG)
        assert chip.gsd == pytest.approx(10.0)


def test_wgs84_scene_footprints_are_the_geotransform(tmp_path: Path) -> None:
    step = 0.0001
    scene = write_geotiff(tmp_path / "geo.tif", width=64, height=48, count=3, dtype="float64", crs="EPSG:4326",
                          transform=from_origin(6.86, 53.42, step, step),
                          data=np.random.default_rng(1).normal(100, 20, (3, 48, 64)))
    chips = plan_scene(scene, GeoOptions(), 24, SceneReport())
    assert len(chips) == 3 * 2
    for chip in chips:
        west, north = 6.86 + chip.col_off * step, 53.42 - chip.row_off * step
        assert (chip.lon_min, chip.lat_max) == pytest.approx((west, north), abs=TOLERANCE_DEG)
        assert (chip.lon_max, chip.lat_min) == pytest.approx((west + 24 * step, north - 24 * step), abs=TOLERANCE_DEG)
        geod, lon, lat = pyproj.Geod(ellps="WGS84"), 6.86 + 32 * step, 53.42 - 24 * step  # the scene centre
        across, down = geod.inv(lon, lat, lon + step, lat)[2], geod.inv(lon, lat, lon, lat - step)[2]
        assert chip.gsd == pytest.approx((across + down) / 2, rel=1e-6)  # metres: mean of both pixel sides
        assert chip.scale is not None  # float data is stretched by the scene's percentiles


# -- chipping rules -----------------------------------------------------------------------------------------
def test_sixteen_bit_scaling_nodata_and_empty_chips(tmp_path: Path) -> None:
    data = np.full((3, 64, 96), 1000, np.uint16)
    data[:, :, 48:] = np.linspace(1000, 5000, 48, dtype=np.uint16)  # right half a ramp, left half flat
    data[:, :32, :32] = 0  # a nodata corner exactly one chip wide
    scene = write_geotiff(tmp_path / "s16.tif", width=96, height=64, count=3, dtype="uint16", nodata=0, data=data)
    report = SceneReport()
    chips = plan_scene(scene, GeoOptions(), 32, report)
    assert report.empty_chips == 1 and len(chips) == 5
    assert not any(chip.col_off == 0 and chip.row_off == 0 for chip in chips)
    low, high = chips[0].scale
    assert 1000 <= low < high <= 5000
    right = next(chip for chip in chips if chip.col_off == 64)
    pixels = np.asarray(read_chip(scene, right))
    expected = np.clip(np.round((data[:, right.row_off:right.row_off + 32, 64:].astype(np.float64) - low)
                                * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels, np.moveaxis(expected, 0, -1))
    assert pixels.max() == 255  # the top of the ramp is above the 98th percentile
    flat = np.asarray(read_chip(scene, next(chip for chip in chips if chip.col_off == 0)))
    assert flat.max() == 0  # 1000 is the 2nd percentile: the flat half is black


def test_overlap_gsd_and_band_choice(tmp_path: Path) -> None:
    data = np.stack([np.full((80, 100), value, np.uint8) for value in (10, 20, 30, 40)])
    scene = write_geotiff(tmp_path / "rgbn.tif", data=data)
    overlapping = plan_scene(scene, GeoOptions(chip_overlap=16), 32, SceneReport())
    assert sorted({chip.col_off for chip in overlapping}) == [0, 16, 32, 48, 64, 68]
    coarse = plan_scene(scene, GeoOptions(gsd=20.0), 20, SceneReport())  # 20 m chips of 20 px = 40 scene px
    assert {chip.win_width for chip in coarse} == {40} and coarse[0].gsd == pytest.approx(20.0)
    assert read_chip(scene, coarse[0]).size == (20, 20)
    default = plan_scene(scene, GeoOptions(), 32, SceneReport())[0]
    assert default.bands == (1, 2, 3) and np.asarray(read_chip(scene, default))[0, 0].tolist() == [10, 20, 30]
    false_colour = plan_scene(scene, GeoOptions(bands=(4, 1, 2)), 32, SceneReport())[0]
    assert np.asarray(read_chip(scene, false_colour))[0, 0].tolist() == [40, 10, 20]


def test_acquisition_date_from_tags_then_file_name(tmp_path: Path) -> None:
    tagged = write_geotiff(tmp_path / "scene_20180716.tif", tags={"TIFFTAG_DATETIME": "2015:06:01 10:00:00"})
    named = write_geotiff(tmp_path / "naip_m_4709963_se_14_20090818.tif")
    undated = write_geotiff(tmp_path / "scene_20181399.tif")  # not a date
    with rasterio.open(tagged) as a, rasterio.open(named) as b, rasterio.open(undated) as c:
        assert acquisition_date(a, tagged) == "2015-06-01"
        assert acquisition_date(b, named) == "2009-08-18"
        assert acquisition_date(c, undated) is None


# -- indexing and searching by place ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    import encoders

    folder = tmp_path_factory.mktemp("geo-model") / "model"
    torch.manual_seed(0)
    encoders.save_model(encoders.create_model("tiny-test"), folder)
    return folder


def _index(data: Path, out: Path, model: Path, *extra: str) -> int:
    from engine.cli import main

    return main(["index", str(data), "--out", str(out), "--model", str(model), "--workers", "0", *extra])


def _query(index: Path, *extra: str) -> int:
    from engine.cli import main

    return main(["query", "a lake", "--index", str(index), *extra])


@pytest.fixture(scope="module")
def naip_index(tmp_path_factory, model_dir: Path) -> Path:
    if not NAIP_2018.is_file():
        pytest.skip("../shared/data/geotiff is not available")
    out = tmp_path_factory.mktemp("naip") / "idx"
    assert _index(NAIP_2018, out, model_dir, "--chip-size", "192") == 0
    return out


def _scene_bounds_wgs84(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as dataset:
        from rasterio.warp import transform_bounds

        return transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds, densify_pts=21)


def test_naip_scene_bbox_query_writes_geojson_a_gis_reads(naip_index: Path, tmp_path: Path, capsys) -> None:
    """The issue's "done when": index the real NAIP scene, query with --bbox, open the answer with GDAL/OGR."""
    pyogrio = pytest.importorskip("pyogrio")
    rows = _sql(f"SELECT count(*), min(acquired)::VARCHAR, min(crs), min(gsd) FROM read_parquet("
               f"'{naip_index}/shards/*.parquet')")[0]
    assert rows == (20, "2018-07-16", UTM_14N, 5.0)  # 934 x 724 px in 192 px chips: 5 x 4
    box = (-99.17, 47.01, -99.15, 47.02)
    capsys.readouterr()
    hits_file = tmp_path / "hits.geojson"
    assert _query(naip_index, "--bbox", ",".join(map(str, box)), "--geojson", str(hits_file), "-k", "50",
                  "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    inside = _sql(f"SELECT count(*) FROM read_parquet('{naip_index}/shards/*.parquet') WHERE lon_max >= {box[0]}"
                  f" AND lon_min <= {box[2]} AND lat_max >= {box[1]} AND lat_min <= {box[3]}")[0][0]
    assert 0 < len(answer["results"]) == inside < 20
    west, south, east, north = _scene_bounds_wgs84(NAIP_2018)
    for hit in answer["results"]:
        lon_min, lat_min, lon_max, lat_max = hit["location"]["bbox"]
        assert lon_max >= box[0] and lon_min <= box[2] and lat_max >= box[1] and lat_min <= box[3]
        assert west - 1e-9 <= lon_min <= lon_max <= east + 1e-9 and south - 1e-9 <= lat_min <= lat_max <= north + 1e-9
        assert hit["location"]["footprint"]["type"] == "Polygon"
    frame = pyogrio.read_dataframe(hits_file) if _has_geopandas() else None
    info = pyogrio.read_info(hits_file)
    assert info["features"] == len(answer["results"]) and info["geometry_type"] == "Polygon"
    assert "EPSG:4326" in str(info["crs"]) or "4326" in str(info["crs"])
    meta, _, geometry, fields = pyogrio.raw.read(hits_file)
    names = list(meta["fields"])
    assert {"rank", "score", "scene", "acquired", "caption"} <= set(names)
    assert list(fields[names.index("rank")]) == list(range(1, len(answer["results"]) + 1))
    assert frame is None or len(frame) == len(answer["results"])


def _sql(text: str) -> list[tuple]:
    import duckdb

    with duckdb.connect() as connection:
        return connection.execute(text).fetchall()


def _has_geopandas() -> bool:
    try:
        import geopandas  # noqa: F401
    except ImportError:
        return False
    return True


def test_where_on_lat_near_radius_and_table_coordinates(naip_index: Path, capsys) -> None:
    capsys.readouterr()
    assert _query(naip_index, "--where", "lat > 47.02", "-k", "50", "--json") == 0
    north = json.loads(capsys.readouterr().out)["results"]
    expected = _sql(f"SELECT count(*) FROM read_parquet('{naip_index}/shards/*.parquet') WHERE lat > 47.02"
                    )[0][0]
    assert 0 < len(north) == expected < 20 and all(hit["location"]["lat"] > 47.02 for hit in north)
    centre = north[0]["location"]
    assert _query(naip_index, "--near", f"{centre['lon']},{centre['lat']}", "--radius-km", "0.1", "--json") == 0
    near = json.loads(capsys.readouterr().out)
    assert [hit["image_id"] for hit in near["results"]] == [north[0]["image_id"]]  # 0.1 km: only its own chip
    assert near["place"].startswith("within 0.1 km")
    assert _query(naip_index, "--near", f"{centre['lon']},{centre['lat']}", "--radius-km", "1.5", "--json") == 0
    assert 1 < len(json.loads(capsys.readouterr().out)["results"]) < 20
    assert _query(naip_index, "-k", "2") == 0
    assert "lat, lon" in capsys.readouterr().out


def test_gallery_shows_coordinates_and_an_offline_overview(naip_index: Path, tmp_path: Path) -> None:
    page = tmp_path / "g.html"
    assert _query(naip_index, "-k", "3", "--html", str(page)) == 0
    text = page.read_text()
    assert text.count("class='where'") == 3 and "<svg" in text and text.count("<rect") == 3
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert text.count("data:image/jpeg;base64,") == 4  # three chips + one overview


def test_three_naip_years_filter_by_acquisition_date(tmp_path: Path, model_dir: Path, capsys) -> None:
    scenes = sorted(GEOTIFF_DIR.glob("naip_*.tif"))
    if len(scenes) != 3:
        pytest.skip("the three NAIP scenes of ../shared/data/geotiff are not available")
    folder = tmp_path / "naip"
    folder.mkdir()
    for scene in scenes:
        (folder / scene.name).symlink_to(scene)
    out = tmp_path / "idx"
    assert _index(folder, out, model_dir, "--chip-size", "320") == 0  # 3 x 3 chips a year
    capsys.readouterr()
    assert _query(out, "--where", "acquired >= '2014-01-01'", "-k", "100", "--json") == 0
    years = sorted({hit["location"]["acquired"][:4] for hit in json.loads(capsys.readouterr().out)["results"]})
    assert years == ["2014", "2018"]


def test_resume_append_and_mixed_folder(tmp_path: Path, model_dir: Path, capsys) -> None:
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    write_geotiff(folder / "a_20200101.tif", width=64, height=64)
    Image.new("RGB", (40, 40), (0, 120, 0)).save(folder / "field_1.png")
    plain = folder / "plain.tif"
    Image.new("RGB", (40, 40), (0, 0, 200)).save(plain)  # a TIFF without georeferencing
    out = tmp_path / "idx"
    assert _index(folder, out, model_dir, "--chip-size", "32") == 0
    err = capsys.readouterr().err
    assert err.count("no georeferencing") == 1 and "plain.tif" in err
    table = f"read_parquet('{out}/shards/*.parquet', union_by_name = true)"
    rows = _sql(f"SELECT path, lon IS NOT NULL FROM {table} ORDER BY image_id")
    assert rows == [("a_20200101.tif", True)] * 4 + [("field_1.png", False), ("plain.tif", False)]
    write_geotiff(folder / "b_20210101.tif", width=64, height=32)
    assert _index(folder, out, model_dir, "--chip-size", "32", "--append") == 0
    ids = _sql(f"SELECT image_id, path FROM {table} ORDER BY image_id")
    assert [path for _, path in ids].count("b_20210101.tif") == 2 and len({i for i, _ in ids}) == len(ids) == 8
    assert "duplicate paths skipped: 6" in capsys.readouterr().err
    assert _index(folder, out, model_dir, "--chip-size", "32", "--append") == 0  # nothing new, nothing doubled
    assert _sql(f"SELECT count(*) FROM {table}")[0][0] == 8


# -- bad input: one line, nothing written ------------------------------------------------------------------------
def _one_error_line(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("make, extra, fragments", [
    (lambda p: write_geotiff(p, count=4), ["--bands", "1,2,5"], ["band 5", "4 band(s)"]),
    (lambda p: write_geotiff(p, width=40, height=30), ["--chip-size", "64"], ["larger than the scene", "40 x 30"]),
    (lambda p: write_geotiff(p, crs='LOCAL_CS["site grid",UNIT["metre",1]]'), ["--chip-size", "32"],
     ["unknown CRS"]),
    (lambda p: write_geotiff(p), ["--chip-overlap", "32", "--chip-size", "32"], ["--chip-overlap"]),
    (lambda p: write_geotiff(p), ["--bands", "1,x"], ["--bands"]),
])
def test_bad_scene_input_is_one_line_and_writes_nothing(tmp_path: Path, model_dir: Path, capsys, make, extra,
                                                        fragments) -> None:
    scene = make(tmp_path / "scene.tif")
    out = tmp_path / "idx"
    capsys.readouterr()
    assert _index(scene, out, model_dir, *extra) != 0
    _one_error_line(capsys, *fragments)
    assert not out.exists()  # nothing half-written: not even the folder


@pytest.mark.parametrize("extra, fragments", [
    (["--bbox", "-99.1,47,-99.2,47.1"], ["west -99.1 is east of east -99.2"]),
    (["--bbox", "-190,47,-99,47.1"], ["within -180..180"]),
    (["--bbox", "-99,95,-98,96"], ["within -90..90"]),
    (["--bbox", "1,2,3"], ["W,S,E,N"]),
    (["--near", "-99.15,47.02"], ["--radius-km"]),
    (["--near", "-99.15,47.02", "--radius-km", "-1"], ["positive"]),
])
def test_bad_place_filters_are_one_line(naip_index: Path, tmp_path: Path, capsys, extra, fragments) -> None:
    capsys.readouterr()
    hits_file = tmp_path / "hits.geojson"
    assert _query(naip_index, *extra, "--geojson", str(hits_file)) != 0
    _one_error_line(capsys, *fragments)
    assert not hits_file.exists()


def test_place_filter_on_an_index_without_chips_is_refused(tmp_path: Path, model_dir: Path, capsys) -> None:
    from PIL import Image

    folder = tmp_path / "plain"
    folder.mkdir()
    for number in range(3):
        Image.new("RGB", (32, 32), (number * 60, 0, 0)).save(folder / f"tile_{number}.png")
    assert _index(folder, tmp_path / "idx", model_dir) == 0
    capsys.readouterr()
    assert _query(tmp_path / "idx", "--bbox", "0,0,1,1") != 0
    _one_error_line(capsys, "no map-located chips")


def test_http_fields_carry_the_place_filter() -> None:
    from engine.query.server import BadRequest, request_from_fields

    request = request_from_fields({"q": "lake", "bbox": "-99.2,47.0,-99.1,47.1"})
    assert request.place.bbox == (-99.2, 47.0, -99.1, 47.1)
    request = request_from_fields({"q": "lake", "near": [-99.15, 47.02], "radius_km": 2})
    assert request.place.near == (-99.15, 47.02) and request.place.radius_km == 2
    with pytest.raises(BadRequest) as error:
        request_from_fields({"q": "lake", "bbox": "-99,47,-100,48"})
    assert error.value.status == 400 and "bbox" in str(error.value) and "--" not in str(error.value)


def test_mask_files_are_refused_for_scenes(tmp_path: Path, model_dir: Path, capsys) -> None:
    scene = write_geotiff(tmp_path / "scene.tif")
    (tmp_path / "masks").mkdir()
    capsys.readouterr()
    assert _index(scene, tmp_path / "idx", model_dir, "--chip-size", "32", "--mask", "hard", "--masks",
                  str(tmp_path / "masks")) != 0
    _one_error_line(capsys, "--masks", "chips")
    assert not (tmp_path / "idx").exists()


def test_http_query_by_place(naip_index: Path) -> None:
    import http.client

    from engine.query.engine import QueryEngine
    from engine.query.server import serve_in_thread

    engine = QueryEngine(naip_index, device="cpu")
    running, thread = serve_in_thread(engine)
    port = running.server_address[1]

    def get(path: str):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    try:
        status, body = get("/query?q=lake&k=50&bbox=-99.17,47.01,-99.15,47.02")
        assert status == 200 and 0 < len(body["results"]) < 20 and body["place"].startswith("bbox")
        for hit in body["results"]:
            lon_min, lat_min, lon_max, lat_max = hit["location"]["bbox"]
            assert lon_max >= -99.17 and lon_min <= -99.15 and lat_max >= 47.01 and lat_min <= 47.02
        status, body = get("/query?q=lake&near=-99.16,47.02&radius_km=0.1")
        assert status == 200 and len(body["results"]) >= 1
        status, body = get("/query?q=lake&bbox=-99.15,47.01,-99.17,47.02")
        assert status == 400 and "bbox" in body["error"]
        status, body = get("/query?q=lake&near=-99.16,47.02")
        assert status == 400 and "radius_km" in body["error"]
    finally:
        running.shutdown()
        running.server_close()
        thread.join(timeout=10)
        engine.close()


def test_bbox_selects_by_footprint_polygon_not_its_box(naip_index: Path, capsys) -> None:
    """Boxes placed at chip corners: the answer equals shapely's polygon-box intersection, chip for chip."""
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import box as make_box

    rows = _sql(f"SELECT image_id, footprint_wgs84, lon_min, lat_min, lon_max, lat_max FROM read_parquet("
                f"'{naip_index}/shards/*.parquet') ORDER BY image_id")
    boxes = []
    for _, _, lon_min, lat_min, lon_max, lat_max in rows[:6]:
        width, height = (lon_max - lon_min) * 0.0005, (lat_max - lat_min) * 0.0005  # about half a metre
        boxes.append((lon_max - width, lat_max - height, lon_max + width, lat_max + height))  # a north-east corner
        boxes.append((lon_min - width, lat_min - height, lon_min + width, lat_min + height))  # a south-west corner
    differs = 0
    for box in boxes:
        polygon_answer = {row[0] for row in rows if shapely.from_wkt(row[1]).intersects(make_box(*box))}
        box_answer = {row[0] for row in rows if row[4] >= box[0] and row[2] <= box[2] and row[5] >= box[1]
                      and row[3] <= box[3]}
        differs += polygon_answer != box_answer
        capsys.readouterr()
        assert _query(naip_index, f"--bbox={','.join(repr(value) for value in box)}", "-k", "50", "--json") == 0
        answer = json.loads(capsys.readouterr().out)["results"]
        assert {hit["image_id"] for hit in answer} == polygon_answer, box
    assert differs > 0  # some corner box touches a footprint's bounding box but not the footprint itself


def test_kill_9_mid_scene_then_rerun_gives_every_chip_once(tmp_path: Path) -> None:
    """A real SIGKILL of ``engine index`` on a scene after its first shard; the rerun reads the stored plan (the
    chip windows) and ends with the same rows as an uninterrupted build."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pyarrow.parquet as pq

    tests = Path(__file__).parent
    launch = (f"import sys; sys.path.insert(0, {str(tests)!r}); import indexing_fakes; indexing_fakes.install(); "
              "from engine.cli import main; sys.exit(main(sys.argv[1:]))")
    scene = write_geotiff(tmp_path / "scene_20200101.tif", width=64, height=64)

    def command(out: Path, model: str) -> list[str]:
        return [sys.executable, "-c", launch, "index", str(scene), "--out", str(out), "--model", model,
                "--chip-size", "16", "--shard-size", "4", "--batch-size", "2", "--workers", "0"]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(command(killed, "fake-3:slow"), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (killed / "shards" / "part-00000.parquet").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done = len(list((killed / "shards").glob("part-*.parquet")))
    assert 1 <= done < 4 and not (killed / "index.json").exists()
    rerun = subprocess.run(command(killed, "fake-3:slow"), env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0 and f"reused {done}" in rerun.stderr.decode(), rerun.stderr.decode()
    assert subprocess.run(command(clean, "fake-3"), env=env, capture_output=True, timeout=300).returncode == 0
    columns = ["image_id", "col_off", "row_off", "lon", "lat", "embedding"]
    after_kill = pq.read_table(killed / "shards", columns=columns).sort_by("image_id").to_pylist()
    uninterrupted = pq.read_table(clean / "shards", columns=columns).sort_by("image_id").to_pylist()
    assert len(after_kill) == 16 and after_kill == uninterrupted
    assert len({(row["col_off"], row["row_off"]) for row in after_kill}) == 16


# -- with hostile input (issue 28) and batched serving / the Python API (issue 31) ---------------------------------
@pytest.mark.parametrize("batched", [False, True])
def test_place_filter_runs_with_where_on_the_request_thread_within_the_budget(naip_index: Path, batched) -> None:
    """--bbox/--near run in the --where pre-filter step: on the caller's thread (never the model thread or a
    batch), with what is left of the filter budget; the answer is the same as the filter's own ids."""
    import threading

    from engine.query.batching import BatchPolicy
    from engine.query.engine import QueryEngine
    from engine.query.geo_filter import parse_geo_filter
    from engine.query.request import QueryRequest

    engine = QueryEngine(naip_index, device="cpu", batch=BatchPolicy() if batched else None, filter_budget_s=1.5)
    calls: list[tuple[int, float]] = []
    original = engine.store.place_ids

    def recording(place, budget_s=None):
        calls.append((threading.get_ident(), budget_s))
        return original(place, budget_s)

    engine.store.place_ids = recording
    try:
        place = parse_geo_filter("-99.17,47.01,-99.15,47.02", None, None)
        result = engine.search(QueryRequest(text="a lake", k=50, where="lat > 47.0", place=place))
        expected = set(engine.store.place_ids(place).tolist()) & set(engine.store.filter_ids("lat > 47.0").tolist())
        calls.pop()
        assert [thread for thread, _ in calls] == [threading.get_ident()] != [engine._model_thread_id]
        assert 0 < calls[0][1] <= 1.5
        assert 0 < len(result.hits) and {hit.image_id for hit in result.hits} == expected
        assert result.place.startswith("bbox") and "filter" in result.timings_ms
        assert all(hit.geo is not None for hit in result.hits)
        calls.clear()
        empty = engine.search(QueryRequest(text="a lake", where="lat > 89", place=place))
        assert calls == [] and empty.hits == [] and "no chip matches bbox" in empty.notes[0]  # --where empty first
    finally:
        engine.close()


def test_the_place_filter_stops_at_its_time_budget() -> None:
    """The place filter's SQL goes through the filter guard's watchdog (a huge catalog: interrupted in time)."""
    import time
    from types import SimpleNamespace

    import duckdb

    from engine.query.geo_filter import matching_ids, parse_geo_filter
    from indexing.filter_guard import FilterTimeout

    connection = duckdb.connect()
    connection.execute("CREATE VIEW images AS SELECT range AS image_id, 10.0 + (range % 7) * 1e-9 AS lon_min, "
                       "10.0 AS lon_max, 10.0 AS lat_min, 10.0 AS lat_max, '' AS footprint_wgs84 "
                       "FROM range(1000000000)")
    store = SimpleNamespace(catalog=SimpleNamespace(has_geo=True, index_dir="idx"), cursor=connection.cursor)
    began = time.perf_counter()
    with pytest.raises(FilterTimeout, match=r"within 1 km of -50,-50.*0\.3 s budget"):
        matching_ids(store, parse_geo_filter(None, "-50,-50", 1), budget_s=0.3)
    assert time.perf_counter() - began < 3.0


def test_python_api_search_by_place(naip_index: Path) -> None:
    import engine
    from engine.errors import ConfigError

    box = (-99.17, 47.01, -99.15, 47.02)
    inside = {row[0] for row in _sql(f"SELECT image_id FROM read_parquet('{naip_index}/shards/*.parquet') WHERE "
                                     f"lon_max >= {box[0]} AND lon_min <= {box[2]} AND lat_max >= {box[1]} "
                                     f"AND lat_min <= {box[3]}")}
    with engine.open(naip_index, device="cpu") as ix:
        table = ix.search("a lake", k=50, bbox=box, columns=["lon", "lat"])
        assert 0 < table.num_rows and set(table.column("id").to_pylist()) <= inside
        assert set(ix.search("a lake", k=50, bbox=",".join(map(str, box))).column("id").to_pylist()) == set(
            table.column("id").to_pylist())
        assert all(box[0] - 0.01 <= lon <= box[2] + 0.01 for lon in table.column("lon").to_pylist())
        near = ix.search("a lake", k=50, near=(-99.16, 47.02), radius_km=0.1, where="lat > 0")
        assert 1 <= near.num_rows < 20
        for arguments, fragment in (({"bbox": (1, 2, 3)}, "bbox expects"), ({"near": (1, 2)}, "near needs radius_km"),
                                    ({"bbox": "x"}, "bbox expects"), ({"near": 5}, "near must be a sequence"),
                                    ({"near": (1, 2), "radius_km": "1"}, "radius_km must be a number")):
            with pytest.raises(ConfigError, match=fragment) as error:
                ix.search("a lake", **arguments)
            assert "--" not in str(error.value)


def test_chip_size_over_the_image_limit_is_one_line(tmp_path: Path, model_dir: Path, capsys) -> None:
    scene = write_geotiff(tmp_path / "scene.tif")
    capsys.readouterr()
    # (PIL's own bomb check, at twice the limit, also guards the model's 96 x 96 crop: hence 5000, not less)
    assert _index(scene, tmp_path / "idx", model_dir, "--chip-size", "72", "--max-image-pixels", "5000") != 0
    _one_error_line(capsys, "--chip-size", "5,184 pixels", "--max-image-pixels")
    assert not (tmp_path / "idx").exists()
    assert _index(scene, tmp_path / "idx", model_dir, "--chip-size", "64", "--max-image-pixels", "5000") == 0


def test_gallery_map_text_shows_control_characters_as_escapes() -> None:
    from types import SimpleNamespace

    from engine.query.geo_gallery import coordinates_line

    hit = SimpleNamespace(geo={"lat": 47.0, "lon": -99.0, "gsd": 1.0, "col_off": 0, "row_off": 0, "win_width": 8,
                               "win_height": 8, "scene": "/data/evil\x1b[2J<b>.tif", "acquired": "2018\u202e"})
    line = coordinates_line(hit)
    assert "\x1b" not in line and "\u202e" not in line and "<b>" not in line
    assert "\\x1b[2J&lt;b&gt;.tif" in line and "\\u202e" in line
