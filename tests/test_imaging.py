"""``service/imaging.py``: bytes → upright image → the model's ``[C, H, W]`` input, and the errors a client sees.

Images are made here with Pillow and numpy, plus the photos that ship inside ``skimage.data`` (no download).
The reference for pre-processing is torchvision's own eval transform on the same PIL image: a model trained with
torchvision's recipe must see the same pixels when served.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import skimage.data
import torchvision.models
import torchvision.transforms as T
from cnnserve.export.onnx import contract_for
from cnnserve.export.weights import torchvision_spec
from cnnserve.service.contract import ModelContract
from cnnserve.service.errors import BadInput, PayloadTooLarge
from cnnserve.service.imaging import Preprocess, decode_image, preprocess, reduce_image, to_model_mode
from PIL import Image

from cnnserve import models

IMAGENET = Preprocess(input_size=(224, 224), resize_size=256, interpolation="bilinear")
TV_INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def torchvision_eval(img: Image.Image, *, resize: int, crop: int, interpolation: str) -> np.ndarray:
    transform = T.Compose(
        [T.Resize(resize, interpolation=TV_INTERPOLATION[interpolation]), T.CenterCrop(crop), T.ToTensor()]
    )
    return transform(img).numpy()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


PHOTOS = {
    "landscape": lambda: Image.fromarray(skimage.data.chelsea()),  # 451×300
    "portrait": lambda: Image.fromarray(skimage.data.chelsea()).transpose(Image.Transpose.TRANSPOSE),  # 300×451
    "square": lambda: Image.fromarray(skimage.data.astronaut()),  # 512×512
    # 333×257 → 331×256: the crop offset (331 − 224) / 2 = 53.5 is rounded half to even, like torchvision.
    "odd-crop-offset": lambda: noise(333, 257),
}


# --- pre-processing equals torchvision's eval transform ------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("photo", PHOTOS)
def test_preprocess_equals_torchvision_resize_centercrop_totensor(photo: str, interpolation: str) -> None:
    img = PHOTOS[photo]()
    pre = Preprocess(input_size=(224, 224), resize_size=256, interpolation=interpolation)
    got = preprocess(img, pre)
    expected = torchvision_eval(img, resize=256, crop=224, interpolation=interpolation)
    assert got.dtype == np.float32
    assert got.shape == expected.shape == (3, 224, 224)
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("size", [(300, 300), (320, 240)])
def test_preprocess_pads_like_torchvision_when_the_resize_is_smaller_than_the_crop(size: tuple[int, int]) -> None:
    # Resize(201) then CenterCrop(224): 23 pixels of zero padding, 11 before and 12 after in torchvision.
    img = noise(*size)
    got = preprocess(img, Preprocess(input_size=(224, 224), resize_size=201))
    expected = torchvision_eval(img, resize=201, crop=224, interpolation="bilinear")
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize(
    "name", [n for n in models.list_models("classification") if models.get_spec(n).torchvision_weights]
)
def test_spec_of_a_torchvision_export_preprocesses_like_the_weights_preset(name: str) -> None:
    # The spec a `--weights torchvision` export writes into its ONNX file, read back the way the service reads it,
    # must give the pixels torchvision's published transform gives (before its normalisation, which our graph does).
    spec = models.get_spec(name)
    pre = contract_for(torchvision_spec(spec)).preprocess
    preset = torchvision.models.get_weight(spec.torchvision_weights).transforms()
    img = Image.fromarray(skimage.data.chelsea())
    mean = np.asarray(preset.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(preset.std, dtype=np.float32)[:, None, None]
    expected = preset(img).numpy() * std + mean
    got = preprocess(img, pre)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5


def test_direct_resize_for_a_one_channel_model() -> None:
    img = Image.fromarray(skimage.data.astronaut())
    pre = contract_for(models.get_spec("lenet5")).preprocess
    assert pre == Preprocess(input_size=(32, 32), in_channels=1, resize_size=None, background=(0, 0, 0))
    got = preprocess(img, pre)
    expected = T.Compose([T.Grayscale(1), T.Resize((32, 32)), T.ToTensor()])(img).numpy()
    assert got.shape == (1, 32, 32)
    assert got.dtype == np.float32
    assert 0.0 <= got.min() < got.max() <= 1.0
    assert np.abs(got - expected).max() <= 1e-6


def test_preprocess_output_is_rgb_channel_first() -> None:
    img = Image.new("RGB", (40, 30), (255, 0, 0))
    got = preprocess(img, Preprocess(input_size=(16, 16)))
    assert got.shape == (3, 16, 16)
    np.testing.assert_array_equal(got[0], 1.0)
    np.testing.assert_array_equal(got[1:], 0.0)


# --- modes: everything becomes RGB or L the way a person would expect it to look ------------------------------------


def decoded_pixels(data: bytes, channels: int) -> np.ndarray:
    return np.asarray(to_model_mode(decode_image(data), channels))


def test_grey_image_becomes_three_equal_channels_or_stays_grey() -> None:
    grey = Image.fromarray(skimage.data.camera())
    data = encode(grey, "PNG")
    assert decode_image(data).mode == "L"
    rgb = decoded_pixels(data, 3)
    assert rgb.shape == (512, 512, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], skimage.data.camera())
    np.testing.assert_array_equal(decoded_pixels(data, 1), skimage.data.camera())
    tensor = preprocess(decode_image(data), IMAGENET)
    np.testing.assert_array_equal(tensor[0], tensor[1])
    np.testing.assert_array_equal(tensor[0], tensor[2])


def test_grey_with_alpha_composites_on_white() -> None:
    la = np.zeros((4, 4, 2), dtype=np.uint8)
    la[..., 0] = 100
    la[:2, :, 1] = 255  # top half opaque grey 100, bottom half fully transparent
    data = encode(Image.fromarray(la, mode="LA"), "PNG")
    assert decode_image(data).mode == "LA"
    grey = decoded_pixels(data, 1)
    np.testing.assert_array_equal(grey[:2], 100)
    np.testing.assert_array_equal(grey[2:], 255)
    np.testing.assert_array_equal(decoded_pixels(data, 3)[2:], 255)


def test_rgba_transparent_pixels_come_out_white() -> None:
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)  # transparent black everywhere
    rgba[:, :3] = (200, 10, 20, 255)  # left half opaque red
    rgba[0, 5] = (0, 0, 0, 128)  # one half-transparent black pixel
    data = encode(Image.fromarray(rgba, mode="RGBA"), "PNG")
    assert decode_image(data).mode == "RGBA"
    rgb = decoded_pixels(data, 3)
    np.testing.assert_array_equal(rgb[:, :3], np.broadcast_to([200, 10, 20], (4, 3, 3)))
    np.testing.assert_array_equal(rgb[1:, 3:], 255)
    assert np.all(np.abs(rgb[0, 5].astype(int) - 127) <= 1)  # half way between black and white


def test_transparency_is_composited_on_the_models_background() -> None:
    """The background is the model's (its contract's `background`): a model of light ink on black (the digits
    demos) sees transparent pixels as black, the grey level of the colour for a one-channel model."""
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[0, :] = (255, 255)  # top row: opaque white ink; bottom row: transparent
    decoded = decode_image(encode(Image.fromarray(la, mode="LA"), "PNG"))
    np.testing.assert_array_equal(np.asarray(to_model_mode(decoded, 1, (0, 0, 0))), [[255, 255], [0, 0]])
    np.testing.assert_array_equal(np.asarray(to_model_mode(decoded, 3, (0, 0, 255)))[1], [[0, 0, 255]] * 2)
    lenet = contract_for(models.get_spec("lenet5"))
    assert lenet.background == (0, 0, 0) and lenet.preprocess.background == (0, 0, 0)
    assert contract_for(models.get_spec("resnet18")).background == (255, 255, 255)
    old = {"cnnserve.spec": '{"name": "old", "task": "classification", "input_size": [32, 32]}'}  # before the field
    assert ModelContract.from_metadata(old).background == (255, 255, 255)
    tensor = preprocess(decoded, lenet.preprocess)  # what the service feeds LeNet-5: ink on black
    assert tensor[0, -1, 0] == 0.0 and tensor[0, 0, 0] > 0.9


def test_palette_transparency_index_comes_out_white() -> None:
    palette_img = Image.new("P", (4, 4), 0)
    palette_img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))  # index 0 black, index 1 blue
    palette_img.paste(1, (0, 0, 2, 4))  # left half blue
    for fmt in ("PNG", "GIF"):
        data = encode(palette_img, fmt, transparency=0)  # index 0 (black) is transparent
        decoded = decode_image(data)
        assert decoded.mode == "P"
        assert "transparency" in decoded.info
        rgb = decoded_pixels(data, 3)
        np.testing.assert_array_equal(rgb[:, :2], np.broadcast_to([0, 0, 255], (4, 2, 3)), err_msg=fmt)
        np.testing.assert_array_equal(rgb[:, 2:], 255, err_msg=fmt)  # white, not black


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    assert decode_image(data).mode == "CMYK"
    rgb = decoded_pixels(data, 3)
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb.astype(int) - [255, 0, 0]).max() <= 3


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))
    data = encode(Image.fromarray(gradient), "PNG")
    assert decode_image(data).mode.startswith("I")
    grey = decoded_pixels(data, 1)
    np.testing.assert_array_equal(grey[0], np.arange(256))  # 0..65535 maps onto 0..255, one step per column
    mid_grey = encode(Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), "PNG")
    rgb = decoded_pixels(mid_grey, 3)
    assert np.all(np.abs(rgb.astype(int) - 128) <= 1)  # clipping would give 255
    tensor = preprocess(decode_image(mid_grey), Preprocess(input_size=(8, 8)))
    assert np.all(np.abs(tensor - 128 / 255) <= 1 / 255)


def test_float_image_is_stretched_to_the_full_range() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (4, 1))  # 0.0 → 1.0 would clip to all black
    data = encode(Image.fromarray(ramp, mode="F"), "TIFF")
    assert decode_image(data).mode == "F"
    grey = decoded_pixels(data, 1)
    assert grey[0, 0] == 0
    assert grey[0, -1] == 255
    assert np.all(np.diff(grey[0].astype(int)) >= 0)
    tensor = preprocess(decode_image(data), Preprocess(input_size=(4, 64), in_channels=1))
    assert tensor.shape == (1, 4, 64)
    assert tensor.min() == 0.0
    assert tensor.max() == 1.0


def _odd_modes() -> dict[str, Image.Image]:
    """One image in every mode the service reduces, with content that exercises the reduction (a band boundary
    falls inside: 1500 × 800 pixels is more than one band of rows)."""
    rng = np.random.default_rng(3)
    h, w = 800, 1500
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    la = rng.integers(0, 256, (h, w, 2), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 4, (h, w), dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
    palette.info["transparency"] = 2
    return {
        "I;16": Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(0, 70000, (h, w), dtype=np.int32), mode="I"),
        "F": Image.fromarray(rng.normal(5.0, 3.0, (h, w)).astype(np.float32), mode="F"),
        "RGBA": Image.fromarray(rgba, mode="RGBA"),
        "LA": Image.fromarray(la, mode="LA"),
        "P+transparency": palette,
        "CMYK": Image.fromarray(rgba, mode="CMYK"),
    }


@pytest.mark.parametrize("mode", list(_odd_modes()))
def test_reducing_early_changes_no_pixel_the_model_sees(mode: str) -> None:
    """The service reduces an upload right after decoding (16-bit and float to 8-bit grey, transparency onto the
    model's background, band by band); every answer must come out as if it had not."""
    img = _odd_modes()[mode]
    for background in ((255, 255, 255), (0, 0, 0), (0, 0, 255)):
        reduced = reduce_image(img, background)
        assert reduced.mode in ("L", "RGB", "CMYK")
        for channels in (1, 3):
            np.testing.assert_array_equal(
                np.asarray(to_model_mode(reduced, channels, background)),
                np.asarray(to_model_mode(img, channels, background)),
                err_msg=f"{mode} on {background}",
            )


def test_reducing_a_large_sixteen_bit_image_makes_no_full_size_float_copy() -> None:
    """The float64 copy the old conversion made was 8 bytes a pixel (128 MB here); bands keep numpy's part small."""
    import tracemalloc

    img = Image.fromarray(np.tile(np.arange(4000, dtype=np.uint16) * 16, (4000, 1)))
    tracemalloc.start()
    try:
        reduced = reduce_image(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reduced.mode == "L" and reduced.size == img.size
    assert peak < 40e6, f"{peak / 1e6:.0f} MB of numpy at once"


def test_a_decode_costs_what_the_header_says() -> None:
    """decode_bytes is read from the header before decoding: Pillow's bytes per pixel of the mode plus 4 for the
    reduced or upright copy, and more for a progressive JPEG's coefficients."""
    from cnnserve.service.imaging import decode_bytes, load_image, open_image

    rgb = open_image(encode(noise(300, 200), "PNG"))
    assert decode_bytes(rgb) == 300 * 200 * (4 + 4)
    grey = open_image(encode(Image.new("L", (300, 200)), "PNG"))
    assert decode_bytes(grey) == 300 * 200 * (1 + 4)
    progressive = open_image(encode(noise(300, 200), "JPEG", progressive=True))
    assert decode_bytes(progressive) == 300 * 200 * (4 + 4 + 2 * 3)
    assert load_image(grey).size == (300, 200)
    sixteen = encode(Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)), "PNG")
    assert load_image(open_image(sixteen), reduce=True).mode == "L"
    assert load_image(open_image(sixteen)).mode.startswith("I")  # decode_image keeps the mode


