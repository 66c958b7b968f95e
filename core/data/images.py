"""Images of an upload: finding them in a folder or a zip safely, checking them, normalising them once.

Safety first, since uploads come from anywhere:
- a zip is never extracted to disk: members are read in memory by name, and entries that would escape
  a target folder (`../x`, `/etc/x`, `C:x`) or that are symbolic links are reported as problems;
- a folder is read only below its root: `..` in an image cell and symlinks that leave the folder are refused;
- sizes are checked before decoding: the file's bytes (and a zip member's declared size), then the pixel
  count from the image header (decompression bombs), and only then the pixels are decoded;
- every image the workbench decodes (imports, stored images, a query composed in the app, thumbnails) goes
  through `decode_image`, whose pixel cap is sized for what is kept: a 512 px normalised image, 160-512 px
  thumbnails and a vision tower's 224-384 px input. Pillow's own global limit is set to the same cap, so an
  `Image.open` elsewhere in the process (Gradio's upload handling) refuses the same bombs;
- only raster formats Pillow decodes itself are opened (no EPS, which would run Ghostscript).
"""
from __future__ import annotations

import io
import os
import re
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

from core.data.problems import Problem, UploadError
from core.errors import WorkbenchError

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
LOSSLESS_FORMATS = ("PNG", "GIF", "BMP")  # line art and icons stay PNG; photos become JPEG
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
JPEG_QUALITY = 90
# 16 Mpx (a 4000x4000 picture, a 12 Mpx phone photo fits) decodes to at most 64 MB as RGBA; everything
# the workbench keeps of an image is at most 512 px a side, so more pixels buy nothing but memory.
MAX_PIXELS = 16_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # one image file
    max_pixels: int = MAX_PIXELS  # width x height from the header; more is a likely decompression bomb
    max_side: int = 512  # longest side of the normalised image


class ImageProblem(Exception):
    """Why one image cannot be used; becomes a row problem of the note that names it."""


def decode_image(source, max_pixels: int = MAX_PIXELS, draft_side: int | None = None) -> Image.Image:
    """The one way the workbench turns a file, bytes or a PIL image into pixels: refuses (ImageProblem)
    before decoding when the header claims more than `max_pixels`; returns an RGB image with EXIF
    orientation applied and transparency composited on white. `draft_side` lets a JPEG decode at a
    reduced scale that still covers that many pixels a side."""
    return _decode(source, max_pixels, draft_side)[0]


