#!/usr/bin/python3
"""Builds the DICOM test files of model/dicom.

    /usr/bin/python3 testdata/dicom/make.py [OUTDIR]

Needs Debian's python3-pydicom (2.3), python3-numpy, python3-pil and
gdcmconv (libgdcm-tools). Each source image is a small synthetic chest
X-ray written by pydicom as Explicit VR Little Endian, then converted by
gdcmconv to the other transfer syntaxes. For every file it writes what
pydicom reads from it, and it checks that each lossless conversion gives
pydicom the source's pixel array:

  NAME.npy       the stored pixel values, pydicom's ds.pixel_array
  NAME.png       the 8-bit image the reader's Gray8 must give: modality
                 LUT, then the first VOI window (PS3.3 C.11.2.1.2) or,
                 without one, min-max of the rescaled values; MONOCHROME1
                 inverted after that; rounded half up
  manifest.json  each file: transfer syntax, the header values pydicom
                 reads, and which .npy/.png it must decode to, or that its
                 transfer syntax must be refused (JPEG Lossless, JPEG 2000,
                 big endian)

The files are the same at every run, except the JPEG Baseline one (gdcmconv
gives a lossy conversion a new UID).

OUTDIR defaults to the script's own folder.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid, ExplicitVRLittleEndian
from PIL import Image

ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

UIDS = {
    "explicit": "1.2.840.10008.1.2.1",
    "implicit": "1.2.840.10008.1.2",
    "deflated": "1.2.840.10008.1.2.1.99",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg": "1.2.840.10008.1.2.4.50",
    "jpegll": "1.2.840.10008.1.2.4.70",
    "j2k": "1.2.840.10008.1.2.4.90",
    "bigendian": "1.2.840.10008.1.2.2",
}

# gdcmconv's options for each target transfer syntax.
GDCM = {
    "implicit": ["--implicit"],
    "deflated": ["--deflated"],
    "rle": ["--rle"],
    "jpeg": ["--jpeg", "--lossy", "-q", "90"],
    "jpegll": ["--jpeg"],
    "j2k": ["--j2k"],
}


def cxr(rows, cols, seed):
    """A chest-X-ray-like float image in 0..1: a bright body, two darker
    lungs with ribs, a spine, and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y /= rows
    x /= cols
    img = np.full((rows, cols), 0.08)
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.55) / 0.6) ** 2 < 1
    img[body] = 0.75
    for cx in (0.3, 0.7):
        lung = ((x - cx) / 0.16) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1
        ribs = 0.08 * (np.sin(y * 40) > 0.6)
        img = np.where(lung, 0.3 + ribs, img)
    spine = np.abs(x - 0.5) < 0.05
    img[spine & body] = 0.95
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1)


# The source images: what each exercises is in its name.
#   m2_u12  MONOCHROME2, 16 bits allocated, 12 stored, slope 1.5, intercept
#           -1024, two windows (the first is used)
#   m1_u16  MONOCHROME1, 16 bits stored, a window, no rescale elements
#   m2_u8   MONOCHROME2, 8 bits, no window (min-max), an odd number of
#           rows (gdcmconv's RLE coder refuses an odd pixel count, so the
#           padding of odd-length pixel data is tested in Go), and JPEG
#           Baseline
#   m2_s16  signed 16 bits, intercept -1024, no window (min-max)
SOURCES = [
    dict(name="m2_u12", rows=48, cols=64, bits=16, stored=12, signed=0, photometric="MONOCHROME2",
         lo=0, hi=4095, slope="1.5", intercept="-1024", center=["600", "300"], width=["1800", "500"],
         targets=["implicit", "deflated", "rle", "jpegll", "j2k"]),
    dict(name="m1_u16", rows=48, cols=64, bits=16, stored=16, signed=0, photometric="MONOCHROME1",
         lo=1000, hi=60000, slope=None, intercept=None, center=["30000"], width=["40001"],
         targets=["implicit", "deflated", "rle"]),
    dict(name="m2_u8", rows=45, cols=62, bits=8, stored=8, signed=0, photometric="MONOCHROME2",
         lo=3, hi=250, slope=None, intercept=None, center=None, width=None,
         targets=["implicit", "deflated", "rle", "jpeg"]),
    dict(name="m2_s16", rows=48, cols=64, bits=16, stored=16, signed=1, photometric="MONOCHROME2",
         lo=-2000, hi=2500, slope="1", intercept="-1024", center=None, width=None,
         targets=["implicit", "deflated", "rle", "bigendian"]),
]


