"""The page at `/` in a real browser (Debian's chromium, driven by Selenium) against the real `bentoml serve`.

Each test does what a person would: picks an endpoint and a model, gives an image (file picker, sample button,
drop or paste), and reads what the page draws. Answers are checked against the service's own JSON for the same
image. Screenshots of each view go to a temporary folder, and to `$CNNSERVE_SCREENSHOTS` when that is set
(`docs/screenshots/` holds a few). `make browser-deps` installs chromium and chromium-driver.

`python tests/test_browser.py` regenerates the sample images the service ships (`service/app/static/samples/`).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from cnnserve.export.demos.digits import digit_png, digits_split
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "service" / "app" / "static" / "samples"


def make_samples(folder: Path) -> None:
    """The page's sample images: a digit (the README's, a 2), the same digit with Gaussian noise (σ = 0.2, seeded),
    a shapes scene and a photo from skimage.data, small enough to commit."""
    import skimage.data
    from cnnserve.export.demos.digits import digit_image, digits_split
    from cnnserve.export.demos.shapes import make_dataset

    folder.mkdir(parents=True, exist_ok=True)
    digit = digits_split().test_images[0]
    digit_image(digit).save(folder / "digit.png")
    noisy = digit / 255.0 + 0.2 * np.random.default_rng(0).standard_normal(digit.shape)
    digit_image(np.rint(np.clip(noisy, 0, 1) * 255)).save(folder / "noisy-digit.png")
    scene = make_dataset(1, size=(128, 128), seed=7, max_shapes=5)[0].image  # the demo models' training size
    Image.fromarray(scene).save(folder / "shapes.jpg", quality=90)
    photo = Image.fromarray(skimage.data.chelsea())
    photo.resize((300, 200), Image.Resampling.LANCZOS).save(folder / "photo.jpg", quality=85)


XSS_LABEL = "<img src=x onerror=alert(1)>"  # class 1 of the `xss_labels` model (conftest)


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    raise RuntimeError(f"none of {names} is installed; run `make browser-deps` (Debian's chromium, chromium-driver)")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=en"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[WebDriver, str], Path]:
    folders = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("CNNSERVE_SCREENSHOTS"):
        folders.append(Path(os.environ["CNNSERVE_SCREENSHOTS"]))

    def save(driver: WebDriver, name: str) -> Path:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(folder / f"{name}.png"))
        return folders[0] / f"{name}.png"

    return save


@pytest.fixture
def page(browser: WebDriver, server) -> WebDriver:
    """The page, freshly loaded, with its model tables drawn; the log holds this page's messages only."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(f"{server.url}/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-tables table"))
    return browser


