"""A journaled request as text and back: the canonical JSON of a create of any task family.

Pure (values in, values out). An extend's canonical JSON is its fields alone, as journals of
version 0.2 hold it (so their fingerprints still match); a source create's carries its
``family`` too. A base64 image is kept as the digest of its text (``sha256:<hex>``), not as
megabytes in every record: the digest still tells one request from another, but such a
request cannot be sent again from the journal alone (`images_left_out`), only with the
caller's image (docs/concepts.md, "Keys for source videos").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from ._source_requests import CameraControl, CreateRequest, ImageToVideo, TextToVideo
from .models import ExtendRequest, TaskFamily

__all__ = ["canonical", "decode_request", "fingerprint", "images_left_out"]

_DIGEST = "sha256:"  # a base64 image's stand-in; ':' is neither base64 nor a URL's start
_IMAGES = ("image", "image_tail")
_SOURCES: dict[str, type[TextToVideo] | type[ImageToVideo]] = {
    TaskFamily.TEXT2VIDEO.value: TextToVideo,
    TaskFamily.IMAGE2VIDEO.value: ImageToVideo,
}


def _stored_image(value: str) -> str:
    """An image as recorded: a URL (or a digest already) as it is, base64 as its digest."""
    if value.startswith(("http://", "https://", _DIGEST)):
        return value
    return _DIGEST + hashlib.sha256(value.encode()).hexdigest()


def canonical(request: CreateRequest, *, without_external_id: bool = False) -> str:
    """The request as canonical JSON: attrs field names, ``None`` left out, sorted keys; a
    source create's with its ``family`` and base64 images as digests."""
    data = attrs.asdict(request, filter=lambda _attribute, value: value is not None)
    if "cfg_scale" in data:
        data["cfg_scale"] = float(data["cfg_scale"])  # 1 and 1.0 are the same request
    if without_external_id:
        data.pop("external_task_id", None)
    if not isinstance(request, ExtendRequest):
        data["family"] = request.family.value
        for name in _IMAGES:
            if name in data:
                data[name] = _stored_image(data[name])
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(request: CreateRequest, *, without_external_id: bool = False) -> str:
    """The request's identity: the sha256 of its canonical JSON (equal requests, equal
    fingerprints), optionally without the external id that a session stamps on it."""
    text = canonical(request, without_external_id=without_external_id)
    return hashlib.sha256(text.encode()).hexdigest()


def images_left_out(request: CreateRequest) -> bool:
    """Whether ``request`` came from a journal that keeps only its images' digests: it
    identifies the create and finds its task, but cannot be sent."""
    return isinstance(request, ImageToVideo) and any(
        value is not None and value.startswith(_DIGEST)
        for value in (request.image, request.image_tail)
    )


def decode_request(text: str) -> CreateRequest:
    """The request stored as ``text`` (its canonical JSON), of its family's type."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError(f"the request is a JSON {type(data).__name__}, not an object")
    family = data.pop("family", None)
    if family is None:
        return ExtendRequest(**data)
    cls = _SOURCES.get(family) if isinstance(family, str) else None
    if cls is None:
        raise ValueError(f"the request is of an unknown task family {family!r}")
    camera = data.get("camera_control")
    if isinstance(camera, dict):
        data["camera_control"] = CameraControl(**camera)
    if cls is TextToVideo:
        return TextToVideo(**data)
    return _image_request(data)


def _image_request(data: dict[str, Any]) -> ImageToVideo:
    """An `ImageToVideo` whose digests stand in for its base64 images: built (and checked)
    with a URL in their place, then given the digests, which no image check would take."""
    digests = {
        name: data[name]
        for name in _IMAGES
        if isinstance(data.get(name), str) and data[name].startswith(_DIGEST)
    }
    placeholder = dict.fromkeys(digests, "https://journal.invalid/image")
    request = ImageToVideo(**{**data, **placeholder})
    for name, digest in digests.items():
        object.__setattr__(request, name, digest)  # frozen: the way attrs' own __init__ sets
    return request