def stored_values(src):
    f = cxr(src["rows"], src["cols"], seed=len(src["name"]) * 7 + src["bits"])
    v = np.round(src["lo"] + f * (src["hi"] - src["lo"]))
    dtype = {(8, 0): np.uint8, (16, 0): np.uint16, (16, 1): np.int16}[(src["bits"], src["signed"])]
    return v.astype(dtype)


def write_source(src, arr, path, big_endian=False):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid(ROOT, [src["name"]])
    meta.TransferSyntaxUID = UIDS["bigendian"] if big_endian else ExplicitVRLittleEndian
    meta.ImplementationClassUID = ROOT + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian = not big_endian
    ds.is_implicit_VR = False
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Synthetic^Chest"
    ds.PatientID = src["name"]
    ds.StudyInstanceUID = generate_uid(ROOT, [src["name"], "study"])
    ds.SeriesInstanceUID = generate_uid(ROOT, [src["name"], "series"])
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    # Sequences before the pixel data, which the reader must walk and
    # skip: one of undefined length with an item of undefined length and a
    # nested sequence, and an icon with pixel data of its own.
    code = Dataset()
    code.CodeValue = "399348003"
    code.CodingSchemeDesignator = "SCT"
    code.CodeMeaning = "PA"
    modifier = Dataset()
    modifier.CodeValue = "R-10214"
    modifier.CodingSchemeDesignator = "SRT"
    modifier.CodeMeaning = "postero-anterior"
    modifier.is_undefined_length_sequence_item = True
    code.ViewModifierCodeSequence = [modifier]
    code["ViewModifierCodeSequence"].is_undefined_length = True
    code.is_undefined_length_sequence_item = True
    ds.ViewCodeSequence = [code]
    ds["ViewCodeSequence"].is_undefined_length = True
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = 8
    icon.Columns = 8
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = bytes(range(0, 256, 4))
    icon["PixelData"].VR = "OB"
    ds.IconImageSequence = [icon]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = src["photometric"]
    ds.Rows = src["rows"]
    ds.Columns = src["cols"]
    ds.BitsAllocated = src["bits"]
    ds.BitsStored = src["stored"]
    ds.HighBit = src["stored"] - 1
    ds.PixelRepresentation = src["signed"]
    if src["center"]:
        ds.WindowCenter = src["center"] if len(src["center"]) > 1 else src["center"][0]
        ds.WindowWidth = src["width"] if len(src["width"]) > 1 else src["width"][0]
    if src["intercept"] is not None:
        ds.RescaleIntercept = src["intercept"]
        ds.RescaleSlope = src["slope"]
        ds.RescaleType = "US"
    data = arr.astype(arr.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
    if len(data) % 2:
        data += b"\0"
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if src["bits"] > 8 else "OB"
    ds.save_as(path, write_like_original=False)


def first(v):
    if v is None:
        return None
    if isinstance(v, pydicom.multival.MultiValue):
        v = v[0]
    return float(v)


def gray8(ds, arr):
    """The reader's Gray8, in float64 with the same operations in the same
    order, rounded half up."""
    slope = first(ds.get("RescaleSlope")) if "RescaleSlope" in ds else 1.0
    intercept = first(ds.get("RescaleIntercept")) if "RescaleIntercept" in ds else 0.0
    y = arr.astype(np.float64) * slope + intercept
    if "WindowCenter" in ds and "WindowWidth" in ds and first(ds.WindowWidth) >= 1:
        c, w = first(ds.WindowCenter), first(ds.WindowWidth)
        lo = c - 0.5 - (w - 1) / 2
        hi = c - 0.5 + (w - 1) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            v = ((y - (c - 0.5)) / (w - 1) + 0.5) * 255
        v = np.where(y <= lo, 0, np.where(y > hi, 255, v))
    else:
        mn, mx = y.min(), y.max()
        if mx == mn:
            v = np.zeros_like(y)
        else:
            v = (y - mn) / (mx - mn) * 255
    out = np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 255 - out
    return out


def check_window(ds, g8, path):
    """Checks gray8 against pydicom's own modality LUT and VOI window,
    scaled from its output range to 0..255: they agree to within rounding."""
    if "WindowCenter" not in ds:
        return
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_windowing
    v = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    bits = int(ds.BitsStored)
    lo, hi = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-2**(bits - 1), 2**(bits - 1) - 1)
    if "RescaleSlope" in ds:
        lo = lo * first(ds.RescaleSlope) + first(ds.RescaleIntercept)
        hi = hi * first(ds.RescaleSlope) + first(ds.RescaleIntercept)
    ref = (v - lo) / (hi - lo) * 255
    ours = g8.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        ours = 255 - ours
    if np.abs(ours - ref).max() > 0.5 + 1e-9:
        sys.exit(f"{path}: gray8 differs from pydicom's apply_windowing by {np.abs(ours - ref).max()}")