# --- formats and orientation ---------------------------------------------------------------------------------------


def test_exif_orientation_is_honoured() -> None:
    # Stored as 40 wide × 20 high, left half red and right half blue; Orientation 6 says "rotate 90° clockwise".
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    upright = decode_image(data)
    assert upright.size == (20, 40)
    rgb = np.asarray(to_model_mode(upright, 3)).astype(int)
    assert np.abs(rgb[5, 10] - [255, 0, 0]).max() <= 10  # the left (red) half is now on top
    assert np.abs(rgb[35, 10] - [0, 0, 255]).max() <= 10


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(0, 255, 0), (255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    rgb = decoded_pixels(data, 3)
    np.testing.assert_array_equal(rgb, np.broadcast_to([0, 255, 0], (8, 8, 3)))


@pytest.mark.parametrize(("fmt", "params"), [("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("PNG", {})])
def test_lossless_formats_decode_to_the_same_pixels(fmt: str, params: dict) -> None:
    img = Image.fromarray(skimage.data.chelsea())
    decoded = decode_image(encode(img, fmt, **params))
    assert decoded.size == (451, 300)
    np.testing.assert_array_equal(np.asarray(to_model_mode(decoded, 3)), skimage.data.chelsea())


def test_jpeg_decodes_close_to_the_original() -> None:
    decoded = decode_image(encode(Image.fromarray(skimage.data.astronaut()), "JPEG", quality=95))
    rgb = np.asarray(to_model_mode(decoded, 3)).astype(float)
    assert decoded.size == (512, 512)
    assert np.abs(rgb - skimage.data.astronaut()).mean() < 3


# --- errors a client gets ------------------------------------------------------------------------------------------


def assert_readable(error: BadInput | PayloadTooLarge, status: int) -> None:
    assert error.status == status
    assert error.message == str(error)
    assert len(error.message.split()) >= 5  # a sentence, not an error code
    assert "Traceback" not in error.message


def test_empty_upload_is_bad_input() -> None:
    with pytest.raises(BadInput) as info:
        decode_image(b"")
    assert_readable(info.value, 400)
    assert "empty" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(1).bytes(4096),
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
        b"name,label\ncat.jpg,cat\ndog.jpg,dog\n" * 20,
    ],
    ids=["random-bytes", "pdf", "text"],
)
def test_non_images_are_bad_input(data: bytes) -> None:
    with pytest.raises(BadInput) as info:
        decode_image(data)
    assert_readable(info.value, 400)
    assert "JPEG" in info.value.message  # says what to send instead


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO"])
def test_images_in_unsupported_formats_are_refused_by_name(fmt: str) -> None:
    with pytest.raises(BadInput) as info:
        decode_image(encode(noise(32, 32), fmt))
    assert_readable(info.value, 400)
    assert fmt in info.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_bad_input(fmt: str) -> None:
    data = encode(noise(80, 60), fmt)
    with pytest.raises(BadInput) as info:
        decode_image(data[: len(data) // 2])
    assert_readable(info.value, 400)
    assert "truncated" in info.value.message


def test_too_many_pixels_is_refused_from_the_header_before_decoding() -> None:
    data = encode(Image.new("RGB", (3000, 3000)), "PNG")
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(data, max_pixels=1_000_000)
    assert_readable(info.value, 413)
    assert "3000×3000" in info.value.message
    # Only the header is there: decoding would fail as truncated, so the limit must be checked first.
    with pytest.raises(PayloadTooLarge):
        decode_image(data[:100], max_pixels=1_000_000)
    assert decode_image(data, max_pixels=9_000_000).size == (3000, 3000)  # at the limit is fine


def test_small_file_claiming_a_huge_canvas_is_refused() -> None:
    bomb = encode(Image.new("1", (10000, 10000)), "PNG")  # 10⁸ pixels in a few KB
    assert len(bomb) < 50_000
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(bomb)  # the default limit, 5·10⁷ pixels
    assert_readable(info.value, 413)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is rewritten to claim ``width × height`` (the IDAT stays 8×8)."""
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("side", [15_000, 20_000, 60_000])
def test_a_bomb_beyond_pillows_own_limit_is_also_payload_too_large(side: int) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(png_claiming(side, side))
    assert_readable(info.value, 413)


def _jpeg(img: Image.Image, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_large_jpeg_is_decoded_at_reduced_size_upright_and_close_to_the_full_decode(monkeypatch, orientation) -> None:
    """DCT-scaled decoding (libjpeg-turbo through simplejpeg, Pillow's draft without it) for a classifier: the image
    comes back smaller, upright as its EXIF says, and its model input close to the full decode's."""
    import cnnserve.service.imaging as imaging

    photo = Image.fromarray(skimage.data.astronaut()).resize((1280, 960))
    data = _jpeg(photo, orientation)
    full = decode_image(data)  # no draft: Pillow, full size, exif_transpose
    results = {}
    for name, decoder in (("simplejpeg", imaging.simplejpeg), ("pillow", None)):
        monkeypatch.setattr(imaging, "simplejpeg", decoder)
        small = decode_image(data, draft_for=IMAGENET, draft_ratio=1.0)
        assert small.size == (full.width // 2, full.height // 2) and small.info.get(imaging.DRAFTED)
        results[name] = preprocess(small, IMAGENET)
    exact = preprocess(full, IMAGENET)
    for got in results.values():
        assert got.shape == exact.shape
        assert np.abs(got - exact).mean() < 2 / 255  # a reduced decode is an approximation, a close one
    assert np.abs(results["simplejpeg"] - results["pillow"]).mean() < 1.5 / 255  # both decoders agree
    assert full.size == ((960, 1280) if orientation in (6, 8) else (1280, 960))


def test_jpegs_the_fast_decoder_does_not_take_still_decode() -> None:
    cmyk = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).convert("CMYK").resize((1024, 1024)).save(cmyk, format="JPEG")
    img = decode_image(cmyk.getvalue(), draft_for=IMAGENET, draft_ratio=1.0)
    assert preprocess(img, IMAGENET).shape == (3, 224, 224)
    grey = decode_image(_jpeg(Image.fromarray(skimage.data.camera()).resize((1024, 1024))), draft_for=IMAGENET)
    assert grey.mode == "L" and grey.size == (256, 256)  # 1/4: still ≥ the 256 resize
    lenet = Preprocess(input_size=(32, 32), in_channels=1)  # a colour JPEG for a grey model decodes grey
    colour = decode_image(_jpeg(Image.fromarray(skimage.data.astronaut())), draft_for=lenet)
    assert colour.mode == "L" and colour.size == (64, 64)  # 1/8: still ≥ the 32×32 input
