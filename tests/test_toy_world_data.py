"""The toy world's scene generator: seeded, and its labels agree with its pixels."""
import numpy as np
import pytest

from toy_world.data import COLOURS, MAX_OBJECTS, SHAPES, SIZE, batch, scene


def test_a_scene_depends_only_on_its_seed():
    first, again = scene(123), scene(123)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.segmentation, again.segmentation)
    assert first.objects == again.objects
    scene(7)  # drawing other scenes in between changes nothing
    assert np.array_equal(scene(123).image, first.image)


def test_different_seeds_give_different_scenes():
    images = [scene(seed).image for seed in range(20)]
    assert len({image.tobytes() for image in images}) == 20


def test_batch_is_the_scenes_stacked():
    images, maps = batch([5, 9])
    assert images.shape == (2, 3, SIZE, SIZE) and maps.shape == (2, SIZE, SIZE)
    assert 0 <= images.min() and images.max() <= 1
    assert np.array_equal((images[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), scene(9).image)
    assert np.array_equal(maps[0].numpy(), scene(5).segmentation)


@pytest.mark.parametrize("seed", range(40))
def test_labels_agree_with_the_pixels(seed):
    s = scene(seed)
    assert 1 <= len(s.objects) <= MAX_OBJECTS
    covered = np.zeros((SIZE, SIZE), dtype=bool)
    for obj in s.objects:
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        inside = s.segmentation[y0:y1, x0:x1] == 1 + SHAPES.index(obj.shape)
        assert inside.mean() > 0.3, "the shape is mostly visible in its box"
        colour = s.image[y0:y1, x0:x1][inside].mean(axis=0)
        assert np.abs(colour - COLOURS[obj.colour]).max() < 45, "its pixels have its colour"
        covered[y0:y1, x0:x1] = True
    assert not s.segmentation[~covered].any(), "no shape pixel lies outside every box"
