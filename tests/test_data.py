"""Dataset layouts, labels, manifests and image decoding, on tiny datasets built in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpltool.config import presets
from vpltool.data import Dataset, Item, check_sizes, open_dataset, write_manifest
from vpltool.data.common import split_id
from vpltool.errors import ContractError, VplError, VplWarning
from vpltool.io import load_image


# --------------------------------------------------------------------------------------------- builders
def _jpg(path: Path, size=(12, 8), color=(200, 30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)
    return path


def _mask(path: Path, value: int = 1, size=(12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8), mode="L").save(path)
    return path


def _xml(path: Path, names: list[str], difficult: tuple[str, ...] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><difficult>{int(n in difficult)}</difficult>"
                   "<part><name>head</name></part></object>" for n in names)  # fmt: skip
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objs}</annotation>")


VOC_OBJECTS = {"2007_000032": ["person", "aeroplane", "person"], "2007_000033": ["tvmonitor"], "2008_000001": ["cat"]}


@pytest.fixture
def voc(tmp_path) -> Path:
    """VOCdevkit/VOC2012 with 3 images; GT in SegmentationClassAug for two, SegmentationClass for one."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for image_id, names in VOC_OBJECTS.items():
        _jpg(root / "JPEGImages" / f"{image_id}.jpg")
        _xml(root / "Annotations" / f"{image_id}.xml", names, difficult=("aeroplane",))
    _mask(root / "SegmentationClassAug" / "2007_000032.png")
    _mask(root / "SegmentationClassAug" / "2007_000033.png")
    _mask(root / "SegmentationClass" / "2007_000032.png")
    _mask(root / "SegmentationClass" / "2008_000001.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2007_000033\n\n")
    (sets / "val.txt").write_text("2008_000001\n")
    (sets / "train_aug.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n"
                                                for i in VOC_OBJECTS))  # fmt: skip
    return root


def _coco(tmp_path: Path, convention: str) -> Path:
    """A COCO WSSS root in CLIP-ES naming (COCO_train2014_ prefix, flat masks, coco14/) or WeCLIP naming."""
    root = tmp_path / "coco"
    nums = [9, 25, 30]
    for n in nums:
        if convention == "clip-es":
            _jpg(root / "JPEGImages" / f"COCO_train2014_{n:012d}.jpg")
            _mask(root / "SegmentationClass" / f"COCO_train2014_{n:012d}.png")
        else:
            _jpg(root / "train2014" / f"{n:012d}.jpg")
            _mask(root / "SegmentationClass" / "train" / f"{n:012d}.png")
    _jpg(root / ("JPEGImages" if convention == "clip-es" else "val2014") / f"COCO_val2014_{42:012d}.jpg")
    lists = root / "coco14" if convention == "clip-es" else root
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("COCO_train2014_000000000009 45 49 50 45\n"
                                     "COCO_train2014_000000000025 23\nCOCO_train2014_000000000030 0 58\n")  # fmt: skip
    (lists / "val.txt").write_text("COCO_val2014_000000000042 79\n")
    return root


def _folder(tmp_path: Path, labels: str = "csv") -> Path:
    root = tmp_path / "pets"
    _jpg(root / "images" / "a.jpg")
    _jpg(root / "images" / "b.png")
    _jpg(root / "images" / "c.webp")
    _mask(root / "masks" / "a.png")
    if labels == "csv":
        (root / "labels.csv").write_text("id,labels\na,dog;cat\nb,cat\nc,dog cat\n")
    else:
        (root / "labels.json").write_text(json.dumps({"a": ["dog", "cat"], "b": ["cat"], "c": ["dog", "cat"]}))
    return root


# --------------------------------------------------------------------------------------------- VOC
@pytest.mark.parametrize("where", ["VOCdevkit/VOC2012", "VOCdevkit", "."])
def test_voc_detected_from_root_or_parents(voc, tmp_path, where):
    ds = open_dataset(tmp_path / where)
    assert ds.kind == "voc" and ds.root == voc and ds.split == "train" and ds.preset == "voc"
    assert ds.classes == ("background", *presets.VOC_CLASSES) and len(ds.classes) == 21
    assert [it.id for it in ds.items] == ["2007_000032", "2007_000033"]


def test_voc_labels_in_order_of_first_appearance_including_difficult(voc):
    items = open_dataset(voc, "train_aug").by_id()
    person, aeroplane, tv = (presets.VOC_CLASSES.index(n) + 1 for n in ("person", "aeroplane", "tvmonitor"))
    assert items["2007_000032"].labels == (person, aeroplane)  # part <name>head</name> is not an object
    assert items["2007_000033"].labels == (tv,)


