"""Typed errors of the image layer (qcow2 files, qemu-img, storage-domain files).

They derive from the `core.errors` families so the API renders them with the right status; the message
always names the file and says what to do about it.
"""
from __future__ import annotations

from core.errors import Conflict, GatewayTimeout, Invalid, NotFound, Unavailable, VdiError


class ImageNotFound(NotFound):
    code = "image_not_found"
    msg_fmt = "image file {path} does not exist"


class ImageInvalid(Invalid):
    code = "image_invalid"
    msg_fmt = "{path} is not a usable image: {reason}"


class ImageExists(Conflict):
    code = "image_exists"
    msg_fmt = "{path} already exists with {actual}; asked for {expected}. Remove it or choose another name"


class ImageInUse(Conflict):
    code = "image_in_use"
    msg_fmt = "{path} is in use by another process (a running guest?): {reason}"


class ImageCorrupt(VdiError):
    code = "image_corrupt"
    status = 500
    expected = True
    msg_fmt = "image {path} is corrupt: {reason}"


class StorageFull(VdiError):
    code = "storage_full"
    status = 507
    expected = True
    msg_fmt = "no space left on the storage holding {path}; free space or add storage"


class ImageToolError(VdiError):
    """qemu-img failed in a way that is not the caller's fault (its message is kept verbatim)."""

    code = "image_tool_error"
    status = 500
    expected = True
    msg_fmt = "qemu-img {command} failed: {detail}"


class ImageToolTimeout(GatewayTimeout):
    code = "image_tool_timeout"
    msg_fmt = "qemu-img {command} on {path} did not finish within {seconds} s"


class ImageToolMissing(Unavailable):
    code = "image_tool_missing"
    msg_fmt = "{what} is unavailable: {reason}"