def console_errors(driver: WebDriver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def choose(driver: WebDriver, endpoint: str, model: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"label[for='endpoint-{endpoint}']").click()
    Select(driver.find_element(By.ID, "model")).select_by_value(model)


def seq(driver: WebDriver) -> int:
    return int(driver.find_element(By.ID, "result").get_attribute("data-seq") or 0)


def answer(driver: WebDriver, after: int, timeout: float = 60) -> str:
    """Waits for the first request sent after request number ``after`` to be drawn; its state (done / error)."""

    def finished(d: WebDriver) -> str | bool:
        # Both attributes in one script: read one call apart, the previous answer's state could pair with the next
        # request's number (the page sets both at once when it sends).
        seq, state = d.execute_script(
            "const r = document.getElementById('result'); return [r.dataset.seq || '0', r.dataset.state || ''];"
        )
        return state if int(seq) > after and state in ("done", "error") else False

    return WebDriverWait(driver, timeout).until(finished)


def upload(driver: WebDriver, path: Path) -> str:
    before = seq(driver)
    driver.find_element(By.ID, "file").send_keys(str(path))
    return answer(driver, before)


def sample(driver: WebDriver, name: str) -> str:
    """Chooses a sample image with the keyboard: focus its button, press Enter."""
    before = seq(driver)
    driver.find_element(By.CSS_SELECTOR, f"button[data-sample='{name}']").send_keys(Keys.ENTER)
    return answer(driver, before)


def post(server, route: str, data: bytes, **fields: str) -> requests.Response:
    return requests.post(f"{server.url}/{route}", files={"image": ("image", data)}, data=fields, timeout=60)


def texts(driver: WebDriver, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """One held-out digit per class, as the PNG files a person would pick: {label: path}."""
    split = digits_split()
    folder = tmp_path_factory.mktemp("digits")
    files = {}
    for pixels, label in zip(split.test_images, split.test_labels, strict=True):
        if int(label) not in files:
            files[int(label)] = folder / f"digit-{label}.png"
            files[int(label)].write_bytes(digit_png(pixels))
    return files


def test_page_replaces_bentoml_index_and_keeps_docs(server) -> None:
    page = requests.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="static/app.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = requests.get(f"{server.url}/static/app.js", headers={"Origin": "https://elsewhere.example"}, timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "access-control-allow-origin" not in script.headers  # same origin only
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 200
    assert "/classify" in requests.get(f"{server.url}/docs.json", timeout=10).json()["paths"]


def test_docs_render_offline_from_local_files(browser: WebDriver, server, shots) -> None:
    """`/docs` draws Swagger UI with every endpoint from files the service serves itself: this machine has no
    route to a CDN, and every resource the page loaded is from its own origin. The document's title and version
    are the package's."""
    from cnnserve import __version__

    html = requests.get(f"{server.url}/docs", timeout=10).text
    assert "cdn." not in html and "https://" not in html.split("<body>")[0]
    browser.get_log("browser")
    browser.get(f"{server.url}/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = set(texts(browser, ".opblock-summary-path"))
    assert {"/classify", "/detect", "/segment", "/denoise", "/anomaly", "/models"} <= paths
    title = browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert title.startswith("cnnserve") and __version__ in title
    origins = browser.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert origins and set(origins) == {server.url}
    assert console_errors(browser) == []
    shots(browser, "docs")


def test_page_loads_without_console_errors_and_lists_models(page: WebDriver, server, shots) -> None:
    models = requests.get(f"{server.url}/models", timeout=10).json()["models"]
    assert console_errors(page) == []
    for model in models:
        row = page.find_element(By.CSS_SELECTOR, f"table[data-task='{model['task']}'] tr[data-model='{model['name']}']")
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
        assert cells[0] == model["name"] and cells[1] == model["precision"]
        if model["ready"]:
            assert cells[5] == "✓ ready" and "CPU" in cells[2]
        else:
            assert cells[5].startswith("✗") and model["error"][:40] in cells[5]
    assert texts(page, "table caption")[:2] == ["Classification", "Detection"]
    # every control has a name a screen reader can say
    unnamed = page.execute_script(
        "return [...document.querySelectorAll('input, select, button')].filter(e => !(e.labels?.length"
        " || e.getAttribute('aria-label') || e.textContent.trim())).map(e => e.outerHTML)"
    )
    assert unnamed == []
    shots(page, "models")


def test_digit_upload_shows_the_right_label_latency_and_a_working_curl(page, server, digits, shots, tmp_path) -> None:
    choose(page, "classify", "lenet5")
    for label in (3, 7):
        assert upload(page, digits[label]) == "done"
        assert texts(page, "#predictions li .label")[0] == str(label)
    assert len(texts(page, "#predictions li")) == 5
    assert page.find_element(By.ID, "latency").text.endswith("ms (HTTP 200, measured in the browser)")
    shots(page, "classify")

    # the curl command shown is the request that was made: run it, get the same answer
    command = page.find_element(By.ID, "curl").text
    assert command.startswith("curl -F image=@digit-7.png -F model=lenet5 -F top_k=5 ")
    shutil.copy(digits[7], tmp_path / "digit-7.png")
    out = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    from_curl = json.loads(out.stdout)["predictions"]
    assert [p["label"] for p in from_curl] == texts(page, "#predictions li .label")
    assert console_errors(page) == []


def test_dropped_and_pasted_images_are_classified(page, digits) -> None:
    choose(page, "classify", "lenet5")
    for event, label in (("drop", 4), ("paste", 6)):
        before = seq(page)
        page.execute_script(
            """const [event, b64, name] = arguments;
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, {type: 'image/png'}));
            const init = {bubbles: true, cancelable: true};
            const e = event === 'drop' ? new DragEvent('drop', {...init, dataTransfer: data})
                                       : new ClipboardEvent('paste', {...init, clipboardData: data});
            document.querySelector('main').dispatchEvent(e);""",
            event,
            base64.b64encode(digits[label].read_bytes()).decode(),
            f"{event}.png",
        )
        assert answer(page, before) == "done"
        assert texts(page, "#predictions li .label")[0] == str(label)
        assert page.find_element(By.ID, "image-name").text.startswith(f"{event}.png — 8×8")


def test_detection_draws_every_box_of_the_answer_and_filters_by_score(page, server, shots) -> None:
    choose(page, "detect", "yolov1_shapes_conv")  # the served default: the README's screenshot
    assert sample(page, "shapes.jpg") == "done"
    expected = post(server, "detect", (SAMPLES / "shapes.jpg").read_bytes(), model="yolov1_shapes_conv").json()
    boxes = expected["detections"]
    assert len(boxes) >= 2
    canvas = page.find_element(By.ID, "answer-canvas")
    assert canvas.get_attribute("data-drawn") == str(len(boxes))
    assert texts(page, "#detections li .label") == [d["label"] for d in boxes]
    shots(page, "detect")

    # the slider filters in the page, without a new request: End moves it to 1.0, Home back to 0
    before = seq(page)
    slider = page.find_element(By.ID, "score-filter")
    slider.send_keys(Keys.END)
    assert canvas.get_attribute("data-drawn") == str(sum(d["score"] >= 1.0 for d in boxes))
    assert len([t for t in texts(page, "#detections li") if t]) == int(canvas.get_attribute("data-drawn"))
    slider.send_keys(Keys.HOME)
    assert canvas.get_attribute("data-drawn") == str(len(boxes)) and seq(page) == before


def test_segmentation_mask_is_drawn_over_the_image_with_a_legend(page, server, shots) -> None:
    choose(page, "segment", "unet")
    assert sample(page, "shapes.jpg") == "done"
    expected = post(server, "segment", (SAMPLES / "shapes.jpg").read_bytes(), model="unet").json()
    canvas = page.find_element(By.ID, "answer-canvas")
    assert canvas.get_attribute("data-overlay") == "semantic"
    # the legend counts the pixels of the mask the page decoded: the same as the service's counts
    legend, classes = page.find_elements(By.CSS_SELECTOR, "#legend li"), expected["classes"]
    assert [li.find_element(By.CSS_SELECTOR, ".label").text for li in legend] == [
        c["label"] for c in expected["classes"]
    ]
    assert [int(li.get_attribute("data-pixels")) for li in legend] == [c["pixels"] for c in classes]
    assert len(classes) >= 2
    shots(page, "segment")

    def canvas_sum() -> int:
        return page.execute_script(
            "const c = document.getElementById('answer-canvas');"
            "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.reduce((a, b) => a + b, 0)"
        )

    with_mask = canvas_sum()
    page.find_element(By.ID, "mask-opacity").send_keys(Keys.HOME)  # opacity 0: the bare image
    assert canvas.get_attribute("data-opacity") == "0" and canvas_sum() != with_mask


def test_denoise_shows_input_and_output_and_adds_noise(page, server, shots) -> None:
    choose(page, "denoise", "cae")
    assert sample(page, "noisy-digit.png") == "done"
    images = page.find_elements(By.CSS_SELECTOR, "#view figure img")
    assert len(images) == 2
    sizes = [page.execute_script("return [arguments[0].complete, arguments[0].naturalWidth]", i) for i in images]
    assert sizes == [[True, 8], [True, 8]]
    shots(page, "denoise")

    before = seq(page)
    page.find_element(By.ID, "add-noise").click()
    assert answer(page, before) == "done"
    assert page.find_element(By.ID, "image-name").text.startswith("noisy-noisy-digit.png — 8×8")
    assert len(page.find_elements(By.CSS_SELECTOR, "#view figure img")) == 2


def test_anomaly_is_marked_against_the_threshold(page, server, shots) -> None:
    choose(page, "anomaly", "cae")
    assert sample(page, "digit.png") == "done"
    expected = post(server, "anomaly", (SAMPLES / "digit.png").read_bytes(), model="cae").json()
    assert page.find_element(By.ID, "verdict").text == ("Anomalous" if expected["is_anomaly"] else "Normal")
    assert f"{expected['threshold']:.3g}" in page.find_element(By.CSS_SELECTOR, "#view .summary").text
    assert len(page.find_elements(By.CSS_SELECTOR, "#view figure img")) == 2  # the input and its error heat map
    shots(page, "anomaly")


def test_embed_places_the_digit_on_the_map_among_its_neighbours(page, server, shots) -> None:
    choose(page, "embed", "cae_inpaint")
    assert sample(page, "digit.png") == "done"
    data = (SAMPLES / "digit.png").read_bytes()
    expected = post(server, "embed", data, model="cae_inpaint", neighbors="8", map="true").json()
    canvas = page.find_element(By.ID, "embed-map")
    assert canvas.get_attribute("data-points") == "450"
    assert float(canvas.get_attribute("data-x")) == pytest.approx(expected["map"]["x"])
    assert float(canvas.get_attribute("data-y")) == pytest.approx(expected["map"]["y"])
    listed = page.find_elements(By.CSS_SELECTOR, "#neighbors-list li")
    assert [li.get_attribute("data-index") for li in listed] == [str(n["index"]) for n in expected["neighbors"]]
    assert texts(page, "#neighbors-list li .label")[:3] == ["2", "2", "2"]
    assert page.find_element(By.ID, "embedding-summary").text.startswith(f"{expected['dim']} numbers, L2-normalised")
    assert "-F neighbors=8 -F map=true" in page.find_element(By.ID, "curl").text
    assert console_errors(page) == []
    shots(page, "embed")


def test_inpaint_fills_a_hole_painted_with_the_mouse(page, server, shots) -> None:
    choose(page, "inpaint", "cae_inpaint")
    page.find_element(By.CSS_SELECTOR, "button[data-sample='digit.png']").send_keys(Keys.ENTER)
    canvas = WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "mask-canvas"))
    assert canvas.get_attribute("data-painted") == "false"  # nothing sent yet: the page asks for a hole first
    assert "Paint over the part" in page.find_element(By.ID, "status").text
    stroke = ActionChains(page).move_to_element_with_offset(canvas, -70, -30).click_and_hold()
    stroke.move_by_offset(140, 0).move_by_offset(0, 40).release().perform()
    assert canvas.get_attribute("data-painted") == "true"
    before = seq(page)
    page.find_element(By.ID, "run").click()
    assert answer(page, before) == "done"
    filled = page.find_element(By.ID, "inpainted")
    assert page.execute_script("return [arguments[0].complete, arguments[0].naturalWidth]", filled) == [True, 8]
    command = page.find_element(By.ID, "curl").text
    assert "-F image=@digit.png -F mask=@mask.png" in command and "-o inpainted.png" in command
    assert console_errors(page) == []
    shots(page, "inpaint")


def test_generate_shows_a_grid_and_new_seed_draws_another(page, server, shots) -> None:
    before = seq(page)
    choose(page, "generate", "cvae")  # no image needed: choosing the endpoint asks at once
    assert answer(page, before) == "done"
    assert not page.find_element(By.ID, "image-input").is_displayed()
    grid = page.find_element(By.ID, "generated-grid")
    assert page.find_element(By.ID, "seed").get_attribute("value") == grid.get_attribute("data-seed")

    seed = page.find_element(By.ID, "seed")
    before = seq(page)
    # Typed over the selection: clear() would send a request of its own, whose answer writes its seed back into the
    # field while "7" is being typed.
    seed.send_keys(Keys.CONTROL, "a")
    seed.send_keys("7", Keys.TAB)
    assert answer(page, before) == "done"
    grid = page.find_element(By.ID, "generated-grid")
    assert grid.get_attribute("data-seed") == "7" and grid.get_attribute("data-count") == "16"
    expected = requests.post(f"{server.url}/generate", json={"count": 16, "seed": 7, "model": "cvae"}, timeout=30)
    want = np.asarray(Image.open(io.BytesIO(base64.b64decode(expected.json()["grid"]))), dtype=np.int64)
    drawn = page.execute_script(
        "const img = arguments[0]; const c = document.createElement('canvas');"
        "c.width = img.naturalWidth; c.height = img.naturalHeight; const ctx = c.getContext('2d');"
        "ctx.drawImage(img, 0, 0); const d = ctx.getImageData(0, 0, c.width, c.height).data;"
        "let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return [c.width, c.height, s];",
        grid,
    )
    assert drawn == [want.shape[1], want.shape[0], int(want.sum())]  # the very images the service answers
    shots(page, "generate")

    before = seq(page)
    page.find_element(By.ID, "new-seed").click()
    assert answer(page, before) == "done"
    new_seed = page.find_element(By.ID, "generated-grid").get_attribute("data-seed")
    assert new_seed != "7" and page.find_element(By.ID, "seed").get_attribute("value") == new_seed
    assert console_errors(page) == []


def test_service_errors_are_shown_as_messages(page, digits, shots, tmp_path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    too_large = tmp_path / "large.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(buf, "PNG")
    too_large.write_bytes(buf.getvalue())
    assert too_large.stat().st_size > 2 * 2**20  # the test server's CNNSERVE_MAX_UPLOAD_MB

    choose(page, "classify", "lenet5")
    error = page.find_element(By.ID, "error")
    assert upload(page, digits[2]) == "done" and not error.is_displayed()
    before = seq(page)
    Select(page.find_element(By.ID, "model")).select_by_value("broken")  # another model: the image goes again
    assert answer(page, before) == "error"
    assert error.is_displayed() and error.text.startswith("Model not available (HTTP 503): model 'broken'")
    assert page.find_element(By.ID, "view").text == ""  # the previous answer is gone, not shown as this one's

    Select(page.find_element(By.ID, "model")).select_by_value("lenet5")
    assert upload(page, corrupt) == "error"
    assert error.text.startswith("The service could not use this request (HTTP 400): ")
    shots(page, "error")
    assert upload(page, too_large) == "error"
    assert error.text.startswith("Too large (HTTP 413): ") and "2 MB" in error.text


def test_labels_from_model_metadata_are_text_not_html(page, digits, shots) -> None:
    choose(page, "classify", "xss_labels")
    assert upload(page, digits[1]) == "done"
    labels = texts(page, "#predictions li .label")
    assert labels[0] == XSS_LABEL  # shown literally
    assert page.execute_script("return document.querySelectorAll('#result img[src=\"x\"], img[onerror]').length") == 0
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018
    shots(page, "xss")


def test_shipped_samples_are_the_documented_images(tmp_path) -> None:
    make_samples(tmp_path)
    for name in ("digit.png", "noisy-digit.png", "shapes.jpg", "photo.jpg"):
        shipped = np.asarray(Image.open(SAMPLES / name), dtype=np.int16)
        made = np.asarray(Image.open(tmp_path / name), dtype=np.int16)
        assert shipped.shape == made.shape and np.abs(shipped - made).max() <= (0 if name.endswith(".png") else 2)
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < 200_000


if __name__ == "__main__":
    make_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLES)