def test_voc_gt_prefers_aug_masks_then_segmentation_class(voc):
    items = open_dataset(voc, "train_aug").by_id()
    assert items["2007_000032"].gt == voc / "SegmentationClassAug" / "2007_000032.png"
    assert items["2008_000001"].gt == voc / "SegmentationClass" / "2008_000001.png"


def test_voc_old_train_aug_line_format(voc):
    assert [it.id for it in open_dataset(voc, "train_aug").items] == list(VOC_OBJECTS)


def test_voc_unknown_split_lists_available(voc):
    with pytest.raises(VplError, match="train_aug"):
        open_dataset(voc, "trainval")


def test_voc_unknown_class_names_the_xml(voc):
    _xml(voc / "Annotations" / "2007_000033.xml", ["spaceship"])
    with pytest.raises(VplError, match=r"2007_000033\.xml.*spaceship"):
        open_dataset(voc)


def test_voc_missing_image_names_the_id(voc):
    (voc / "JPEGImages" / "2007_000033.jpg").unlink()
    with pytest.raises(VplError, match=r"train\.txt.*'2007_000033'"):
        open_dataset(voc)


@pytest.mark.parametrize("int_keys", [False, True])
def test_cls_labels_npy_needs_allow_pickle(voc, tmp_path, int_keys):
    hot = np.zeros(20, np.float32)
    hot[[2, 7]] = 1  # bird, cat
    table = {(int(i.replace("_", "")) if int_keys else i): hot for i in VOC_OBJECTS}
    npy = tmp_path / "cls_labels.npy"
    np.save(npy, table, allow_pickle=True)
    with pytest.raises(VplError, match="--allow-pickle"):
        open_dataset(voc, labels_file=npy)
    with pytest.warns(UserWarning, match="pickle"):
        ds = open_dataset(voc, labels_file=npy, allow_pickle=True)
    assert all(it.labels == (3, 8) for it in ds.items)


# --------------------------------------------------------------------------------------------- COCO
@pytest.mark.parametrize("convention", ["clip-es", "weclip"])
def test_coco_both_naming_conventions(tmp_path, convention):
    root = _coco(tmp_path, convention)
    ds = open_dataset(root)
    assert ds.kind == "coco" and ds.preset == "coco" and len(ds.classes) == 81 and ds.split == "train"
    assert [it.labels for it in ds.items] == [(46, 50, 51), (24,), (1, 59)]  # 0-based ids + 1, repeats dropped
    assert ds.classes[1] == "person" and ds.classes[59] == "potted plant"
    assert all(it.image.is_file() and it.gt is not None and it.gt.is_file() for it in ds.items)
    assert [it.id for it in ds.items] == [it.image.stem for it in ds.items]
    val = open_dataset(root, "val")
    assert [it.labels for it in val.items] == [(80,)] and val.items[0].gt is None


def test_coco_missing_image_names_the_id(tmp_path):
    root = _coco(tmp_path, "clip-es")
    (root / "JPEGImages" / "COCO_train2014_000000000025.jpg").unlink()
    with pytest.raises(VplError, match="COCO_train2014_000000000025"):
        open_dataset(root)


# --------------------------------------------------------------------------------------------- generic folder
@pytest.mark.parametrize("labels", ["csv", "json"])
def test_folder_without_classes_txt_uses_sorted_label_names(tmp_path, labels):
    ds = open_dataset(_folder(tmp_path, labels))
    assert ds.kind == "folder" and ds.preset is None and ds.split is None
    assert ds.classes == ("background", "cat", "dog")
    assert [(it.id, it.labels) for it in ds.items] == [("a", (2, 1)), ("b", (1,)), ("c", (2, 1))]
    assert ds.items[0].gt == ds.root / "masks" / "a.png" and ds.items[1].gt is None


def test_folder_classes_txt_and_splits(tmp_path):
    root = _folder(tmp_path)
    (root / "classes.txt").write_text("dog\ncat\nbird\n")
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("c\nb\n")
    ds = open_dataset(root, "val")
    assert ds.classes == ("background", "dog", "cat", "bird")
    assert [(it.id, it.labels) for it in ds.items] == [("c", (1, 2)), ("b", (2,))]
    with pytest.raises(VplError, match="val"):
        open_dataset(root, "test")


def test_folder_voc_class_list_gets_the_voc_preset(tmp_path):
    root = _folder(tmp_path)
    (root / "classes.txt").write_text("background\n" + "\n".join(presets.VOC_CLASSES) + "\n")
    assert open_dataset(root).preset == "voc"


def test_folder_errors(tmp_path):
    root = _folder(tmp_path)
    (root / "classes.txt").write_text("dog\n")
    with pytest.raises(VplError, match=r"labels\.csv.*'cat'"):
        open_dataset(root)
    (root / "classes.txt").unlink()
    (root / "images" / "b.png").unlink()
    with pytest.raises(VplError, match=r"labels\.csv.*'b'"):
        open_dataset(root)
    _jpg(root / "images" / "b.jpg")
    _jpg(root / "images" / "b.bmp")
    with pytest.raises(VplError, match="unique"):
        open_dataset(root)


