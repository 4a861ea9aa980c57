"""The session's calls that make source videos: text-to-video and image-to-video.

They build a typed request (`TextToVideo`, `ImageToVideo`), checked before any I/O, and
submit it as `KlingSession.extend` submits an extend: stamping, receiver tokens, the create
retry and look-up rules, and a `TaskHandle` that waits on the family's own routes
(docs/concepts.md, "Task families"). `KlingSession` takes them from `SourceCalls`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio.to_thread

from ._config import check_key
from ._images import image_value
from ._source_requests import CameraControl, ImageToVideo, TextToVideo

if TYPE_CHECKING:
    from ._handle import TaskHandle
    from ._journal import Journal
    from ._submit import Submitter

__all__ = ["SourceCalls"]

Image = str | os.PathLike[str]
CameraArgument = CameraControl | Mapping[str, object] | None


class SourceCalls:
    """`KlingSession.text_to_video` and `KlingSession.image_to_video`."""

    _submitter: Submitter
    _journal: Journal | None

    async def text_to_video(
        self,
        prompt: str,
        *,
        model_name: str = "kling-v1",
        mode: str | None = None,
        duration: str | int | None = None,
        aspect_ratio: str | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        camera_control: CameraArgument = None,
        callback_url: str | None = None,
        external_task_id: str | None = None,
        watermark: bool | None = None,
        key: str | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> TaskHandle:
        """Create a text-to-video task (a paid job) and return its handle; its finished
        task's ``video.id`` is a source video `extend` takes.

        The fields are `TextToVideo`'s, checked before anything is sent; ``extra`` passes
        options this SDK does not know through. ``key`` (with a ``journal``) works as it does
        for `extend`: one task per key, however often and wherever the call is repeated.
        Added in version 0.3.
        """
        request = TextToVideo(
            prompt=prompt,
            model_name=model_name,
            mode=mode,
            duration=duration,
            aspect_ratio=aspect_ratio,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            camera_control=camera_control,
            callback_url=callback_url,
            external_task_id=external_task_id,
            watermark=watermark,
            extra={} if extra is None else extra,
        )
        return await self.create_source(request, key=key)

    async def image_to_video(
        self,
        image: Image | None = None,
        *,
        image_tail: Image | None = None,
        prompt: str | None = None,
        model_name: str = "kling-v1",
        mode: str | None = None,
        duration: str | int | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        camera_control: CameraArgument = None,
        callback_url: str | None = None,
        external_task_id: str | None = None,
        watermark: bool | None = None,
        key: str | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> TaskHandle:
        """Create an image-to-video task from ``image`` (first frame), ``image_tail`` (last
        frame) or both, and return its handle.

        An image is an http(s) URL, bare base64, or a local file's path (read and encoded
        here, at most 10 MB). The fields are `ImageToVideo`'s, checked before anything is
        sent. ``key`` works as it does for `extend` (the journal keeps a base64 image's
        digest, not the image: docs/concepts.md, "Keys for source videos"). Added in
        version 0.3.
        """
        # A local file is read off the event loop (up to 10 MB), before the request is built.
        image, image_tail = await anyio.to_thread.run_sync(_read_images, image, image_tail)
        request = ImageToVideo(
            image=image,
            image_tail=image_tail,
            prompt=prompt,
            model_name=model_name,
            mode=mode,
            duration=duration,
            negative_prompt=negative_prompt,
            cfg_scale=cfg_scale,
            camera_control=camera_control,
            callback_url=callback_url,
            external_task_id=external_task_id,
            watermark=watermark,
            extra={} if extra is None else extra,
        )
        return await self.create_source(request, key=key)

    async def create_source(
        self, request: TextToVideo | ImageToVideo, *, key: str | None = None
    ) -> TaskHandle:
        """Submit a built `TextToVideo` or `ImageToVideo` (under journal ``key``) and return
        its handle (see `text_to_video`). Added in version 0.3."""
        if not isinstance(request, (TextToVideo, ImageToVideo)):
            raise TypeError(
                f"request must be a TextToVideo or an ImageToVideo, not {type(request).__name__}"
            )
        if key is not None:
            check_key(key, journal=self._journal is not None)
        return await self._submitter.submit(request, None, key)


def _read_images(image: object, image_tail: object) -> tuple[str | None, str | None]:
    return image_value("image", image), image_value("image_tail", image_tail)
