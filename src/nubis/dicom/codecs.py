"""Permissively licensed pixel codecs, registered with pydicom (README "Codecs and licences").

nubis is Apache-2.0 and its default install carries no GPL code. pydicom's only decoder for
JPEG lossless (processes 14 and 14 SV1) and 12-bit extended JPEG is pylibjpeg-libjpeg, which is
GPLv3; here `imagecodecs <https://github.com/cgohlke/imagecodecs>`_ (BSD-3-Clause, libjpeg-turbo
3 inside: IJG/BSD-3-Clause/Zlib) takes its place as a pydicom decoding plugin for the four ISO
10918-1 syntaxes, and its OpenJPH binding (BSD-2-Clause) encodes HTJ2K, which pydicom has no
encoder for. JPEG-LS is pydicom's own ``pyjpegls`` plugin (MIT, CharLS BSD-3-Clause); JPEG 2000,
HTJ2K decoding and RLE are pylibjpeg-openjpeg (MIT, OpenJPEG BSD-2-Clause) and pydicom.

The decoder follows pydicom's plugin contract (``is_available``, ``DECODER_DEPENDENCIES`` and a
``(src, runner) -> bytes`` function, pydicom's "decoder plugins" guide): it returns the samples
as coded, with no colour transform, and pydicom applies the same post-processing (colour space,
sign, unused bits) as for its own plugins. When the opt-in ``gpl-codecs`` extra is installed,
pydicom tries pylibjpeg-libjpeg first, as it always did, and this plugin only where it fails.
"""

from __future__ import annotations

import threading

import imagecodecs
import numpy as np
from pydicom import uid
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.pixels.utils import _get_jpg_parameters

__all__ = [
    "DECODER_DEPENDENCIES",
    "PLUGIN",
    "encode_htj2k_lossless",
    "is_available",
    "register",
]

#: Label of the decoding plugin in pydicom's decoders (``decoding_plugin=PLUGIN`` forces it).
PLUGIN = "nubis-imagecodecs"

#: The ISO 10918-1 transfer syntaxes this plugin decodes, with what it needs (pydicom contract).
DECODER_DEPENDENCIES: dict[uid.UID, tuple[str, ...]] = {
    syntax: ("numpy", "imagecodecs>=2025.3")
    for syntax in (
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
    )
}

_registered = False
_lock = threading.Lock()


def is_available(transfer_syntax: str) -> bool:
    """Tell pydicom whether this plugin decodes `transfer_syntax` (its plugin contract)."""
    return transfer_syntax in DECODER_DEPENDENCIES


def register() -> None:
    """Add the decoding plugin to pydicom's JPEG decoders, once per process.

    pydicom's own plugins (GDCM, pylibjpeg-libjpeg, Pillow) keep their places in front when they
    are installed; in the default install none of them decodes JPEG lossless or 12-bit.
    """
    global _registered
    with _lock:
        if _registered:
            return
        for syntax in DECODER_DEPENDENCIES:
            get_decoder(syntax).add_plugin(PLUGIN, (__name__, "_decode_frame"))
        _registered = True


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one ISO 10918-1 codestream (baseline, extended, lossless) with libjpeg-turbo."""
    info = _get_jpg_parameters(src)
    # The codestream's own size decides what the codec allocates: one that claims more than the
    # data set's Rows x Columns x Samples is refused before any memory is taken for it.
    claimed = (info.get("height"), info.get("width"), info.get("components"))
    expected = (runner.rows, runner.columns, runner.samples_per_pixel)
    if claimed != expected:
        raise ValueError(
            f"the JPEG codestream is {claimed[0]}x{claimed[1]} with {claimed[2]} component(s), "
            f"the data set says {expected[0]}x{expected[1]} with {expected[2]}"
        )
    if runner.samples_per_pixel == 3:
        # Same colour space in and out: libjpeg-turbo passes the samples through untouched, as
        # pydicom expects; it converts YCbCr itself according to Photometric Interpretation.
        arr = imagecodecs.jpeg8_decode(src, colorspace="YCbCr", outcolorspace="YCbCr")
    else:
        arr = imagecodecs.jpeg8_decode(src)
    # Samples of up to 8 bits come back in bytes, others in 16-bit words, whatever the data
    # set's Bits Allocated says; pydicom widens the frame to it.
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    return bytes(np.ascontiguousarray(arr).data)


def encode_htj2k_lossless(arr: np.ndarray) -> bytes:
    """Encode one frame as an HTJ2K codestream with the reversible 5/3 wavelet (PS3.5 A.4.6).

    Parameters
    ----------
    arr : numpy.ndarray
        ``(rows, columns)`` or ``(rows, columns, samples)`` of integers, 8 or 16 bits, signed or
        unsigned; the codestream's component precision is the array's item size.

    Returns
    -------
    bytes
        A raw J2K codestream (SOC, SIZ, ...: no JPH header), as HTJ2K transfer syntaxes hold.
        No multi-component transform is applied, so the Photometric Interpretation of the
        samples holds unchanged (RGB stays RGB, YBR_FULL stays YBR_FULL).

    Raises
    ------
    ValueError
        If the array cannot be encoded (more than 16 bits, unsupported shape).
    """
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        raise ValueError(f"HTJ2K encoding takes 8- or 16-bit integer samples, not {arr.dtype}")
    try:
        return bytes(imagecodecs.htj2k_encode(arr, reversible=True, rgb=False))
    except imagecodecs.Htj2kError as exc:
        raise ValueError(f"HTJ2K encoder: {exc}") from exc