@pytest.mark.parametrize("lines, line", [("dog\ncat\nbackground\n", 3), ("dog\nbackground\ncat\n", 2)])
def test_background_anywhere_but_the_first_line_of_classes_txt_is_refused(tmp_path, lines, line):
    """It once gave the class list [background, dog, cat, background]; moving it would shift every mask value."""
    root = _folder(tmp_path)
    (root / "classes.txt").write_text(lines)
    with pytest.raises(VplError, match=rf"classes\.txt: 'background' is on line {line}; it is class 0"):
        open_dataset(root)
    (root / "classes.txt").write_text("background\ndog\ncat\n")
    assert open_dataset(root).classes == ("background", "dog", "cat")


def test_background_as_an_image_label_is_refused_without_classes_txt(tmp_path):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("id,labels\na,dog;background\nb,cat\nc,aardvark\n")
    with pytest.raises(VplError, match=r"labels\.csv: 'background' is used as an image label"):
        open_dataset(root)


@pytest.mark.parametrize("name", ["labels.csv", "classes.txt", "splits/val.txt"])
def test_text_files_in_another_encoding_are_one_line(tmp_path, name):
    root = _folder(tmp_path)
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("a\n")
    (root / "classes.txt").write_text("dog\ncat\n")
    path = root / name
    path.write_bytes("# café\n".encode("latin-1") + path.read_bytes())
    with pytest.raises(ContractError, match=rf"{name}: not UTF-8 text \(byte 0xe9 on line 1\); save it as UTF-8"):
        open_dataset(root, "val")


def test_a_symlink_loop_among_the_images_is_one_line(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "loop.png").symlink_to("loop.png")
    with pytest.raises(VplError, match=r"images/loop\.png: cannot be read \(Too many levels of symbolic links\)"):
        open_dataset(root)


@pytest.mark.parametrize("layout", ["folder", "voc"])
def test_an_id_listed_twice_in_a_split_file_blames_that_file(tmp_path, voc, layout):
    if layout == "folder":
        root = _folder(tmp_path)
        (root / "splits").mkdir()
        listing = root / "splits" / "val.txt"
        listing.write_text("a\nb\na\n")
        split, dup = "val", "a"
    else:
        root, split, dup = voc, "train", "2007_000033"
        listing = voc / "ImageSets" / "Segmentation" / "train.txt"
        listing.write_text("2007_000032\n2007_000033\n2007_000033\n")
    with pytest.raises(VplError, match=rf"^{listing}: id '{dup}' is listed 2 times; keep one line per image"):
        open_dataset(root, split)


def test_empty_dataset_and_unknown_layout(tmp_path):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("id,labels\n")
    with pytest.raises(VplError, match="empty"):
        open_dataset(root)
    (tmp_path / "junk").mkdir()
    # an empty folder is not a folder of photos either: one line naming it and every layout it could have been
    with pytest.raises(VplError, match=r"junk: is empty: no image .*photos.*VOC.*COCO.*labels\.csv"):
        open_dataset(tmp_path / "junk")


