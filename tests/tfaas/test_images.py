"""Class names and image classification (TFaaS's labels.txt and /image) end to end on each backend."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
from PIL import Image
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import model_pb2, registry_service_pb2, tensor_pb2

from tests import models
from tests.api.helpers import upload, violations
from tests.serving import unique_name
from tests.tfaas.helpers import image, images_tensor, png_declaring

LABELS = "red\ngreen\nblue\n"
UNIT = model_pb2.IMAGE_SCALING_UNIT
SYMMETRIC = model_pb2.IMAGE_SCALING_SYMMETRIC
SIZE = models.COLOUR_SIZE


@pytest.fixture(scope="module")
def colours_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.colour_classifier_keras(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def reference(colours_file: Path) -> keras.Model:
    return keras.saving.load_model(colours_file, compile=False)


@pytest.fixture(scope="module")
async def classifier(registry_stub, colours_file) -> str:
    name = unique_name("colours")
    await upload(registry_stub, name, colours_file, class_names_text=LABELS, image_scaling=UNIT)
    return name


def pixels(blob: bytes) -> np.ndarray:
    """What the server should feed the model for ``blob``, worked out here the plain way: full decode, RGB,
    bilinear resize to 16 x 16, 0..1."""
    with Image.open(io.BytesIO(blob)) as img:
        resized = img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float32) / 255


def classify_request(name: str, *blobs: bytes, **options: object) -> ipb.PredictRequest:
    return ipb.PredictRequest(
        model=model_pb2.ModelRef(name=name),
        inputs={"image": images_tensor(*blobs)},
        classify=ipb.ClassifyOptions(**options),  # type: ignore[arg-type]
    )


async def test_png_and_jpeg_images_are_classified(inference_stub, classifier, reference) -> None:
    blobs = [
        image("red", "PNG", (40, 30)),  # shrunk, aspect ratio not kept
        image("green", "JPEG", (64, 64)),  # shrunk by JPEG's DCT scaling alone
        image("blue", "PNG", (SIZE, SIZE)),  # already the model's size
        image("green", "PNG", (7, 9)),  # enlarged
    ]
    answer = await inference_stub.Predict(classify_request(classifier, *blobs, top_k=2))
    assert [row.classes[0].name for row in answer.classifications] == ["red", "green", "blue", "green"]
    assert all(len(row.classes) == 2 for row in answer.classifications)

    expected = np.asarray(reference(np.stack([pixels(b) for b in blobs]), training=False))
    tensor = answer.outputs["probs"]  # classes come beside the outputs by default
    got = np.asarray(tensor.float_val, np.float32).reshape(tuple(tensor.shape))
    np.testing.assert_allclose(got, expected, atol=2e-3)
    for row, scores in zip(answer.classifications, expected, strict=True):
        best = int(np.argmax(scores))
        assert (row.classes[0].index, row.classes[0].name) == (best, models.COLOURS[best])
        assert row.classes[0].score == pytest.approx(scores[best], abs=2e-3)


async def test_classes_only_and_top_k_bounds(inference_stub, classifier) -> None:
    answer = await inference_stub.Predict(classify_request(classifier, image("blue"), omit_outputs=True, top_k=10))
    assert not answer.outputs
    assert answer.classifications[0].classes[0].name == "blue"
    assert len(answer.classifications[0].classes) == 3  # top_k beyond the classes means all of them
    default = await inference_stub.Predict(classify_request(classifier, image("blue")))
    assert len(default.classifications[0].classes) == 3  # 0 means 5, capped at the 3 classes


async def test_pixels_still_work_and_scaling_is_per_version(
    registry_stub, inference_stub, colours_file, reference
) -> None:
    name = unique_name("colours")
    await upload(registry_stub, name, colours_file, class_names_text=LABELS, image_scaling=SYMMETRIC)
    red = image("red", "PNG", (SIZE, SIZE))
    answer = await inference_stub.Predict(classify_request(name, red, top_k=3))
    symmetric = pixels(red) * 2 - 1  # value / 127.5 - 1
    expected = np.asarray(reference(symmetric[None], training=False))[0]
    assert [c.score for c in answer.classifications[0].classes] == pytest.approx(
        sorted(expected, reverse=True), abs=1e-5
    )

    # Pixels sent as a float tensor skip decoding and scaling altogether.
    raw = symmetric[None].astype(np.float32)
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=raw.shape, content=raw.tobytes())
    request = ipb.PredictRequest(model=model_pb2.ModelRef(name=name), inputs={"image": tensor})
    direct = await inference_stub.Predict(request)
    got = np.frombuffer(direct.outputs["probs"].content, "<f4")
    np.testing.assert_allclose(got, expected, atol=1e-6)


async def test_class_names_in_metadata_and_download(registry_stub, classifier, colours_file) -> None:
    ref = model_pb2.ModelRef(name=classifier)
    got = await registry_stub.GetModelVersion(registry_service_pb2.GetModelVersionRequest(model=ref))
    assert list(got.version.class_names) == list(models.COLOURS)
    assert got.version.image_scaling == UNIT
    request = registry_service_pb2.DownloadModelVersionRequest(model=ref)
    messages = [m async for m in registry_stub.DownloadModelVersion(request)]
    assert list(messages[0].version.class_names) == list(models.COLOURS)
    assert b"".join(m.chunk for m in messages[1:]) == colours_file.read_bytes()


async def test_bad_images_name_their_rows(inference_stub, classifier) -> None:
    jpeg = image("green", "JPEG")
    blobs = [
        image("red"),  # fine
        b"not an image at all",
        jpeg[:200],  # cut in its header
        jpeg[:-20],  # cut in its pixel data
        png_declaring(100_000, 100_000),  # a decompression bomb: refused from its header, never decoded
        image("blue", "GIF"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(classify_request(classifier, *blobs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    row = 'inputs["image"].string_val[{}]'.format
    assert set(found) == {row(i) for i in range(1, 6)}
    assert "not a PNG or JPEG image" in found[row(1)]
    assert "the JPEG image's header is corrupt" in found[row(2)]
    assert "the JPEG image is corrupt or truncated" in found[row(3)]
    assert "declares 100000 x 100000 pixels" in found[row(4)]
    assert "not a PNG or JPEG image (a GIF image)" in found[row(5)]


async def test_image_tensor_shape_and_count_are_checked(inference_stub, classifier) -> None:
    blob = image("red")
    wrong_rank = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_STRING, shape=[1, 1], string_val=[blob])
    request = ipb.PredictRequest(model=model_pb2.ModelRef(name=classifier), inputs={"image": wrong_rank})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(request)
    assert "shape [N], one image per row" in violations(err.value)['inputs["image"].shape']

    short = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_STRING, shape=[2], string_val=[blob])
    request = ipb.PredictRequest(model=model_pb2.ModelRef(name=classifier), inputs={"image": short})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(request)
    assert "expected 2 images" in violations(err.value)['inputs["image"].values']


async def test_class_names_and_scaling_are_checked_at_upload(registry_stub, colours_file, tmp_path) -> None:
    cases = [
        (
            {"class_names_text": "red\ngreen\n"},
            "header.class_names_text",
            "2 class names given but the output 'probs' has 3",
        ),
        ({"class_names_text": "red\n\nblue\n"}, "header.class_names_text", "line 2 is empty"),
    ]
    for header, field, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(registry_stub, unique_name("bad"), colours_file, **header)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in violations(err.value)[field]
    # Scaling pixels needs an image input: the MLP takes 4 features.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, unique_name("bad"), models.mlp_keras(tmp_path), image_scaling=UNIT)
    assert "needs an image input" in violations(err.value)["header.image_scaling"]
    # CRLF line ends and a missing final newline are fine.
    ok = await upload(registry_stub, unique_name("crlf"), colours_file, class_names_text="red\r\ngreen\r\n blue ")
    assert list(ok.version.class_names) == list(models.COLOURS)


async def test_classify_errors(registry_stub, inference_stub, classifier, tmp_path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(classify_request(classifier, image("red"), output="nope"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown output 'nope'" in violations(err.value)["classify.output"]

    plain = unique_name("plain")
    await upload(registry_stub, plain, models.colour_classifier_keras(tmp_path))  # no class names
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(classify_request(plain, image("red")))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no class names" in err.value.details()