def gdcmconv(args, src, dst):
    p = subprocess.run(["gdcmconv", *args, src, dst], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"gdcmconv {' '.join(args)} {src}: exit {p.returncode}\n{p.stdout}{p.stderr}")


def save_npy(path, arr):
    np.save(path, np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))), allow_pickle=False)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    if shutil.which("gdcmconv") is None:
        sys.exit("make.py: gdcmconv not found (apt-get install libgdcm-tools)")
    manifest = []
    for src in SOURCES:
        arr = stored_values(src)
        name = src["name"]
        explicit = os.path.join(out, name + "_explicit.dcm")
        write_source(src, arr, explicit)
        ds = pydicom.dcmread(explicit)
        if not np.array_equal(ds.pixel_array, arr):
            sys.exit(f"{explicit}: pydicom reads back other pixels")
        save_npy(os.path.join(out, name + ".npy"), ds.pixel_array)
        g8 = gray8(ds, ds.pixel_array)
        check_window(ds, g8, explicit)
        Image.fromarray(g8, "L").save(os.path.join(out, name + ".png"), optimize=True)
        files = [("explicit", explicit)]
        for t in src["targets"]:
            path = os.path.join(out, f"{name}_{t}.dcm")
            if t == "bigendian":
                write_source(src, arr, path, big_endian=True)
            else:
                gdcmconv(GDCM[t], explicit, path)
            files.append((t, path))
        for t, path in files:
            ds = pydicom.dcmread(path)
            ts = str(ds.file_meta.TransferSyntaxUID)
            if ts != UIDS[t]:
                sys.exit(f"{path}: transfer syntax {ts}, want {UIDS[t]}")
            e = dict(file=os.path.basename(path), transfer_syntax=ts,
                     rows=int(ds.Rows), columns=int(ds.Columns),
                     bits_allocated=int(ds.BitsAllocated), bits_stored=int(ds.BitsStored),
                     pixel_representation=int(ds.PixelRepresentation),
                     photometric=str(ds.PhotometricInterpretation),
                     rescale_slope=first(ds.get("RescaleSlope")), rescale_intercept=first(ds.get("RescaleIntercept")),
                     window_center=first(ds.get("WindowCenter")), window_width=first(ds.get("WindowWidth")))
            if t in ("jpegll", "j2k", "bigendian"):
                e["refused"] = True
            elif t == "jpeg":
                # Lossy: what pydicom (through Pillow's libjpeg) decodes,
                # which Go's image/jpeg matches to within rounding.
                px = ds.pixel_array
                e["pixels"] = f"{name}_{t}.npy"
                e["gray8"] = f"{name}_{t}.png"
                e["lossy"] = True
                save_npy(os.path.join(out, e["pixels"]), px)
                Image.fromarray(gray8(ds, px), "L").save(os.path.join(out, e["gray8"]), optimize=True)
            else:
                if not np.array_equal(ds.pixel_array, arr):
                    sys.exit(f"{path}: pydicom reads other pixels than the source's")
                e["pixels"] = name + ".npy"
                e["gray8"] = name + ".png"
            manifest.append(e)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"pydicom": pydicom.__version__, "files": manifest}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