# --------------------------------------------------------------------------------------------- manifest, shard
def test_manifest_round_trip(voc, tmp_path):
    ds = open_dataset(voc, "train_aug")
    path = write_manifest(ds, tmp_path / "out" / "manifest.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == "vpltool.manifest/1" and not Path(raw["items"][0]["image"]).is_absolute()
    back = open_dataset(path)
    assert back.kind == "manifest" and back.preset == "voc" and back.split == "train_aug"
    assert back.classes == ds.classes
    assert [(a.id, a.image.resolve(), a.labels, a.gt and a.gt.resolve()) for a in back.items] == \
        [(a.id, a.image.resolve(), a.labels, a.gt and a.gt.resolve()) for a in ds.items]


def test_manifest_rejects_bad_labels(tmp_path):
    _jpg(tmp_path / "x.jpg")
    bad = {"format": "vpltool.manifest/1", "classes": ["background", "a"], "items": [
        {"id": "x", "image": "x.jpg", "labels": [2]}]}  # fmt: skip
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(ContractError, match="outside"):
        open_dataset(tmp_path / "m.json")


def test_shard_and_identity(tmp_path):
    items = [Item(f"i{k}", tmp_path / f"i{k}.jpg", (1,), None) for k in range(7)]
    ds = Dataset("folder", tmp_path, None, ("background", "a"), items, None)
    shards = [ds.shard(i, 3) for i in range(3)]
    assert sorted(it.id for s in shards for it in s.items) == sorted(it.id for it in items)
    assert [len(s.items) for s in shards] == [3, 2, 2] and ds.shard(1, 3).items[0].id == "i1"
    assert set(ds.identity()) == {"kind", "root", "split", "n_items", "classes_sha"}
    assert ds.identity()["n_items"] == 7 and len(ds.items) == 7
    with pytest.raises(VplError):
        ds.shard(3, 3)


# --------------------------------------------------------------------------------------------- images
def _check_rgb(arr: np.ndarray, shape=(8, 12)) -> None:
    assert arr.shape == (*shape, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous


def test_load_image_converts_modes(tmp_path):
    Image.new("L", (12, 8), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (12, 8), (200, 100, 50, 0)).save(tmp_path / "rgba.png")
    Image.new("LA", (12, 8), (90, 255)).save(tmp_path / "la.png")
    pal = Image.new("P", (12, 8), 3)
    pal.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    pal.save(tmp_path / "pal.png")
    Image.fromarray(np.full((8, 12), 65535, np.uint16)).save(tmp_path / "deep.png")
    Image.new("CMYK", (12, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")

    gray = load_image(tmp_path / "gray.png")
    _check_rgb(gray)
    assert (gray == 77).all()
    with pytest.warns(VplWarning, match=r"rgba\.png: fully transparent \(alpha 0 in every pixel\)"):
        rgba = load_image(tmp_path / "rgba.png")
    _check_rgb(rgba)
    assert (rgba == 0).all()  # fully transparent -> black, and said
    assert (load_image(tmp_path / "la.png") == 90).all()
    assert (load_image(tmp_path / "pal.png") == [70, 80, 90]).all()
    deep = load_image(tmp_path / "deep.png")
    _check_rgb(deep)
    assert (deep == 255).all()
    cmyk = load_image(tmp_path / "cmyk.jpg")
    _check_rgb(cmyk)
    assert cmyk.min() > 240  # no ink = white


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (12, 8), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    _check_rgb(load_image(tmp_path / "rot.jpg"), shape=(12, 8))


def test_image_size_reads_the_header_as_load_image_decodes(tmp_path):
    from vpltool.io import image_size

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 12 wide, 8 high; shown 8 wide, 12 high
    Image.new("RGB", (12, 8)).save(path, exif=exif)
    assert image_size(path) == load_image(path).shape[:2] == (12, 8)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ContractError, match=r"empty\.png: unreadable image"):
        image_size(tmp_path / "empty.png")


def _png_with_exif_after_pixels(path: Path, size: tuple[int, int], orientation: int) -> Path:
    """A PNG whose eXIf chunk follows its pixel data (IDAT), as some tools write it: Pillow reads it only when it
    decodes the image."""
    import zlib

    Image.new("RGB", size, (10, 200, 10)).save(path)
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = len(payload).to_bytes(4, "big") + b"eXIf" + payload + zlib.crc32(b"eXIf" + payload).to_bytes(4, "big")
    data = path.read_bytes()
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])
    return path


@pytest.mark.parametrize("where", ["after", "xmp"])
def test_image_size_reads_the_orientation_decoding_applies(tmp_path, where):
    """An eXIf chunk after IDAT, or an XMP tiff:Orientation, turns the image when it is decoded: the header read
    must say the same size (it once said the stored one: a false "the file changed during the run")."""
    from vpltool.io import image_orientation, image_size

    if where == "after":
        path = _png_with_exif_after_pixels(tmp_path / "late.png", (60, 40), 6)
    else:
        from PIL import PngImagePlugin

        path = tmp_path / "xmp.png"
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
        Image.new("RGB", (60, 40)).save(path, pnginfo=info)
    assert image_size(path) == load_image(path).shape[:2] == (60, 40)
    assert image_orientation(path) == 6


def test_a_ground_truth_that_cannot_follow_the_orientation_is_said(tmp_path):
    """A GT mask has no orientation: drawn on the image as stored, it is refused (non-square: the sizes say so);
    where they cannot (a square image), a warning says the mask is used as stored."""
    image = _png_with_exif_after_pixels(tmp_path / "a.png", (60, 40), 6)  # stored 60 wide, 40 high
    mask = tmp_path / "a_gt.png"
    Image.new("L", (60, 40)).save(mask)  # the stored image's size
    item = Item("a", image, (1,), mask)
    with pytest.raises(ContractError, match=r"a\.png: its EXIF orientation \(6\) turns it to 60x40 when decoded, "
                                            r"but its ground truth .*a_gt\.png is 40x60, the image as stored"):
        check_sizes([item], [(60, 40)])
    square = _png_with_exif_after_pixels(tmp_path / "b.png", (40, 40), 6)
    Image.new("L", (40, 40)).save(mask)
    with pytest.warns(VplWarning, match=r"b\.png: an EXIF orientation flips or turns it when decoded, while its "
                                         "ground truth .* is used as stored"):
        check_sizes([Item("b", square, (1,), mask)], [(40, 40)])


def test_truncated_jpeg_is_a_contract_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "broken.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ContractError, match=r"broken\.jpg: unreadable image"):
        load_image(path)
    path.write_bytes(b"not an image at all")
    with pytest.raises(ContractError, match="broken.jpg"):
        load_image(path)


# --------------------------------------------------------------------------------------------- presets
def test_presets():
    assert len(presets.VOC_CLIP_ES_NAMES) == 20 and len(presets.VOC_BACKGROUND) == 25
    assert len(presets.COCO_CLIP_ES_NAMES) == 80 and len(presets.COCO_BACKGROUND) == 23
    assert len(set(presets.IMAGENET_TEMPLATES)) == 80 and all("{}" in t for t in presets.IMAGENET_TEMPLATES)
    assert presets.preset_for(("background", *presets.COCO_CLASSES)) == "coco"
    assert presets.preset_for(presets.VOC_CLASSES[:-1]) is None
    assert presets.prompt_names(("background", *presets.VOC_CLASSES), "voc")[2] == "bird avian"
    assert presets.prompt_names(("background", "potted_plant"), None) == ["potted plant"]
    assert "sign" not in presets.background_words(None, ["background", "sign"])
    with pytest.raises(VplError):
        presets.prompt_names(("background", "cat"), "voc")



# --------------------------------------------------------------------------------------------- issue 20: inputs
def test_a_voc_root_with_classes_txt_uses_its_classes(tmp_path):
    """`make-world --layout voc` writes classes.txt; the VOC reader once ignored it and refused every label."""
    from vpltool.demo.make_world import write_dataset

    root = write_dataset(tmp_path / "wv", n_train=3, n_val=1, seed=1, layout="voc")  # no empty scene
    names = tuple((root / "classes.txt").read_text().split())
    ds = open_dataset(root)
    assert ds.kind == "voc" and ds.classes == names and ds.preset is None and len(ds.items) == 3
    for item in ds.items:  # the XML's object names, as indices into classes.txt
        xml_names = [line.strip()[6:-7] for line in (root / "Annotations" / f"{item.id}.xml").read_text().split("\n")
                     if line.strip().startswith("<name>")]
        assert [names[i] for i in item.labels] == list(dict.fromkeys(xml_names)) and item.labels
        assert item.gt == root / "SegmentationClassAug" / f"{item.id}.png"


def test_voc_unknown_class_says_how_to_name_other_classes(voc):
    _xml(voc / "Annotations" / "2007_000033.xml", ["Cat"])
    with pytest.raises(VplError, match=r"unknown class 'Cat'.*did you mean 'cat'.*list this dataset's classes in "
                                       r".*VOC2012/classes\.txt.*without it a VOC root has the 20 VOC classes"):
        open_dataset(voc)
    (voc / "classes.txt").write_text("background\ncat\nperson\naeroplane\ntvmonitor\n")
    _xml(voc / "Annotations" / "2007_000033.xml", ["dog"])
    with pytest.raises(VplError, match=r"unknown class 'dog'.*add it to .*VOC2012/classes\.txt$"):
        open_dataset(voc)
    _xml(voc / "Annotations" / "2007_000033.xml", ["tvmonitor"])
    ds = open_dataset(voc)
    assert ds.classes == ("background", "cat", "person", "aeroplane", "tvmonitor") and ds.preset is None
    assert [it.labels for it in ds.items] == [(2, 3), (4,)]


@pytest.mark.parametrize("line, expected", [
    ("2007_000032", "2007_000032"), ("img.v2", "img.v2"), ("chat noir é", "chat noir é"), ("a.b c.d", "a.b c.d"),
    ("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png", "2007_000032"),
    ("/JPEGImages/img.v2.jpg /SegmentationClassAug/img.v2.png", "img.v2"),
    ("/JPEGImages/chat noir.jpg /SegmentationClass/chat noir.png", "chat noir"),
    ("JPEGImages/x.JPG", "x"), ("/JPEGImages/notes.v1", "notes.v1"),
])
def test_split_lines_keep_ids_whole(line, expected):
    assert split_id(line) == expected


def test_ids_with_dots_and_spaces_survive_a_split_file(tmp_path):
    root = tmp_path / "d"
    for stem in ("img.v2", "chat noir é", "plain"):
        _jpg(root / "images" / f"{stem}.png")
    (root / "labels.csv").write_text("id,labels\nimg.v2,cat\nchat noir é,dog\nplain,cat\n", encoding="utf-8")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("img.v2\nchat noir é\n", encoding="utf-8")
    assert [it.id for it in open_dataset(root, "train").items] == ["img.v2", "chat noir é"]
    assert [it.id for it in open_dataset(root).items] == ["img.v2", "chat noir é", "plain"]


@pytest.mark.parametrize("text, message", [
    ("id,labels,date\na,dog;cat,2023-05-01\nb,cat,2023-05-02\n", r"labels\.csv: unknown column 'date' in its header"),
    ("id,label\na,dog\n", r"unknown column 'label' in its header; the columns are id,labels"),
    ("id\na\n", r"no labels column in its header"),
    ("image,labels\na,dog\n", r"labels\.csv: the header must start with id,labels \(found 'image,labels'\)"),
    ("id;labels\na;dog\nb;cat\n",
     r"labels\.csv: semicolon-delimited \(no row has a ',', line 1 has semicolons\).*save it as comma-separated"),
    ("# a comment\na;dog\nb;cat\n", r"semicolon-delimited \(no row has a ',', line 2 has semicolons\)"),
    ("id\tlabels\na\tdog\n", r"labels\.csv: tab-delimited"),
    ("a,dog,cat\n", r"line 1 \(id 'a'\) has 3 cells, but a row is id,labels; .*e\.g\. a,dog;cat\)"),
    ("id,labels\nb,cat\na,dog,2023\n", r"line 3 \(id 'a'\) has 3 cells"),
])
def test_labels_csv_follows_its_header(tmp_path, text, message):
    """An extra column was once read as one more label of every image (issue 20 #21)."""
    root = _folder(tmp_path)
    (root / "labels.csv").write_text(text)
    with pytest.raises(VplError, match=message):
        open_dataset(root)


@pytest.mark.parametrize("text", [
    "id,labels,\na,dog;cat,\nb,cat\nc,dog cat,,\n", "ID,Labels\na,dog;cat\nb,cat\nc,dog|cat\n",
    "\ufeffid,labels\r\n# a comment\r\na,dog;cat\r\nb,cat\r\nc,dog cat\r\n"])
def test_labels_csv_trailing_commas_case_and_bom_are_fine(tmp_path, text):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text(text, encoding="utf-8")
    assert [(it.id, it.labels) for it in open_dataset(root).items] == [("a", (2, 1)), ("b", (1,)), ("c", (2, 1))]


@pytest.mark.parametrize("labels", ['"12"', '"x"', "[1.0]", "[true]", "3", '["cat"]', "null"])
def test_manifest_labels_must_be_a_list_of_ints(tmp_path, labels):
    _jpg(tmp_path / "x.jpg")
    (tmp_path / "m.json").write_text('{"format": "vpltool.manifest/1", "classes": ["background", "a", "b"], '
                                     f'"items": [{{"id": "x", "image": "x.jpg", "labels": {labels}}}]}}')
    with pytest.raises(ContractError, match=r"m\.json: item 'x' has 'labels' .*; it must be a list of class indices"):
        open_dataset(tmp_path / "m.json")


@pytest.mark.parametrize("ext", [".gif", ".heic", ".AVIF"])  # a phone's HEIF or AVIF needs a Pillow plugin
def test_an_unsupported_image_type_is_named_with_the_supported_list(tmp_path, ext):
    root = _folder(tmp_path)
    (root / "images" / "b.png").unlink()
    Image.new("RGB", (12, 8)).save(root / "images" / f"b{ext}", format="GIF" if ext == ".gif" else "TIFF")
    with pytest.raises(VplError, match=rf"image for id 'b' is .*b\{ext}, and \{ext} images are not supported; "
                                       r"convert it to one of \.jpg, \.jpeg, \.png, \.bmp, \.webp"):
        open_dataset(root)


def test_an_id_written_with_its_extension_gets_a_hint(tmp_path):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("id,labels\na.jpg,dog\nb,cat\n")
    with pytest.raises(VplError, match=r"id 'a\.jpg' is written with its extension; ids are file stems: write 'a'"):
        open_dataset(root)
    (root / "labels.csv").write_text("id,labels\na,dog\nb,cat\n")
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("b.png\n")
    with pytest.raises(VplError, match=r"val\.txt: id 'b\.png' is written with its extension; .* write 'b'"):
        open_dataset(root, "val")


@pytest.mark.parametrize("layout", ["csv", "json", "voc", "manifest"])
def test_an_image_without_labels_is_a_warning(tmp_path, voc, layout):
    if layout == "voc":
        _xml(voc / "Annotations" / "2007_000033.xml", [])
        root, missing = voc, "2007_000033"
    else:
        root, missing = _folder(tmp_path, "json" if layout == "json" else "csv"), "b"
        if layout == "json":
            (root / "labels.json").write_text(json.dumps({"a": ["dog", "cat"], "b": [], "c": ["dog"]}))
        else:
            (root / "labels.csv").write_text("id,labels\na,dog;cat\nb,\nc,dog\n")
        if layout == "manifest":
            with pytest.warns(VplWarning):
                root = write_manifest(open_dataset(root), tmp_path / "m.json")
    with pytest.warns(VplWarning, match=rf"^1 image has no labels: {missing} \(.*\); it is read as background only"):
        ds = open_dataset(root)
    assert ds.by_id()[missing].labels == ()


@pytest.mark.parametrize("labels", ["csv", "json"])
def test_background_alone_declares_an_image_with_no_objects(tmp_path, labels, recwarn):
    root = _folder(tmp_path, labels)
    if labels == "json":
        (root / "labels.json").write_text(json.dumps({"a": ["dog", "cat"], "b": ["background"], "c": ["dog"]}))
    else:
        (root / "labels.csv").write_text("id,labels\na,dog;cat\nb,background\nc,dog\n")
    ds = open_dataset(root)
    assert ds.classes == ("background", "cat", "dog") and ds.by_id()["b"].labels == ()
    assert not [w for w in recwarn if issubclass(w.category, VplWarning)]
    (root / "classes.txt").write_text("background\ndog\ncat\n")
    assert open_dataset(root).by_id()["b"].labels == ()


def test_make_world_marks_its_empty_scenes(tmp_path, recwarn):
    from vpltool.demo.make_world import write_dataset

    root = write_dataset(tmp_path / "w", n_train=4, n_val=0, seed=0)  # train_000002 is an empty scene
    assert "train_000002,background" in (root / "labels.csv").read_text().splitlines()
    assert open_dataset(root).by_id()["train_000002"].labels == ()
    assert not [w for w in recwarn if issubclass(w.category, VplWarning)]


def test_case_variant_labels_are_refused_without_classes_txt(tmp_path):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("id,labels\na,dog;cat\nb,Cat\nc,dog\n")
    with pytest.raises(VplError, match=r"labels\.csv: labels 'Cat' and 'cat' differ only in case"):
        open_dataset(root)
    (root / "classes.txt").write_text("dog\ncat\n")
    with pytest.raises(VplError, match=r"unknown class 'Cat' \(id 'b'\); did you mean 'cat'\?"):
        open_dataset(root)


@pytest.mark.parametrize("classes_txt", [True, False])
def test_a_multi_word_class_split_at_its_space_gets_the_semicolon_hint(tmp_path, classes_txt):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("id,labels\na,potted plant;cat\nb,cat\nc,potted plant\n")
    if classes_txt:
        (root / "classes.txt").write_text("potted plant\ncat\n")
    with pytest.raises(VplError, match=r"the labels of id 'c' \('potted plant'\) are split at spaces, which cuts "
                                       r"class 'potted plant' in two; separate labels with ';'"):
        open_dataset(root)


def test_tiny_images_and_gt_of_another_size_are_refused_from_the_headers(tmp_path):
    from vpltool.io import image_size

    root = _folder(tmp_path)
    ds = open_dataset(root)
    sizes = [image_size(it.image) for it in ds.items]
    with pytest.raises(VplError, match=r"a\.jpg: 8x12 pixels, too small to segment \(at least 16 pixels a side"):
        check_sizes(ds.items, sizes)
    big = [(s[0] * 4, s[1] * 4) for s in sizes]  # as if the images were 32x48: the 8x12 GT mask no longer fits
    with pytest.raises(ContractError, match=r"masks/a\.png: ground truth of image 'a' is 8x12 but the image is "
                                            r"32x48; a GT mask must have its image's size"):
        check_sizes(ds.items, big, workers=2)
    check_sizes(ds.items[1:], big[1:])  # no GT: nothing to compare


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` (its pixel data is a stub: only the header is ever read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))
    return path


def test_a_400_megapixel_image_is_refused_for_its_size_not_as_corrupt(tmp_path):
    from vpltool.io import image_size

    path = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    for read in (image_size, load_image):
        with pytest.raises(ContractError, match=r"huge\.png: 400 megapixels, more than the 179 megapixels an image "
                                                r"may have .*shrink the file itself.*--max-side") as e:
            read(path)
        assert "re-download" not in str(e.value)


# --------------------------------------------------------------------------------------------- ids are data
@pytest.mark.parametrize("bad, why", [("../../evil", "holds a path separator"), ("sub/x", "holds a path separator"),
                                      ("a\\b", "holds a path separator"), (".hidden", "starts with a dot"),
                                      ("..", "starts with a dot"), ("line\nbreak", "holds a control character"),
                                      ("nul\x00", "holds a control character")],
                         ids=["traversal", "separator", "backslash", "dot", "dotdot", "newline", "nul"])
def test_an_id_that_is_a_path_is_refused_by_the_manifest_reader(tmp_path, bad, why):
    _jpg(tmp_path / "x.jpg")
    manifest = {"format": "vpltool.manifest/1", "classes": ["background", "a"],
                "items": [{"id": bad, "image": "x.jpg", "labels": [1]}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(VplError, match=f"m.json: id .* {why}; ids name the output files") as info:
        open_dataset(tmp_path / "m.json")
    assert "\n" not in str(info.value).replace("\\n", "")


def test_ids_are_checked_by_the_folder_voc_and_coco_readers(tmp_path, voc):
    root = _folder(tmp_path)
    _jpg(root / "images" / ".d.jpg")
    (root / "labels.csv").write_text("id,labels\na,dog\n.d,cat\n")
    with pytest.raises(VplError, match=r"labels.csv: id '.d' starts with a dot"):
        open_dataset(root)
    _jpg(voc / "JPEGImages" / ".x.jpg")
    _xml(voc / "Annotations" / ".x.xml", ["cat"])
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text(".x\n")
    with pytest.raises(VplError, match=r"train.txt: id '.x' starts with a dot"):
        open_dataset(voc, "train")
    coco = _coco(tmp_path, "weclip")
    _jpg(coco / "train2014" / ".000000000031.jpg")
    (coco / "train.txt").write_text(".000000000031 1\n")
    with pytest.raises(VplError, match=r"train.txt: id '.000000000031' starts with a dot"):
        open_dataset(coco, "train")


def test_the_items_digest_follows_images_and_labels(tmp_path):
    import os

    root = _folder(tmp_path)
    before = open_dataset(root).items_sha()
    assert open_dataset(root).items_sha() == before  # stable
    image = root / "images" / "a.jpg"
    os.utime(image, ns=(1, 1))  # replaced (a copy, an edit): its time changes
    assert open_dataset(root).items_sha() != before
    again = open_dataset(root).items_sha()
    (root / "labels.csv").write_text("id,labels\na,dog\nb,cat\nc,dog cat\n")
    assert open_dataset(root).items_sha() != again


def test_a_folder_is_never_used_with_its_dataset_changed_but_a_moved_copy_is(tmp_path):
    import os
    import shutil

    from vpltool import io
    from vpltool.data import check_recorded, open_recorded

    root = _folder(tmp_path)
    made = tmp_path / "made"
    made.mkdir()
    io.write_stage_record(made, "crf", params={}, inputs=open_dataset(root).inputs(), count=3)
    assert [it.id for it in open_recorded(made).items] == ["a", "b", "c"]  # unchanged: it passes
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copy)  # new times, same files
    check_recorded(made, open_dataset(copy), "--data")
    os.utime(root / "images" / "b.png", ns=(1, 1))  # replaced by a file of the same size
    with pytest.raises(ContractError, match=r"made: made from .*pets as it was before a change: an image was "
                                            r"replaced or touched since"):
        open_recorded(made)
    (copy / "labels.csv").write_text("id,labels\na,dog;cat\nb,dog\nc,dog cat\n")  # other labels under one id
    with pytest.raises(ContractError, match=r"--data .*copy: not the dataset .*made was made from .*its labels"):
        check_recorded(made, open_dataset(copy), "--data")
    (copy / "labels.csv").write_text("id,labels\na,dog;cat\nb,cat\nc,dog cat\n")
    (copy / "classes.txt").write_text("\n".join(open_dataset(root).classes[:0:-1]) + "\n")  # another class order
    with pytest.raises(ContractError, match=r"another class list"):
        check_recorded(made, open_dataset(copy), "--data")


def test_a_copy_with_the_same_names_and_sizes_but_other_pixels_is_another_dataset(tmp_path):
    """The dataset digest reads the images' bytes: a copy with every image flipped (BMP: same byte size) keeps
    every id, label, name and size, and is refused; an exact copy is accepted."""
    import shutil

    from vpltool import io
    from vpltool.data import check_recorded

    root = tmp_path / "world"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(root / "images" / f"{name}.bmp")
    (root / "labels.csv").write_text("id,labels\na,dog\nb,cat\n")
    made = tmp_path / "made"
    made.mkdir()
    io.write_stage_record(made, "crf", params={}, inputs=open_dataset(root).inputs(), count=2)
    same, flipped = tmp_path / "same", tmp_path / "flipped"
    shutil.copytree(root, same)
    check_recorded(made, open_dataset(same), "--data")
    shutil.copytree(root, flipped)
    path = flipped / "images" / "b.bmp"
    size = path.stat().st_size
    with Image.open(path) as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    assert path.stat().st_size == size
    assert open_dataset(flipped).files_sha() == open_dataset(root).files_sha()  # names and sizes cannot tell
    with pytest.raises(ContractError, match="an image's content differs under the same id, name and byte size"):
        check_recorded(made, open_dataset(flipped), "--data")