def _decode(source, max_pixels: int, draft_side: int | None) -> tuple[Image.Image, str | None]:
    if isinstance(source, Image.Image):  # decoded by someone else: still refuse to carry a huge one further
        width, height = source.size
        if width * height > max_pixels:
            raise ImageProblem(_too_many(width, height, max_pixels))
        return to_rgb(source), source.format
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        source = Path(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise ImageProblem("not an image (unrecognised or unsupported format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            claimed = re.search(r"\((\d+) pixels\)", str(error))
            size = f"{int(claimed.group(1)) / 1e6:,.0f} Mpx" if claimed else "too many pixels"
            raise ImageProblem(f"image header claims {size}, over the limit of {max_pixels / 1e6:,.0f} Mpx"
                               " (a decompression bomb?)") from None
        except FileNotFoundError:
            raise ImageProblem("image file not found") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageProblem(f"corrupt image ({error})") from None
        with image:
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ImageProblem(_too_many(width, height, max_pixels))
            source_format = image.format
            try:
                if source_format == "JPEG" and draft_side:
                    image.draft("RGB", (draft_side, draft_side))  # decode big JPEGs at a reduced scale
                image.load()
                rgb = to_rgb(ImageOps.exif_transpose(image) or image)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ImageProblem("image decodes to too many pixels (a decompression bomb?)") from None
            except (OSError, SyntaxError, ValueError, EOFError) as error:
                raise ImageProblem(f"truncated or corrupt image ({error})") from None
    return rgb, source_format


def _too_many(width: int, height: int, max_pixels: int) -> str:
    return (f"image header claims {width}x{height} pixels ({width * height / 1e6:,.0f} Mpx), over the "
            f"limit of {max_pixels / 1e6:,.0f} Mpx (a decompression bomb?)")


def normalise_image(data: bytes, limits: ImageLimits = ImageLimits()) -> tuple[bytes, str]:
    """Decode, check and normalise one image: RGB (transparency composited on white), longest side at
    most `limits.max_side`, PNG for lossless sources and JPEG otherwise. Returns (bytes, extension)."""
    if len(data) > limits.max_bytes:
        raise ImageProblem(f"image is {len(data):,} bytes, over the limit of {limits.max_bytes:,}")
    rgb, source_format = _decode(data, limits.max_pixels, limits.max_side)
    rgb.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if source_format in LOSSLESS_FORMATS:
        rgb.save(out, format="PNG", optimize=True)
        return out.getvalue(), "png"
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue(), "jpg"


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """RGB with any transparency composited on `background` (clip art on black looks wrong)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


# Presentation helpers (thumbnails, choosing a query to show): they never touch the pixels a model sees.
PAPER_THRESHOLD = 245  # a grey level at or above this counts as empty paper
NEAR_BLANK_INK = 0.01  # a picture with less ink than this share of its pixels reads as blank
FLAT_STDDEV = 4.0  # grey levels: a picture varying less than this is one flat colour


def ink_box(image: Image.Image, threshold: int = PAPER_THRESHOLD) -> tuple[int, int, int, int] | None:
    """The bounding box of the pixels darker than `threshold` (any channel), or None for a blank picture."""
    grey = to_rgb(image).convert("L").point(lambda value: 255 if value < threshold else 0)
    return grey.getbbox()


def trim_margins(image: Image.Image, threshold: int = PAPER_THRESHOLD, margin: float = 0.03) -> Image.Image:
    """`image` with its empty white margins cut away, keeping a thin border of `margin` times the drawing's
    longer side; a blank picture comes back as it is. For display: a thumbnail then shows the drawing, not
    the paper around it."""
    box = ink_box(image, threshold)
    if box is None:
        return image
    left, top, right, bottom = box
    pad = int(round(margin * max(right - left, bottom - top)))
    box = (max(0, left - pad), max(0, top - pad), min(image.width, right + pad), min(image.height, bottom + pad))
    return image if box == (0, 0, image.width, image.height) else image.crop(box)


def ink_share(image: Image.Image, threshold: int = PAPER_THRESHOLD, side: int = 128) -> float:
    """The share of pixels darker than `threshold`, measured on a copy at most `side` px a side: 0 for a
    white page."""
    small = to_rgb(image).convert("L")
    small.thumbnail((side, side))
    histogram = small.histogram()
    total = sum(histogram)
    return sum(histogram[:threshold]) / total if total else 0.0


def looks_blank(image: Image.Image, side: int = 128) -> bool:
    """True for a picture with next to no ink on white, or one flat colour (no contrast to show)."""
    from PIL import ImageStat

    small = to_rgb(image).convert("L")
    small.thumbnail((side, side))
    return ink_share(small, side=side) < NEAR_BLANK_INK or ImageStat.Stat(small).stddev[0] < FLAT_STDDEV


def load_image(path: str | os.PathLike) -> Image.Image:
    """A stored (normalised) image as a PIL RGB image."""
    try:
        return decode_image(path)
    except ImageProblem as error:
        raise WorkbenchError(f"cannot read image {Path(path).name}: {error}") from None


# ---------------------------------------------------------------------------------------------- sources

def _clean_ref(ref: str) -> str | None:
    """An image cell as a relative POSIX path, or None when it tries to leave the folder."""
    ref = ref.strip().replace("\\", "/")
    while ref.startswith("./"):
        ref = ref[2:]
    path = PurePosixPath(ref)
    if ref.startswith("/") or (len(ref) > 1 and ref[1] == ":") or ".." in path.parts:
        return None
    return ref


class ImageSource:
    """Where the upload's images are. `problems` are problems with the source itself (unsafe entries)."""

    label: str = ""
    problems: list[Problem]

    def fetch(self, ref: str, limits: ImageLimits) -> bytes:
        """The bytes of the image an image cell names; ImageProblem when it cannot be had."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderImages(ImageSource):
    def __init__(self, roots: list[Path], label: str, search_by_name: bool = True):
        self.roots = [r.resolve() for r in roots]
        self.label = label
        self.problems = []
        self.search_by_name = search_by_name
        self._index: dict[str, list[Path]] | None = None

    def _by_name(self) -> dict[str, list[Path]]:
        if self._index is None:
            self._index = {}
            root = self.roots[0]
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file in sorted(files):
                    path = Path(folder) / file
                    for key in {file, path.stem}:
                        self._index.setdefault(key, []).append(path)
        return self._index

    def _candidates(self, ref: str):
        for root in self.roots:
            exact = root / ref
            yield root, exact
            if not PurePosixPath(ref).suffix:
                for ext in IMAGE_EXTENSIONS:
                    yield root, exact.with_name(exact.name + ext)

    def fetch(self, ref: str, limits: ImageLimits) -> bytes:
        clean = _clean_ref(ref)
        if clean is None:
            raise ImageProblem(f"image path '{ref}' leaves the images folder")
        found = None
        for root, candidate in self._candidates(clean):
            if candidate.is_file() or candidate.is_symlink():
                found = (root, candidate)
                break
        if found is None and self.search_by_name:
            name = PurePosixPath(clean).name
            matches = self._by_name().get(name, [])
            if len(matches) > 1:
                shown = ", ".join(str(m.relative_to(self.roots[0])) for m in matches[:3])
                raise ImageProblem(f"image name '{ref}' is ambiguous: it matches {len(matches)} files ({shown})")
            if matches:
                found = (self.roots[0], matches[0])
        if found is None:
            raise ImageProblem(f"image file '{ref}' not found in {self.label}")
        root, path = found
        real = path.resolve()
        if root not in real.parents:
            raise ImageProblem(f"image '{ref}' is a link that leaves {self.label}")
        if not real.is_file():
            raise ImageProblem(f"image '{ref}' is not a regular file")
        size = real.stat().st_size
        if size > limits.max_bytes:
            raise ImageProblem(f"image is {size:,} bytes, over the limit of {limits.max_bytes:,}")
        try:
            return real.read_bytes()
        except OSError as error:
            raise ImageProblem(f"cannot read image '{ref}' ({error.strerror or error})") from None


class ZipImages(ImageSource):
    def __init__(self, path: Path):
        self.label = path.name
        self.problems = []
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise UploadError([Problem(self.label, 0, f"not a readable zip archive ({error})")],
                              "cannot read the images archive") from None
        self.entries: dict[str, zipfile.ZipInfo] = {}
        self.by_name: dict[str, list[str]] = {}
        for info in infos:
            name = info.filename
            mode = info.external_attr >> 16
            if _clean_ref(name) is None:
                self.problems.append(Problem(self.label, 0, f"entry '{name}' would be written outside the target folder"
                                                            " (zip-slip); refusing it"))
                continue
            if stat.S_ISLNK(mode):
                self.problems.append(Problem(self.label, 0, f"entry '{name}' is a symbolic link; links are not allowed"
                                                            " in archives"))
                continue
            if info.is_dir():
                continue
            clean = _clean_ref(name)
            self.entries[clean] = info
            pure = PurePosixPath(clean)
            if pure.name.startswith(".") or "__MACOSX" in pure.parts:
                continue
            for key in {pure.name, pure.stem}:
                self.by_name.setdefault(key, []).append(clean)

    def fetch(self, ref: str, limits: ImageLimits) -> bytes:
        clean = _clean_ref(ref)
        if clean is None:
            raise ImageProblem(f"image path '{ref}' leaves the archive")
        name = clean if clean in self.entries else None
        if name is None and not PurePosixPath(clean).suffix:
            name = next((clean + ext for ext in IMAGE_EXTENSIONS if clean + ext in self.entries), None)
        if name is None:
            matches = self.by_name.get(PurePosixPath(clean).name, [])
            if len(matches) > 1:
                raise ImageProblem(f"image name '{ref}' is ambiguous: it matches {len(matches)} entries"
                                   f" ({', '.join(matches[:3])})")
            if not matches:
                raise ImageProblem(f"image '{ref}' not found in {self.label}")
            name = matches[0]
        info = self.entries[name]
        if info.file_size > limits.max_bytes:
            raise ImageProblem(f"image entry '{name}' is {info.file_size:,} bytes, over the limit of {limits.max_bytes:,}")
        try:
            with self.zip.open(info) as member:
                data = member.read(limits.max_bytes + 1)  # the declared size may lie
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, EOFError) as error:
            raise ImageProblem(f"cannot read entry '{name}' ({error})") from None
        if len(data) > limits.max_bytes:
            raise ImageProblem(f"image entry '{name}' is over the limit of {limits.max_bytes:,} bytes")
        return data

    def close(self) -> None:
        self.zip.close()


def open_images(images: str | os.PathLike | None, notes_file: Path) -> ImageSource:
    """The image source for an upload: a folder, a .zip, or (none given) the notes file's folder and its
    `images/` subfolder, looked up by path only."""
    if images is None:
        base = notes_file.resolve().parent
        roots = [base] + ([base / "images"] if (base / "images").is_dir() else [])
        return FolderImages(roots, label=f"the folder of {notes_file.name}", search_by_name=False)
    path = Path(images)
    if path.is_dir():
        return FolderImages([path], label=path.name or str(path))
    if path.is_file():
        return ZipImages(path)
    raise UploadError([Problem(path.name, 0, "no such folder or .zip file")], "cannot find the images")
