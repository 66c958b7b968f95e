"""Small notes with real PIL images for the model tests."""
from PIL import Image, ImageDraw

from core.data.schema import Note


def picture(colour, shape="circle", size=48):
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (8, 8, size - 8, size - 8)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image


def sample_notes():
    return [
        Note("a", "A red bird", "sits on a tree #nature#", ["animals"], picture("red")),
        Note("b", "Blue car", "", [], picture("blue", "square")),
        Note("c", "", "only content here, quite a bit longer than the other notes in this batch", [],
             picture("green")),
        Note("d", "No picture at all", "text only", [], None),
    ]
